"""LLM advice (agent ``trading.llm``): on each closed bar, ask Anthropic's Messages API for a
structured BUY/SELL/HOLD view of the token given the bar's indicators. Off without
ANTHROPIC_API_KEY.

Never blocking: the trading agent only calls :meth:`LLMAdvisor.submit`, which queues the request
and returns. LLM_CONCURRENCY workers send the requests with the official ``anthropic`` async
client (no SDK retries: a retry would only answer about an older bar). The queue holds at most one
request per token, and a newer bar replaces the token's pending request (the old one is dropped);
it is bounded by LLM_QUEUE_SIZE, dropping the oldest request when full.

The answer is forced through a tool (``trade_signal``) whose JSON schema is the signal's shape,
then validated with pydantic. A timeout (LLM_TIMEOUT_SECONDS), an API error (429, 529 overloaded,
5xx), an invalid answer, or an answer that arrives after a newer bar of the token closed yields a
``signal.error`` with the reason, and the rule-based signal of that bar (agent ``trading.rules``,
emitted at once and never waiting for the LLM) stands alone: that is the fallback. A valid answer
becomes a ``signal.generated`` of agent ``trading.llm`` stamped with the bar's end (event time),
its id derived from (agent, token, bar), so a retried bar is counted once by the consensus.

Because LLM answers arrive after a wall-clock delay, they are left out of backtests' parity
guarantees (a replay at 1000× real time sees the bar long gone when the answer comes).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated, Literal

from pydantic import BaseModel, Field, ValidationError

from core.metrics import LLM_REQUESTS, LLM_SECONDS
from models.events import Envelope, SignalError, SignalGenerated, derived_id

log = logging.getLogger(__name__)
AGENT = "trading.llm"

SYSTEM = ("You are a crypto perpetual-futures trading analyst. Given one token's latest closed OHLCV bar, "
          "its technical indicators and a rule-based signal, answer with the trade_signal tool only: "
          "action BUY, SELL or HOLD, score 0-100 (strength), confidence 0-1, and up to five short reasons.")

TOOL = {
    "name": "trade_signal",
    "description": "Report a trading signal for the token.",
    "input_schema": {
        "type": "object",
        "properties": {
            "action": {"type": "string", "enum": ["BUY", "SELL", "HOLD"]},
            "score": {"type": "number", "minimum": 0, "maximum": 100},
            "confidence": {"type": "number", "minimum": 0, "maximum": 1},
            "reasons": {"type": "array", "items": {"type": "string"}, "maxItems": 5},
        },
        "required": ["action", "score", "confidence", "reasons"],
    },
}


class Advice(BaseModel):
    """The tool input the model must produce."""

    action: Literal["BUY", "SELL", "HOLD"]
    score: Annotated[float, Field(ge=0, le=100)]
    confidence: Annotated[float, Field(ge=0, le=1)]
    reasons: Annotated[list[Annotated[str, Field(max_length=300)]], Field(max_length=5)] = []


class InvalidAnswer(ValueError):
    pass


def parse_advice(message) -> Advice:
    """The advice in a Messages API response (the ``trade_signal`` tool_use block).

    Raises:
        InvalidAnswer: no such block, or its input does not validate.
    """
    for block in getattr(message, "content", None) or []:
        if getattr(block, "type", None) == "tool_use" and getattr(block, "name", None) == TOOL["name"]:
            try:
                return Advice.model_validate(block.input)
            except ValidationError as exc:
                err = exc.errors(include_url=False)[0]
                raise InvalidAnswer(f"invalid trade_signal: {'.'.join(map(str, err['loc']))}: {err['msg']}") from None
    raise InvalidAnswer(f"no trade_signal tool call in the answer (stop_reason {getattr(message, 'stop_reason', None)})")


@dataclass(slots=True)
class Request:
    token: str
    bar_start_ms: int
    bar_end_ms: int
    prompt: str
    price: float | None
    correlation_id: object = None
    ingest_ms: int | None = None
    queued_at: float = field(default_factory=time.monotonic)


def prompt_for(token: str, bar: dict, values: dict, rule: dict) -> str:
    ind = ", ".join(f"{k}={v:.6g}" for k, v in values.items() if v is not None and not k.endswith("_prev"))
    return (f"Token {token}. Bar start {bar['start_ms']} ms: open {bar['open']}, high {bar['high']}, low {bar['low']}, "
            f"close {bar['close']}, volume {bar['volume']:.2f} USD over {bar['ticks']} trades.\n"
            f"Indicators: {ind}.\nRule-based signal: {rule['action']} score {rule['score']} "
            f"confidence {rule['confidence']} ({'; '.join(rule['reasons'])}).")


class LLMAdvisor:
    """Bounded, per-token-latest queue of advice requests served by concurrent workers.

    ``client``: an ``anthropic.AsyncAnthropic``; ``emit``: the coroutine function that sends the
    resulting ``signal.generated`` / ``signal.error`` (the runtime's).
    """

    def __init__(self, client, model: str, timeout_s: float, concurrency: int, queue_size: int, max_tokens: int,
                 emit: Callable[[Envelope], Awaitable[None]]):
        self.client = client
        self.emit = emit
        self.model = model
        self.timeout_s = timeout_s
        self.concurrency = concurrency
        self.queue_size = queue_size
        self.max_tokens = max_tokens
        self.pending: OrderedDict[str, Request] = OrderedDict()
        self.latest_bar: dict[str, int] = {}
        self._ready = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    def advise(self, token: str, bar, bar_end_ms: int, values: dict, sig, correlation_id, ingest_ms) -> None:
        """Queue advice on one closed ``bar`` (:class:`domain.bars.Bar`) with its indicator
        ``values`` and the rule signal ``sig``; never blocks."""
        rule = {"action": sig.action, "score": sig.score, "confidence": sig.confidence, "reasons": sig.reasons}
        self.submit(Request(token, bar.start_ms, bar_end_ms, prompt_for(token, bar.to_dict(), values, rule),
                            bar.close, correlation_id, ingest_ms))

    def submit(self, req: Request) -> None:
        """Queue a request; never blocks. Replaces the token's pending request, drops the oldest
        request when the queue is full."""
        if not self._tasks:
            self._tasks = [asyncio.ensure_future(self._worker()) for _ in range(self.concurrency)]
        self.latest_bar[req.token] = max(self.latest_bar.get(req.token, 0), req.bar_start_ms)
        if self.pending.pop(req.token, None) is not None:
            LLM_REQUESTS.labels("superseded").inc()
        while len(self.pending) >= self.queue_size:
            self.pending.popitem(last=False)
            LLM_REQUESTS.labels("dropped").inc()
        self.pending[req.token] = req
        self._ready.set()

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _worker(self) -> None:
        while True:
            while not self.pending:
                self._ready.clear()
                await self._ready.wait()
            _, req = self.pending.popitem(last=False)
            try:
                await self._serve(req)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug must not kill the worker: count it and go on
                log.exception("LLM advice for %s failed", req.token)

    async def _serve(self, req: Request) -> None:
        import anthropic

        t0 = time.perf_counter()
        try:
            message = await asyncio.wait_for(self.client.messages.create(
                model=self.model, max_tokens=self.max_tokens, system=SYSTEM, tools=[TOOL],
                tool_choice={"type": "tool", "name": TOOL["name"]},
                messages=[{"role": "user", "content": req.prompt}]), self.timeout_s)
            advice = parse_advice(message)
            outcome, error = "ok", None
        except (asyncio.TimeoutError, anthropic.APITimeoutError):
            outcome, error = "timeout", f"no answer within {self.timeout_s} s"
        except anthropic.APIStatusError as exc:
            kind = (exc.body or {}).get("error", {}).get("type") if isinstance(exc.body, dict) else None
            outcome, error = "api_error", f"HTTP {exc.status_code} {kind or ''}".strip()
        except anthropic.APIError as exc:
            outcome, error = "api_error", f"{type(exc).__name__}: {exc}"[:300]
        except InvalidAnswer as exc:
            outcome, error = "invalid", str(exc)
        LLM_SECONDS.observe(time.perf_counter() - t0)
        if outcome == "ok" and self.latest_bar.get(req.token, 0) > req.bar_start_ms:
            outcome, error = "late", "answer arrived after a newer bar closed"
        LLM_REQUESTS.labels(outcome).inc()
        if error is not None:
            log.info("LLM advice for %s bar %s: %s; the rule-based signal stands", req.token, req.bar_start_ms, error)
            await self.emit(SignalError(
                event_id=derived_id("signal.error", AGENT, req.token, req.bar_start_ms), timestamp=req.bar_end_ms,
                token=req.token, source=AGENT, correlation_id=req.correlation_id, ingest_ms=req.ingest_ms,
                agent=AGENT, error=error))
            return
        await self.emit(SignalGenerated(
            event_id=derived_id("signal", AGENT, req.token, req.bar_start_ms), timestamp=req.bar_end_ms,
            token=req.token, source=AGENT, correlation_id=req.correlation_id, ingest_ms=req.ingest_ms,
            action=advice.action, score=advice.score, confidence=advice.confidence, agent=AGENT,
            reasons=advice.reasons, price=req.price))

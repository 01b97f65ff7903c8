"""Trading agent: price.tick → OHLCV bars (event time) → pandas-ta indicators → rule-based
``signal.generated`` (agent ``trading.rules``), plus LLM advice requests (:mod:`streams.llm`, never
waited for) and the 1-minute closes (``price.minute``) the correlation join reads.

A signal in the direction a live sentiment–price correlation points to (``correlations`` table,
written by :mod:`streams.correlation`) gets its confidence raised by (1 + CORRELATION_CONFIDENCE_BOOST
× |r|), capped at 1 (SPEC story 5).

Per tick it only folds the tick into the open bar (O(1), in memory); indicators run once per
closed bar over the bounded history in the ``bar_history`` table, so per-tick cost does not grow
with history.

The open bar is not written to a table on every tick: it is rebuilt from the log instead. A tick
is acked only once the bar holding it has closed and been written to ``bar_history``, so the
committed offset never passes a tick of an open bar; after a crash or a rebalance the worker that
owns the partition replays from that offset and rebuilds the open bar exactly, skipping ticks of
bars already closed (``last_start``). Signal ids derive from (agent, token, bar start), so a
replayed bar close emits a signal the consensus already counted and ignores.
"""

from __future__ import annotations

import logging
import time

from app.main import TOPICS, app, dead_letter, emit, settings
from app.metrics import LATE_EVENTS, PROCESSING_SECONDS, TICK_RECEIVE_SECONDS, TICKS_CONSUMED
from domain import indicators as ind
from domain import signals
from domain.bars import Bar, apply_tick, bar_start
from domain.sentiment import BUCKET_MS
from models.events import EventError, PriceMinute, PriceTick, SignalGenerated, decode_event, derived_id
from streams import llm
from streams.risk import halted_accounts
from tables import bar_history, correlations, indicators

#: A correlation older than this (event time) no longer boosts confidence.
CORRELATION_TTL_MS = 3_600_000

log = logging.getLogger(__name__)
AGENT = "trading.rules"
_latency = PROCESSING_SECONDS.labels("trading")
_receive = TICK_RECEIVE_SECONDS


class OpenBar:
    """The open bar of one token, the unacked events it holds, and the last closed bar's start."""

    __slots__ = ("bar", "events", "last_closed", "tp", "minute", "minute_close")

    def __init__(self, last_closed: int | None, tp=None):
        self.bar: Bar | None = None
        self.events: list = []
        self.last_closed = last_closed
        self.tp = tp
        self.minute: int | None = None  # the 1-minute bucket being tracked for price.minute
        self.minute_close = 0.0


#: token -> OpenBar, for the partitions this worker owns
_open: dict[str, OpenBar] = {}
#: minute closes waiting to be sent by the agent
_minutes: list[PriceMinute] = []


@app.on_partitions_revoked.connect
async def _forget_revoked(app_, revoked, **kwargs) -> None:
    # The new owner rebuilds these bars from the committed offsets.
    for token in [t for t, ob in _open.items() if ob.tp in revoked]:
        del _open[token]


def close_bar(token: str, closed: Bar, length_ms: int, tick: PriceTick) -> SignalGenerated | None:
    """Append a closed bar to the token's history, compute indicators and the rules; returns the
    signal to emit (``None`` for HOLD or a score below SIGNAL_MIN_SCORE)."""
    hist = bar_history.get(token) or {"closes": [], "last_start": None}
    closes = hist["closes"]
    closes.append(closed.close)
    if len(closes) > settings.bar_history:
        del closes[: len(closes) - settings.bar_history]
    bar_history[token] = {"closes": closes, "last_start": closed.start_ms}
    values = ind.compute(closes)
    sig = signals.RULE_SETS[settings.trading_rules](values)
    bar_end = closed.start_ms + length_ms
    corr = correlations.get(token)
    if (corr and corr.get("active") and corr.get("action") == sig.action
            and 0 <= bar_end - corr["ts"] <= CORRELATION_TTL_MS):
        r = abs(corr["coefficient"])
        sig.confidence = round(min(1.0, sig.confidence * (1 + settings.correlation_confidence_boost * r)), 4)
        sig.reasons.append(f"sentiment-price correlation r={corr['coefficient']:+.2f} supports {sig.action}")
    advisor = llm.advisor()
    if advisor is not None:
        rule = {"action": sig.action, "score": sig.score, "confidence": sig.confidence, "reasons": sig.reasons}
        advisor.submit(llm.Request(token, closed.start_ms, bar_end, llm.prompt_for(token, closed.to_dict(), values, rule),
                                   closed.close, tick.correlation_id or tick.event_id, tick.ingest_ms))
    indicators[token] = {"bar": closed.to_dict(), "bar_end": bar_end, "values": values,
                         "signal": {"action": sig.action, "score": sig.score, "confidence": sig.confidence,
                                    "reasons": sig.reasons}}
    if sig.action == "HOLD" or sig.score < settings.signal_min_score:
        return None
    return SignalGenerated(
        event_id=derived_id("signal", AGENT, token, closed.start_ms),
        timestamp=bar_end, token=token, source=AGENT,
        correlation_id=tick.correlation_id or tick.event_id, ingest_ms=tick.ingest_ms,
        action=sig.action, score=sig.score, confidence=sig.confidence, agent=AGENT,
        reasons=sig.reasons, price=closed.close,
        indicators={k: v for k, v in values.items() if not k.endswith("_prev")})


def minute_close(ob: OpenBar, tick: PriceTick) -> PriceMinute | None:
    """Track the tick's minute; returns the previous minute's close when this tick starts a later
    minute (replays re-emit the same id, which the correlation join ignores)."""
    minute = tick.timestamp - tick.timestamp % BUCKET_MS
    out = None
    if ob.minute is not None and minute > ob.minute:
        out = PriceMinute(event_id=derived_id("price.minute", tick.token, ob.minute), timestamp=ob.minute,
                          token=tick.token, source=AGENT, close=ob.minute_close)
    if ob.minute is None or minute >= ob.minute:
        ob.minute, ob.minute_close = minute, tick.price
    return out


def on_tick(tick: PriceTick, event, length_ms: int) -> tuple[SignalGenerated | None, list]:
    """Fold one tick into its token's open bar. Returns ``(signal or None, events to ack now)``;
    a finished minute's close is left in ``_minutes`` for the agent to send."""
    token = tick.token
    ob = _open.get(token)
    if ob is None:
        hist = bar_history.get(token)
        ob = _open[token] = OpenBar(hist["last_start"] if hist else None, event.message.tp if event else None)
    closed_minute = minute_close(ob, tick)
    if closed_minute is not None:
        _minutes.append(closed_minute)
    if ob.last_closed is not None and bar_start(tick.timestamp, length_ms) <= ob.last_closed:
        # A bar already closed and stored: a late tick, or a replay after restart.
        LATE_EVENTS.labels("trading").inc()
        return None, [event]
    notional = tick.price * (tick.size or 0.0)
    bar, closed, late = apply_tick(ob.bar, tick.timestamp, tick.price, notional, length_ms)
    if late:
        LATE_EVENTS.labels("trading").inc()
        return None, [event]
    ob.bar = bar
    if closed is None:
        ob.events.append(event)
        return None, []
    signal = close_bar(token, closed, length_ms, tick)
    done, ob.events = ob.events, [event]
    ob.last_closed = closed.start_ms
    return signal, done


@app.agent(TOPICS["price.ticks"], name="trading")
async def trading(stream):
    length_ms = int(settings.bar_seconds * 1000)
    ind.compute([1.0] * 60)  # JIT-compiles pandas-ta's numba kernels now, not at the first bar close
    async for event in stream.noack().events():
        t0 = time.perf_counter()
        try:
            tick = decode_event(event.value, (PriceTick,))
            if event.key is not None and event.key != tick.token.encode():
                raise EventError(f"message key {event.key!r} does not match token {tick.token!r}")
        except EventError as exc:
            await dead_letter(event.message, exc.reason, "trading")
            await stream.ack(event)
            continue
        TICKS_CONSUMED.inc()
        if tick.ingest_ms:
            _receive.observe(max(0.0, time.time() - tick.ingest_ms / 1000.0))
        signal, done = on_tick(tick, event, length_ms)
        while _minutes:
            await emit(_minutes.pop(0))
        if signal is not None:
            # Bars and indicators keep building while trading is halted; only signals stop.
            halted = halted_accounts()
            if halted:
                log.info("signal for %s suppressed: trading halted for %s", tick.token, ", ".join(halted))
            else:
                await emit(signal)
        for ev in done:
            await stream.ack(ev)
        _latency.observe(time.perf_counter() - t0)

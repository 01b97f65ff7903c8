"""Trading agent: price.tick → OHLCV bars (event time) → pandas-ta indicators → rule-based
``signal.generated``.

Per tick it only folds the tick into the open bar (O(1)); indicators run once per closed bar over
the bounded history in ``bar_history``, so per-tick cost does not grow with history.
"""

from __future__ import annotations

import time

from app.main import TOPICS, app, dead_letter, emit, settings
from app.metrics import LATE_EVENTS, PROCESSING_SECONDS, TICK_RECEIVE_SECONDS, TICKS_CONSUMED
from domain import indicators as ind
from domain import signals
from domain.bars import Bar, apply_tick
from models.events import EventError, PriceTick, SignalGenerated, decode_event, derived_id
from tables import bar_history, bars_open, indicators

AGENT = "trading.rules"
_latency = PROCESSING_SECONDS.labels("trading")
_receive = TICK_RECEIVE_SECONDS


async def on_tick(tick: PriceTick, length_ms: int) -> SignalGenerated | None:
    """Fold one tick into its token's bar; on bar close, compute indicators and return the signal
    to emit (``None`` when the bar did not close or the rules say HOLD / too weak)."""
    token = tick.token
    raw = bars_open.get(token)
    current = Bar.from_dict(raw) if raw else None
    notional = tick.price * (tick.size or 0.0)
    current, closed, late = apply_tick(current, tick.timestamp, tick.price, notional, length_ms)
    if late:
        LATE_EVENTS.labels("trading").inc()
        return None
    bars_open[token] = current.to_dict()
    if closed is None:
        return None
    hist = bar_history.get(token) or {"closes": [], "last_start": None}
    closes = hist["closes"]
    closes.append(closed.close)
    if len(closes) > settings.bar_history:
        del closes[: len(closes) - settings.bar_history]
    bar_history[token] = {"closes": closes, "last_start": closed.start_ms}
    values = ind.compute(closes)
    sig = signals.evaluate(values)
    bar_end = closed.start_ms + length_ms
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


@app.agent(TOPICS["price.ticks"], name="trading")
async def trading(stream):
    length_ms = int(settings.bar_seconds * 1000)
    async for event in stream.events():
        t0 = time.perf_counter()
        try:
            tick = decode_event(event.value, (PriceTick,))
            if event.key is not None and event.key != tick.token.encode():
                raise EventError(f"message key {event.key!r} does not match token {tick.token!r}")
        except EventError as exc:
            await dead_letter(event.message, exc.reason, "trading")
            continue
        TICKS_CONSUMED.inc()
        if tick.ingest_ms:
            _receive.observe(max(0.0, time.time() - tick.ingest_ms / 1000.0))
        signal = await on_tick(tick, length_ms)
        if signal is not None:
            await emit(signal)
        _latency.observe(time.perf_counter() - t0)

"""Trading agent: the Faust runtime of :class:`processors.trading.TradingProcessor` on
``price.ticks``.

A tick is acked only once the bar holding it has closed and been stored, so the committed offset
never passes a tick of an open bar; after a crash or a rebalance the worker that owns the
partition replays from that offset and the processor rebuilds the open bar exactly.
"""

from __future__ import annotations

import time

from app.main import TOPICS, app, dead_letter, decode_checked, emit
from app.runtime import trading as processor
from core.metrics import LATE_EVENTS, PROCESSING_SECONDS, TICK_RECEIVE_SECONDS, TICKS_CONSUMED
from domain import indicators as ind
from models.events import EventError, PriceTick
from processors.trading import CLOSED, DROP

_latency = PROCESSING_SECONDS.labels("trading")
_late = LATE_EVENTS.labels("trading")


@app.agent(TOPICS["price.ticks"], name="trading")
async def trading(stream):
    ind.compute([1.0] * 60)  # JIT-compiles pandas-ta's numba kernels now, not in a view or a test
    held: dict[str, list] = {}  # token -> unacked events of its open bar
    async for event in stream.noack().events():
        t0 = time.perf_counter()
        try:
            tick = decode_checked(event.value, (PriceTick,), event.key)
        except EventError as exc:
            await dead_letter(event.message, exc.reason, "trading")
            await stream.ack(event)
            continue
        TICKS_CONSUMED.inc()
        if tick.ingest_ms:
            TICK_RECEIVE_SECONDS.observe(max(0.0, time.time() - tick.ingest_ms / 1000.0))
        late = processor.late
        outs, verdict = processor.on_tick(tick, event.message.tp)
        for out in outs:
            await emit(out)
        if processor.late != late:
            _late.inc(processor.late - late)
        if verdict == DROP:
            await stream.ack(event)
        elif verdict == CLOSED:
            done, held[tick.token] = held.get(tick.token, []), [event]
            for ev in done:
                await stream.ack(ev)
        else:
            held.setdefault(tick.token, []).append(event)
        _latency.observe(time.perf_counter() - t0)

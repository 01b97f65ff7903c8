"""Risk agents: the Faust runtime of :class:`processors.risk.RiskProcessor` (``risk`` on
``price.ticks``, ``cascade`` on ``liquidation.events``) and :class:`processors.risk.HaltProcessor`
(``halt`` on ``risk.alerts``).

Invalid ticks are sent to the dead letters by the trading agent, which reads the same topic; here
they are skipped.
"""

from __future__ import annotations

import time

from app.main import TOPICS, app, decode_checked, emit, valid_events
from app.runtime import halt as halt_processor
from app.runtime import risk as processor
from app.sla import sla
from core.metrics import AGENT_EVENTS, LATE_EVENTS, PROCESSING_SECONDS
from models.events import EventError, LiquidationEvent, PriceTick, RiskEvent

_latency = PROCESSING_SECONDS.labels("risk")
_late = LATE_EVENTS.labels("risk")


@app.agent(TOPICS["price.ticks"], name="risk")
async def risk(stream):
    received = AGENT_EVENTS.labels("risk", "in")
    async for event in stream.events():
        t0 = time.perf_counter()
        received.inc()
        try:
            tick = decode_checked(event.value, (PriceTick,), event.key)
        except EventError:
            continue  # the trading agent dead-letters it (the same checks)
        late = processor.late
        for out in processor.on_tick(tick):
            await emit(out)
            if out.event_type == "risk.alert" and tick.ingest_ms:
                sla.observe("tick_to_risk_alert", time.time() * 1000.0 - tick.ingest_ms)
        if processor.late != late:
            _late.inc(processor.late - late)
        _latency.observe(time.perf_counter() - t0)


@app.agent(TOPICS["liquidation.events"], name="cascade")
async def cascade(stream):
    async for _event, ev in valid_events(stream, (LiquidationEvent,), "cascade"):
        for out in processor.on_liquidation(ev):
            await emit(out)


@app.agent(TOPICS["risk.alerts"], name="halt")
async def halt_agent(stream):
    async for _event, ev in valid_events(stream, (RiskEvent,), "halt"):
        halt_processor.apply(ev)

"""Risk agents: the Faust runtime of :class:`processors.risk.RiskProcessor` on
``liquidation.events`` (``cascade``) and of :class:`processors.risk.HaltProcessor` on
``risk.alerts`` (``halt``, which also hands alerts to the Discord notifier: one reader per
topic, see :mod:`streams.ticks`; an event for an account outside ACCOUNT/ACCOUNTS goes to the
dead letters). The risk processor's per-tick work runs in the tick stream
(:mod:`streams.ticks`), on the same decoded tick as the trading processor.
"""

from __future__ import annotations

from app.main import TOPICS, app, dead_letter, emit, settings, survive, valid_events
from app.runtime import halt as halt_processor
from app.runtime import risk as processor
from models.events import LiquidationEvent, RiskEvent
from streams.notifier import NOTIFIED, notifier


@app.agent(TOPICS["liquidation.events"], name="cascade")
async def cascade(stream):
    async for event, ev in valid_events(stream, (LiquidationEvent,), "cascade"):
        async with survive("cascade", event, ev):
            for out in processor.on_liquidation(ev):
                await emit(out)


@app.agent(TOPICS["risk.alerts"], name="halt")
async def halt_agent(stream):
    known = settings.known_accounts()
    async for event, ev in valid_events(stream, (RiskEvent,), "halt"):
        if ev.account not in known:  # written to the bus by someone else: it must not halt trading
            await dead_letter(event.message, f"unknown account {ev.account!r} (ACCOUNT, ACCOUNTS)", "halt")
            continue
        async with survive("halt", event, ev):
            halt_processor.apply(ev)
            n = await notifier()
            if n is not None and ev.event_type in NOTIFIED:
                n.notify(ev)

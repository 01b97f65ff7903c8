"""Execution engine: the Faust runtime of :class:`processors.execution.ExecutionProcessor`.

Approvals are keyed by token, so ``route_approvals`` re-keys them by account onto the internal
``execution.requests`` topic; force-close requests arrive on ``orders`` (keyed by account). The
engine reads both topics (5 partitions each, co-partitioned with the account's ``portfolio`` and
``execution_state`` tables) and ignores its own ``trade.placed``/``rejected``.
"""

from __future__ import annotations

import time

from app.main import OUTPUTS, TOPIC_SPECS, TOPICS, app, emit, settings, valid_events
from app.runtime import execution as processor
from app.sla import sla
from core.metrics import PROCESSING_SECONDS
from models.events import ConsensusDecision, OrderEvent

_latency = PROCESSING_SECONDS.labels("execution")

#: The engine's input: re-keyed approvals and the orders topic (for trade.force_close).
EXECUTION_INPUT = app.topic(settings.topic("execution.requests"), settings.topic("orders"),
                            partitions=5, retention=TOPIC_SPECS["orders"].retention, internal=True,
                            key_type=bytes, value_type=bytes)


@app.agent(TOPICS["consensus"], name="route_approvals")
async def route_approvals(stream):
    async for event, decision in valid_events(stream, (ConsensusDecision,), "route_approvals"):
        if decision.event_type == "trade.consensus_approved":
            await OUTPUTS["execution.requests"].send(key=settings.account.encode(), value=event.value)


@app.agent(EXECUTION_INPUT, name="execution")
async def execution(stream):
    async for event, req in valid_events(stream, (ConsensusDecision, OrderEvent), "execution"):
        t0 = time.perf_counter()
        account = event.key.decode() if event.key else None
        for out in await processor.process(req, event.message.partition, account=account):
            await emit(out)
            if out.event_type == "trade.placed" and event.message.timestamp:
                # from the approving decision's (or force-close request's) produce time
                sla.observe("signal_to_order", max(0.0, time.time() - event.message.timestamp) * 1000.0)
        _latency.observe(time.perf_counter() - t0)

"""Consensus agent: the Faust runtime of :class:`processors.consensus.ConsensusProcessor` on
``signal.generated`` (stream time per input partition). A signal's window changes are written to
the table only once the broker has acknowledged the decisions they go with (:func:`app.main.holding`),
so a worker killed in between replays the signal and decides again under the same id.

An approval goes to the execution engine in the same step when this worker owns the account
(:func:`streams.execution.execute_now`): the engine's events are among those the window waits
for, so a replayed signal re-decides and the engine answers the approval as it did. Otherwise it
is sent to ``execution.requests``, keyed by the account, for the worker that owns it. Either way
no Kafka hop sits between the decision and the order but the one to the account's owner."""

from __future__ import annotations

import logging
import time

from app.main import OUTPUTS, TOPICS, app, dead_letter, emit, encode_event, holding, settings, survive, valid_events
from app.runtime import CONSENSUS_STORES
from app.runtime import consensus as processor
from core.metrics import LATE_EVENTS, PROCESSING_SECONDS, TICK_TO_DECISION_SECONDS
from models.events import SignalError, SignalGenerated
from streams.execution import execute_now, report

log = logging.getLogger("moondev.consensus")
_latency = PROCESSING_SECONDS.labels("consensus")
_late = LATE_EVENTS.labels("consensus")


@app.agent(TOPICS["signal.generated"], name="consensus")
async def consensus(stream):
    async for event, sig in valid_events(stream, (SignalGenerated, SignalError), "consensus"):
        async with survive("consensus", event, sig):
            t0 = time.perf_counter()
            if event.key is not None and event.key != sig.token.encode():
                await dead_letter(event.message, f"message key {event.key!r} does not match token {sig.token!r}",
                                  "consensus")
                continue
            late = processor.late
            # A window's decision is stored only once it is in Kafka (processors.base.WriteBehind).
            async with holding(CONSENSUS_STORES) as pending:
                for decision in processor.process(sig, event.message.partition):
                    # caused by the signal, as emit would stamp it: the engine gets the bytes sent
                    decision = decision.model_copy(update={"causation_id": decision.causation_id or sig.event_id})
                    pending.append(await emit(decision))
                    if decision.event_type == "trade.consensus_approved":
                        log.info("decision %s approved: %s %s score %.1f confidence %s, agents %s",
                                 decision.event_id, decision.recommended_action, decision.token,
                                 decision.consensus_score, decision.confidence, ",".join(decision.contributing_agents))
                        done = await execute_now(decision)
                        if done is None:  # another worker owns the account
                            pending.append(await OUTPUTS["execution.requests"].send(
                                key=settings.account.encode(), value=encode_event(decision)))
                        for out in done or ():
                            pending.append(await emit(out))
                            report(out, event.message.timestamp)
                    if decision.ingest_ms:
                        TICK_TO_DECISION_SECONDS.observe(max(0.0, time.time() - decision.ingest_ms / 1000.0))
            if processor.late != late:
                _late.inc(processor.late - late)
            _latency.observe(time.perf_counter() - t0)

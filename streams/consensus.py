"""Consensus agent: the Faust runtime of :class:`processors.consensus.ConsensusProcessor` on
``signal.generated`` (stream time per input partition). A signal's window changes are written to
the table only once the broker has acknowledged the decisions they go with (:func:`app.main.holding`),
so a worker killed in between replays the signal and decides again under the same id.

A signal a worker's own tick step produced does not wait for the hop through Kafka: when this
worker owns the token's partition of ``signal.generated``, the tick step runs the consensus on it
at once (:func:`consensus_now`), as the agent would have on reading it there, and the agent drops
the copy it reads later (the processor remembers the signals it took). Signals of other producers
(sentiment, the LLM advisor, another worker's tick step) come through the agent. The shortcut is
taken only once the agent has read what the partition held before the signal
(:class:`app.kafka.InputOrder`): after a rebalance, signals another worker's tick step sent are
still to be read, and a later signal put through first would decide windows on another order.

An approval goes to the execution engine in the same step when this worker owns the account
(:func:`streams.execution.execute_now`): the engine's events are among those the window waits
for, so a replayed signal re-decides and the engine answers the approval as it did. Otherwise it
is sent to ``execution.requests``, keyed by the account, for the worker that owns it. So when one
worker owns a token's signals and the account, a tick that closes a bar on which the rules hold
gets its fill in the same step."""

from __future__ import annotations

import asyncio
import logging
import time

import faust
from faust.types import TP

from app.main import (OUTPUTS, TOPICS, app, dead_letter, emit, encode_event, holding, owned_partition, report_error,
                      run_as_read, settings, survive, valid_events)
from app.runtime import CONSENSUS_STORES
from app.runtime import consensus as processor
from core.metrics import LATE_EVENTS, PROCESSING_SECONDS, TICK_TO_DECISION_SECONDS
from models.events import SignalError, SignalGenerated
from streams.execution import REQUESTS_TOPIC, execute_now, noted_for_engine, report

log = logging.getLogger("moondev.consensus")
_latency = PROCESSING_SECONDS.labels("consensus")
_now_latency = PROCESSING_SECONDS.labels("consensus.now")
#: a step's wait for the broker to acknowledge its decisions (and orders) before its window is stored
_acks = PROCESSING_SECONDS.labels("consensus.acks")
_late = LATE_EVENTS.labels("consensus")
SIGNALS_TOPIC = settings.topic("signal.generated")
app.input_order.watch(SIGNALS_TOPIC)

#: One consensus step at a time in a worker: the agent's and the tick step's share the processor's
#: held window writes (CONSENSUS_STORES), which a step flushes under its own event.
_steps = asyncio.Lock()


@app.agent(TOPICS["signal.generated"], name="consensus")
async def consensus(stream):
    async for event, sig in valid_events(stream, (SignalGenerated, SignalError), "consensus"):
        try:
            async with survive("consensus", event, sig):
                t0 = time.perf_counter()
                if event.key is not None and event.key != sig.token.encode():
                    await dead_letter(event.message, f"message key {event.key!r} does not match token {sig.token!r}",
                                      "consensus")
                    continue
                async with _steps:
                    await _step(sig, event.message.partition, event.message.timestamp)
                _latency.observe(time.perf_counter() - t0)
        finally:
            app.input_order.read(event.message.tp, event.message.offset)


async def consensus_now(sig: SignalGenerated, sent=None) -> bool:
    """Run the consensus on ``sig``, a signal the caller has just sent to ``signal.generated``
    (``sent``: that send's pending acknowledgement), in the caller's step when this worker owns the
    token's partition there and the agent has read what the partition held before it
    (:class:`app.kafka.InputOrder`); the window's table writes go to that partition, as if the
    agent had read the signal. Returns False (nothing done) otherwise: the signal takes the normal
    path. An exception is reported as the consensus agent's (``agent.error`` and a dead letter of
    the signal), not the caller's."""
    partition = owned_partition(SIGNALS_TOPIC, sig.token.encode())
    if partition is None:
        return False
    t0 = time.perf_counter()
    value = encode_event(sig)
    produced_s = time.time()
    tp = TP(SIGNALS_TOPIC, partition)

    async def step() -> bool:
        async with _steps:  # the agent's step that would make the partition ready holds it
            if not app.input_order.ready(tp):
                app.input_order.sent(tp, sent)  # the agent reads it in log order
                return False
            try:
                await _step(sig, partition, produced_s)
            except Exception as exc:  # noqa: BLE001 - as survive would for the agent
                await report_error("consensus", faust.current_event().message, exc, sig)
            return True

    taken = await run_as_read(SIGNALS_TOPIC, partition, sig.token.encode(), value, ("consensus", sig), step)
    if taken:
        _now_latency.observe(time.perf_counter() - t0)
    return taken


async def _step(sig, partition: int, produced_s: float) -> None:
    """One signal through the consensus, its decisions sent and approvals executed; the window's
    writes are made once all of that is in Kafka. ``produced_s``: when the signal was sent (s since
    the epoch), for the signal-to-order SLA. The caller holds ``_steps``."""
    late = processor.late
    # A window's decision is stored only once it is in Kafka (processors.base.WriteBehind).
    async with holding(CONSENSUS_STORES, _acks) as pending:
        for decision in processor.process(sig, partition):
            # caused by the signal, as emit would stamp it: the engine gets the bytes sent
            decision = decision.model_copy(update={"causation_id": decision.causation_id or sig.event_id})
            pending.append(await emit(decision))
            if decision.event_type == "trade.consensus_approved":
                log.info("decision %s approved: %s %s score %.1f confidence %s, agents %s",
                         decision.event_id, decision.recommended_action, decision.token,
                         decision.consensus_score, decision.confidence, ",".join(decision.contributing_agents))
                done = await execute_now(decision)
                if done is None:  # another worker owns the account, or its engine has more to read
                    sent = await OUTPUTS["execution.requests"].send(key=settings.account.encode(),
                                                                   value=encode_event(decision))
                    noted_for_engine(REQUESTS_TOPIC, settings.account, sent)
                    pending.append(sent)
                for out in done or ():
                    pending.append(await emit(out))
                    report(out, produced_s)
            if decision.ingest_ms:
                TICK_TO_DECISION_SECONDS.observe(max(0.0, time.time() - decision.ingest_ms / 1000.0))
    if processor.late != late:
        _late.inc(processor.late - late)

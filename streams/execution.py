"""Execution engine: the Faust runtime of :class:`processors.execution.ExecutionProcessor`.

The engine reads approvals from the internal ``execution.requests`` topic (keyed by account) and
force-close requests from ``orders`` (keyed by account): 5 partitions each, co-partitioned with
the account's ``portfolio`` and ``execution_state`` tables. It ignores its own
``trade.placed``/``rejected``.

In the same step (:func:`execute_now`): when the consensus agent approves a decision, or the risk
processor asks for a force-close on a tick, and this worker owns the account's partition of the
engine's input, the caller runs the engine on the command at once instead of sending it through
Kafka to come back. The engine's table writes go to the account's partition, exactly as if the
command had been read from the engine's input. A force-close request is still sent to ``orders``
(the log keeps the command, and a worker that does not own the account reads it there); when the
engine reads it there it drops it (the processor remembers the requests it answered since start),
and after a restart it finds the request answered and sends the same outcome again. An
approval executed in the consensus step is not sent to ``execution.requests`` at all: the
consensus window that decided it is stored only once the decision and the engine's events are in
Kafka, so a worker killed before that decides again on the replayed signal, and the engine answers
that approval as it did (:mod:`processors.execution`). An approval for an account another worker
owns goes to ``execution.requests``. The processor serializes the paths per account. Either
shortcut is taken only once the engine has read what its input partitions held before
(:class:`app.kafka.InputOrder`): after a rebalance, approvals another worker's consensus sent are
still to be read, and a later approval executed first would size its order on another portfolio.

Reconciliation at start (:func:`_reconcile_on_start`): once the worker's tables are recovered,
the engine compares the venue's open positions with the portfolio of every account whose
partition this worker owns, and reports a difference as a ``risk.alert`` (``position_mismatch``)
before any tick or order arrives. An account this worker comes to own later, or whose venue did
not answer, is compared at its first order.
"""

from __future__ import annotations

import asyncio
import logging
import time

from faust.types import TP

from app.main import app, dead_letter, emit, encode_event, owned_partition, run_as_read, settings, survive, valid_events
from app.runtime import execution as processor
from app.sla import sla
from core.metrics import PROCESSING_SECONDS
from models.events import ConsensusDecision, OrderEvent

log = logging.getLogger("moondev.execution")

_latency = PROCESSING_SECONDS.labels("execution")
_fast_latency = {"trade.force_close": PROCESSING_SECONDS.labels("execution.force_close_now"),
                 "trade.consensus_approved": PROCESSING_SECONDS.labels("execution.approval_now")}
ORDERS_TOPIC = settings.topic("orders")
REQUESTS_TOPIC = settings.topic("execution.requests")
app.input_order.watch(ORDERS_TOPIC, REQUESTS_TOPIC)

#: The engine's input: approvals keyed by account and the orders topic (for trade.force_close).
#: Declared with the catalogue's settings (replicas, min.insync.replicas); one retention for both:
#: the longer of theirs.
EXECUTION_INPUT = app.topic(settings.topic("execution.requests"), settings.topic("orders"),
                            partitions=5, internal=True, key_type=bytes, value_type=bytes,
                            retention=max(settings.topic_retention("orders"),
                                          settings.topic_retention("execution.requests")),
                            replicas=settings.topic_replication_factor, config=settings.topic_configs())


@app.agent(EXECUTION_INPUT, name="execution")
async def execution(stream):
    known = settings.known_accounts()
    async for event, req in valid_events(stream, (ConsensusDecision, OrderEvent), "execution"):
        # the key names the account of an approval; an order event's own account was checked
        # against its key: either must be one this deployment trades
        account = (event.key or settings.account.encode()).decode("utf-8", "replace")
        try:
            if account not in known or getattr(req, "account", account) not in known:
                await dead_letter(event.message, f"unknown account {account!r} (ACCOUNT, ACCOUNTS)", "execution")
                continue
            async with survive("execution", event, req):
                t0 = time.perf_counter()
                for out in await processor.process(req, event.message.partition, account=account):
                    await emit(out)
                    report(out, event.message.timestamp)
                _latency.observe(time.perf_counter() - t0)
        finally:
            app.input_order.read(event.message.tp, event.message.offset)


def report(out, produced_s: float | None) -> None:
    """Log a fill, and observe ``signal_to_order`` for a placed order from ``produced_s`` (s since
    the epoch: the produce time of the approving decision, of the signal that completed it when
    the consensus step executes it, or of the force-close request)."""
    if out.event_type == "trade.executed":
        log.info("fill %s: %s %s %s at %s USD (fee %s USD)", out.client_order_id, out.account, out.side,
                 out.filled_amount, out.fill_price, out.fee)
    elif out.event_type == "trade.placed" and produced_s:
        sla.observe("signal_to_order", max(0.0, time.time() - produced_s) * 1000.0)


@app.task
async def _reconcile_on_start() -> None:
    while not app.tables.actives_ready:  # the portfolio table is recovered from its changelog first
        await asyncio.sleep(0.5)
    for account in sorted(settings.known_accounts()):
        if _owned_partition(account) is None:
            continue  # another worker's, which compares it
        try:
            for out in await processor.reconcile_now(account, int(time.time() * 1000)):
                await emit(out)
        except Exception:  # noqa: BLE001 - the account's first order compares again
            log.exception("reconciliation of %s at start failed", account)


def _owned_partition(account: str) -> int | None:
    """The partition of the engine's input (and of the account's tables) that holds ``account``,
    if this worker is assigned it now; else None."""
    return owned_partition(ORDERS_TOPIC, account.encode())


async def execute_now(command: OrderEvent | ConsensusDecision, account: str | None = None) -> list | None:
    """Run the engine on a ``trade.force_close`` request or a ``trade.consensus_approved``
    decision (for ``account``, the configured one by default) in the caller's step when this
    worker owns the account's partition and the engine has read what that partition of its input
    held before (:class:`app.kafka.InputOrder`); returns the events to emit after the command, or
    None when the command must take the normal path (the caller then sends it and hands the send
    to :func:`noted_for_engine`): also for an account outside ACCOUNT and ACCOUNTS, which the
    engine's agent refuses, so that a worker that owns the account's partition does not trade one
    that a worker without it would not."""
    account = getattr(command, "account", None) or account or settings.account
    if account not in settings.known_accounts():
        return None  # the engine's agent dead-letters it, as it does any command for such an account
    partition = _owned_partition(account)
    if partition is None or not app.input_order.ready(TP(REQUESTS_TOPIC, partition), TP(ORDERS_TOPIC, partition)):
        return None
    t0 = time.perf_counter()
    topic = ORDERS_TOPIC if isinstance(command, OrderEvent) else REQUESTS_TOPIC
    # the engine's table writes go to the account's partition, as if it had read the command
    out = await run_as_read(topic, partition, account.encode(), encode_event(command), ("execution", command),
                            lambda: processor.process(command, partition, account=account))
    _fast_latency[command.event_type].observe(time.perf_counter() - t0)
    # caused by the command, as when the engine reads it from its input (emitted by the caller)
    return [e if e.causation_id is not None else e.model_copy(update={"causation_id": command.event_id})
            for e in out or ()]


async def force_close_now(request: OrderEvent, sent=None) -> list | None:
    """:func:`execute_now` for a ``trade.force_close`` (the tick stream's), which the caller has
    sent to ``orders`` (``sent``: that send's pending acknowledgement)."""
    done = await execute_now(request)
    if done is None:
        noted_for_engine(ORDERS_TOPIC, request.account, sent)
    return done


def noted_for_engine(topic: str, account: str, sent) -> None:
    """A command for ``account`` sent to the engine's input ``topic`` (full name; ``sent``: the
    send's pending acknowledgement) instead of run in the step: when this worker owns that
    partition, no later command may skip the engine's path before the engine has read this one."""
    partition = owned_partition(topic, account.encode())
    if partition is not None:
        app.input_order.sent(TP(topic, partition), sent)

"""Event-store sink: every event of every topic → PostgreSQL, in batches, off the agents' path.

The sink is not a Faust agent: Faust hands each message of a topic to every agent reading it, so a
sink agent per topic doubled the dispatches of every event on the live path. It is one plain
aiokafka consumer per worker in its own consumer group (``<APP_ID>-event-store``), subscribed to
every stored topic, so replicas share the partitions and the agents' offsets are not tied to it.

Loop: ``getmany`` until SINK_BATCH_SIZE events or SINK_BATCH_SECONDS since the batch's first
event; validate each event (event-time bounds included, so no row outside them reaches the
store); write the rows in one transaction through COPY (:meth:`store.eventstore.EventStore.write`,
idempotent on (timestamp, ``event_id``)); then commit the batch's offsets. Offsets never pass an
event that is not durable, and a batch redelivered after a crash or a rebalance is stored once.

While PostgreSQL is unreachable the batch is retried with exponential backoff (0.1 s doubling to
10 s, with jitter so replicas do not retry in lockstep) and nothing more is read: the backlog
waits in Kafka, not in memory, while the agents keep trading.

Invalid messages of topics no agent validates are sent to the dead letters here; on the others an
agent already does.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import time

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError

from app.main import TOPICS, aiokafka_connection, app, dead_letter, decode_checked, settings
from app.sla import sla
from core.metrics import SINK_BATCH_ROWS, SINK_BATCH_SECONDS, SINK_ERRORS, SINK_LAG, SINK_ROWS
from models.events import EventError
from store.eventstore import EventStore, Row

log = logging.getLogger(__name__)

store = EventStore(settings.database_url)

#: Topics whose invalid messages an agent already sends to the dead letters.
VALIDATED_ELSEWHERE = {"price.ticks", "signal.generated", "consensus", "trade.executed", "sentiment.updates",
                       "liquidation.events", "risk.alerts"}
#: Internal topics that carry copies of events stored from their own topic.
NOT_STORED = {"execution.requests"}
#: Stored topics: Kafka topic name (with TOPIC_PREFIX) -> catalogue name.
STORED = {settings.topic(name): name for name in TOPICS if name not in NOT_STORED}


def to_row(value: bytes) -> Row:
    """Validate one message and make its row; raises :class:`EventError`."""
    event = decode_checked(value)
    return Row(event.event_id, event.event_type, event.timestamp, event.token,
               value.decode() if isinstance(value, bytes) else value, event.source)


async def write_with_retry(rows: list[Row], per_topic: collections.Counter) -> None:
    """Write ``rows`` in one transaction, retrying any database error with backoff until it
    succeeds (cancellation aside); ``per_topic`` counts the rows by topic for the metrics."""
    delay = 0.1
    while True:
        t0 = time.perf_counter()
        try:
            await store.write(rows)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any database failure is retried
            SINK_ERRORS.inc()
            wait = delay * random.uniform(0.5, 1.0)
            log.warning("event store write of %d rows failed (%s: %s); retrying in %.1f s",
                        len(rows), type(exc).__name__, exc, wait)
            await asyncio.sleep(wait)
            delay = min(delay * 2, 10.0)
            continue
        dt = time.perf_counter() - t0
        SINK_BATCH_SECONDS.observe(dt)
        SINK_BATCH_ROWS.observe(len(rows))
        sla.observe("event_store_insert", dt * 1000.0)
        for name, n in per_topic.items():
            SINK_ROWS.labels(name).inc(n)
        return


async def _batch(consumer: AIOKafkaConsumer) -> list:
    """The next batch of records: up to SINK_BATCH_SIZE, gathered for at most SINK_BATCH_SECONDS
    after the first."""
    size, within = settings.sink_batch_size, settings.sink_batch_seconds
    records: list = []
    deadline = None
    while len(records) < size:
        timeout = 1.0 if deadline is None else deadline - time.monotonic()
        if deadline is not None and timeout <= 0:
            break
        got = await consumer.getmany(timeout_ms=int(timeout * 1000), max_records=size - len(records))
        for msgs in got.values():
            records.extend(msgs)
        if records and deadline is None:
            deadline = time.monotonic() + within
    return records


async def _rows(records: list) -> tuple[list[Row], collections.Counter]:
    rows: list[Row] = []
    per_topic: collections.Counter = collections.Counter()
    for rec in records:
        name = STORED[rec.topic]
        try:
            rows.append(to_row(rec.value))
            per_topic[name] += 1
        except EventError as exc:
            if name == "dead.letters":  # never dead-letter a dead letter (no loops)
                log.error("invalid message on the dead-letter topic skipped: %s", exc.reason)
            elif name not in VALIDATED_ELSEWHERE:
                await dead_letter(rec, exc.reason, f"sink.{name}", timestamp_ms=rec.timestamp or 0)
    return rows, per_topic


def _update_lag(consumer: AIOKafkaConsumer, positions: dict) -> None:
    """``positions``: partition -> offset after the last record read from it."""
    lag: collections.Counter = collections.Counter({name: 0 for name in STORED.values()})
    for tp in consumer.assignment():
        hw = consumer.highwater(tp)
        if hw is not None and tp in positions:
            lag[STORED[tp.topic]] += max(0, hw - positions[tp])
    for name, n in lag.items():
        SINK_LAG.labels(name).set(n)


#: Set once this worker has created or checked the event-store schema (``/health/`` waits for it).
schema_ready = asyncio.Event()


async def run_sink() -> None:
    """Consume every stored topic and write it to the event store until cancelled."""
    await schema_ready.wait()
    delay = 0.5
    while True:  # the broker may not be up yet
        consumer = AIOKafkaConsumer(
            *STORED, group_id=f"{settings.app_id}-event-store", enable_auto_commit=False,
            auto_offset_reset="earliest", max_poll_records=settings.sink_batch_size,
            metadata_max_age_ms=5_000, client_id=f"{settings.app_id}-event-store", **aiokafka_connection())
        try:
            await consumer.start()
            break
        except KafkaError as exc:
            log.warning("event-store sink cannot reach the broker (%s); retrying in %.1f s", exc, delay)
            await consumer.stop()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
    positions: dict = {}
    try:
        while True:
            records = await _batch(consumer)
            if not records:
                continue
            rows, per_topic = await _rows(records)
            if rows:
                await write_with_retry(rows, per_topic)
            try:
                await consumer.commit()
            except CommitFailedError as exc:
                # A rebalance took the partitions while the batch was written: the new owner
                # re-reads it from the last commit, and the store keeps each event once.
                log.warning("event-store sink offsets not committed (%s); the batch will be re-read", exc)
            for rec in records:
                positions[TopicPartition(rec.topic, rec.partition)] = rec.offset + 1
            _update_lag(consumer, positions)
    finally:
        await consumer.stop()


if settings.store_events:
    app.task(run_sink)


@app.task
async def migrate_on_start() -> None:
    """Create the schema when the worker starts (retrying while the database is unreachable)."""
    delay = 0.5
    while True:
        try:
            version = await store.migrate(settings.store_compress_after_days, settings.store_retention_days)
            log.info("event store ready (schema version %d)", version)
            schema_ready.set()
            return
        except Exception as exc:  # noqa: BLE001
            log.warning("event store not reachable (%s: %s); retrying in %.1f s", type(exc).__name__, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

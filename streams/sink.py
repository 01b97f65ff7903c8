"""Event-store sink: every event of every SPEC §3 topic → PostgreSQL, in batches.

One agent per topic reads with ``noack_take`` (batches of SINK_BATCH_SIZE or SINK_BATCH_SECONDS)
and acks the batch's events only after its rows are committed, so Kafka offsets never pass an
event that is not durable. When PostgreSQL is unreachable the batches queue up (up to
SINK_MAX_PENDING_EVENTS) and are retried with exponential backoff (capped at 10 s) while the
rest of the pipeline keeps trading; inserts are idempotent on (timestamp, ``event_id``), so a
batch redelivered after a crash is stored once.

Topics that no other agent validates (no agent reads them yet) have their invalid messages sent
to the dead letters here.
"""

from __future__ import annotations

import asyncio
import logging
import time

from app.main import TOPICS, app, dead_letter, decode_checked, settings
from core.metrics import SINK_BATCH_ROWS, SINK_BATCH_SECONDS, SINK_ERRORS, SINK_ROWS
from app.sla import sla
from models.events import EventError
from store.eventstore import UNAVAILABLE, EventStore, Row

log = logging.getLogger(__name__)

store = EventStore(settings.database_url)

#: Topics whose invalid messages another agent already sends to the dead letters.
VALIDATED_ELSEWHERE = {"price.ticks", "signal.generated", "consensus", "trade.executed", "sentiment.updates"}
#: Internal topics that carry copies of events stored from their own topic.
NOT_STORED = {"execution.requests"}


def to_row(value: bytes) -> Row:
    """Validate one message (event-time bounds included, so no row outside them reaches the
    store) and make its row; raises :class:`EventError`."""
    event = decode_checked(value)
    return Row(event.event_id, event.event_type, event.timestamp, event.token,
               value.decode() if isinstance(value, bytes) else value, event.source)


#: Pulsed by every successful write. A sink that could not reach the database retries at once
#: when another sink's write gets through, so every topic resumes together when the database comes
#: back instead of each sleeping out up to 10 s of its own backoff.
write_succeeded = asyncio.Event()

async def _backoff(delay: float, exc: Exception) -> None:
    if not isinstance(exc, UNAVAILABLE):  # refused rows would only fail again: wait out the delay
        await asyncio.sleep(delay)
        return
    try:
        await asyncio.wait_for(write_succeeded.wait(), delay)
    except asyncio.TimeoutError:
        pass


async def write_with_retry(rows: list[Row], topic: str) -> None:
    delay = 0.1
    while True:
        t0 = time.perf_counter()
        try:
            await store.write(rows)
            write_succeeded.set()
            write_succeeded.clear()
            dt = time.perf_counter() - t0
            SINK_BATCH_SECONDS.observe(dt)
            SINK_BATCH_ROWS.observe(len(rows))
            sla.observe("event_store_insert", dt * 1000.0)
            SINK_ROWS.labels(topic).inc(len(rows))
            return
        except (OSError, asyncio.TimeoutError, Exception) as exc:  # noqa: BLE001 - any DB failure is retried
            if isinstance(exc, asyncio.CancelledError):
                raise
            SINK_ERRORS.inc()
            log.warning("event store write of %d rows from %s failed (%s: %s); retrying in %.1f s",
                        len(rows), topic, type(exc).__name__, exc, delay)
            await _backoff(delay, exc)
            delay = min(delay * 2, 10.0)


def _make_sink(name: str):
    async def sink(stream):
        # Faust hands a topic's messages to every agent reading it; an agent that stops reading
        # stalls the others. So the sink keeps reading while the database is down: batches wait
        # (unacked, so their offsets are not committed) for a writer task that stores them in
        # order, retrying with backoff, and acks them once committed. Only past
        # SINK_MAX_PENDING_EVENTS waiting does the sink stop reading (and the topic with it).
        pending: asyncio.Queue = asyncio.Queue()
        room = asyncio.Semaphore(max(1, settings.sink_max_pending_events // settings.sink_batch_size))

        async def writer() -> None:
            while True:
                rows, events = await pending.get()
                await write_with_retry(rows, name)
                for event in events:
                    await stream.ack(event)
                room.release()

        task = asyncio.ensure_future(writer())
        try:
            async for events in stream.noack_take(settings.sink_batch_size, within=settings.sink_batch_seconds):
                rows: list[Row] = []
                for event in events:
                    try:
                        rows.append(to_row(event.value))
                    except EventError as exc:
                        if name == "dead.letters":  # never dead-letter a dead letter (no loops)
                            log.error("invalid message on the dead-letter topic skipped: %s", exc.reason)
                        elif name not in VALIDATED_ELSEWHERE:
                            await dead_letter(event.message, exc.reason, f"sink.{name}")
                await room.acquire()
                pending.put_nowait((rows, events))
        finally:
            task.cancel()

    sink.__name__ = sink.__qualname__ = f"sink_{name.replace('.', '_')}"
    return app.agent(TOPICS[name], name=f"sink.{name}")(sink)


SINKS = {name: _make_sink(name) for name in TOPICS if name not in NOT_STORED} if settings.store_events else {}


#: Set once this worker has created or checked the event-store schema (``/health/`` waits for it).
schema_ready = asyncio.Event()


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

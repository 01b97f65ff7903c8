"""The event-store sink: every event of every stored topic → PostgreSQL, in batches, in a process
of its own.

The worker (:mod:`streams.sink`) starts it as ``python -m store.sink`` once the schema is in
place, restarts it if it dies and stops it with the worker. It runs in its own process so that
reading, validating and copying every event (a tick's cost of the same order as the agents' own
work on it) runs on another core instead of the worker's event loop. It imports no Faust.

One plain aiokafka consumer in its own consumer group (``<APP_ID>-event-store``), subscribed to
every stored topic, so replicas share the partitions and the agents' offsets are not tied to it.

Loop: ``getmany`` until SINK_BATCH_SIZE events or SINK_BATCH_SECONDS since the batch's first
event; validate each event (event-time bounds included, so no row outside them reaches the store);
write the rows in one transaction through COPY (:meth:`store.eventstore.EventStore.write`,
idempotent on (timestamp, ``event_id``)); then commit the batch's offsets. Offsets never pass an
event that is not durable, and a batch redelivered after a crash or a rebalance is stored once.

While PostgreSQL is unreachable the batch is retried with exponential backoff (0.1 s doubling to
10 s, with jitter so replicas do not retry in lockstep) and nothing more is read: the backlog waits
in Kafka, not in memory, while the agents keep trading.

Invalid messages of topics no agent validates are sent to the dead letters here; on the others an
agent already does.

The process reports to the worker on stdout, one JSON object a line (:class:`Report`), at least
once a second, which the worker turns into its ``moondev_sink_*`` metrics and its health; it exits
when its stdin closes, so it never outlives its worker, even one killed with SIGKILL.

A batch the store refuses for its data (:data:`store.eventstore.REFUSED`) is split to find the rows it refuses,
which go to the dead letters with the database's reason; only other errors are retried.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable

import asyncpg
import orjson
from tenacity import AsyncRetrying, retry_if_exception, retry_if_exception_type, wait_random_exponential
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError

from core.settings import Settings, get_settings
from models.events import DeadLetter, EventError, dead_letter_event, decode_checked_at, encode_event
from models.topics import TOPIC_SPECS, key_of
from store.eventstore import REFUSED, EventStore, Row

log = logging.getLogger("moondev.sink")

#: Topics whose invalid messages an agent already sends to the dead letters.
VALIDATED_ELSEWHERE = {"price.ticks", "signal.generated", "trade.executed", "sentiment.updates",
                       "liquidation.events", "risk.alerts"}
#: Internal topics that carry copies of events stored from their own topic.
NOT_STORED = {"execution.requests"}


def stored_topics(settings: Settings) -> dict[str, str]:
    """Stored topics: Kafka topic name (with TOPIC_PREFIX) -> catalogue name."""
    return {settings.topic(name): name for name in TOPIC_SPECS if name not in NOT_STORED}


class Report:
    """What the process has done since the last line it wrote: rows by topic, each batch write
    ``[rows, seconds]``, failed writes, rows the store refused (dead-lettered), dead letters by
    topic, and the lag by topic."""

    def __init__(self) -> None:
        self.rows: collections.Counter = collections.Counter()
        self.batches: list[list] = []
        self.errors = 0
        self.refused = 0
        self.dead_letters: collections.Counter = collections.Counter()
        self.lag: dict[str, int] = {}
        #: monotonic time the batch being written was read (None between batches)
        self.batch_since: float | None = None

    def line(self, heartbeat: bool = False) -> bytes | None:
        """The report line, with ``waiting_s`` (how long the batch being written has waited, 0
        between batches); None when there is nothing to say and ``heartbeat`` is false."""
        if not (heartbeat or self.rows or self.batches or self.errors or self.dead_letters or self.lag):
            return None
        waiting = time.monotonic() - self.batch_since if self.batch_since is not None else 0.0
        out = orjson.dumps({"rows": self.rows, "batches": self.batches, "errors": self.errors, "refused": self.refused,
                            "dead_letters": self.dead_letters, "lag": self.lag, "waiting_s": round(waiting, 3)}) + b"\n"
        self.rows, self.batches, self.errors, self.refused = collections.Counter(), [], 0, 0
        self.dead_letters, self.lag = collections.Counter(), {}
        return out


def rows_of(records: list, stored: dict[str, str], settings: Settings, now_ms: int | None = None
            ) -> tuple[list[Row], collections.Counter, list[DeadLetter], list]:
    """The batch step: each record's row (validated as every consumer validates it), the rows by
    topic, the dead letters of invalid records on topics no agent validates (none for the
    dead-letter topic itself: no loops), and each row's record. ``records``: aiokafka records
    (topic, partition, offset, timestamp in ms, value)."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    ahead, floor = int(settings.event_max_ahead_seconds * 1000), settings.event_time_floor_ms
    keyed_by = {name: spec.key for name, spec in TOPIC_SPECS.items()}
    rows: list[Row] = []
    per_topic: collections.Counter = collections.Counter()
    dead: list[DeadLetter] = []
    origins: list = []
    for rec in records:
        name = stored[rec.topic]
        value = rec.value
        try:
            event = decode_checked_at(value, now_ms, ahead, floor, key=getattr(rec, "key", None), keyed_by=keyed_by[name])
        except EventError as exc:
            if name == "dead.letters":
                log.error("invalid message on the dead-letter topic skipped: %s", exc.reason)
            elif name not in VALIDATED_ELSEWHERE:
                log.warning("dead letter from %s[%s]@%s: %s", rec.topic, rec.partition, rec.offset, exc.reason)
                dead.append(dead_letter_event(value or b"", exc.reason, f"sink.{name}", rec.topic, rec.partition,
                                              rec.offset, rec.timestamp or 0))
            continue
        rows.append(Row(event.event_id, event.event_type, event.timestamp, event.token,
                        value.decode() if isinstance(value, bytes) else value, event.source))
        per_topic[name] += 1
        origins.append(rec)
    return rows, per_topic, dead, origins


async def write_with_retry(store: EventStore, rows: list[Row], report: Report,
                           on_refused: Callable[[int, BaseException], Awaitable[None]] | None = None,
                           _offset: int = 0) -> None:
    """Write ``rows`` in one transaction. A database that cannot be reached (or fails for any
    reason other than the rows) is retried until it succeeds, cancellation aside, with tenacity's
    exponential backoff with full jitter (0.1 s doubling, at most 10 s: AWS's "Exponential Backoff
    And Jitter"), so replicas do not retry in lockstep. A batch refused for its data
    (:data:`store.eventstore.REFUSED`) is split in halves, each written the same way, down to the
    rows that fail alone: each of those is handed to ``on_refused(index in rows, error)`` (the
    dead letters) and skipped, so one bad row never holds the rest."""
    try:
        async for attempt in AsyncRetrying(retry=retry_if_exception(_transient), wait=wait_random_exponential(0.1, max=10.0),
                                           before_sleep=_counted(report, len(rows)), reraise=True):
            with attempt:
                t0 = time.perf_counter()
                await store.write(rows)
    except REFUSED as exc:
        report.errors += 1
        if len(rows) == 1:
            log.error("event store refused a row (%s: %s); dead-lettered", type(exc).__name__, exc)
            report.refused += 1
            if on_refused is not None:
                await on_refused(_offset, exc)
            return
        log.warning("event store refused a batch of %d rows (%s: %s); splitting it to find the bad rows",
                    len(rows), type(exc).__name__, exc)
        half = len(rows) // 2
        await write_with_retry(store, rows[:half], report, on_refused, _offset)
        await write_with_retry(store, rows[half:], report, on_refused, _offset + half)
        return
    report.batches.append([len(rows), time.perf_counter() - t0])


def _transient(exc: BaseException) -> bool:
    """Retried: any failure but the rows' own (and cancellation, which is no failure)."""
    return isinstance(exc, Exception) and not isinstance(exc, REFUSED)


def _counted(report: Report, n: int):
    def before_sleep(state) -> None:
        exc = state.outcome.exception()
        report.errors += 1
        log.warning("event store write of %d rows failed (%s: %s); retrying in %.1f s",
                    n, type(exc).__name__, exc, state.upcoming_sleep)
    return before_sleep


async def _batch(consumer: AIOKafkaConsumer, size: int, within: float) -> list:
    """The next batch of records: up to ``size``, gathered for at most ``within`` seconds after
    the first."""
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


def _lag(consumer: AIOKafkaConsumer, positions: dict, stored: dict[str, str]) -> dict[str, int]:
    """``positions``: partition -> offset after the last record read from it."""
    lag = {name: 0 for name in stored.values()}
    for tp in consumer.assignment():
        hw = consumer.highwater(tp)
        if hw is not None and tp in positions:
            lag[stored[tp.topic]] += max(0, hw - positions[tp])
    return lag


async def _start(client, what: str) -> None:
    """Start an aiokafka client, retrying while the broker is unreachable (it may not be up yet)."""
    def before_sleep(state) -> None:
        log.warning("event-store sink: %s cannot reach the broker (%s); retrying in %.1f s",
                    what, state.outcome.exception(), state.upcoming_sleep)

    async for attempt in AsyncRetrying(retry=retry_if_exception_type(KafkaError), before_sleep=before_sleep,
                                       wait=wait_random_exponential(0.5, max=10.0), reraise=True):
        with attempt:
            try:
                await client.start()
            except KafkaError:
                await client.stop()
                raise


async def run(settings: Settings, report: Report) -> None:
    """Consume every stored topic and write it to the event store until cancelled."""
    stored = stored_topics(settings)
    conn = settings.aiokafka_connection()
    store = EventStore(settings.database_url)
    consumer = AIOKafkaConsumer(
        *stored, group_id=f"{settings.app_id}-event-store", enable_auto_commit=False,
        auto_offset_reset="earliest", max_poll_records=settings.sink_batch_size,
        # The broker holds a fetch until 1 MiB or a batch's time has gathered: at a live trickle
        # a fetch answered per byte meant hundreds of round trips a second, each decoded in Python,
        # a third of a core for 1,000 ticks/s.
        fetch_min_bytes=1 << 20, fetch_max_wait_ms=max(1, int(settings.sink_batch_seconds * 1000)),
        metadata_max_age_ms=5_000, client_id=f"{settings.app_id}-event-store", **conn)
    # acks=all: a dead letter is acknowledged only once TOPIC_MIN_INSYNC_REPLICAS replicas have it
    producer = AIOKafkaProducer(client_id=f"{settings.app_id}-event-store", linger_ms=5, acks="all", **conn)
    await _start(consumer, "consumer")
    await _start(producer, "producer")
    dead_topic = settings.topic("dead.letters")
    positions: dict = {}
    try:
        while True:
            records = await _batch(consumer, settings.sink_batch_size, settings.sink_batch_seconds)
            if not records:
                continue
            report.batch_since = time.monotonic()
            rows, per_topic, dead, origins = rows_of(records, stored, settings)

            async def send_dead(dl: DeadLetter) -> None:
                await producer.send_and_wait(dead_topic, encode_event(dl), key=key_of(dl, "dead.letters"))
                report.dead_letters[dl.topic] += 1

            async def refused(i: int, exc: BaseException, origins=origins, per_topic=per_topic) -> None:
                rec = origins[i]
                per_topic[stored[rec.topic]] -= 1
                await send_dead(dead_letter_event(rec.value, f"the event store refused it: {type(exc).__name__}: {exc}",
                                                  f"sink.{stored[rec.topic]}", rec.topic, rec.partition, rec.offset,
                                                  rec.timestamp or 0))

            for dl in dead:
                await send_dead(dl)
            if rows:
                await write_with_retry(store, rows, report, refused)
                report.rows.update(+per_topic)
            try:
                await consumer.commit()
            except CommitFailedError as exc:
                # A rebalance took the partitions while the batch was written: the new owner
                # re-reads it from the last commit, and the store keeps each event once.
                log.warning("event-store sink offsets not committed (%s); the batch will be re-read", exc)
            report.batch_since = None
            for rec in records:
                positions[TopicPartition(rec.topic, rec.partition)] = rec.offset + 1
            report.lag = _lag(consumer, positions, stored)
    finally:
        await consumer.stop()
        await producer.stop()
        await store.close()


async def _report_every(report: Report, seconds: float) -> None:
    out = sys.stdout.buffer
    last = 0.0
    while True:
        await asyncio.sleep(seconds)
        now = time.monotonic()
        line = report.line(heartbeat=now - last >= 1.0)  # at least one line a second: the worker's liveness check
        if line:
            last = now
            out.write(line)
            out.flush()


async def _until_stdin_closes() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while await reader.read(4096):
        pass


async def main() -> None:
    settings = get_settings()
    if settings.sink_nice:
        # Storing is not latency-bound (batches, offsets committed after): when cores are short,
        # the scheduler serves the agents first and the backlog waits in Kafka.
        os.nice(settings.sink_nice)
    from core.redact import install_redaction
    install_redaction(settings.secrets())
    report = Report()
    tasks = [asyncio.create_task(run(settings, report)), asyncio.create_task(_until_stdin_closes()),
             asyncio.create_task(_report_every(report, 0.1))]
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, tasks[1].cancel)
    done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for t in pending:
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    line = report.line()
    if line:
        sys.stdout.buffer.write(line)
        sys.stdout.buffer.flush()
    for t in done:
        if not t.cancelled() and t.exception() is not None and t is tasks[0]:
            raise t.exception()


if __name__ == "__main__":
    handler = logging.StreamHandler(sys.stderr)
    if get_settings().log_format == "json":
        from core.logs import JsonFormatter

        handler.setFormatter(JsonFormatter(static_fields={"agent": "event-store sink"}))
    else:
        handler.setFormatter(logging.Formatter(
            "[%(asctime)s] [%(process)d] [%(levelname)s] [event-store sink] %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass

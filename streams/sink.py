"""The event-store sink's supervisor in the worker: it creates the schema, then runs the sink
(:mod:`store.sink`: every event of every stored topic → PostgreSQL in batches, exactly once in the
store) as a child process, which reads, validates and copies on a core of its own, off the
agents' event loop.

The child reports on its stdout a line at a time; this turns the lines into the
``moondev_sink_*`` metrics (rows, batch sizes and times, failed writes, lag by topic), the
``event_store_insert`` SLA and the dead-letter count. A child that exits is restarted with backoff
(0.5 s doubling to 10 s, counted in ``moondev_sink_restarts_total``); a sink whose batch has
waited more than SINK_STUCK_SECONDS, or that has not reported for that long, turns ``/health/``
red (:class:`SinkHealth`, ``moondev_sink_batch_waiting_seconds``); stopping the worker stops it
(SIGTERM, then SIGKILL after 10 s), and a worker killed outright closes the child's stdin, on
which it exits.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time

import orjson
from tenacity import AsyncRetrying, retry_if_exception_type, wait_random_exponential

from app.main import app, settings
from app.sla import sla
from core.metrics import (DEAD_LETTERS, SINK_BATCH_ROWS, SINK_BATCH_SECONDS, SINK_ERRORS, SINK_LAG, SINK_REFUSED,
                          SINK_RESTARTS, SINK_ROWS, SINK_WAITING)
from store.eventstore import EventStore

log = logging.getLogger(__name__)

store = EventStore(settings.database_url)

#: Set once this worker has created or checked the event-store schema (``/health/`` waits for it).
schema_ready = asyncio.Event()


class SinkHealth:
    """Whether the sink keeps up: stuck when the batch being written has waited longer than
    SINK_STUCK_SECONDS (a database that cannot be reached or refuses every write), or when no
    sink process has reported for that long (dead, restarting, hung)."""

    def __init__(self, stuck_after_s: float) -> None:
        self.stuck_after_s = stuck_after_s
        self.last_report: float | None = None  # counts from the first start of a sink process
        self.waiting_s = 0.0

    def reported(self, waiting_s: float) -> None:
        self.last_report, self.waiting_s = time.monotonic(), waiting_s

    def started(self) -> None:
        if self.last_report is None:
            self.last_report = time.monotonic()

    def stuck(self) -> bool:
        if self.last_report is None:
            return False  # no sink started yet: the schema is not in place, which /health/ shows
        silent = time.monotonic() - self.last_report
        return self.waiting_s > self.stuck_after_s or silent > self.stuck_after_s


health = SinkHealth(settings.sink_stuck_seconds)


def apply_report(line: bytes) -> None:
    """Turn one report line of the sink process (:class:`store.sink.Report`) into metrics."""
    rep = orjson.loads(line)
    health.reported(float(rep.get("waiting_s", 0.0)))
    SINK_WAITING.set(health.waiting_s)
    for name, n in rep.get("rows", {}).items():
        SINK_ROWS.labels(name).inc(n)
    for rows, seconds in rep.get("batches", ()):
        SINK_BATCH_ROWS.observe(rows)
        SINK_BATCH_SECONDS.observe(seconds)
        sla.observe("event_store_insert", seconds * 1000.0)
    if rep.get("errors"):
        SINK_ERRORS.inc(rep["errors"])
    if rep.get("refused"):
        SINK_REFUSED.inc(rep["refused"])
    for topic, n in rep.get("dead_letters", {}).items():
        DEAD_LETTERS.labels(topic).inc(n)
    for name, n in rep.get("lag", {}).items():
        SINK_LAG.labels(name).set(n)


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is not None:
        return
    proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), 10)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()


async def run_sink() -> None:
    """Run the sink process until cancelled, restarting it whenever it exits."""
    await schema_ready.wait()
    delay = 0.5
    while True:
        started = time.monotonic()
        health.started()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "store.sink", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        try:
            while line := await proc.stdout.readline():
                try:
                    apply_report(line)
                except (ValueError, TypeError, KeyError) as exc:
                    log.warning("event-store sink: unreadable report line %r (%s)", line[:200], exc)
            code = await proc.wait()
        except asyncio.CancelledError:
            await asyncio.shield(_stop(proc))
            raise
        if time.monotonic() - started > 60:
            delay = 0.5
        SINK_RESTARTS.inc()
        # A signal to the worker's process group (the usual way to stop a worker) reaches the sink
        # too, a moment before this task is cancelled: not an error.
        level = logging.WARNING if code in (-signal.SIGTERM, -signal.SIGINT) else logging.ERROR
        log.log(level, "event-store sink process exited with %s; restarting in %.1f s", code, delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 10.0)


if settings.store_events:
    app.task(run_sink)


@app.task
async def migrate_on_start() -> None:
    """Create the schema when the worker starts, retrying while the database is unreachable with
    tenacity's full-jitter exponential wait (up to 10 s), so replicas do not retry in lockstep."""
    def retrying(state) -> None:
        exc = state.outcome.exception()
        log.warning("event store not reachable (%s: %s); retrying in %.1f s", type(exc).__name__, exc,
                    state.next_action.sleep)

    async for attempt in AsyncRetrying(retry=retry_if_exception_type(Exception), wait=wait_random_exponential(0.5, max=10.0),
                                       before_sleep=retrying):
        with attempt:
            version = await store.migrate(settings.store_compress_after_days, settings.store_retention_days)
    log.info("event store ready (schema version %d)", version)
    schema_ready.set()

"""The sink's write step on its own (a stand-in store; the real database is in the integration
tests): rows the store refuses for their data are found by splitting the batch and handed to the
dead letters, every other row is stored, and unreachable-database errors are retried."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from store import sink
from store.eventstore import Row


class Store:
    """Refuses any batch holding a row whose data contains ``BAD`` (as PostgreSQL refuses a whole
    COPY); fails the first ``down`` writes as an unreachable server."""

    def __init__(self, down: int = 0):
        self.stored: list[Row] = []
        self.down = down
        self.calls = 0

    async def write(self, rows):
        self.calls += 1
        if self.down:
            self.down -= 1
            raise ConnectionRefusedError("connection refused")
        bad = [r for r in rows if "BAD" in r.data]
        if bad:
            raise asyncpg.DataError(f"invalid input value in {bad[0].data}")
        self.stored.extend(rows)
        return len(rows)


def rows(n, bad=()):
    return [Row(uuid.uuid4(), "price.tick", 1_723_161_280_000 + i, "BTC", "BAD" if i in bad else f'{{"i": {i}}}', "t")
            for i in range(n)]


@pytest.mark.parametrize("n, bad", [(1, {0}), (1000, {0}), (1000, {999}), (1000, {3, 500, 501, 998}), (7, set(range(7)))])
def test_refused_rows_are_isolated_and_the_rest_stored(n, bad):
    store, report, refused = Store(), sink.Report(), []

    async def on_refused(i, exc):
        assert isinstance(exc, asyncpg.DataError)
        refused.append(i)

    batch = rows(n, bad)
    asyncio.run(sink.write_with_retry(store, batch, report, on_refused))
    assert sorted(refused) == sorted(bad)
    assert [r.event_id for r in store.stored] == [r.event_id for i, r in enumerate(batch) if i not in bad]
    assert report.refused == len(bad)
    # a split costs O(bad rows x log n) writes, not one per row
    assert store.calls <= 1 + 2 * len(bad) * (n.bit_length() + 1)


def test_an_unreachable_database_is_retried_not_dead_lettered(monkeypatch):
    slept = []

    async def no_sleep(s):
        slept.append(s)

    monkeypatch.setattr(sink.asyncio, "sleep", no_sleep)
    store, report, refused = Store(down=3), sink.Report(), []

    async def on_refused(i, exc):
        refused.append(i)

    batch = rows(10)
    asyncio.run(sink.write_with_retry(store, batch, report, on_refused))
    assert refused == [] and len(store.stored) == 10 and report.errors == 3
    assert len(slept) == 3 and slept[0] <= 0.1 and slept[1] <= 0.2 and slept[2] <= 0.4  # backoff with jitter


def test_report_lines_and_stuck_health(monkeypatch):
    """The sink process's report carries how long its batch has waited; the worker's health is red
    once that, or the sink's silence, passes SINK_STUCK_SECONDS."""
    import json

    from streams import sink as supervisor

    report = sink.Report()
    assert report.line() is None and json.loads(report.line(heartbeat=True))["waiting_s"] == 0.0
    now = [1000.0]
    monkeypatch.setattr(sink.time, "monotonic", lambda: now[0])
    report.batch_since = 1000.0
    report.rows["price.ticks"] += 5
    now[0] = 1090.0
    rep = json.loads(report.line())
    assert rep["waiting_s"] == 90.0 and rep["rows"] == {"price.ticks": 5}
    assert report.line() is None  # counts reset; the batch still waits, told at the next heartbeat

    monkeypatch.setattr(supervisor.time, "monotonic", lambda: now[0])
    health = supervisor.SinkHealth(60.0)
    assert not health.stuck()  # no sink started yet
    health.started()
    health.reported(5.0)
    assert not health.stuck()
    health.reported(61.0)
    assert health.stuck()  # a batch waiting too long
    health.reported(0.0)
    now[0] += 61
    assert health.stuck()  # a silent sink

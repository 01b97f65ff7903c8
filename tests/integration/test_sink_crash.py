"""A worker killed with SIGKILL in the middle of a feed, then restarted, leaves the event store
with every event exactly once: the sink acks Kafka offsets only after its COPY batch commits, and
the insert is idempotent on (timestamp, event_id)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time

import asyncpg

from app.local import FAUST, ROOT, SAMPLE, Stack

N_SAMPLE = 35_389


async def _counts(dsn: str) -> tuple[int, int, int]:
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow("SELECT count(*) FILTER (WHERE event_type = 'price.tick') AS ticks, count(*) AS n, "
                                  "count(DISTINCT event_id) AS ids FROM events")
        return row["ticks"], row["n"], row["ids"]
    finally:
        await conn.close()


def _settled_counts(dsn: str, timeout: float = 300) -> tuple[int, int, int]:
    """The store's counts once every tick of the sample is in (or ``timeout`` s passed), 3 s later."""
    deadline = time.monotonic() + timeout
    while asyncio.run(_counts(dsn))[0] < N_SAMPLE and time.monotonic() < deadline:
        time.sleep(1)
    time.sleep(3)
    return asyncio.run(_counts(dsn))


def test_sigkill_mid_feed_then_restart_stores_every_event_once(tmp_path, fresh_database_url):
    database_url = fresh_database_url
    stack = Stack(tmp_path, database_url, BAR_SECONDS="1", CONSENSUS_MIN_AGENTS="1", STORE_URL="rocksdb://")
    w1 = stack.worker("w1").start()
    feed = subprocess.Popen([FAUST, "-A", "app", "feed", str(SAMPLE), "--speed", "20"], cwd=ROOT, env=stack.env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while asyncio.run(_counts(database_url))[0] < 5_000 and time.monotonic() < deadline:
            time.sleep(0.5)
        w1.stop(signal.SIGKILL)  # mid-feed, mid-batch
        killed_at = asyncio.run(_counts(database_url))[0]
        assert 0 < killed_at < N_SAMPLE
        w2 = stack.worker("w1")  # the same worker (same data folder) comes back
        w2.start()
        assert feed.wait(300) == 0
        ticks, n, ids = _settled_counts(database_url)
        assert ticks == N_SAMPLE, (killed_at, ticks)
        assert n == ids  # every stored event once
    finally:
        feed.kill()
        stack.stop()


# kill -9 at ten random points of a feed, against the portfolio and store of the run without it:
# tests/integration/test_faults.py::test_kill_9_at_ten_random_points_of_a_feed

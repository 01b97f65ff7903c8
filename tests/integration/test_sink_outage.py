"""PostgreSQL down while the feed runs: the live path keeps trading (fills keep coming), the sink
retries with backoff, and when the database returns every event is stored exactly once."""

from __future__ import annotations

import asyncio
import subprocess
import time
import urllib.error
import urllib.request

import asyncpg

from app.local import ROOT, SAMPLE, Stack
from backtest.runner import read_topics

N_SAMPLE = 35_389


def services(cmd: str) -> None:
    subprocess.run(["bash", str(ROOT / "scripts" / "services.sh"), cmd], check=True, timeout=120,
                   capture_output=True)


async def _counts(dsn: str) -> tuple[int, int, int, int]:
    conn = await asyncpg.connect(dsn)
    try:
        r = await conn.fetchrow(
            "SELECT count(*) FILTER (WHERE event_type = 'price.tick') AS ticks, "
            "count(*) FILTER (WHERE event_type = 'trade.executed') AS fills, count(*) AS n, "
            "count(DISTINCT event_id) AS ids FROM events")
        return r["ticks"], r["fills"], r["n"], r["ids"]
    finally:
        await conn.close()


def test_database_outage_keeps_trading_and_stores_everything_once_after(tmp_path, fresh_database_url):
    stack = Stack(tmp_path, fresh_database_url, BAR_SECONDS="1", CONSENSUS_MIN_AGENTS="1",
                  CONTROL_TOKEN="outage-token-5e0c")
    w = stack.worker("w1").start()
    prefix = stack.env["TOPIC_PREFIX"]
    try:
        services("pg-down")
        try:
            stack.feed(SAMPLE, "max")
            deadline = time.monotonic() + 120
            while w.metrics().get("moondev_ticks_consumed_total", 0) < N_SAMPLE and time.monotonic() < deadline:
                time.sleep(0.5)
            fills = [e for _, e in asyncio.run(read_topics({"bootstrap_servers": "127.0.0.1:9092"}, [prefix + "trade.executed"], 3.0))
                     if e["event_type"] == "trade.executed"]
            assert fills, "the live path trades while the database is down"
            assert w.metrics().get("moondev_sink_errors_total", 0) > 0, "the sink noticed and retried"
            try:
                urllib.request.urlopen(urllib.request.Request(w.url + "/events/?start=0&end=1", headers={
                    "Authorization": "Bearer outage-token-5e0c"}), timeout=30)
                status = 200
            except urllib.error.HTTPError as exc:
                status = exc.code
            assert status == 503, "the event store is unavailable, not broken"
        finally:
            services("pg-up")
        deadline = time.monotonic() + 180
        while asyncio.run(_counts(fresh_database_url))[0] < N_SAMPLE and time.monotonic() < deadline:
            time.sleep(1)
        time.sleep(3)
        ticks, stored_fills, n, ids = asyncio.run(_counts(fresh_database_url))
        assert ticks == N_SAMPLE and stored_fills == len(fills) and n == ids
    finally:
        stack.stop()

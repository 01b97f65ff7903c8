"""Faults in the middle of a feed, each against the same feed without the fault (one worker, the
reference):

- the Kafka broker stopped for 30 s, then started again: the feed, the worker and its event-store
  sink ride it out;
- a rolling restart of two workers under a feed of about 1,000 ticks/s, each worker's RocksDB
  folder wiped before it comes back: its tables come back from the changelogs.

Either way nothing is lost (every tick of the sample stored once), no order is placed twice, and
the portfolio ends equal to the reference's.

One token (the sample's BTC trades): with two, the order in which the engine sees the tokens'
approvals depends on how the worker interleaves their partitions, and each order is sized on the
equity the other token's fills left, so two runs of the same feed agree on every order but not to
the cent on sizes, outage or not."""

from __future__ import annotations

import asyncio
import gzip
import subprocess
import threading
import time
from pathlib import Path

import asyncpg
import pytest

from app.local import ROOT, SAMPLE, Stack, wait_until

pytestmark = pytest.mark.integration

OUTAGE_S = 30.0


@pytest.fixture(scope="module")
def btc_sample(tmp_path_factory) -> tuple[Path, int]:
    """The sample's BTC trades as a file of their own, and how many there are."""
    path = tmp_path_factory.mktemp("btc") / "binance_usdm_btcusdt_20240808.csv.gz"
    with gzip.open(SAMPLE, "rt") as src, gzip.open(path, "wt") as dst:
        header = src.readline()
        dst.write(header)
        rows = [line for line in src if ",BTCUSDT," in line]
        dst.writelines(rows)
    return path, len(rows)


def services(cmd: str) -> None:
    subprocess.run(["bash", str(ROOT / "scripts" / "services.sh"), cmd], check=True, timeout=120,
                   capture_output=True)


def settled_portfolio(worker, n: int) -> dict:
    """The portfolio once all ``n`` ticks are processed and it stays the same for 3 s."""
    wait_until(lambda: worker.metrics("moondev_ticks_consumed_total").get("moondev_ticks_consumed_total", 0)
               >= n, 300, "every tick processed", retry_on=(OSError,))

    def steady():
        before = worker.get("/portfolio/")
        time.sleep(3)
        return before if worker.get("/portfolio/") == before else None

    return wait_until(steady, 180, "the portfolio settled", retry_on=(OSError,))


def essentials(pf: dict) -> dict:
    return {"cash": round(pf["cash"], 6), "fills": pf["fills"], "realised_pnl": round(pf["realised_pnl"], 6),
            "positions": {t: round(p["size"], 9) for t, p in pf["positions"].items()}}


async def stored(dsn: str) -> dict:
    conn = await asyncpg.connect(dsn)
    try:
        r = await conn.fetchrow(
            "SELECT count(*) FILTER (WHERE event_type = 'price.tick') AS ticks, "
            "count(*) FILTER (WHERE event_type = 'trade.executed') AS fills, "
            "count(*) FILTER (WHERE event_type = 'trade.placed') AS placed, "
            "count(DISTINCT data->>'client_order_id') FILTER (WHERE event_type = 'trade.placed') AS orders "
            "FROM events")
        return dict(r)
    finally:
        await conn.close()


def assert_as_without_fault(fault: str, got: dict, expected: dict, counts: dict, n: int) -> None:
    print(f"\n{fault}: portfolio {got}; the same feed without the fault {expected}; stored {counts}")
    assert got == expected
    assert counts["ticks"] == n and counts["fills"] == got["fills"], "every tick and fill stored once"
    assert counts["placed"] == counts["orders"], "no order placed twice"


@pytest.fixture(scope="module")
def reference(btc_sample, tmp_path_factory, module_database_url) -> dict:
    """The portfolio of the feed without any fault. In a database of its own: its events have the
    ids the same ticks give in any run, and the session database's tests count what it holds."""
    sample, n = btc_sample
    ref = Stack(tmp_path_factory.mktemp("reference"), database_url=module_database_url, BAR_SECONDS="1")
    try:
        w = ref.worker("ref").start()
        ref.feed(sample, "max")
        expected = essentials(settled_portfolio(w, n))
    finally:
        ref.stop()
    assert expected["fills"] > 0
    return expected


def test_broker_stopped_for_30_s_mid_feed(tmp_path, fresh_database_url, btc_sample, reference):
    sample, n = btc_sample
    expected = reference
    stack = Stack(tmp_path / "outage", database_url=fresh_database_url, BAR_SECONDS="1")
    try:
        w = stack.worker("w1").start()
        fed: dict = {}
        feeder = threading.Thread(target=lambda: fed.update(out=stack.feed(sample, "10", timeout=600)), daemon=True)
        feeder.start()
        wait_until(lambda: w.metrics("moondev_ticks_consumed_total").get("moondev_ticks_consumed_total", 0) > 2000,
                   120, "the feed under way")
        services("kafka-down")  # returns once the broker process has exited
        t_down = time.monotonic()
        time.sleep(OUTAGE_S)
        assert w.proc.poll() is None, "the worker outlives the outage"
        services("kafka-up")  # returns once the broker listens again
        outage_s = time.monotonic() - t_down
        feeder.join(600)
        assert "out" in fed, "the feed finished (it waits for the broker instead of failing)"
        got = essentials(settled_portfolio(w, n))
        counts = wait_until(lambda: (c := asyncio.run(stored(fresh_database_url)))["ticks"] >= n
                            and c["fills"] >= got["fills"] and c, 180, "the store caught up")
    finally:
        stack.stop()
    assert_as_without_fault(f"broker down {outage_s:.1f} s mid-feed", got, expected, counts, n)


def test_rolling_restart_of_two_workers_with_wiped_rocksdb(tmp_path, fresh_database_url, btc_sample, reference):
    import shutil

    sample, n = btc_sample
    stack = Stack(tmp_path, database_url=fresh_database_url, BAR_SECONDS="1", STORE_URL="rocksdb://")
    try:
        w1, w2 = stack.worker("w1").start(), stack.worker("w2").start()
        fed: dict = {}
        # the sample's BTC trades span about 340 s: 16x is about 1,000 ticks/s on average
        feeder = threading.Thread(target=lambda: fed.update(out=stack.feed(sample, "16", timeout=600)), daemon=True)
        feeder.start()
        wait_until(lambda: asyncio.run(stored(fresh_database_url))["ticks"] > 2000, 120, "the feed under way")
        restarts = []
        for w in (w1, w2):
            t0 = time.monotonic()
            w.stop()
            assert any(w.data_dir.iterdir()), "the worker kept its tables in RocksDB"
            shutil.rmtree(w.data_dir)
            w.start(wait=240)
            restarts.append(round(time.monotonic() - t0, 1))
        feeder.join(600)
        assert "out" in fed, "the feed finished"
        counts = wait_until(lambda: (c := asyncio.run(stored(fresh_database_url)))["ticks"] >= n and c, 240,
                            "every tick stored")

        def steady():
            views = [w1.get("/portfolio/"), w2.get("/portfolio/")]
            time.sleep(3)
            again = [w1.get("/portfolio/"), w2.get("/portfolio/")]
            return views[0] if views == again and views[0] == views[1] and views[0]["fills"] else None

        got = essentials(wait_until(steady, 240, "the portfolio settled on both workers", retry_on=(OSError,)))
        counts = asyncio.run(stored(fresh_database_url))
    finally:
        stack.stop()
    assert_as_without_fault(f"rolling restart (each worker stopped, RocksDB wiped, back ready in {restarts} s) "
                            "under a ~1,000 ticks/s feed", got, reference, counts, n)

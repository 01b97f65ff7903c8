"""Event-store and replay benchmark on the real local PostgreSQL and Kafka (``make up`` first).

1. **Sink write path**: ``EventStore.write`` (COPY into a temp table, then one idempotent
   ``INSERT … SELECT``) in batches of ``SINK_BATCH_SIZE`` (1,000) and of 5,000 rows: events/s into
   PostgreSQL (goal ≥ 50,000/s).
2. **30-day query**: ``--events`` (5,000,000) events spread over 31 days (price ticks of three
   tokens, every 200th a trade.executed), built from the bundled real sample's prices, stored with
   the same write path; then the first page (1,000 rows) of a 30-day range: all events, one token,
   and one rare event type; each timed cold and warm.
3. **Replay**: the bundled 35,389-tick sample backtested through Kafka and an isolated worker
   (``backtest.runner``): input events/s and the multiple of the data's own time span.

Uses its own database (created and dropped).

    python bench/store.py [--events 5000000] [--skip-replay]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402

from app.local import SAMPLE  # noqa: E402
from core.settings import get_settings  # noqa: E402
from feeds.files import read_ticks  # noqa: E402
from store.eventstore import EventStore, Row  # noqa: E402

DAY_MS = 86_400_000
T0 = 1_722_470_400_000  # 2024-08-01 00:00 UTC


def make_rows(n: int, prices: list[float], offset: int) -> list[Row]:
    span = 31 * DAY_MS
    out = []
    for i in range(offset, offset + n):
        ts = T0 + (i * 7919) % span  # spread over the month, not in insert order
        token = ("BTC", "ETH", "SOL")[i % 3]
        if i % 200 == 0:
            data = {"event_type": "trade.executed", "timestamp": ts, "token": token, "fill_price": prices[i % len(prices)]}
            out.append(Row(uuid.uuid4(), "trade.executed", ts, token, json.dumps(data), "bench"))
        else:
            data = {"event_type": "price.tick", "timestamp": ts, "token": token, "price": prices[i % len(prices)]}
            out.append(Row(uuid.uuid4(), "price.tick", ts, token, json.dumps(data), "bench"))
    return out


async def bench_store(n_events: int) -> None:
    admin = get_settings().database_url.rsplit("/", 1)[0] + "/postgres"
    name = f"moondev_bench_{uuid.uuid4().hex[:6]}"
    conn = await asyncpg.connect(admin)
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    dsn = admin.rsplit("/", 1)[0] + f"/{name}"
    store = EventStore(dsn)
    prices = [r.price for r in read_ticks(SAMPLE)]
    try:
        await store.migrate()
        for batch in (1000, 5000):
            rows = make_rows(200_000, prices, 10_000_000 * batch)
            t0 = time.perf_counter()
            for i in range(0, len(rows), batch):
                await store.write(rows[i:i + batch])
            dt = time.perf_counter() - t0
            print(f"sink write path: {len(rows):,} events in batches of {batch:,}: {len(rows) / dt:,.0f} events/s",
                  flush=True)
        t0 = time.perf_counter()
        loaded = 400_000
        for offset in range(0, n_events - loaded, 50_000):
            rows = make_rows(min(50_000, n_events - loaded - offset), prices, offset)
            for i in range(0, len(rows), 5000):
                await store.write(rows[i:i + 5000])
        pool = await store.pool()
        await pool.execute("ANALYZE events")
        total = await pool.fetchval("SELECT count(*) FROM events")
        print(f"loaded {total:,} events over 31 days in {time.perf_counter() - t0:.0f} s", flush=True)
        lo, hi = T0 + DAY_MS // 2, T0 + DAY_MS // 2 + 30 * DAY_MS
        for label, kw in (("all events", {}), ("token ETH", {"token": "ETH"}),
                          ("type trade.executed", {"event_types": ["trade.executed"]})):
            times = []
            for _ in range(2):
                t0 = time.perf_counter()
                page, cursor = await store.query(lo, hi, limit=1000, **kw)
                times.append((time.perf_counter() - t0) * 1000)
            t0 = time.perf_counter()
            page2, _ = await store.query(lo, hi, limit=1000, cursor=cursor, **kw)
            nxt = (time.perf_counter() - t0) * 1000
            print(f"30-day query, {label}: first page of {len(page)} in {times[0]:.1f} ms cold, {times[1]:.1f} ms warm; "
                  f"next page {nxt:.1f} ms", flush=True)
    finally:
        await store.close()
        conn = await asyncpg.connect(admin)
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()


def bench_replay() -> None:
    from backtest import api

    data = api.load(SAMPLE)
    settings = api.backtest_settings(get_settings(), bar_seconds=1.0)
    res = api.run_sync(api.arun(data, settings, engine="kafka"))
    rep = res.report()["replay"]
    print(f"replay through Kafka: {rep['events']:,} events in {rep['seconds']} s = {rep['events_per_second']:,.0f} "
          f"events/s, {rep['real_time_multiple']}x the data's {rep['data_span_seconds']:.0f} s "
          f"(= {rep['events_per_second']:,.0f}x real time for 1-second ticks); {res.performance.trades} closed trades")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=5_000_000)
    ap.add_argument("--skip-replay", action="store_true")
    args = ap.parse_args()
    asyncio.run(bench_store(args.events))
    if not args.skip_replay:
        bench_replay()


if __name__ == "__main__":
    main()

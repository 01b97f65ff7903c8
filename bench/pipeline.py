"""Whole-path benchmark on the real local Kafka broker and PostgreSQL (``make up`` first).

Two figures, each from a fresh isolated run (own app id, topics, tables) on the bundled real
sample (35,389 Binance USD-M trades, BTC and ETH, 2024-08-08):

1. **Throughput**: the sample is produced to ``price.ticks`` first, then one worker starts and
   processes it through every stage (bars, indicators, signals, consensus, execution, portfolio,
   risk, event-store sink). ticks/s = ticks / (time from the worker reporting ready until the last
   tick is consumed by the trading agent and stored by the sink and the last fill is produced).
2. **Latency**: with the worker running, the sample is fed live at each of ``--speeds`` (a
   real-time multiple or ``max``; the sample averages ~100 ticks/s at 1× with bursts of up to
   2,050 ticks in one second, so 10× averages ~1,000 ticks/s with peaks far above); for every
   ``trade.executed``, latency = its Kafka message timestamp (producer wall clock) − ``ingest_ms``
   of the tick that triggered it (when that tick was produced). Prints count, p50, p99, max in ms.

    python bench/pipeline.py [--speeds 10,max] [--bar-seconds 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiokafka import AIOKafkaConsumer  # noqa: E402

from app.local import SAMPLE, Stack  # noqa: E402
from core.settings import get_settings  # noqa: E402

N_SAMPLE = 35389


def wait_processed(worker, n: int, timeout: float = 600) -> float:
    """Wall-clock time (s since epoch) at which every tick was consumed and stored."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = worker.metrics()
        ticks = m.get("moondev_ticks_consumed_total", 0)
        stored = m.get('moondev_sink_rows_total{topic="price.ticks"}', 0)
        if ticks >= n and stored >= n:
            return time.time()
        time.sleep(0.25)
    raise TimeoutError(f"not processed within {timeout} s: {worker.log_tail()}")


async def fills(topic: str, idle_s: float = 5.0) -> list[tuple[int, dict]]:
    """Every trade.executed on the topic as (Kafka timestamp ms, event)."""
    broker = get_settings().kafka_broker.split("://", 1)[-1]
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=broker, auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=None)
    await consumer.start()
    out: list[tuple[int, dict]] = []
    try:
        last = time.monotonic()
        while time.monotonic() - last < idle_s:
            batch = await consumer.getmany(timeout_ms=500)
            for msgs in batch.values():
                for msg in msgs:
                    ev = json.loads(msg.value)
                    if ev.get("event_type") == "trade.executed":
                        out.append((msg.timestamp, ev))
                        last = time.monotonic()
    finally:
        await consumer.stop()
    return out


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--speeds", default="10,max", help="feed speeds for the latency runs (real-time multiples or max)")
    ap.add_argument("--bar-seconds", default="1")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="moondev-bench-"))

    # 1. throughput on a pre-loaded topic
    stack = Stack(tmp / "throughput", BAR_SECONDS=args.bar_seconds, CONSENSUS_MIN_AGENTS="1")
    try:
        stack.feed(SAMPLE, "max")
        w = stack.worker()
        w.start()
        t_ready = time.time()
        t_ticks = wait_processed(w, N_SAMPLE)
        done = asyncio.run(fills(stack.env["TOPIC_PREFIX"] + "trade.executed"))
        t_last_fill = max((ts for ts, _ in done), default=0) / 1000.0
        elapsed = max(t_ticks, t_last_fill) - t_ready
        print(f"throughput: {N_SAMPLE} ticks through the whole path in {elapsed:.2f} s = "
              f"{N_SAMPLE / elapsed:,.0f} ticks/s (one worker, {len(done)} fills)")
    finally:
        stack.stop()

    # 2. latency, live feed
    for speed in [s.strip() for s in args.speeds.split(",") if s.strip()]:
        stack = Stack(tmp / f"latency-{speed}", BAR_SECONDS=args.bar_seconds, CONSENSUS_MIN_AGENTS="1")
        try:
            w = stack.worker()
            w.start()
            t0 = time.monotonic()
            stack.feed(SAMPLE, speed, timeout=1200)
            feed_s = time.monotonic() - t0
            wait_processed(w, N_SAMPLE)
            lat = [ts - ev["ingest_ms"] for ts, ev in asyncio.run(fills(stack.env["TOPIC_PREFIX"] + "trade.executed"))
                   if ev.get("ingest_ms")]
            if lat:
                print(f"latency tick→trade.executed at --speed {speed} "
                      f"(~{N_SAMPLE / feed_s:,.0f} ticks/s offered incl. feed start-up): n={len(lat)} "
                      f"p50={statistics.median(lat):.1f} ms p99={pct(lat, 99):.1f} ms max={max(lat):.1f} ms")
            else:
                print(f"latency at --speed {speed}: no fills")
        finally:
            stack.stop()


if __name__ == "__main__":
    main()

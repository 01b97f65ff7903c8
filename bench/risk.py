"""Risk benchmark: evaluation cost per tick, and tick → force-close fill through a running worker.

1. **Evaluation cost**: :func:`domain.risk.evaluate` (mark to market, leverage, liquidation price
   and distance per position, risk score) for one cross-margin account of 20 positions, timed per
   call over ``--evals`` calls; prints p50/p99 in µs. Goal < 200 µs p99.
2. **Tick → force-close fill** (``make up`` first): one worker on the real local broker, a
   background feed of 1,000 ticks/s (``--rate``) on BTC, and ``--cycles`` times: a 5× BTC long
   is opened for a fresh account (a fill on ``trade.executed``), then the feed's next tick is
   one inside the 10 % liquidation buffer; latency = wall time at which the closing
   ``trade.executed`` reaches a consumer − wall time just before that tick was produced. Prints
   p50/p99/max in ms (goal < 50 ms p99 on the paper exchange). The feed and the fill consumer
   are librdkafka (confluent-kafka, the ``bench`` extra) in threads of their own, so the load
   generator takes little of the two cores the broker and the worker need, and a fill's arrival
   is stamped when it arrives.

    python bench/risk.py [--evals 20000] [--rate 1000] [--cycles 60]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiokafka import AIOKafkaProducer  # noqa: E402
from confluent_kafka import Consumer, Producer  # noqa: E402  (the 'bench' extra)

from app.local import Stack  # noqa: E402
from domain.risk import DEFAULT_ASSETS, evaluate  # noqa: E402


BROKER = "127.0.0.1:9092"


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def bench_evaluate(n: int) -> None:
    rnd = random.Random(1)
    tokens = [f"T{i}" for i in range(20)]
    tokens[:8] = list(DEFAULT_ASSETS)  # known assets, the rest use the default spec
    positions = {t: {"size": rnd.choice([-1, 1]) * rnd.uniform(0.1, 10), "entry_price": rnd.uniform(1, 60_000)}
                 for t in tokens}
    marks = {t: p["entry_price"] * rnd.uniform(0.95, 1.05) for t, p in positions.items()}
    cash = 100_000.0 - sum(p["size"] * p["entry_price"] for p in positions.values()) * 0.2
    samples = []
    for i in range(n):
        marks[tokens[i % 20]] *= 1.0 + rnd.uniform(-1e-4, 1e-4)
        t0 = time.perf_counter_ns()
        evaluate(cash, positions, marks, DEFAULT_ASSETS, 3.0)
        samples.append((time.perf_counter_ns() - t0) / 1000)
    print(f"risk evaluation, 20 positions: {n} calls  p50 {pct(samples, .5):.1f} µs  p99 {pct(samples, .99):.1f} µs"
          f"  mean {statistics.fmean(samples):.1f} µs")


def event(kind: str, **fields) -> bytes:
    return json.dumps({"event_id": str(uuid.uuid4()), "event_type": kind, "source": "bench", **fields}).encode()


def _background(prefix: str, rate: int, state: dict, stop: threading.Event) -> None:
    """Background BTC ticks at ``rate``/s from librdkafka (confluent-kafka): the load generator
    shares the machine's two cores with the broker and the worker, and aiokafka's pure-Python
    producer took about 40 % of a core for 1,000 sends a second."""
    producer = Producer({"bootstrap.servers": BROKER, "linger.ms": 1})
    interval, next_t = 1.0 / rate, time.perf_counter()
    while not stop.is_set():
        now = time.time()
        now_ms = int(now * 1000)
        # The probe goes out in sequence with the background ticks (one feed, event time in order).
        probe = state["probe"]
        producer.produce(prefix + "price.ticks", key=b"BTC", value=event(
            "price.tick", timestamp=now_ms, token="BTC", price=probe or state["price"], ingest_ms=now_ms))
        if probe:
            state["probe"], state["probe_sent"] = None, now
        producer.poll(0)
        state["sent"] += 1
        next_t += interval
        delay = next_t - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
    producer.flush(10)


def _collect(prefix: str, opened: set, closes: dict, ready: threading.Event, stop: threading.Event) -> None:
    """Arrival wall time of each account's closing fill, from librdkafka's consumer in its own
    thread (so the arrival is stamped when the fill arrives, not when an event loop gets to it)."""
    consumer = Consumer({"bootstrap.servers": BROKER, "group.id": f"bench-risk-{uuid.uuid4().hex[:8]}",
                         "auto.offset.reset": "latest", "enable.auto.commit": False, "fetch.wait.max.ms": 5})
    assigned = threading.Event()
    consumer.subscribe([prefix + "trade.executed"], on_assign=lambda c, parts: assigned.set())
    try:
        while not stop.is_set():
            msg = consumer.poll(0.05)
            if assigned.is_set():
                ready.set()
            if msg is None or msg.error():
                continue
            arrived = time.time()
            ev = json.loads(msg.value())
            if ev.get("event_type") != "trade.executed":
                continue
            if ev["side"] == "SELL" and ev.get("reduce_only"):
                closes.setdefault(ev["account"], arrived)
            elif ev["side"] == "BUY":
                opened.add(ev["account"])
    finally:
        consumer.close()


async def force_close_latency(prefix: str, rate: int, cycles: int) -> list[float]:
    producer = AIOKafkaProducer(bootstrap_servers=BROKER, linger_ms=0)
    await producer.start()
    closes: dict[str, float] = {}
    opened: set[str] = set()
    stop, ready = threading.Event(), threading.Event()
    # One price path for every tick, so event time and marks stay in order.
    state = {"price": 50_000.0, "sent": 0, "probe": None, "probe_sent": None}
    collector = threading.Thread(target=_collect, args=(prefix, opened, closes, ready, stop), daemon=True)
    feeder = threading.Thread(target=_background, args=(prefix, rate, state, stop), daemon=True)
    collector.start()
    feeder.start()
    latencies = []
    try:
        if not await asyncio.to_thread(ready.wait, 60):
            raise RuntimeError("the fill consumer got no assignment within 60 s")
        for i in range(cycles):
            account = f"bench-{i}"
            fill = event("trade.executed", timestamp=int(time.time() * 1000), token="BTC", account=account,
                         order_id=f"o{i}", client_order_id="0x" + uuid.uuid4().hex, side="BUY",
                         fill_price=50_000.0, filled_amount=10.0, fee=0.0)
            await producer.send_and_wait(prefix + "trade.executed", fill, key=account.encode())
            deadline = time.monotonic() + 30
            while account not in opened and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.3)  # the portfolio → exposures → risk snapshot settles
            # One tick inside the 10 % buffer (liquidation at 40,506); the background stays at 50,000.
            state["probe_sent"], state["probe"] = None, 45_000.0
            while state["probe_sent"] is None:
                await asyncio.sleep(0.0005)
            t_send = state["probe_sent"]
            deadline = time.monotonic() + 30
            while account not in closes and time.monotonic() < deadline:
                await asyncio.sleep(0.001)
            if account in closes:
                latencies.append((closes[account] - t_send) * 1000)
            else:
                print(f"cycle {i}: no force-close within 30 s", file=sys.stderr)
    finally:
        stop.set()
        feeder.join(15)
        collector.join(15)
        await producer.stop()
    print(f"background ticks produced: {state['sent']}")
    return latencies


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--evals", type=int, default=20_000)
    ap.add_argument("--rate", type=int, default=1000, help="background ticks/s during the latency run")
    ap.add_argument("--cycles", type=int, default=60)
    ap.add_argument("--skip-worker", action="store_true", help="only the evaluation micro-benchmark")
    args = ap.parse_args()
    bench_evaluate(args.evals)
    if args.skip_worker:
        return
    tmp = Path(tempfile.mkdtemp(prefix="moondev-bench-risk-"))
    # 5x must not halt anything here; only the buffer matters. Each cycle trades an account of its own.
    stack = Stack(tmp, MAX_LEVERAGE="10", ACCOUNTS=json.dumps([f"bench-{i}" for i in range(args.cycles)]))
    w = stack.worker("w1").start()
    try:
        lat = asyncio.run(force_close_latency(stack.env["TOPIC_PREFIX"], args.rate, args.cycles))
        m = w.metrics()
        ticks = m.get("moondev_ticks_consumed_total", 0)
    finally:
        stack.stop()
    if lat:
        print("latencies (ms, sorted):", " ".join(f"{x:.0f}" for x in sorted(lat)))
        print(f"tick -> force-close fill at {args.rate} ticks/s: n={len(lat)}  p50 {pct(lat, .5):.1f} ms  "
              f"p99 {pct(lat, .99):.1f} ms  max {max(lat):.1f} ms  (worker consumed {ticks:.0f} ticks)")


if __name__ == "__main__":
    main()

"""Signal benchmarks on the real local Kafka broker (``make up`` first), each run an isolated
worker (own app id, topics, tables).

1. **LLM never blocks the ticks.** The bundled real sample (35,389 Binance trades) is produced to
   ``price.ticks`` first; a worker then consumes it with 1 s bars (every bar close queues an LLM
   request). Trading-agent throughput = ticks / (time from worker ready until the trading agent
   consumed the last tick). Runs alternate LLM off / LLM on against a local Messages API
   (tests/servers/anthropic.py) that answers after ``--llm-delay`` seconds (3 by default);
   prints each run, the medians and their ratio (goal: within 10 %).
2. **Sentiment and correlation.** ``--tokens`` tokens × ``--minutes`` minutes of sentiment
   updates (``--per-minute`` an event-time minute; real tweets scored with VADER, event times and
   tokens assigned by the feed) interleaved with 1-minute closes whose returns follow the minute's
   sentiment share plus noise (built so the join detects correlation), produced to
   ``sentiment.updates`` and ``price.minutes`` at ``--rate`` updates/s of wall time. Prints the
   updates/s the sentiment agent sustained, and for every ``correlation.detected`` the time from
   the produce of the input that completed its point (its ``ingest_ms``) to the detection's
   Kafka timestamp: count, p50, p99, max in ms.

    python bench/signals.py [--runs 2] [--llm-delay 3] [--rate 200] [--tokens 5] [--minutes 90]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # noqa: E402

from app.local import SAMPLE, Stack, free_port  # noqa: E402
from core.settings import get_settings  # noqa: E402
from bench.pipeline import N_SAMPLE, pct  # noqa: E402

TWEETS = ROOT.parent / "shared" / "data" / "sentiment" / "vader_tweets_ground_truth.tsv"
BROKER = get_settings().kafka_broker.split("://", 1)[-1]


def wait_ticks(worker, n: int, timeout: float = 600) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker.metrics().get("moondev_ticks_consumed_total", 0) >= n:
            return time.time()
        time.sleep(0.1)
    raise TimeoutError(f"ticks not consumed within {timeout} s: {worker.log_tail()}")


def trading_run(tmp: Path, llm_url: str | None) -> tuple[float, dict]:
    extra = {"ANTHROPIC_API_KEY": "sk-ant-test-key", "ANTHROPIC_BASE_URL": llm_url} if llm_url else {}
    stack = Stack(tmp, BAR_SECONDS="1", LLM_TIMEOUT_SECONDS="10", **extra)
    try:
        stack.feed(SAMPLE, "max")
        w = stack.worker().start()
        t_ready = time.time()
        rate = N_SAMPLE / (wait_ticks(w, N_SAMPLE) - t_ready)
        llm = {k.split('outcome="')[1].rstrip('"}'): int(v) for k, v in w.metrics().items()
               if k.startswith("moondev_llm_requests_total{")}
        return rate, llm
    finally:
        stack.stop()


def bench_llm(args, tmp: Path) -> None:
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "tests.servers.anthropic", "--port", str(port),
                               "--delay", str(args.llm_delay)], cwd=ROOT)
    try:
        time.sleep(1.5)
        off, on = [], []
        for i in range(args.runs):
            r, _ = trading_run(tmp / f"off-{i}", None)
            off.append(r)
            print(f"  run {i + 1}: LLM off {r:,.0f} ticks/s", flush=True)
            r, llm = trading_run(tmp / f"on-{i}", f"http://127.0.0.1:{port}")
            on.append(r)
            print(f"  run {i + 1}: LLM on ({args.llm_delay:g} s answers) {r:,.0f} ticks/s; requests {llm}", flush=True)
        m_off, m_on = statistics.median(off), statistics.median(on)
        print(f"trading agent: LLM off {m_off:,.0f} ticks/s, LLM on {m_on:,.0f} ticks/s (medians of {args.runs}); "
              f"on/off = {m_on / m_off:.3f}")
    finally:
        server.terminate()
        server.wait(10)


def sentiment_inputs(tokens: int, minutes: int, per_minute: int, t0: int) -> list[tuple[str, dict]]:
    from feeds.sentiment import read_updates

    names = [f"T{i:02d}" for i in range(tokens)]
    texts = list(read_updates(TWEETS, ["X"], t0, 1.0))
    rng = random.Random(11)
    out: list[tuple[str, dict]] = []
    price = {n: 100.0 for n in names}
    k = 0
    for m in range(minutes):
        minute = t0 + m * 60_000
        shares = {}
        for n in names:
            ups = []
            for j in range(per_minute):
                u = texts[k % len(texts)]
                k += 1
                ups.append(u.bullish_pct)
                ev = {"event_id": str(uuid.uuid4()), "event_type": "sentiment.update",
                      "timestamp": minute + j * (60_000 // per_minute), "token": n, "source": "bench",
                      "bullish_pct": u.bullish_pct, "confidence": max(u.confidence, 0.05),
                      "followers": rng.randint(0, 100_000)}
                out.append(("sentiment.updates", ev))
            shares[n] = statistics.fmean(ups)
        for n in names:
            price[n] *= 1 + (shares[n] - 50) * 4e-5 + rng.gauss(0, 2e-4)
            out.append(("price.minutes", {"event_id": str(uuid.uuid4()),
                                          "event_type": "price.minute", "timestamp": minute, "token": n,
                                          "source": "bench", "close": price[n]}))
    return out


async def produce_and_collect(prefix: str, inputs: list[tuple[str, dict]], rate: float) -> list[tuple[int, dict]]:
    producer = AIOKafkaProducer(bootstrap_servers=BROKER, linger_ms=1)
    consumer = AIOKafkaConsumer(prefix + "correlation", bootstrap_servers=BROKER, auto_offset_reset="earliest",
                                group_id=None)
    await producer.start()
    await consumer.start()
    seen: list[tuple[int, dict]] = []

    async def collect():
        async for msg in consumer:
            seen.append((msg.timestamp, json.loads(msg.value)))

    task = asyncio.create_task(collect())
    try:
        t0 = time.monotonic()
        n_sent = 0
        for topic, ev in inputs:
            if topic == "sentiment.updates":
                n_sent += 1
                due = t0 + n_sent / rate
                if due - time.monotonic() > 0.001:
                    await asyncio.sleep(due - time.monotonic())
            ev["ingest_ms"] = int(time.time() * 1000)
            await producer.send(prefix + topic, json.dumps(ev).encode(), key=ev["token"].encode())
        await producer.flush()
        last = len(seen)
        while True:
            await asyncio.sleep(3)
            if len(seen) == last:
                break
            last = len(seen)
    finally:
        task.cancel()
        await consumer.stop()
        await producer.stop()
    return seen


def bench_sentiment(args, tmp: Path) -> None:
    stack = Stack(tmp / "sentiment")
    try:
        w = stack.worker().start()
        inputs = sentiment_inputs(args.tokens, args.minutes, args.per_minute, 1_723_161_240_000)
        n_updates = sum(1 for t, _ in inputs if t == "sentiment.updates")
        t_start = time.time()
        seen = asyncio.run(produce_and_collect(stack.env["TOPIC_PREFIX"], inputs, args.rate))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            m = w.metrics()
            done = m.get('moondev_processing_seconds_count{agent="sentiment"}', 0)
            if done >= n_updates:
                break
            time.sleep(0.2)
        t_done = time.time()
        lat = [ts - ev["ingest_ms"] for ts, ev in seen if ev.get("event_type") == "correlation.detected"]
        print(f"sentiment: {n_updates:,} updates offered at {args.rate:g}/s, processed at "
              f"{n_updates / (t_done - t_start):,.0f} updates/s sustained; "
              f"{int(m.get('moondev_processing_seconds_count{agent=\"correlation\"}', 0)):,} correlation inputs")
        if lat:
            print(f"correlation.detected: {len(lat)} detections; last input -> detection p50 {pct(lat, 50):.1f} ms, "
                  f"p99 {pct(lat, 99):.1f} ms, max {max(lat):.1f} ms")
        else:
            print("correlation.detected: none")
    finally:
        stack.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=2, help="LLM off/on pairs")
    ap.add_argument("--llm-delay", type=float, default=3.0)
    ap.add_argument("--rate", type=float, default=200.0, help="sentiment updates/s offered")
    ap.add_argument("--tokens", type=int, default=5)
    ap.add_argument("--minutes", type=int, default=90)
    ap.add_argument("--per-minute", type=int, default=30, help="sentiment updates per token per event-time minute")
    ap.add_argument("--skip-llm", action="store_true")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="moondev-bench-signals-"))
    if not args.skip_llm:
        bench_llm(args, tmp)
    bench_sentiment(args, tmp)


if __name__ == "__main__":
    main()

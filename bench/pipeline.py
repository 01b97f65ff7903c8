"""Whole-path benchmark on the real local Kafka broker and PostgreSQL (``make up`` first), measured
against the ceiling of the framework and of the Kafka clients on the same topic in the same run.

Every figure is from a fresh isolated run (own app id, topics, tables) on the bundled real sample
(35,389 Binance USD-M trades, BTC and ETH, 2024-08-08), produced to ``price.ticks`` first:

1. **Ceilings** on that topic, each a fresh consumer group, messages/s from the first message to
   the last: a raw aiokafka consumer decoding JSON; a raw confluent-kafka (librdkafka) consumer
   decoding JSON; the bare Faust agent (:mod:`bench.bare_faust`: one agent that decodes and counts)
   on Faust's aiokafka transport and on its ``confluent://`` transport, on the worker's event loop
   (uvloop, or FAUST_LOOP).
2. **Whole path, one worker**: a worker started on the pre-loaded topic runs every stage (bars,
   indicators, signals, risk, consensus, execution, portfolio, event-store sink). ticks/s = ticks /
   (from the first tick the tick stream consumed until the last tick is consumed and stored and the
   last fill produced). Printed with its ratio to the bare Faust agent (goal ≥ 70 %), and where
   the worker's time went: its process CPU per tick (``/proc``) beside the mean time per event of
   each stage (``moondev_processing_seconds``: the whole tick step, and inside it the trading,
   risk and flow processors); what is left of the CPU per tick is Faust, aiokafka and the
   worker's other tasks. Then each run's CPU split between its main thread (the event loop, where
   Faust dispatches and the agents run) and its other threads (the consumer's), per message, with
   the share of the run the main thread was busy: a main thread busy nearly all the time is bound
   by its own work, one often idle waited for its consumer thread's fetches. Then the same
   worker's CPU while idle (the sample done, nothing coming) over ``--idle-seconds``: what a
   worker costs between bursts.
3. **Whole path, two workers** (``--workers2``): the same with two workers (each with its own web
   port and data folder) started together on the same topics; ticks/s over both.
4. **Latency**, live feed: with a worker running, the sample is fed at each of ``--speeds`` (a
   real-time multiple or ``max``; the sample averages ~100 ticks/s at 1× with bursts of up to
   2,050 ticks in one second, so 10× averages ~1,000 ticks/s with peaks far above); for every
   ``trade.executed``, latency = its Kafka message timestamp (producer wall clock) − ``ingest_ms``
   of the tick that triggered it (when that tick was produced). Prints count, p50, p99, max in ms
   (goals: p99 < 50 ms at 1×, < 250 ms at 10×); beside each of the slowest fills, its token, the
   ticks produced in the 250 ms up to its tick (all, and its token's: those are ahead of it in its
   partition) and the time from its tick to the first signal sent from it (the tick step sends a
   tick's signals, so that is the wait before the step plus the step). Before that, how many
   closed bars the tick step stored after the broker's acknowledgements and how long after the
   step on average (``moondev_processing_seconds{agent="ticks.acks"}``; the stream goes on
   meanwhile), and how long the consensus steps inside the tick step waited for theirs
   (``{agent="consensus.acks"}``; the stream stands still for those).
   Then, unless ``--no-bare-live``, the bare Faust agent on a fresh topic fed the same way: how
   late it reads each tick (p50, p99, max), and beside each of the slowest fills, how late it read
   that fill's own tick: the framework's floor for that fill on this machine.

    python bench/pipeline.py [--speeds 1,10] [--bar-seconds 1] [--no-workers2] [--no-bare-live]
                             [--idle-seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aiokafka import AIOKafkaConsumer  # noqa: E402

from app.local import SAMPLE, Stack  # noqa: E402
from core.settings import get_settings  # noqa: E402

N_SAMPLE = 35389
BROKER = get_settings().kafka_broker.split("://", 1)[-1]
#: The event loop the worker runs on (app.main: uvloop unless FAUST_LOOP says otherwise), given to
#: the bare Faust agent too, so that the ceiling runs on the same one.
LOOP = os.environ.get("FAUST_LOOP") or "uvloop"


class _Skip(Exception):
    pass


def metric_sum(workers, name: str) -> float:
    total = 0.0
    for w in workers:
        try:
            total += w.metrics(name.split("{", 1)[0]).get(name, 0)
        except OSError:
            pass
    return total


def whole_path(workers, n: int, timeout: float = 900, on_consumed=None) -> tuple[float, float]:
    """(wall time of the first tick consumed, of the last tick consumed and stored) over ``workers``
    already starting; polled every 20 ms (100 ms once ticks flow). ``on_consumed()`` is called once,
    when the poll first sees all ``n`` ticks consumed."""
    deadline = time.monotonic() + timeout
    t_first = None
    while time.monotonic() < deadline:
        ticks = metric_sum(workers, "moondev_ticks_consumed_total")
        if t_first is None and ticks > 0:
            t_first = time.time()
        if t_first is not None and ticks >= n:
            if on_consumed is not None:
                on_consumed()
                on_consumed = None
            if metric_sum(workers, 'moondev_sink_rows_total{topic="price.ticks"}') >= n:
                return t_first, time.time()
        time.sleep(0.02 if t_first is None else 0.1)
    raise TimeoutError(f"not processed within {timeout} s: {workers[0].log_tail()}")


def cpu_seconds(pid: int, main_thread: bool = False) -> float:
    """User + system CPU seconds of a process, all its threads (``/proc/PID/stat`` utime + stime;
    not its children: the event-store sink is a process of its own), or with ``main_thread`` of
    its main thread only (``/proc/PID/task/PID/stat``: the event loop, in a Faust worker)."""
    path = f"/proc/{pid}/task/{pid}/stat" if main_thread else f"/proc/{pid}/stat"
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:13]) / os.sysconf("SC_CLK_TCK")


def thread_split(n: int, seconds: float, main_s: float, total_s: float) -> str:
    """A run's main-thread CPU per message and share of the run's wall time, and the rest's."""
    return (f"main thread {main_s / n * 1e6:.0f} µs of CPU per message, busy {main_s / seconds:.0%} of the "
            f"{seconds:.2f} s; other threads {(total_s - main_s) / n * 1e6:.0f} µs per message")


def stage_breakdown(worker, ticks: int, cpu_s: float) -> str:
    """Mean µs per event of each stage, from the worker's ``moondev_processing_seconds``."""
    m = worker.metrics()  # in full: a name filter leaves out the light histograms (core.metrics)
    parts = []
    for agent in ("ticks", "trading", "risk", "flow", "ticks.acks", "consensus", "consensus.acks", "execution",
                  "portfolio"):
        n = m.get(f'moondev_processing_seconds_count{{agent="{agent}"}}', 0)
        if n:
            total = m[f'moondev_processing_seconds_sum{{agent="{agent}"}}']
            parts.append(f"{agent} {total / n * 1e6:.0f} µs x {int(n)}")
    return f"worker CPU {cpu_s / ticks * 1e6:.0f} µs per tick; per event: " + ", ".join(parts)


async def events_of(topic: str, event_type: str, idle_s: float = 5.0) -> list[tuple[int, dict]]:
    """Every ``event_type`` event on the topic as (Kafka timestamp ms, event)."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=BROKER, auto_offset_reset="earliest",
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
                    if ev.get("event_type") == event_type:
                        out.append((msg.timestamp, ev))
                        last = time.monotonic()
    finally:
        await consumer.stop()
    return out


async def raw_aiokafka(topic: str, n: int) -> float:
    """Seconds from the first to the n-th message of ``topic``, each decoded as JSON."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=BROKER, auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=f"bench-raw-{time.time_ns()}")
    await consumer.start()
    try:
        got, t0 = 0, None
        while got < n:
            for msgs in (await consumer.getmany(timeout_ms=1000)).values():
                if t0 is None:
                    t0 = time.perf_counter()
                for msg in msgs:
                    json.loads(msg.value)
                got += len(msgs)
        return time.perf_counter() - t0
    finally:
        await consumer.stop()


def raw_confluent(topic: str, n: int) -> float | None:
    """The same with confluent-kafka's consumer (librdkafka); None when it is not installed."""
    try:
        from confluent_kafka import Consumer
    except ImportError:
        return None
    c = Consumer({"bootstrap.servers": BROKER, "group.id": f"bench-ck-{time.time_ns()}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.subscribe([topic])
    try:
        got, t0 = 0, None
        while got < n:
            msgs = c.consume(num_messages=1000, timeout=1.0)
            if msgs and t0 is None:
                t0 = time.perf_counter()
            for m in msgs:
                if m.error() is None:
                    json.loads(m.value())
                    got += 1
        return time.perf_counter() - t0
    finally:
        c.close()


def bare_faust(topic: str, n: int, transport: str, workdir: Path, timeout: float = 90,
               cpu: dict | None = None) -> float | str | None:
    """Seconds from the first to the n-th message in the bare Faust agent (a subprocess); None when
    the transport's client is not installed, a reason when it consumed nothing within ``timeout``.
    ``cpu``, when given, gets the CPU seconds of the agent's main thread and of its whole process
    over those messages (keys ``main``, ``total``)."""
    if transport == "confluent":
        try:
            import confluent_kafka  # noqa: F401
        except ImportError:
            return None
    env = {**os.environ, "BARE_TOPIC": topic, "BARE_N": str(n), "BARE_BROKER": f"{transport}://{BROKER}",
           "BARE_APP_ID": f"bench-bare-{transport}-{time.time_ns()}", "BARE_DATA_DIR": str(workdir / f"bare-{transport}"),
           "BARE_PARENT_PID": str(os.getpid()), "FAUST_LOOP": LOOP}
    try:
        proc = subprocess.run([sys.executable, str(ROOT / "bench" / "bare_faust.py"), "worker", "-l", "warn",
                               "--without-web"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"did not get through the {n} messages within {timeout:.0f} s"
    for line in (proc.stdout + proc.stderr).splitlines():  # Faust's worker logs what its agents print
        if "BARE " in line:
            _, seconds, main_s, other_s = line.split("BARE ", 1)[1].split()[:4]
            if cpu is not None:
                cpu.update(main=float(main_s), total=float(main_s) + float(other_s))
            return float(seconds)
    raise RuntimeError(f"bare Faust ({transport}) printed no result: {proc.stdout[-1500:]} {proc.stderr[-1500:]}")


def bare_faust_live(speed: str, workdir: Path, timeout: float = 4000) -> dict[str, float]:
    """The bare Faust agent (kafka://) on a fresh topic while the sample is fed at ``speed``, as
    the worker was in the latency run: each tick's receive delay (ms, the agent's wall clock minus
    the tick's ``ingest_ms``) by event id. The feed derives a tick's id from its trade, so the ids
    are those of the worker's run."""
    stack = Stack(workdir / f"bare-live-{speed}")
    out = workdir / f"bare-live-{speed}.json"
    try:
        stack.declare_topics()
        env = {**os.environ, "BARE_TOPIC": stack.env["TOPIC_PREFIX"] + "price.ticks", "BARE_N": str(N_SAMPLE),
               "BARE_BROKER": f"kafka://{BROKER}", "BARE_APP_ID": f"bench-bare-live-{time.time_ns()}",
               "BARE_DATA_DIR": str(workdir / f"bare-live-{speed}"), "BARE_DELAYS": str(out),
               "BARE_PARENT_PID": str(os.getpid()), "FAUST_LOOP": LOOP}
        proc = subprocess.Popen([sys.executable, str(ROOT / "bench" / "bare_faust.py"), "worker", "-l", "warn",
                                 "--without-web"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + 90
            for line in proc.stdout:  # the feed starts once the agent has its partitions
                if "BARE_READY" in line:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError("the bare Faust agent got no partitions within 90 s")
            else:
                raise RuntimeError(f"the bare Faust agent exited with {proc.wait()} before it was ready")
            stack.feed(SAMPLE, speed, timeout=timeout)
            proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        return json.loads(out.read_text())
    finally:
        stack.stop()


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def rate(n: int, seconds: float | str | None) -> str:
    if isinstance(seconds, str):
        return seconds
    return "n/a (not installed)" if seconds is None else f"{n / seconds:,.0f} msg/s"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--speeds", default="1,10", help="feed speeds for the latency runs (real-time multiples or max)")
    ap.add_argument("--bar-seconds", default="1")
    ap.add_argument("--no-workers2", action="store_true", help="skip the two-worker run")
    ap.add_argument("--latency-only", action="store_true", help="only the latency runs")
    ap.add_argument("--no-bare-live", action="store_true",
                    help="skip the bare Faust agent's run at each latency speed (the ceiling of each fill)")
    ap.add_argument("--idle-seconds", type=float, default=20, help="how long to read the idle worker's CPU (0: not)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="moondev-bench-"))

    # 1 + 2: ceilings and the whole path on one pre-loaded topic
    if args.latency_only:
        args.no_workers2 = True
    stack = Stack(tmp / "throughput", BAR_SECONDS=args.bar_seconds, CONSENSUS_MIN_AGENTS="1")
    try:
        if args.latency_only:
            raise _Skip
        stack.declare_topics()
        stack.feed(SAMPLE, "max")
        topic = stack.env["TOPIC_PREFIX"] + "price.ticks"
        bare_cpu: dict = {}
        ceil = {
            "raw aiokafka consumer + JSON decode": asyncio.run(raw_aiokafka(topic, N_SAMPLE)),
            "raw confluent-kafka consumer + JSON decode": raw_confluent(topic, N_SAMPLE),
            f"bare Faust agent, aiokafka transport (kafka://, {LOOP})": bare_faust(topic, N_SAMPLE, "kafka", tmp,
                                                                                   cpu=bare_cpu),
            f"bare Faust agent, confluent transport (confluent://, {LOOP})": bare_faust(topic, N_SAMPLE, "confluent", tmp),
        }
        for name, secs in ceil.items():
            print(f"ceiling: {name}: {rate(N_SAMPLE, secs)}", flush=True)
        w = stack.worker()
        w.start()
        cpu0, ticks0 = cpu_seconds(w.proc.pid), metric_sum([w], "moondev_ticks_consumed_total")
        split0 = (time.monotonic(), cpu_seconds(w.proc.pid, main_thread=True), cpu0)
        split: list = []  # the same when the last tick has been consumed (the sink may still be storing)
        t_first, t_ticks = whole_path([w], N_SAMPLE, on_consumed=lambda: split.extend(
            (time.monotonic(), cpu_seconds(w.proc.pid, main_thread=True), cpu_seconds(w.proc.pid))))
        cpu_s = cpu_seconds(w.proc.pid) - cpu0
        done = asyncio.run(events_of(stack.env["TOPIC_PREFIX"] + "trade.executed", "trade.executed"))
        t_last_fill = max((ts for ts, _ in done), default=0) / 1000.0
        elapsed = max(t_ticks, t_last_fill) - t_first
        whole = N_SAMPLE / elapsed
        bare = N_SAMPLE / ceil[f"bare Faust agent, aiokafka transport (kafka://, {LOOP})"]
        print(f"whole path, one worker: {N_SAMPLE} ticks in {elapsed:.2f} s = {whole:,.0f} ticks/s "
              f"({len(done)} fills) = {whole / bare:.0%} of the bare Faust agent (goal >= 70 %)", flush=True)
        print(f"whole path, one worker: {stage_breakdown(w, int(N_SAMPLE - ticks0), cpu_s)}", flush=True)
        # Beside the rates, where each was bounded: a main thread busy all the time is bound by its
        # own work; one idle part of the time waited for its consumer thread's fetches.
        bare_s = ceil[f"bare Faust agent, aiokafka transport (kafka://, {LOOP})"]
        if bare_cpu and isinstance(bare_s, float):
            print(f"CPU split, bare Faust agent: {thread_split(N_SAMPLE, bare_s, bare_cpu['main'], bare_cpu['total'])}",
                  flush=True)
        if split:
            wall, main_s, total_s = (b - a for a, b in zip(split0, split))
            print(f"CPU split, whole path, one worker: {thread_split(int(N_SAMPLE - ticks0), wall, main_s, total_s)}",
                  flush=True)
        if args.idle_seconds > 0:
            cpu0, t0 = cpu_seconds(w.proc.pid), time.monotonic()
            time.sleep(args.idle_seconds)
            idle = (cpu_seconds(w.proc.pid) - cpu0) / (time.monotonic() - t0)
            print(f"idle worker (the sample done, nothing coming) over {args.idle_seconds:.0f} s: {idle:.1%} of a core "
                  f"(KAFKA_IDLE_FETCH_MAX_WAIT_MS={w.env.get('KAFKA_IDLE_FETCH_MAX_WAIT_MS', 'default')})", flush=True)
    except _Skip:
        pass
    finally:
        stack.stop()

    # 3: two workers
    if not args.no_workers2:
        stack = Stack(tmp / "workers2", BAR_SECONDS=args.bar_seconds, CONSENSUS_MIN_AGENTS="1")
        try:
            stack.declare_topics()
            stack.feed(SAMPLE, "max")
            ws = [stack.worker("w1"), stack.worker("w2")]
            for w in ws:
                w.proc = None
            import threading
            starts = [threading.Thread(target=w.start) for w in ws]
            for t in starts:
                t.start()
            t_first, t_ticks = whole_path(ws, N_SAMPLE)
            for t in starts:
                t.join()
            elapsed = t_ticks - t_first
            print(f"whole path, two workers: {N_SAMPLE} ticks in {elapsed:.2f} s = {N_SAMPLE / elapsed:,.0f} ticks/s "
                  f"(one worker above: {whole:,.0f}; ticks consumed per worker: "
                  f"{[int(metric_sum([w], 'moondev_ticks_consumed_total')) for w in ws]})", flush=True)
        finally:
            stack.stop()

    # 4: latency, live feed
    for speed in [s.strip() for s in args.speeds.split(",") if s.strip()]:
        stack = Stack(tmp / f"latency-{speed}", BAR_SECONDS=args.bar_seconds, CONSENSUS_MIN_AGENTS="1")
        try:
            w = stack.worker()
            w.start()
            t0 = time.monotonic()
            stack.feed(SAMPLE, speed, timeout=4000)
            feed_s = time.monotonic() - t0
            whole_path([w], N_SAMPLE)
            # how often each same-step shortcut was taken (app.kafka.InputOrder may send a record
            # the agent's way): a fill that took the Kafka hop shows in the tail
            m = w.metrics()
            taken = {a: int(m.get(f'moondev_processing_seconds_count{{agent="{a}"}}', 0))
                     for a in ("consensus.now", "consensus", "execution.approval_now", "execution")}
            # A step that closed a bar has it stored once the broker has acknowledged its events, while
            # the stream goes on (app.main.StoreAfterAcks); the consensus step still waits for them.
            acks_n = m.get('moondev_processing_seconds_count{agent="ticks.acks"}', 0)
            acks_s = m.get('moondev_processing_seconds_sum{agent="ticks.acks"}', 0.0)
            step_s = m.get('moondev_processing_seconds_sum{agent="ticks"}', 0.0)
            cons_n = m.get('moondev_processing_seconds_count{agent="consensus.acks"}', 0)
            cons_s = m.get('moondev_processing_seconds_sum{agent="consensus.acks"}', 0.0)
            if acks_n:
                print(f"tick step at --speed {speed}: {int(acks_n)} steps' state stored after the broker's acks, "
                      f"{acks_s / acks_n * 1000:.1f} ms after the step on average, while the stream went on (the tick "
                      f"step's own time: {step_s:.2f} s, of which the consensus steps in it waited {cons_s:.2f} s for "
                      f"acks in {int(cons_n)} steps)", flush=True)
            print(f"shortcuts at --speed {speed}: {taken['consensus.now']} signals through the consensus in the tick "
                  f"step ({taken['consensus']} read by its agent, copies included), {taken['execution.approval_now']} "
                  f"approvals executed in the consensus step ({taken['execution']} commands read by the engine)",
                  flush=True)
            got = [(ts, ts - ev["ingest_ms"], ev.get("correlation_id"), ev.get("token")) for ts, ev in
                   asyncio.run(events_of(stack.env["TOPIC_PREFIX"] + "trade.executed", "trade.executed")) if ev.get("ingest_ms")]
            lat = [g[1] for g in got]
            if lat:
                # A fill's tick queued behind a burst waits for the burst however fast the step is:
                # the ticks produced in the 250 ms up to its own are the queue it may have met.
                # Those of its own token are ahead of it in its own partition; the others only share
                # the worker with it.
                ticks = [ev for _, ev in asyncio.run(events_of(stack.env["TOPIC_PREFIX"] + "price.ticks", "price.tick",
                                                               2.0)) if ev.get("ingest_ms")]
                offered = sorted(ev["ingest_ms"] for ev in ticks)
                offered_of: dict[str, list[int]] = {}
                for ev in ticks:
                    offered_of.setdefault(ev["token"], []).append(ev["ingest_ms"])
                for times in offered_of.values():
                    times.sort()

                def produced_before(times: list[int], at_ms: float) -> int:
                    return bisect.bisect_right(times, at_ms) - bisect.bisect_left(times, at_ms - 250)

                # The tick step sends the signals of the tick it is on, so the first signal sent from a
                # fill's tick tells the wait before the step (the queue) from what came after it.
                signal_ms: dict[str, float] = {}
                for ts, ev in asyncio.run(events_of(stack.env["TOPIC_PREFIX"] + "signal.generated",
                                                    "signal.generated", 2.0)):
                    if ev.get("ingest_ms") and ev.get("correlation_id"):
                        ms = ts - ev["ingest_ms"]
                        signal_ms[ev["correlation_id"]] = min(ms, signal_ms.get(ev["correlation_id"], ms))
                # where the tail sits in the run (seconds after the first fill) tells warm-up from bursts
                slowest = sorted(got, key=lambda g: -g[1])[:5]
                print(f"latency tick→trade.executed at --speed {speed} "
                      f"(~{N_SAMPLE / feed_s:,.0f} ticks/s offered incl. feed start-up): n={len(lat)} "
                      f"p50={statistics.median(lat):.1f} ms p99={pct(lat, 99):.1f} ms max={max(lat):.1f} ms; "
                      "slowest (ms @ s after the first fill, its token (ticks produced in the 250 ms up to its tick, "
                      "of them its token's; ms from the tick to the first signal sent from it)): "
                      + ", ".join(f"{ms:.0f} @ {(ts - min(g[0] for g in got)) / 1000:.0f} {token} "
                                  f"({produced_before(offered, ts - ms)}, {produced_before(offered_of.get(token, []), ts - ms)}; "
                                  f"{signal_ms.get(cid, math.nan):.0f} ms)" for ts, ms, cid, token in slowest), flush=True)
            else:
                print(f"latency at --speed {speed}: no fills", flush=True)
        finally:
            stack.stop()
        if lat and not args.no_bare_live:
            # The ceiling for each fill: how late the bare Faust agent, doing nothing but decode,
            # reads the very tick that fill came from when the sample is fed the same way.
            delays = bare_faust_live(speed, tmp)
            d = sorted(delays.values())
            of_fills = [(ms, delays.get(cid)) for _, ms, cid, _ in sorted(got, key=lambda g: -g[1])[:5]]
            print(f"ceiling at --speed {speed}: the bare Faust agent reads ticks after p50={statistics.median(d):.1f} ms "
                  f"p99={pct(d, 99):.1f} ms max={max(d):.1f} ms (n={len(d)}); the slowest fills' ticks "
                  "(ms to the fill here / ms until the bare agent read the same tick): "
                  + ", ".join(f"{ms:.0f} / {'?' if b is None else f'{b:.0f}'}" for ms, b in of_fills), flush=True)


if __name__ == "__main__":
    main()

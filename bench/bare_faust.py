"""The bare-Faust ceiling: a one-agent Faust app that decodes each message of a topic as JSON and
counts it; when it has seen BARE_N messages it prints ``BARE <n> <seconds from the first message
to the last>`` and exits. Run by :mod:`bench.pipeline` as ``python bench/bare_faust.py worker``
with BARE_TOPIC, BARE_N, BARE_BROKER (``kafka://…`` or ``confluent://…``), BARE_APP_ID and
BARE_DATA_DIR in the environment.

Its result line also gives the CPU seconds its main thread (the event loop: Faust's dispatch,
the agent) and its other threads (aiokafka's consumer thread) used between the first message and
the last: ``BARE <n> <seconds> <main thread CPU-s> <other threads' CPU-s>``.

With BARE_DELAYS set (a file path) it also notes each message's receive delay, the agent's wall
clock (ms) minus the event's ``ingest_ms`` (when the feed produced it), and writes
``{event_id: delay_ms}`` there before it exits; it prints ``BARE_READY`` once it has its
partitions, so a live feed can start after it. With BARE_PARENT_PID it exits once that process
(the benchmark that started it) has ended."""

from __future__ import annotations

import json
import os
import sys
import time

import faust

app = faust.App(os.environ.get("BARE_APP_ID", "bare-faust"), broker=os.environ.get("BARE_BROKER", "kafka://127.0.0.1:9092"),
                datadir=os.environ.get("BARE_DATA_DIR", "/tmp/bare-faust"), web_enabled=False,
                key_serializer="raw", value_serializer="raw", consumer_auto_offset_reset="earliest")
topic = app.topic(os.environ.get("BARE_TOPIC", "price.ticks"), key_type=bytes, value_type=bytes)
N = int(os.environ.get("BARE_N", "1"))
DELAYS = os.environ.get("BARE_DELAYS")
PARENT = int(os.environ.get("BARE_PARENT_PID", "0"))


@app.timer(1.0)
async def _exit_with_parent() -> None:
    # a benchmark killed outright must not leave this one behind, holding a core
    if PARENT and os.getppid() != PARENT:
        os._exit(1)


@app.on_partitions_assigned.connect
async def _ready(sender, assigned, **kwargs) -> None:
    if assigned:
        print("BARE_READY", flush=True)


def cpu_split() -> tuple[float, float]:
    """(main thread, whole process) user + system CPU seconds, from ``/proc/self``."""
    tick = os.sysconf("SC_CLK_TCK")

    def stat(path: str) -> float:
        with open(path) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / tick

    return stat(f"/proc/self/task/{os.getpid()}/stat"), stat("/proc/self/stat")


@app.agent(topic)
async def count(stream):
    n, t0, cpu0 = 0, None, (0.0, 0.0)
    delays: dict[str, float] = {}
    async for value in stream:
        event = json.loads(value)
        if DELAYS and event.get("ingest_ms"):
            delays[event["event_id"]] = time.time() * 1000.0 - event["ingest_ms"]
        if t0 is None:
            t0, cpu0 = time.perf_counter(), cpu_split()
        n += 1
        if n >= N:
            if DELAYS:
                with open(DELAYS, "w") as f:
                    json.dump(delays, f)
            main, total = (b - a for a, b in zip(cpu0, cpu_split()))
            print(f"BARE {n} {time.perf_counter() - t0:.4f} {main:.2f} {total - main:.2f}", flush=True)
            sys.stdout.flush()
            os._exit(0)


if __name__ == "__main__":
    app.main()

"""The Kafka backtest engine: history through an isolated worker, the end-to-end audit of the
in-process engine.

A run starts its own worker process (``faust -A app worker``) with its own app id and topic
prefix, hence its own consumer group, tables and changelogs, its own paper exchange and account
balance, and ``STORE_EVENTS=false`` so nothing it derives mixes with the live event store; every
setting of the run is passed to it (so both engines run the same configuration). The input events
are produced to the run's topics in timestamp order with their original timestamps; every agent
works on event time, so the wall clock does not enter the result. When the worker has consumed
the input and gone quiet, the fills are read back from the run's ``trade.executed`` topic. Its
Kafka clients take the worker's brokers and SASL/SSL settings.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Callable
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from app.local import Stack

TOPIC_OF_INPUT = {"price.tick": "price.ticks", "sentiment.update": "sentiment.updates",
                  "liquidation.event": "liquidation.events"}


async def _produce(conn: dict, prefix: str, events: list[dict], speed: float | None,
                   progress: Callable[[int], None]) -> None:
    producer = AIOKafkaProducer(**conn, linger_ms=5, max_batch_size=262_144, acks="all")
    await producer.start()
    try:
        t0, first = time.monotonic(), events[0]["timestamp"] if events else 0
        for i, ev in enumerate(events):
            if speed:
                wait = t0 + (ev["timestamp"] - first) / 1000.0 / speed - time.monotonic()
                if wait > 0.001:
                    await asyncio.sleep(wait)
            await producer.send(prefix + TOPIC_OF_INPUT[ev["event_type"]], json.dumps(ev).encode(),
                                key=ev["token"].encode())
            if i % 1000 == 999:
                progress(1000)
        await producer.flush()
        progress(len(events) % 1000)
    finally:
        await producer.stop()


async def read_topics(conn: dict, topics: list[str], idle_s: float) -> list[tuple[str, dict]]:
    """Every event on the topics from the beginning, as (topic, event), until none arrives for
    ``idle_s`` seconds. ``conn``: aiokafka connection arguments
    (:meth:`core.settings.Settings.aiokafka_connection`)."""
    consumer = AIOKafkaConsumer(*topics, **conn, auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    out: list[tuple[str, dict]] = []
    try:
        while True:
            batch = await consumer.getmany(timeout_ms=int(idle_s * 1000))
            if not batch:
                return out
            for msgs in batch.values():
                out += [(m.topic, json.loads(m.value)) for m in msgs]
    finally:
        await consumer.stop()


def worker_env(settings) -> dict[str, str]:
    """Environment variables that give a worker exactly these settings (the fields that shape a
    backtest; infrastructure comes from the stack)."""
    import json as _json

    from backtest.api import result_settings

    env = {}
    for k, v in result_settings(settings).items():
        if v is None:
            continue
        env[k.upper()] = v if isinstance(v, str) else _json.dumps(v)
    return env


def run_kafka(events: list[dict], settings, *, workdir: Path, speed: float | None = None,
              progress: Callable[[int], None] = lambda n: None, keep_topics: bool = False,
              quiet_s: float = 3.0) -> tuple[list[dict], float, str]:
    """Replay ``events`` (wire JSON dicts, sorted by timestamp) through an isolated worker with
    ``settings`` (:func:`backtest.api.backtest_settings`); ``speed``: a real-time multiple, or
    None for as fast as possible. Returns (fills as JSON dicts, replay seconds, run id). Raises
    TimeoutError when the worker fails or does not finish."""
    if not events:
        raise ValueError("no events to replay")
    # History of any age replays: the event-time floor guards the live path, not a backtest.
    env = {**worker_env(settings), "EXCHANGE": "paper", "STORE_EVENTS": "false", "DASHBOARD_ENABLED": "false",
           "STORE_URL": "memory://", "EVENT_TIME_FLOOR_MS": "0"}
    stack = Stack(workdir, settings.database_url, **env)
    # No LLM (its answers depend on wall-clock latency) and no Discord alerts from a backtest.
    for key in ("ANTHROPIC_API_KEY", "DISCORD_WEBHOOK_URL"):
        stack.env.pop(key, None)
    conn = settings.aiokafka_connection()
    prefix = stack.env["TOPIC_PREFIX"]
    n_ticks = sum(1 for e in events if e["event_type"] == "price.tick")
    worker = stack.worker("backtest")
    try:
        stack.declare_topics(conn)
        worker.start()
        t0 = time.monotonic()
        asyncio.run(_produce(conn, prefix, events, speed, progress))
        # Done when the trading agent has every tick and every agent has caught up with its
        # input (consumer lag 0 on every partition, twice in a row).
        deadline, idle = time.monotonic() + 3600, 0
        while idle < 2:
            if time.monotonic() > deadline or (worker.proc and worker.proc.poll() is not None):
                raise TimeoutError(f"the backtest worker did not finish: {worker.log_tail()}")
            m = worker.metrics()
            # the run's topics only: changelogs of active tables are written, not consumed
            lags = [v for k, v in m.items() if k.startswith("moondev_consumer_lag{") and f'topic="{prefix}' in k]
            caught_up = m.get("moondev_ticks_consumed_total", 0) >= n_ticks and lags and max(lags) == 0
            idle = idle + 1 if caught_up else 0
            time.sleep(0.25)
        elapsed = time.monotonic() - t0
        fills = [e for _, e in asyncio.run(read_topics(conn, [prefix + "trade.executed"], quiet_s))
                 if e.get("event_type") == "trade.executed"]
    finally:
        worker.stop(signal.SIGKILL)  # nothing to keep: its tables are in memory, its topics go next
        if not keep_topics:
            try:
                stack.delete_topics(conn)
            except Exception:  # noqa: BLE001 - cleanup is best effort
                pass
    return sorted(fills, key=lambda f: (f["timestamp"], f.get("fill_id") or "")), max(elapsed, 1e-9), stack.run_id

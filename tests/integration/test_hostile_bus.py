"""10,000 fuzzed messages through the real broker to a running worker: mutations of real events
(the corpus of ``tests/unit/test_fuzz.py``: fields set to any JSON value or dropped, timestamps far
out of range, integers beyond 64 bits, raw and corrupted bytes, NaN and 1e400 in the text, huge
fields, event types moved to other topics, keys that are not the event's token or account,
non-UTF-8 keys), produced on every topic a worker or its event-store sink reads.

What must hold: no handler fails (no ``agent.error``: every message is either handled or
refused), every message the decode path refuses is in the event store's dead letters with a
reason, ``/health/`` answers 200 throughout, and the worker still trades afterwards."""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
import urllib.error
import urllib.request

import asyncpg
import pytest

from app.local import SAMPLE, Stack, wait_until
from models.events import EventError, decode_checked_at, derived_id
from models.topics import TOPIC_OF_EVENT, TOPIC_SPECS

pytestmark = pytest.mark.integration

N = 10_000
AHEAD_MS, FLOOR_MS = 300_000, 1_230_940_800_000  # the worker's defaults (EVENT_MAX_AHEAD_SECONDS, EVENT_TIME_FLOOR_MS)
#: every topic something in the worker reads; a dead letter of a dead letter is only logged
FUZZED = sorted(name for name in TOPIC_SPECS if name != "dead.letters")


def fuzzed_messages(seed: int = 20261128) -> list[tuple[str, bytes | None, bytes]]:
    """``(topic name, key, value)`` of N seeded mutations of real events, each on its event
    type's topic (one in ten on another), mostly under the key of its token or account."""
    from tests.unit.test_fuzz import CORPUS, seeded_mutation

    rng = random.Random(seed)
    out = []
    for _ in range(N):
        base = rng.choice(CORPUS)
        topic = TOPIC_OF_EVENT[base["event_type"]] if rng.random() < 0.9 else rng.choice(FUZZED)
        if topic == "dead.letters":
            topic = "system"
        value = seeded_mutation(rng, base)
        keyed_by = TOPIC_SPECS[topic].key
        own = base.get(keyed_by) if keyed_by else None
        own_key = own.encode("utf-8", "surrogatepass") if isinstance(own, str) else None
        key = rng.choice([own_key] * 6 + [None, rng.randbytes(rng.randrange(1, 8)), b"\xff\xfe", b"ghost"])
        out.append((topic, key, value))
    return out


def refused(value: bytes, key: bytes | None, topic: str, now_ms: int) -> bool:
    """Whether the decode path every consumer runs refuses the message."""
    try:
        decode_checked_at(value, now_ms, AHEAD_MS, FLOOR_MS, key=key, keyed_by=TOPIC_SPECS[topic].key)
    except EventError:
        return True
    return False


@pytest.fixture
def stack(tmp_path, fresh_database_url):
    s = Stack(tmp_path, fresh_database_url, BAR_SECONDS="1", CONTROL_TOKEN="bus-token-0f3e")
    yield s
    s.stop()


def test_ten_thousand_fuzzed_messages_through_the_broker(stack, fresh_database_url):
    from aiokafka import AIOKafkaProducer

    worker = stack.worker("w1").start()
    prefix = stack.env["TOPIC_PREFIX"]
    messages = fuzzed_messages()
    health: list[int] = []
    done = threading.Event()

    def watch_health() -> None:
        while not done.is_set():
            try:
                with urllib.request.urlopen(worker.url + "/health/", timeout=10) as r:
                    health.append(r.status)
            except urllib.error.HTTPError as exc:
                health.append(exc.code)
            except OSError:
                health.append(0)
            time.sleep(0.5)

    async def produce() -> list[tuple[str, int, int]]:
        producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:9092", max_request_size=4 * 1024 * 1024,
                                    linger_ms=5)
        await producer.start()
        try:
            futures = [await producer.send(prefix + topic, value, key=key) for topic, key, value in messages]
            return [(prefix + topic, md.partition, md.offset)
                    for (topic, _, _), md in zip(messages, await asyncio.gather(*futures))]
        finally:
            await producer.stop()

    watcher = threading.Thread(target=watch_health, daemon=True)
    watcher.start()
    t0 = time.monotonic()
    try:
        where = asyncio.run(produce())
        now_ms = int(time.time() * 1000)
        bad = {derived_id("dead_letter", *loc): (topic, key, value)
               for loc, (topic, key, value) in zip(where, messages) if refused(value, key, topic, now_ms)}
        produced_s = time.monotonic() - t0

        async def stored_dead_letters() -> dict:
            conn = await asyncpg.connect(fresh_database_url)
            try:
                rows = await conn.fetch("SELECT event_id, data->>'reason' AS reason FROM events "
                                        "WHERE event_type = 'dead_letter' AND event_id = ANY($1::uuid[])", list(bad))
                return {r["event_id"]: r["reason"] for r in rows}
            finally:
                await conn.close()

        deadline = time.monotonic() + 300
        while len(letters := asyncio.run(stored_dead_letters())) < len(bad) and time.monotonic() < deadline:
            time.sleep(1)
        handled_s = time.monotonic() - t0
        missing = [(topic, key, value[:300]) for i, (topic, key, value) in bad.items() if i not in letters]
        by_topic: dict[str, int] = {}
        for topic, _, _ in missing:
            by_topic[topic] = by_topic.get(topic, 0) + 1
        assert not missing, f"{len(missing)} of {len(bad)} refused messages not dead-lettered: {by_topic}; {missing[:5]}"

        async def agent_errors() -> list:
            conn = await asyncpg.connect(fresh_database_url)
            try:
                return [r["data"] for r in await conn.fetch("SELECT data FROM events WHERE event_type = 'agent.error'")]
            finally:
                await conn.close()

        errors = asyncio.run(agent_errors())
        assert worker.proc.poll() is None, "the worker is still running"
    finally:
        done.set()
        watcher.join(15)
    print(f"\n{N} fuzzed messages on {len(FUZZED)} topics produced in {produced_s:.1f} s; {len(bad)} refused by the "
          f"decode path, each dead-lettered with a reason, all stored within {handled_s:.1f} s; "
          f"/health/ polled {len(health)} times: {sorted(set(health))}; agent.error events: {len(errors)}")
    assert len(bad) > 0.3 * N, "most mutations are refused"
    assert all(reason for reason in letters.values())
    assert errors == [], errors[:3]
    assert health and set(health) == {200}, health

    # and it still works: the real sample trades
    before = worker.get("/portfolio/")["fills"]
    stack.feed(SAMPLE, "max")
    wait_until(lambda: worker.get("/portfolio/")["fills"] > before, 180, "fills after the fuzz")

"""A worker's first start on the real broker: topics it creates are listed before it joins its
group, and a global table changelog missing from the first assignment is recovered once the
metadata lists it (app.kafka)."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaClient
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from app.kafka import wait_until_listed
from app.local import Stack, wait_until

pytestmark = pytest.mark.integration

BROKER = "127.0.0.1:9092"
FAULTS = Path(__file__).parent / "faults"


def test_wait_until_listed_sees_a_created_topic_and_creates_none():
    created, never = f"startup-{uuid.uuid4().hex[:8]}", f"startup-never-{uuid.uuid4().hex[:8]}"

    async def run() -> list[str]:
        admin, client = AIOKafkaAdminClient(bootstrap_servers=BROKER), AIOKafkaClient(bootstrap_servers=BROKER)
        await admin.start()
        await client.bootstrap()
        try:
            await admin.create_topics([NewTopic(created, 3, 1)])
            await wait_until_listed(client, [created], timeout=10)
            with pytest.raises(TimeoutError, match=never):
                await wait_until_listed(client, [created, never], timeout=1)
            return await admin.list_topics()
        finally:
            await admin.delete_topics([created])
            await client.close()
            await admin.close()

    topics = asyncio.run(run())
    assert created in topics
    assert never not in topics, "the wait must not auto-create the topics it asks about"


def test_worker_recovers_a_global_changelog_missing_from_its_first_assignment(tmp_path, database_url):
    pythonpath = os.pathsep.join(p for p in (str(FAULTS), os.environ.get("PYTHONPATH")) if p)
    stack = Stack(tmp_path, database_url, PYTHONPATH=pythonpath,
                  FAULT_LATE_TOPIC_SUFFIX="-halt-changelog", FAULT_LATE_TOPIC_DELAY_S="3")
    try:
        w = stack.worker().start(wait=90)
        log = w.log_tail(10**7)
        halt = f"{stack.env['APP_ID']}-halt-changelog"
        assert "assignment without global table changelogs missing" in log, "the fault did not happen"
        # The consumer's metadata refresh (10 s) sees the topic and the group rejoins with it.
        wait_until(lambda: f"TopicPartition(topic='{halt}', partition=0)" in w.log_tail(10**7), 40,
                   "the halt changelog assigned after the rejoin")
        wait_until(lambda: w.get("/health/").get("status") == "ok", 30, "the worker ready again")
    finally:
        stack.stop()


def test_a_worker_not_ready_in_time_says_which_checks_fail(tmp_path):
    """PostgreSQL unreachable (a closed port): the worker runs but never becomes ready, and after
    STARTUP_TIMEOUT_SECONDS it sends ``system.startup_failure`` naming the failing check."""
    import socket

    from aiokafka import AIOKafkaConsumer

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    stack = Stack(tmp_path, f"postgresql://postgres@127.0.0.1:{dead}/moondev", STARTUP_TIMEOUT_SECONDS="8")
    topic = stack.env["TOPIC_PREFIX"] + "system"

    async def failure() -> dict:
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=BROKER, auto_offset_reset="earliest",
                                    group_id=None, enable_auto_commit=False)
        await consumer.start()
        try:
            async with asyncio.timeout(120):
                while True:
                    for records in (await consumer.getmany(timeout_ms=1000)).values():
                        for r in records:
                            event = __import__("json").loads(r.value)
                            if event["event_type"] == "system.startup_failure":
                                return event
        finally:
            await consumer.stop()

    try:
        w = stack.worker().start(wait=None)
        event = asyncio.run(failure())
        assert event["checks"]["database"] is False and "database" in event["reason"]
        assert event["waited_s"] >= 8 and event["worker"].endswith(f":{w.env['WEB_PORT']}")
        assert "not ready" in w.log_tail(10**7)
    finally:
        stack.stop()


def test_a_worker_behind_on_its_input_sends_agent_lagging(tmp_path, database_url):
    """A worker started on a pre-loaded tick topic is thousands of messages behind at first: it
    says so with ``agent.lagging`` on the system topic (agent, partition, lag, threshold)."""
    from aiokafka import AIOKafkaConsumer

    from app.local import SAMPLE

    stack = Stack(tmp_path, database_url, AGENT_LAG_THRESHOLD="200")
    try:
        stack.declare_topics()
        stack.feed(SAMPLE, "max")
        stack.worker().start(wait=120)
        prefix = stack.env["TOPIC_PREFIX"]

        async def lagging() -> list[dict]:
            consumer = AIOKafkaConsumer(prefix + "system", bootstrap_servers=BROKER, auto_offset_reset="earliest")
            await consumer.start()
            try:
                got = await consumer.getmany(timeout_ms=3000, max_records=10_000)
                events = [json.loads(m.value) for msgs in got.values() for m in msgs]
                return [e for e in events if e.get("event_type") == "agent.lagging"]
            finally:
                await consumer.stop()

        events = wait_until(lambda: asyncio.run(lagging()), 60, "an agent.lagging event")
        ticks = [x for x in events if x["agent"] == "ticks"]
        assert ticks and all(x["topic"] == prefix + "price.ticks" for x in ticks), events
        assert all(x["lag"] >= x["threshold"] == 200 and x["partition"] >= 0 for x in events), events
        per_partition = [(x["topic"], x["partition"]) for x in events]
        assert len(per_partition) == len(set(per_partition)), "at most one a minute per partition"
    finally:
        stack.stop()


def _ended(pid: int) -> bool:
    """Whether process ``pid`` has exited (gone, or a zombie its new parent has not reaped yet)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_a_worker_stops_by_itself_when_the_process_that_started_it_is_killed(tmp_path):
    """A test or benchmark killed outright (kill -9) cannot stop its workers, which run in sessions
    of their own: each stops by itself within seconds (EXIT_WITH_PID, set by ``Stack``), its
    event-store sink with it, instead of holding its partitions, its port and a core."""
    import signal
    import subprocess
    import sys

    starter = subprocess.Popen([sys.executable, "-c", f"""
import json, time
from pathlib import Path
from app.local import Stack
stack = Stack(Path({str(tmp_path)!r}))
w = stack.worker().start()
print(json.dumps({{"pid": w.proc.pid, "prefix": stack.env["TOPIC_PREFIX"], "app_id": stack.env["APP_ID"]}}), flush=True)
time.sleep(600)
"""], cwd=Path(__file__).resolve().parents[2], stdout=subprocess.PIPE, text=True)
    started = None
    try:
        started = json.loads(starter.stdout.readline())
        worker = started["pid"]
        children = [int(c) for t in os.listdir(f"/proc/{worker}/task")
                    for c in Path(f"/proc/{worker}/task/{t}/children").read_text().split()]
        assert children, "the worker's event-store sink process is running"
        assert not _ended(worker)
        starter.send_signal(signal.SIGKILL)
        starter.wait(10)
        wait_until(lambda: _ended(worker), 60, "the worker to stop after its starter was killed")
        wait_until(lambda: all(_ended(c) for c in children), 15, "the worker's sink to stop with it")
        log = (tmp_path / "w1.log").read_text()
        assert f"the process that started this worker (pid {starter.pid}) has ended: stopping" in log
    finally:
        if starter.poll() is None:
            starter.kill()
        if started:
            if not _ended(started["pid"]):
                os.kill(started["pid"], signal.SIGKILL)
            cleanup = Stack(tmp_path / "cleanup")
            cleanup.env.update(TOPIC_PREFIX=started["prefix"], APP_ID=started["app_id"])
            cleanup.delete_topics()

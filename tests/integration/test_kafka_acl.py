"""Trust on the bus: a single-node KRaft broker of its own with SASL/SCRAM-SHA-512 and KRaft's
StandardAuthorizer (nobody may do anything without an ACL), the ACLs of ``deploy/kafka/acls.json``
applied through Kafka's own ``kafka.admin.AclCommand`` as ``faust -A app acls`` prints them. A
worker authenticated as ``moondev`` trades the sample fed by ``ingest``; ``ingest`` cannot write
an approval, a fill or an order, nor read anything; ``reader`` reads but cannot write; a client with
a wrong password is refused."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from app.local import FAUST, ROOT, SAMPLE, Stack, free_port, wait_until

pytestmark = pytest.mark.integration

LIBS = ROOT / ".local" / "kafka" / "libs"
USERS = {"admin": "admin-secret-5c1e", "moondev": "moondev-secret-8a2f", "ingest": "ingest-secret-33d0",
         "reader": "reader-secret-e71b"}
MECHANISM = "SCRAM-SHA-512"


def _java(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["java", "-Xms64m", "-Xmx256m", "-cp", f"{LIBS}/*", *args], capture_output=True,
                          text=True, **kw)


@pytest.fixture(scope="module")
def sasl_broker(tmp_path_factory):
    if not any(LIBS.glob("kafka-server-*.jar")):
        pytest.fail(f"no Kafka jars in {LIBS}: 'make up' (make test does) fetches them")
    d = tmp_path_factory.mktemp("sasl-broker")
    port, cport = free_port(), free_port()
    conf = d / "server.properties"
    conf.write_text(f"""process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{cport}
listeners=SASL_PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport}
advertised.listeners=SASL_PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=SASL_PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT
sasl.enabled.mechanisms={MECHANISM}
sasl.mechanism.inter.broker.protocol={MECHANISM}
listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="{USERS['admin']}";
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
# the controller listener is PLAINTEXT on loopback: its principal is ANONYMOUS
super.users=User:admin;User:ANONYMOUS
allow.everyone.if.no.acl.found=false
log.dirs={d / 'data'}
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=5
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
""")
    scram = [a for name, pw in USERS.items() for a in ("--add-scram", f"{MECHANISM}=[name={name},password={pw}]")]
    fmt = _java("kafka.tools.StorageTool", "format", "-t", uuid.uuid4().hex[:22], "-c", str(conf), *scram, timeout=120)
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr
    (d / "log4j.properties").write_text("log4j.rootLogger=WARN, stdout\nlog4j.appender.stdout=org.apache.log4j.ConsoleAppender\n"
                                        "log4j.appender.stdout.layout=org.apache.log4j.PatternLayout\n")
    log = open(d / "broker.log", "wb")
    proc = subprocess.Popen(["java", "-Xms256m", "-Xmx512m", "-XX:+UseG1GC", "-Djava.awt.headless=true",
                             f"-Dlog4j.configuration=file:{d / 'log4j.properties'}", "-cp", f"{LIBS}/*",
                             "kafka.Kafka", str(conf)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    admin = d / "admin.properties"
    admin.write_text(f"security.protocol=SASL_PLAINTEXT\nsasl.mechanism={MECHANISM}\n"
                     f"sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required "
                     f'username="admin" password="{USERS["admin"]}";\n')
    try:
        import socket

        def listening():
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        wait_until(lambda: listening() or proc.poll() is not None, 90, "the SASL broker listening")
        assert proc.poll() is None, (d / "broker.log").read_text()[-3000:]
        yield {"port": port, "bootstrap": f"127.0.0.1:{port}", "admin": admin, "dir": d}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
        shutil.rmtree(d / "data", ignore_errors=True)


def conn(broker: dict, user: str, password: str | None = None) -> dict:
    return {"bootstrap_servers": broker["bootstrap"], "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": MECHANISM, "sasl_plain_username": user, "sasl_plain_password": password or USERS[user]}


def env_of(broker: dict, user: str) -> dict[str, str]:
    return {"KAFKA_BROKER": f"kafka://{broker['bootstrap']}", "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "KAFKA_SASL_MECHANISM": MECHANISM, "KAFKA_SASL_USERNAME": user, "KAFKA_SASL_PASSWORD": USERS[user]}


async def try_produce(c: dict, topic: str, value: bytes, key: bytes) -> str:
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaError

    producer = AIOKafkaProducer(**c, request_timeout_ms=15000)
    try:
        await producer.start()
        await producer.send_and_wait(topic, value, key=key)
        return "ok"
    except KafkaError as exc:
        return type(exc).__name__
    finally:
        await producer.stop()


async def try_consume(c: dict, topic: str, group: str) -> str:
    from aiokafka import AIOKafkaConsumer
    from aiokafka.errors import KafkaError

    consumer = AIOKafkaConsumer(topic, **c, group_id=group, auto_offset_reset="earliest", request_timeout_ms=15000)
    try:
        await consumer.start()
        batch = await consumer.getmany(timeout_ms=5000)
        return f"ok {sum(len(v) for v in batch.values())}"
    except KafkaError as exc:
        return type(exc).__name__
    finally:
        await consumer.stop()


def test_service_roles_on_a_sasl_broker_with_acls(sasl_broker, tmp_path, fresh_database_url):
    stack = Stack(tmp_path, fresh_database_url, BAR_SECONDS="1", **env_of(sasl_broker, "moondev"))
    prefix = stack.env["TOPIC_PREFIX"]
    printed = subprocess.run([FAUST, "-A", "app", "acls", "--bootstrap-server", sasl_broker["bootstrap"],
                              "--command-config", str(sasl_broker["admin"])], cwd=ROOT, env=stack.env,
                             capture_output=True, text=True, timeout=120)
    assert printed.returncode == 0, printed.stderr
    lines = [shlex.split(line) for line in printed.stdout.splitlines() if line.strip()]
    assert lines and all(line[0] == "kafka-acls.sh" for line in lines)
    for line in lines:
        done = _java("kafka.admin.AclCommand", *line[1:], timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr

    # the admin creates the catalogue, as an operator would before the first start
    stack.declare_topics(conn(sasl_broker, "admin"))
    try:
        got, fills = _run(stack, sasl_broker, prefix)
    finally:
        stack.stop(delete_topics=False)  # the broker goes with its fixture
    print(f"\nSASL/SCRAM broker with ACLs: the worker traded ({fills} fills) fed by ingest; {got}")
    assert got["ingest writes ticks"] == "ok"
    for refused in ("ingest writes an approval", "ingest writes an execution request", "ingest writes a fill",
                    "ingest writes a halt", "reader writes an order"):
        assert got[refused] == "TopicAuthorizationFailedError", (refused, got[refused])
    assert got["ingest reads fills"] in ("TopicAuthorizationFailedError", "GroupAuthorizationFailedError"), got
    assert got["reader reads fills"].startswith("ok") and int(got["reader reads fills"].split()[1]) >= 1
    assert got["reader in another group"] == "GroupAuthorizationFailedError", got
    assert got["wrong password"] != "ok"


def _run(stack: Stack, sasl_broker: dict, prefix: str) -> tuple[dict, int]:
    worker = stack.worker("w1").start(wait=180)
    ingest_env = {**stack.env, **env_of(sasl_broker, "ingest")}
    fed = subprocess.run([FAUST, "-A", "app", "feed", str(SAMPLE), "--speed", "max"], cwd=ROOT, env=ingest_env,
                         capture_output=True, text=True, timeout=300)
    assert fed.returncode == 0, fed.stderr[-3000:]
    fills = wait_until(lambda: worker.get("/portfolio/")["fills"], 240, "the worker trading on the SASL broker")

    ev = {"event_id": str(uuid.uuid4()), "event_type": "trade.consensus_approved", "timestamp": int(time.time() * 1000),
          "token": "BTC", "source": "attacker", "consensus_score": 100, "contributing_agents": ["x", "y"],
          "recommended_action": "BUY", "window_start": 0, "window_end": 1, "price": 1.0}
    value = json.dumps(ev).encode()

    async def probes() -> dict:
        ing, rd = conn(sasl_broker, "ingest"), conn(sasl_broker, "reader")
        return {
            "ingest writes ticks": await try_produce(ing, prefix + "price.ticks", b"{}", b"BTC"),
            "ingest writes an approval": await try_produce(ing, prefix + "consensus", value, b"BTC"),
            "ingest writes an execution request": await try_produce(ing, prefix + "execution.requests", value, b"paper"),
            "ingest writes a fill": await try_produce(ing, prefix + "trade.executed", value, b"paper"),
            "ingest writes a halt": await try_produce(ing, prefix + "risk.alerts", value, b"paper"),
            "ingest reads fills": await try_consume(ing, prefix + "trade.executed", "reader-ingest"),
            "reader reads fills": await try_consume(rd, prefix + "trade.executed", "reader-audit"),
            "reader writes an order": await try_produce(rd, prefix + "orders", value, b"paper"),
            "reader in another group": await try_consume(rd, prefix + "trade.executed", "other-group"),
            "wrong password": await try_produce(conn(sasl_broker, "moondev", "not-the-password"),
                                                prefix + "price.ticks", b"{}", b"BTC"),
        }

    return asyncio.run(probes()), fills

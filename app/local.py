"""Run a worker and the feed as real subprocesses against the local broker and database.

Used by the integration tests and the benchmarks; not imported by the app itself. Each
:class:`Stack` gets its own app id, topic prefix, data folder and web port, so runs never see each
other's topics, consumer groups, tables or changelogs.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
FAUST = str(Path(sys.executable).parent / "faust")
SAMPLE = ROOT / "data" / "sample" / "binance_usdm_trades_20240808.csv.gz"


def wait_until(predicate, timeout: float, what: str, interval: float = 0.5, retry_on: tuple = ()):
    """Poll ``predicate`` until it returns something truthy (returned); AssertionError naming
    ``what`` and the last value after ``timeout`` seconds. Exceptions in ``retry_on`` count as a
    falsy answer (a view mid-rebalance, say)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except retry_on as exc:
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: Stacks with workers that may still run: stopped at exit, and on SIGTERM to the caller (a
#: benchmark under ``timeout``), since the workers run in sessions of their own and would
#: otherwise outlive it and skew the next run's figures.
_LIVE: set["Stack"] = set()


def _stop_live() -> None:
    for stack in list(_LIVE):
        for w in stack.workers:
            w.stop(timeout=10)


def _on_sigterm(signum, frame) -> None:
    _stop_live()
    raise SystemExit(128 + signum)


def _watch(stack: "Stack") -> None:
    if not getattr(_watch, "installed", False):
        _watch.installed = True
        atexit.register(_stop_live)
        import threading
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL):
            signal.signal(signal.SIGTERM, _on_sigterm)
    _LIVE.add(stack)


class Stack:
    """Environment of one isolated run (app id, topic prefix, database URL, data folder)."""

    def __init__(self, workdir: Path, database_url: str | None = None, **settings: str):
        self.run_id = uuid.uuid4().hex[:8]
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.env = {
            **os.environ,
            "APP_ID": f"moondev-{self.run_id}",
            "TOPIC_PREFIX": f"run-{self.run_id}.",
            "PYTHONUNBUFFERED": "1",
            # its workers stop by themselves should this process be killed before it stops them
            "EXIT_WITH_PID": str(os.getpid()),
        }
        if database_url:
            self.env["DATABASE_URL"] = database_url
        self.env.update({k.upper(): str(v) for k, v in settings.items()})
        self.workers: list[Worker] = []
        self.topics_declared = False

    def declare_topics(self, conn: dict | None = None, timeout: float = 30) -> None:
        """Create the run's topics (the catalogue, under the run's prefix) and wait until the
        broker's metadata lists every one. A consumer group member that subscribes to a topic
        its metadata does not show yet ignores it until the next metadata refresh (minutes), and
        the agent reading it would get nothing: a worker is started only once they exist.
        ``conn``: aiokafka connection arguments (default: KAFKA_BROKER, plaintext)."""
        from aiokafka.admin import NewTopic

        from app.kafka import wait_until_listed
        from models.topics import TOPIC_SPECS

        prefix = self.env["TOPIC_PREFIX"]
        specs = {prefix + name: spec for name, spec in TOPIC_SPECS.items()}
        # what the worker's settings give its topics (core.settings: TOPIC_*)
        replicas = int(self.env.get("TOPIC_REPLICATION_FACTOR") or 1)
        min_insync = self.env.get("TOPIC_MIN_INSYNC_REPLICAS") or "1"
        hours = json.loads(self.env.get("TOPIC_RETENTION_HOURS") or "{}")

        def configs(spec) -> dict[str, str]:
            retention = hours.get(spec.name, spec.retention.total_seconds() / 3600)
            return {"retention.ms": str(int(retention * 3_600_000)), "min.insync.replicas": min_insync}

        async def declare(admin) -> None:
            missing = sorted(set(specs) - set(await admin.list_topics()))
            if missing:
                await admin.create_topics([NewTopic(t, specs[t].partitions, replicas, topic_configs=configs(specs[t]))
                                           for t in missing])
            await wait_until_listed(admin._client, specs, timeout)

        self._admin(declare, conn)
        self.topics_declared = True

    def _admin(self, action, conn: dict | None = None) -> None:
        """Run ``await action(admin)`` with an aiokafka admin client on the run's broker (``conn``:
        aiokafka connection arguments, default KAFKA_BROKER in plaintext), from sync code that may
        itself be inside an event loop."""
        from concurrent.futures import ThreadPoolExecutor

        from aiokafka.admin import AIOKafkaAdminClient

        from core.settings import bootstrap_servers

        if conn is None:
            conn = {"bootstrap_servers": bootstrap_servers(self.env.get("KAFKA_BROKER", "kafka://127.0.0.1:9092"))}

        async def run() -> None:
            admin = AIOKafkaAdminClient(**conn)
            await admin.start()
            try:
                await action(admin)
            finally:
                await admin.close()

        with ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, run()).result()

    def worker(self, name: str = "w1", **extra: str) -> "Worker":
        w = Worker(self, name, **extra)
        self.workers.append(w)
        _watch(self)
        return w

    def feed(self, file: Path | str = SAMPLE, speed: str = "max", *args: str, timeout: float = 300) -> str:
        """Run ``faust -A app feed`` to completion; returns its output. Raises on failure."""
        proc = subprocess.run([FAUST, "-A", "app", "feed", str(file), "--speed", speed, *args], cwd=ROOT,
                              env=self.env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"feed failed ({proc.returncode}): {proc.stderr[-2000:]}")
        return proc.stdout + proc.stderr

    def stop(self, delete_topics: bool = True) -> None:
        """Stop the workers, then (``delete_topics``) delete the run's topics: its catalogue
        under the prefix and the worker's own (changelogs, assignor), so repeated runs do not
        pile up thousands of topics on the broker, whose every full metadata answer a client
        then decodes in Python (~0.1 s each at 2,000 topics). With ``KEEP_TEST_TOPICS=1`` in
        the environment they are kept, to read a failed run's log and changelogs."""
        for w in self.workers:
            w.stop()
        _LIVE.discard(self)
        if delete_topics and self.topics_declared and not os.environ.get("KEEP_TEST_TOPICS"):
            try:
                self.delete_topics()
            except Exception as exc:  # noqa: BLE001 - cleanup must not hide the run's own outcome
                print(f"Stack.stop: topics of run {self.run_id} not deleted: {exc}", file=sys.stderr)

    def delete_topics(self, conn: dict | None = None) -> None:
        """Delete the run's topics: its catalogue (the prefix) and the worker's own (changelogs,
        assignor: the app id). ``conn`` as for :meth:`declare_topics`."""
        owned = (self.env["TOPIC_PREFIX"], self.env["APP_ID"] + "-")

        async def delete(admin) -> None:
            mine = [t for t in await admin.list_topics() if t.startswith(owned)]
            if mine:
                await admin.delete_topics(mine)

        self._admin(delete, conn)


class Worker:
    def __init__(self, stack: Stack, name: str, **extra: str):
        self.stack = stack
        self.name = name
        self.port = free_port()
        self.data_dir = stack.workdir / f"data-{name}"
        self.log_path = stack.workdir / f"{name}.log"
        self.env = {**stack.env, "WEB_PORT": str(self.port), "DATA_DIR": str(self.data_dir),
                    **{k.upper(): str(v) for k, v in extra.items()}}
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait: float | None = 120) -> "Worker":
        """Start the worker process and wait up to ``wait`` seconds for ``/health/`` to be ok
        (``None``: do not wait)."""
        if not self.stack.topics_declared:
            self.stack.declare_topics()
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen([FAUST, "-A", "app", "worker", "-l", "info"], cwd=ROOT, env=self.env,
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        if wait is not None:
            self.wait_ready(wait)
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        health: dict | str = "no answer"
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"worker {self.name} exited with {self.proc.returncode}; log: {self.log_tail()}")
            try:
                health = self.get("/health/")
                if health.get("status") == "ok":
                    return
            except (OSError, ValueError) as exc:
                health = repr(exc)
            time.sleep(0.5)
        raise TimeoutError(f"worker {self.name} not ready within {timeout} s (last /health/: {health}); "
                           f"log: {self.log_tail()}")

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def get(self, path: str, timeout: float = 5) -> dict:
        """GET a JSON view, with the worker's CONTROL_TOKEN as bearer token when it has one (the
        event-store views need it); an HTTP error's JSON body is returned like an answer."""
        token = self.env.get("CONTROL_TOKEN")
        req = urllib.request.Request(self.url + path, headers={"Authorization": f"Bearer {token}"} if token else {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return json.loads(exc.read())

    def metrics(self, *names: str) -> dict[str, float]:
        """Prometheus samples as ``{'name{label="v",...}': value}`` (labels sorted); ``names``:
        only these families (cheap enough to poll often), all by default."""
        query = "?" + urllib.parse.urlencode([("name[]", n) for n in names]) if names else ""
        with urllib.request.urlopen(self.url + "/metrics/" + query, timeout=5) as r:
            text = r.read().decode()
        out = {}
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
                out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
        return out

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

"""Two worker replicas on the real broker share the partitions; any replica answers every view
(table views are routed to the owner); after a SIGKILL the survivor takes the dead worker's
partitions over (from its standby replicas and the changelogs) and serves the same state."""

from __future__ import annotations

import signal
import time

import pytest
from aiokafka.partitioner import DefaultPartitioner

from app.local import SAMPLE, Stack, wait_until

pytestmark = pytest.mark.integration

SESSION_TIMEOUT_S = 10
VIEWS = ["/portfolio/", "/positions/", "/prices/", "/indicators/BTC/", "/indicators/ETH/", "/halt/", "/signals/",
         "/decisions/", "/trades/", "/orders/", "/alerts/"]


def views(worker) -> dict:
    return {path: worker.get(path, timeout=10) for path in VIEWS}


def owner_of(workers, table: str, key: str, partitions: int):
    """The worker whose assignment holds ``key``'s partition of ``table``'s changelog (Faust's
    ``/router/`` view; keys are partitioned like the topic keys, murmur2)."""
    p = DefaultPartitioner()(key.encode(), list(range(partitions)), list(range(partitions)))
    for w in workers:
        for url, topics in w.get("/router/").items():
            if url.endswith(f":{w.port}"):
                if any(t.endswith(f"-{table}-changelog") and p in parts for t, parts in topics.items()):
                    return w
    return None


def test_survivor_serves_every_view_with_the_killed_workers_state(tmp_path, fresh_database_url):
    stack = Stack(tmp_path, database_url=fresh_database_url, BAR_SECONDS="1", CONSENSUS_MIN_AGENTS="1",
                  KAFKA_SESSION_TIMEOUT_SECONDS=str(SESSION_TIMEOUT_S), KAFKA_HEARTBEAT_INTERVAL_SECONDS="1",
                  STORE_EVENTS="false")
    w1 = stack.worker("w1").start()
    w2 = stack.worker("w2").start()
    try:
        # both in the group, partitions split between them
        def split():
            a = w1.get("/router/")
            return len(a) == 2 and a
        assignment = wait_until(split, 90, "both workers in the assignment", retry_on=(OSError, ValueError))
        stack.feed(SAMPLE, "max")

        last: dict = {}

        def settled():
            a, b = views(w1), views(w2)
            last.update(a=a, b=b)
            if a["/portfolio/"].get("fills", 0) < 3 or a != b:
                return False
            time.sleep(2)
            return views(w1) == a == views(w2) and a
        try:
            before = wait_until(settled, 180, "both replicas answering every view alike",
                                retry_on=(OSError, ValueError))
        except AssertionError:
            a, b = last.get("a", {}), last.get("b", {})
            diff = {p: (a.get(p), b.get(p)) for p in VIEWS if a.get(p) != b.get(p)}
            raise AssertionError(f"replicas never agreed: fills {a.get('/portfolio/', {}).get('fills')}; "
                                 f"differing views: {str(diff)[:3000]}") from None
        assert before["/indicators/BTC/"]["token"] == "BTC" and before["/indicators/ETH/"]["token"] == "ETH"
        assert before["/trades/"]["events"] and before["/signals/"]["events"]

        victim = owner_of([w1, w2], "portfolio", "paper", 5)
        assert victim is not None, assignment
        survivor = w2 if victim is w1 else w1
        assert owner_of([survivor], "portfolio", "paper", 5) is None, "the survivor must not own it yet"

        t0 = time.monotonic()
        victim.stop(sig=signal.SIGKILL)
        seen: dict = {}

        def same():
            seen.update(views(survivor))
            return seen == before
        try:
            wait_until(same, SESSION_TIMEOUT_S + 60, "the survivor serving the same state",
                       retry_on=(OSError, ValueError))
        except AssertionError:
            diff = {p: (before[p], seen.get(p)) for p in before if seen.get(p) != before[p]}
            raise AssertionError(f"views differ after failover: {diff}") from None
        took = time.monotonic() - t0
        assert owner_of([survivor], "portfolio", "paper", 5) is survivor
        for path in ("/portfolio/paper/", "/positions/paper/"):
            assert survivor.get(path) == before[path.replace("paper/", "")]
        print(f"survivor served every view with the same state {took:.1f} s after SIGKILL "
              f"(session timeout {SESSION_TIMEOUT_S} s)")
    finally:
        stack.stop()

"""The event log rebuilds the state: after the bundled sample went through a worker, every
changelog topic and the worker's local state are deleted; ``faust -A app rebuild`` restores the
account tables from the latest snapshots plus the fills after them in the event store, and a new
worker serves the same portfolio, positions and dedupe set as before. (On this sample a BTC fill
stamped before the last snapshot reaches the portfolio agent after it: the rebuild applies fills
in the order the live agent did, by the sequence numbers their state.changed events record.)"""

from __future__ import annotations

import asyncio
import shutil
import subprocess

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from app.local import FAUST, ROOT, SAMPLE, Stack, wait_until
from store.rebuild import TABLE_PARTITIONS
from tests.integration.test_pipeline import db, settle

pytestmark = pytest.mark.integration


def read_table(stack: Stack, table: str) -> dict:
    """The last value per key of a table's changelog (what a recovering worker would load)."""
    topic = f"{stack.env['APP_ID']}-{table}-changelog"

    async def read() -> dict:
        consumer = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:9092", group_id=None, enable_auto_commit=False)
        await consumer.start()
        try:
            tps = [TopicPartition(topic, p) for p in range(TABLE_PARTITIONS[table])]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            end = await consumer.end_offsets(tps)
            out: dict = {}
            async def behind() -> bool:
                return any([await consumer.position(tp) < end[tp] for tp in tps])

            while await behind():
                for records in (await consumer.getmany(timeout_ms=1000)).values():
                    for r in records:
                        out[r.key.decode()] = orjson.loads(r.value) if r.value is not None else None
            return {k: v for k, v in out.items() if v is not None}
        finally:
            await consumer.stop()

    return asyncio.run(read())


def test_rebuild_from_the_event_store_restores_portfolio_positions_and_dedupe(tmp_path, fresh_database_url):
    dsn = fresh_database_url
    stack = Stack(tmp_path, dsn, BAR_SECONDS="1", SNAPSHOT_SECONDS="60", STORE_URL="rocksdb://")
    app_id = stack.env["APP_ID"]

    def rebuild(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([FAUST, "-A", "app", "rebuild", *args], cwd=ROOT, env=stack.env, capture_output=True,
                              text=True, timeout=300)
    try:
        w1 = stack.worker("w1").start()
        stack.feed(SAMPLE, "max")
        settle(w1, dsn)
        view = w1.get("/portfolio/")
        assert view["fills"] > 0
        before = {t: read_table(stack, t) for t in ("portfolio", "execution_state", "exposures")}
        snapshots = db(dsn, "SELECT count(*) AS n FROM events WHERE event_type = 'state.snapshot'")[0]["n"]
        last_snapshot = db(dsn, "SELECT max(timestamp) AS t FROM events WHERE event_type = 'state.snapshot'")[0]["t"]
        fills_after = db(dsn, "SELECT count(*) AS n FROM events WHERE event_type = 'trade.executed' AND timestamp > $1",
                         last_snapshot)[0]["n"]
        assert snapshots >= 2 and fills_after >= 1, "both paths: from a snapshot, and fills applied after it"

        refused = rebuild()
        assert refused.returncode == 1 and "stop them" in refused.stderr, "never under running workers"

        w1.stop()
        shutil.rmtree(w1.data_dir)

        async def drop_changelogs() -> None:
            from aiokafka.admin import AIOKafkaAdminClient

            admin = AIOKafkaAdminClient(bootstrap_servers="127.0.0.1:9092")
            await admin.start()
            try:
                mine = [t for t in await admin.list_topics() if t.startswith(app_id) and t.endswith("-changelog")]
                await admin.delete_topics(mine)
                for _ in range(100):
                    if not any(t in mine for t in await admin.list_topics()):
                        return
                    await asyncio.sleep(0.2)
                raise TimeoutError(f"changelogs not deleted: {mine}")
            finally:
                await admin.close()

        asyncio.run(drop_changelogs())
        done = rebuild()
        assert done.returncode == 0, done.stderr[-3000:]
        assert "written to the changelogs" in done.stdout + done.stderr

        after = {t: read_table(stack, t) for t in ("portfolio", "execution_state", "exposures")}
        assert after["portfolio"] == before["portfolio"]  # cash, positions, PnL, fees, applied fills: identical
        assert after["exposures"] == before["exposures"]
        assert {a: set(v["submitted"]) for a, v in after["execution_state"].items()} == \
            {a: set(v["submitted"]) for a, v in before["execution_state"].items()}

        w2 = stack.worker("w2").start()  # an empty data folder: the tables come from the rebuilt changelogs
        again = w2.get("/portfolio/")
        for k in ("cash", "realised_pnl", "fees_paid", "fills"):
            assert again[k] == view[k], k
        assert {t: (p["size"], p["entry_price"]) for t, p in again["positions"].items()} == \
            {t: (p["size"], p["entry_price"]) for t, p in view["positions"].items()}
        wait_until(lambda: w2.get("/health/").get("status") == "ok", 60, "the rebuilt worker healthy")
    finally:
        stack.stop()


def test_a_rebuild_restores_the_commands_answered_without_an_order(fresh_database_url):
    """The engine's ``answered`` ids come back from a rebuild: those in the last snapshot, and the
    pre-trade denials stored after it, so a command redelivered after a rebuild is answered as it
    was, not traded anew against the account as it is by then."""
    import uuid

    from app.main import encode_event
    from models.events import ConsensusDecision
    from processors.portfolio import PortfolioConfig
    from store.eventstore import EventStore, Row
    from store.rebuild import rebuild
    from tests.processors.test_processors import T0, engine_and_portfolio

    stores, ex, pf = engine_and_portfolio(snapshot_ms=60_000)

    def approval(dt: int, action: str) -> ConsensusDecision:
        return ConsensusDecision(event_id=uuid.uuid4(), event_type="trade.consensus_approved", timestamp=T0 + dt,
                                 token="BTC", source="consensus", consensus_score=85 if action == "BUY" else -85,
                                 contributing_agents=["a", "b"], recommended_action=action, window_start=T0 + dt,
                                 window_end=T0 + dt + 5000, price=50_000.0)

    async def scenario() -> dict:
        events = []
        for dt, action in [(0, "BUY"), (10_000, "BUY"), (61_000, "SELL")]:  # the second: already long
            out = await ex.process(approval(dt, action), account="paper")
            events += out + [e for f in out if f.event_type == "trade.executed" for e in pf.process(f)]
        stores["halt"]["paper"] = {"halted": True, "reason": "manual: test"}
        denied = await ex.process(approval(70_000, "BUY"), account="paper")  # after the last snapshot
        assert [e.event_type for e in denied] == ["risk.constraint_violation", "trade.rejected"]
        events += denied
        assert [e.event_type for e in events].count("state.snapshot") == 2
        store = EventStore(fresh_database_url)
        try:
            await store.migrate()
            await store.write([Row(e.event_id, e.event_type, e.timestamp, e.token, encode_event(e).decode(), e.source)
                               for e in events])
            return await rebuild(await store.pool(), PortfolioConfig(snapshot_ms=60_000), T0 + 3_600_000)
        finally:
            await store.close()

    rebuilt = asyncio.run(scenario())
    answered = stores["execution_state"]["paper"]["answered"]
    assert len(answered) == 2, "one approval that needed no order, one denied"
    assert rebuilt["execution_state"]["paper"]["answered"] == answered
    assert rebuilt["execution_state"]["paper"]["submitted"] == stores["execution_state"]["paper"]["submitted"]

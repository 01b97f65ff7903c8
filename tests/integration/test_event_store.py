"""The event store on the real PostgreSQL server: schema version 3 (daily partitions, chain indices), migrate
twice is a no-op, an upgrade from version 1 keeps the data, COPY writes are idempotent, and
cursor pagination returns every event once, in order."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import asyncpg
import pytest

from store.eventstore import EventStore, Row, decode_cursor

T0 = 1_723_161_280_000
DAY = 86_400_000


def run(coro):
    return asyncio.run(coro)


def rows(n: int, start: int = T0, step: int = 1000, token: str = "BTC") -> list[Row]:
    return [Row(uuid.uuid4(), "price.tick", start + i * step, token, json.dumps({"i": i}), "test") for i in range(n)]


async def _catalog(url: str) -> tuple:
    conn = await asyncpg.connect(url)
    try:
        versions = [tuple(r) for r in await conn.fetch("SELECT version, mode FROM schema_version ORDER BY 1")]
        parts = sorted(r["c"] for r in await conn.fetch(
            "SELECT inhrelid::regclass::text AS c FROM pg_inherits WHERE inhparent = 'events'::regclass"))
        indexes = sorted(r["indexname"] for r in await conn.fetch(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'events'"))
        return versions, parts, indexes
    finally:
        await conn.close()


def test_migrate_twice_is_a_no_op_and_v1_data_survives_the_upgrade(fresh_database_url):
    dsn = fresh_database_url

    async def scenario():
        from store.eventstore import _V1

        conn = await asyncpg.connect(dsn)  # a version-1 store with an event in it
        await conn.execute("CREATE TABLE schema_version (version int PRIMARY KEY, "
                           "applied_at timestamptz NOT NULL DEFAULT now())")
        await conn.execute(_V1)
        await conn.execute("INSERT INTO schema_version VALUES (1)")
        old = uuid.uuid4()
        await conn.execute("INSERT INTO events (event_id, event_type, timestamp, token, data, source) "
                           "VALUES ($1, 'price.tick', to_timestamp($2 / 1000.0), 'BTC', '{}', 'v1')", old, T0)
        await conn.close()
        store = EventStore(dsn)
        try:
            assert await store.migrate() == 3
            first = await _catalog(dsn)
            assert await store.migrate() == 3
            assert await _catalog(dsn) == first
            page, _ = await store.query(T0, T0 + 1)
            assert [r["event_id"] for r in page] == [str(old)]
        finally:
            await store.close()
        return first

    versions, parts, indexes = run(scenario())
    assert versions == [(1, None), (2, "partitioned"), (3, "partitioned")]
    assert "events_p20240808" in parts and len(parts) >= 9  # the old data's day and a week ahead
    assert {"events_pkey", "events_ts_token_type_idx2", "events_type_ts_idx2", "events_token_ts_idx",
            "events_event_id_idx", "events_correlation_idx"} <= set(indexes)


def test_copy_writes_are_idempotent_partitions_come_on_demand_and_pages_cover_everything(fresh_database_url):
    dsn = fresh_database_url

    async def scenario():
        store = EventStore(dsn)
        try:
            await store.migrate()
            batch = rows(2500) + rows(500, start=T0 + 40 * DAY, token="ETH")  # a day with no partition yet
            assert await store.write(batch) == 3000
            assert await store.write(batch[:100] + batch[:100]) == 0  # redelivered, even twice in a batch
            seen, cursor, pages = [], None, 0
            while True:
                page, cursor = await store.query(T0, T0 + 41 * DAY, limit=700, cursor=cursor)
                seen += page
                pages += 1
                if cursor is None:
                    break
            eth, _ = await store.query(T0, T0 + 41 * DAY, token="ETH", event_types=["price.tick"], limit=10_000)
            with pytest.raises(ValueError, match="bad cursor"):
                await store.query(T0, T0 + 1, cursor="not-a-cursor")
            with pytest.raises(ValueError, match="limit"):
                await store.query(T0, T0 + 1, limit=0)
            return batch, seen, pages, eth
        finally:
            await store.close()

    batch, seen, pages, eth = run(scenario())
    assert pages == 5 and len(seen) == 3000
    assert [r["event_id"] for r in seen] == [str(r.event_id) for r in batch]  # time order (ids unique per ms here)
    assert len(eth) == 500 and {r["token"] for r in eth} == {"ETH"}
    assert decode_cursor("MTcyMzE2MTI4MTAwMDAwMDphM2Y2MjFkNi1hMTMyLTQ4NDEtYWU3Ni0wY2Y3MWE3MTU0MGQ")[0] == 1723161281000


def test_pages_stop_at_their_byte_cap_and_still_cover_everything(fresh_database_url):
    """With ``max_bytes``, a page stops before the events' JSON passes the cap (one event at least,
    however large); following the cursors still returns every event once, in order."""
    async def scenario():
        store = EventStore(fresh_database_url)
        try:
            await store.migrate()
            big = [Row(uuid.uuid4(), "price.tick", T0 + i * 1000, "BTC", json.dumps({"i": i, "pad": "x" * 10_000}), "t")
                   for i in range(50)]
            huge = Row(uuid.uuid4(), "price.tick", T0 + 50_000, "BTC", json.dumps({"pad": "y" * 300_000}), "t")
            await store.write(big + [huge])
            pages, cursor = [], None
            while True:
                page, cursor = await store.query(T0, T0 + DAY, limit=10_000, cursor=cursor, max_bytes=100_000)
                pages.append(page)
                if cursor is None:
                    break
            return big + [huge], pages
        finally:
            await store.close()

    written, pages = run(scenario())
    assert [r["event_id"] for p in pages for r in p] == [str(r.event_id) for r in written]
    assert all(sum(len(r["data"]) + 200 for r in p) <= 100_000 for p in pages[:-1] if len(p) > 1)
    assert max(len(p) for p in pages) <= 9 and len(pages[-1]) == 1  # the 300 KB event alone on its page


def test_feeding_the_same_file_twice_stores_it_once(tmp_path, fresh_database_url):
    """Fed ticks take their ids from the data (feeds.files), so a second feed of the same file
    adds no row to the store."""
    from app.local import SAMPLE, Stack, wait_until

    async def stored() -> tuple[int, int]:
        conn = await asyncpg.connect(fresh_database_url)
        try:
            r = await conn.fetchrow("SELECT count(*) AS n, count(DISTINCT event_id) AS d FROM events "
                                    "WHERE event_type = 'price.tick'")
            return r["n"], r["d"]
        finally:
            await conn.close()

    def sink_caught_up(w) -> bool:
        lag = w.metrics("moondev_sink_lag")
        return bool(lag) and sum(lag.values()) == 0

    stack = Stack(tmp_path, fresh_database_url)
    try:
        w = stack.worker().start()
        stack.feed(SAMPLE, "max", "--limit", "400")
        wait_until(lambda: run(stored())[0] >= 400, 60, "the first feed stored")
        stack.feed(SAMPLE, "max", "--limit", "400")
        time.sleep(1)
        wait_until(lambda: sink_caught_up(w), 60, "the sink caught up with the second feed")
        assert run(stored()) == (400, 400)
    finally:
        stack.stop()

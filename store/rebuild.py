"""Rebuild the worker's account tables from the event store: the event log, not the changelogs,
is the source of truth.

For each account: its latest ``state.snapshot`` at or before the chosen time (none: a new
account), then every ``trade.executed`` the live agent applied after it, applied by the portfolio
processor itself over dicts, in the order the live agent applied them: each fill's
``state.changed`` records its sequence number (the account's fill count after it), so the fills
above the snapshot's count are the ones to apply, even one stamped before the snapshot (fills of
different tokens arrive in arrival order, not event-time order; looked for up to
``REORDER_LOOKBACK_MS`` before it); a fill without a stored ``state.changed`` counts when it is
not in the snapshot's applied list and is stamped after it. The execution engine's submitted
client order ids are the snapshot's plus those of these fills and of the ``trade.placed`` orders
after it (the last ``submitted_memory``); the ids of the commands it answered without an order are
the snapshot's plus those the pre-trade checks denied after it (each denial is stored as a
``risk.constraint_violation``; looked for from ``REORDER_LOOKBACK_MS`` before it as well); an
answer that needed no order leaves no event, so one given after the snapshot is not restored, and
a redelivery of that command would be answered anew. The halt flag is the snapshot's, moved on by
the ``risk.alert`` and ``risk.ok`` events after it. The latest price of every token is its last
stored tick.

:func:`write_changelogs` then produces the rebuilt values to the tables' changelog topics (key:
the account or token, raw; value: JSON; partition: Kafka's default partitioner, as the agents'
writes land), creating any changelog that is missing as a compacted topic. A worker started with
an empty data folder restores its tables from them.
"""

from __future__ import annotations

from datetime import datetime, timezone

import orjson

from models.events import RiskEvent, TradeExecuted
from processors.base import ExposureView
from processors.portfolio import PortfolioConfig, PortfolioProcessor
from processors.risk import HaltProcessor

#: How far before a snapshot (event time, ms) a fill applied after it may be stamped: fills of
#: different tokens reach the portfolio agent in arrival order, not event-time order.
REORDER_LOOKBACK_MS = 24 * 3_600_000

#: table -> its changelog's partitions (tables/__init__.py)
TABLE_PARTITIONS = {"portfolio": 5, "execution_state": 5, "exposures": 5, "halt": 3, "latest_prices": 10}


def _ts(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000.0, timezone.utc)


async def _events(conn, types: list[str], lo_ms: int, hi_ms: int, account: str | None = None) -> list[dict]:
    sql = ("SELECT data::text AS data FROM events WHERE event_type = ANY($1::text[]) AND timestamp >= $2 "
           "AND timestamp <= $3")
    args: list = [types, _ts(lo_ms), _ts(hi_ms)]
    if account is not None:
        sql += " AND data->>'account' = $4"
        args.append(account)
    rows = await conn.fetch(sql + " ORDER BY timestamp, event_id", *args)
    return [orjson.loads(r["data"]) for r in rows]


async def rebuild(pool, config: PortfolioConfig, at_ms: int, submitted_memory: int = 500) -> dict[str, dict]:
    """The tables' values at ``at_ms`` (ms, event time) from the store: ``{"portfolio": {account:
    value}, "execution_state": ..., "exposures": ..., "halt": ..., "latest_prices": {token: value}}``.
    Raises asyncpg/OSError errors when the store fails."""
    stores: dict[str, dict] = {name: {} for name in TABLE_PARTITIONS}
    async with pool.acquire() as conn:
        accounts = [r["a"] for r in await conn.fetch(
            "SELECT DISTINCT data->>'account' AS a FROM events WHERE event_type IN ('trade.executed', 'state.snapshot') "
            "AND timestamp <= $1", _ts(at_ms))]
        for account in sorted(a for a in accounts if a):
            snap = await conn.fetchrow(
                "SELECT data::text AS data FROM events WHERE event_type = 'state.snapshot' AND timestamp <= $1 "
                "AND data->>'account' = $2 ORDER BY timestamp DESC, event_id DESC LIMIT 1", _ts(at_ms), account)
            snap = orjson.loads(snap["data"]) if snap else None
            snapshot, since = (snap["snapshot"], snap["timestamp"]) if snap else (None, 0)
            await _rebuild_account(conn, stores, config, account, snapshot, since, at_ms, submitted_memory)
        for r in await conn.fetch(
                "SELECT DISTINCT ON (token) token, timestamp, data->>'price' AS price, "
                "data->>'volume_1m' AS volume_1m FROM events "
                "WHERE event_type = 'price.tick' AND timestamp <= $1 AND token IS NOT NULL "
                "ORDER BY token, timestamp DESC", _ts(at_ms)):
            # the value the risk agent writes (processors.risk)
            stores["latest_prices"][r["token"]] = {"price": float(r["price"]),
                                                   "ts": int(r["timestamp"].timestamp() * 1000),
                                                   "volume_1m": float(r["volume_1m"] or 0.0)}
    return stores


async def _rebuild_account(conn, stores: dict, config: PortfolioConfig, account: str, snapshot: dict | None,
                           since: int, at_ms: int, submitted_memory: int) -> None:
    portfolio, halt = stores["portfolio"], stores["halt"]
    if snapshot is not None:
        portfolio[account] = snapshot["portfolio"]
        if snapshot.get("halt"):
            halt[account] = snapshot["halt"]
    submitted = list(snapshot["submitted"]) if snapshot else []
    processor = PortfolioProcessor(config, portfolio, ExposureView(stores["exposures"]),
                                   stores["latest_prices"], stores["execution_state"], halt)
    # Which fills came after the snapshot, and in what order: the live processor applied them in
    # arrival order, which across tokens is not event-time order (a fill stamped before the
    # snapshot can be applied after it). Each fill's state.changed records its sequence number
    # (the account's fill count after it): those above the snapshot's count came after it.
    base = (snapshot["portfolio"].get("fills", 0) if snapshot else 0)
    lo = max(0, since - REORDER_LOOKBACK_MS) if snapshot else 0
    seq = {e["delta"]["fill_id"]: e["delta"].get("seq", 0)
           for e in await _events(conn, ["state.changed"], lo, at_ms, account) if e.get("delta", {}).get("fill_id")}
    applied = set(portfolio[account]["applied"]) if account in portfolio else set()

    def after_snapshot(f: dict) -> bool:
        key = f.get("fill_id") or f["client_order_id"]
        if key in seq:
            return seq[key] > base
        return key not in applied and f["timestamp"] >= since  # no state.changed stored: by time

    fills = [f for f in await _events(conn, ["trade.executed"], lo, at_ms, account) if after_snapshot(f)]
    fills.sort(key=lambda f: (seq.get(f.get("fill_id") or f["client_order_id"], float("inf")), f["timestamp"],
                              f["event_id"]))
    for f in fills:
        processor.on_fill(TradeExecuted.model_validate(f))
    if account in portfolio:
        processor.mirror_exposure(account, portfolio[account])
    placed = [e["client_order_id"] for e in await _events(conn, ["trade.placed"], since, at_ms, account)]
    for cloid in [f["client_order_id"] for f in fills] + placed:
        if cloid not in submitted:
            submitted.append(cloid)
    answered = list(snapshot.get("answered", ())) if snapshot else []
    for e in await _events(conn, ["risk.constraint_violation"], lo, at_ms, account):
        cloid = (e.get("metrics") or {}).get("client_order_id")
        if cloid and cloid not in answered and cloid not in submitted:
            answered.append(cloid)
    stores["execution_state"][account] = {"inflight": {}, "submitted": submitted[-submitted_memory:],
                                          "answered": answered[-submitted_memory:]}
    halts = HaltProcessor(halt)
    for e in await _events(conn, ["risk.alert", "risk.ok"], since + 1 if snapshot else 0, at_ms, account):
        halts.apply(RiskEvent.model_validate(e))


async def write_changelogs(stores: dict[str, dict], app_id: str, conn: dict, replicas: int = 1,
                           min_insync: int = 1) -> dict[str, int]:
    """Produce ``stores`` (as :func:`rebuild` gives them) to ``<app_id>-<table>-changelog``;
    returns the records written per table. ``conn``: aiokafka connection arguments."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.partitioner import murmur2

    from app.kafka import wait_until_listed

    topics = {table: f"{app_id}-{table}-changelog" for table in stores}
    admin = AIOKafkaAdminClient(**conn)
    await admin.start()
    try:
        missing = sorted(set(topics.values()) - set(await admin.list_topics()))
        if missing:
            by_topic = {t: name for name, t in topics.items()}
            await admin.create_topics([NewTopic(t, TABLE_PARTITIONS[by_topic[t]], replicas, topic_configs={
                "cleanup.policy": "compact", "min.insync.replicas": str(min_insync)}) for t in missing])
            await wait_until_listed(admin._client, missing)
    finally:
        await admin.close()
    producer = AIOKafkaProducer(acks="all", **conn)
    await producer.start()
    written: dict[str, int] = {}
    try:
        for table, values in stores.items():
            n = TABLE_PARTITIONS[table]
            for key, value in values.items():
                raw = key.encode()
                await producer.send(topics[table], orjson.dumps(value), key=raw,
                                    partition=(murmur2(raw) & 0x7FFFFFFF) % n)
            written[table] = len(values)
        await producer.flush()
    finally:
        await producer.stop()
    return written

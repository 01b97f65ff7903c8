"""The immutable event store in PostgreSQL, through asyncpg.

Table ``events(event_id uuid, event_type text, timestamp timestamptz, token text, data jsonb,
source text, created_at timestamptz)``, primary key (timestamp, event_id), indices on
(timestamp, token, event_type), (event_type, timestamp) and (token, timestamp).

Schema version 2 stores events by day:

- with the TimescaleDB extension available, ``events`` is a hypertable with 1-day chunks, a
  compression policy (chunks older than STORE_COMPRESS_AFTER_DAYS, segmented by event type) and a
  retention policy (STORE_RETENTION_DAYS, 0 = keep forever);
- otherwise it is a natively range-partitioned table with one partition per UTC day, created a
  week ahead at migration and on demand before each write (a batch for a day without a partition
  creates it).

A partitioned table's unique keys must contain the partition key, so the key is (timestamp,
event_id). An event keeps its timestamp on every redelivery, so inserting with ``ON CONFLICT DO
NOTHING`` on that key stores each event once.

Schema version 3 adds an index on ``event_id`` and a partial one on the events' correlation id
(``data->>'correlation_id'``, with the timestamp), so one decision's chain is found without a scan
(``faust -A app trace``), and the table ``backtest_events(run_id, event_id, event_type, timestamp,
token, data)``: what a backtest run emitted, kept under its run id apart from the live events, whose
ids a replay of the same input shares.

Writes go through ``COPY`` (``copy_records_to_table``) into a session temp table, then one
``INSERT … SELECT … ON CONFLICT DO NOTHING`` into ``events``, in one transaction.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import uuid
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

import asyncpg
import orjson

log = logging.getLogger(__name__)

SCHEMA_VERSION = 3

#: Failures that mean the database could not be reached (down, restarting, refusing connections),
#: not that it refused the rows or the query: a caller retries these, or answers 503.
UNAVAILABLE = (OSError, asyncio.TimeoutError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
               asyncpg.exceptions.OperatorInterventionError)
#: Failures of the rows themselves, so that writing the same rows again cannot help: PostgreSQL's
#: data exceptions (SQLSTATE class 22: a value out of range, invalid JSON text, an untranslatable
#: character), a NOT NULL violation, and asyncpg refusing to encode a value locally
#: (``ValueError``/``OverflowError``/``TypeError``). Anything else (unreachable, permissions, a
#: missing partition) is worth retrying, so a misconfigured database never refuses good rows.
REFUSED = (asyncpg.DataError, asyncpg.NotNullViolationError, ValueError, OverflowError, TypeError)
COLUMNS = ("event_id", "event_type", "timestamp", "token", "data", "source")

_V1 = """
    CREATE TABLE IF NOT EXISTS events (
        event_id   uuid PRIMARY KEY,
        event_type text NOT NULL,
        timestamp  timestamptz NOT NULL,
        token      text,
        data       jsonb NOT NULL,
        source     text NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX IF NOT EXISTS events_ts_token_type_idx ON events (timestamp, token, event_type);
    CREATE INDEX IF NOT EXISTS events_type_ts_idx ON events (event_type, timestamp);
"""

_V2_TABLE = """
    CREATE TABLE events (
        event_id   uuid NOT NULL,
        event_type text NOT NULL,
        timestamp  timestamptz NOT NULL,
        token      text,
        data       jsonb NOT NULL,
        source     text NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (timestamp, event_id)
    ) {partitioning};
    CREATE INDEX events_ts_token_type_idx2 ON events (timestamp, token, event_type);
    CREATE INDEX events_type_ts_idx2 ON events (event_type, timestamp);
    CREATE INDEX events_token_ts_idx ON events (token, timestamp);
"""


#: Version 3: lookups by event id and by chain (``faust -A app trace``), and the events backtest
#: runs keep, by run id, apart from the live ones (whose ids they share).
_V3 = """
    CREATE INDEX IF NOT EXISTS events_event_id_idx ON events (event_id);
    CREATE INDEX IF NOT EXISTS events_correlation_idx ON events ((data->>'correlation_id'), timestamp)
        WHERE data ? 'correlation_id';
    CREATE TABLE IF NOT EXISTS backtest_events (
        run_id     text NOT NULL,
        event_id   uuid NOT NULL,
        event_type text NOT NULL,
        timestamp  timestamptz NOT NULL,
        token      text,
        data       jsonb NOT NULL,
        PRIMARY KEY (run_id, event_id)
    );
    CREATE INDEX IF NOT EXISTS backtest_events_correlation_idx
        ON backtest_events (run_id, (data->>'correlation_id'), timestamp);
"""


def partition_name(day: date) -> str:
    return f"events_p{day:%Y%m%d}"


def _day_bounds(day: date) -> tuple[str, str]:
    return f"{day.isoformat()} 00:00:00+00", f"{(day + timedelta(days=1)).isoformat()} 00:00:00+00"


@dataclass(slots=True, frozen=True)
class Row:
    event_id: uuid.UUID
    event_type: str
    timestamp_ms: int
    token: str | None
    data: str  # the event's JSON, as received
    source: str


class EventStore:
    """A pool of connections to the event store. ``dsn`` is a ``postgresql://`` URL."""

    def __init__(self, dsn: str, min_size: int = 1, max_size: int = 4):
        self.dsn = dsn
        self._min, self._max = min_size, max_size
        self._pool: asyncpg.Pool | None = None
        self._lock = asyncio.Lock()
        self._mode: str | None = None  # "partitioned" or "timescaledb", known after migrate()
        self._partitions: set[date] = set()  # daily partitions known to exist

    async def pool(self) -> asyncpg.Pool:
        """The connection pool, created on first use. Raises ``OSError`` / ``asyncpg`` errors when
        the server cannot be reached."""
        if self._pool is None:
            async with self._lock:
                if self._pool is None:
                    self._pool = await asyncpg.create_pool(self.dsn, min_size=self._min, max_size=self._max,
                                                           command_timeout=30)
        return self._pool

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def migrate(self, compress_after_days: int = 7, retention_days: int = 0, ahead_days: int = 7) -> int:
        """Create or upgrade the schema; idempotent (a second run changes nothing). Returns the
        schema version now in place. Raises asyncpg/OSError errors when the database fails."""
        pool = await self.pool()
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(7242001)")
            await conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version int PRIMARY KEY, "
                               "applied_at timestamptz NOT NULL DEFAULT now(), mode text)")
            await conn.execute("ALTER TABLE schema_version ADD COLUMN IF NOT EXISTS mode text")
            current = await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_version")
            if current < 1:
                await conn.execute(_V1)
                await conn.execute("INSERT INTO schema_version (version, mode) VALUES (1, 'plain')")
            if current < 2:
                mode = await self._to_v2(conn, compress_after_days, retention_days)
                await conn.execute("INSERT INTO schema_version (version, mode) VALUES (2, $1)", mode)
                log.info("event store migrated to schema version 2 (%s)", mode)
            self._mode = await conn.fetchval("SELECT mode FROM schema_version WHERE version = 2")
            if current < 3:
                await conn.execute(_V3)
                await conn.execute("INSERT INTO schema_version (version, mode) VALUES (3, $1)", self._mode)
                log.info("event store migrated to schema version 3 (event id and chain indices, backtest events)")
        if self._mode == "partitioned":
            today = datetime.now(timezone.utc).date()
            await self.ensure_partitions([today + timedelta(days=d) for d in range(-1, ahead_days + 1)])
        return SCHEMA_VERSION

    async def _to_v2(self, conn, compress_after_days: int, retention_days: int) -> str:
        timescale = await conn.fetchval("SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'")
        await conn.execute("ALTER TABLE events RENAME TO events_v1")
        for idx in ("events_pkey", "events_ts_token_type_idx", "events_type_ts_idx"):
            await conn.execute(f"ALTER INDEX IF EXISTS {idx} RENAME TO {idx}_v1")
        if timescale:
            await conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
            await conn.execute(_V2_TABLE.format(partitioning=""))
            await conn.execute("SELECT create_hypertable('events', 'timestamp', chunk_time_interval => interval '1 day')")
            await conn.execute("ALTER TABLE events SET (timescaledb.compress, timescaledb.compress_segmentby = 'event_type')")
            await conn.execute(f"SELECT add_compression_policy('events', interval '{int(compress_after_days)} days')")
            if retention_days:
                await conn.execute(f"SELECT add_retention_policy('events', interval '{int(retention_days)} days')")
            mode = "timescaledb"
        else:
            await conn.execute(_V2_TABLE.format(partitioning="PARTITION BY RANGE (timestamp)"))
            days = await conn.fetch("SELECT DISTINCT (timestamp AT TIME ZONE 'UTC')::date AS d FROM events_v1")
            for row in days:
                await self._create_partition(conn, row["d"])
            mode = "partitioned"
        await conn.execute("INSERT INTO events SELECT event_id, event_type, timestamp, token, data, source, created_at "
                           "FROM events_v1 ON CONFLICT DO NOTHING")
        await conn.execute("DROP TABLE events_v1")
        return mode

    @staticmethod
    async def _create_partition(conn, day: date) -> None:
        lo, hi = _day_bounds(day)
        await conn.execute(f"CREATE TABLE IF NOT EXISTS {partition_name(day)} PARTITION OF events "
                           f"FOR VALUES FROM ('{lo}') TO ('{hi}')")

    async def ensure_partitions(self, days) -> None:
        """Create the daily partitions of ``days`` that do not exist yet (native mode only)."""
        missing = sorted({d for d in days} - self._partitions)
        if not missing or self._mode != "partitioned":
            return
        pool = await self.pool()
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(7242002)")  # one creator at a time
            for day in missing:
                await self._create_partition(conn, day)
        self._partitions.update(missing)

    async def write(self, rows: list[Row]) -> int:
        """Store rows in one transaction through COPY; returns how many were new (the others were
        stored before). Raises on any database error (nothing of the batch is then stored)."""
        if not rows:
            return 0
        if self._mode is None:
            await self.migrate()
        records = [(r.event_id, r.event_type, _ts(r.timestamp_ms), r.token, r.data, r.source) for r in rows]
        await self.ensure_partitions({rec[2].date() for rec in records})
        pool = await self.pool()
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("CREATE TEMP TABLE IF NOT EXISTS events_stage (event_id uuid, event_type text, "
                               "timestamp timestamptz, token text, data jsonb, source text) ON COMMIT DELETE ROWS")
            await conn.copy_records_to_table("events_stage", columns=COLUMNS, records=records)
            status = await conn.execute("INSERT INTO events (event_id, event_type, timestamp, token, data, source) "
                                        "SELECT * FROM events_stage ON CONFLICT DO NOTHING")
        return int(status.rsplit(" ", 1)[-1])

    async def write_backtest(self, run_id: str, events: list[dict]) -> int:
        """Keep a backtest run's emitted events (their wire JSON as dicts) under ``run_id``;
        returns how many were new. Raises on any database error."""
        if self._mode is None:
            await self.migrate()
        records = [(run_id, uuid.UUID(str(e["event_id"])), e["event_type"], _ts(e["timestamp"]), e.get("token"),
                    orjson.dumps(e).decode()) for e in events]
        pool = await self.pool()
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("CREATE TEMP TABLE IF NOT EXISTS backtest_stage (run_id text, event_id uuid, "
                               "event_type text, timestamp timestamptz, token text, data jsonb) ON COMMIT DELETE ROWS")
            await conn.copy_records_to_table("backtest_stage", records=records)
            status = await conn.execute("INSERT INTO backtest_events SELECT * FROM backtest_stage ON CONFLICT DO NOTHING")
        return int(status.rsplit(" ", 1)[-1])

    async def query(self, start_ms: int, end_ms: int, token: str | None = None,
                    event_types: list[str] | None = None, limit: int = 1000,
                    cursor: str | None = None, max_bytes: int | None = None) -> tuple[list[dict], str | None]:
        """Events with ``start_ms <= timestamp < end_ms`` (ms since epoch, UTC), optionally of one
        token and some event types, ordered by (timestamp, event_id), at most ``limit`` (1-10,000)
        and, given ``max_bytes``, no more rows than fit in that many bytes of event JSON (at least
        one): rows are read through a server-side cursor, so a page's memory stays near its cap
        whatever the limit.

        Returns ``(rows, next_cursor)``; pass ``next_cursor`` back for the next page (``None`` on
        the last page). Rows: ``event_id``, ``event_type``, ``timestamp`` (ms), ``token``,
        ``source``, ``data`` (the event's JSON text). Raises ``ValueError`` for a bad cursor or
        limit.
        """
        if not 1 <= limit <= 10_000:
            raise ValueError(f"limit must be 1..10000, got {limit}")
        args: list = [_ts(start_ms), _ts(end_ms)]
        where = ["timestamp >= $1", "timestamp < $2"]
        if token:
            args.append(token)
            where.append(f"token = ${len(args)}")
        if event_types:
            args.append(list(event_types))
            where.append(f"event_type = ANY(${len(args)}::text[])")
        if cursor:
            ts_ms, event_id = decode_cursor(cursor)
            args.extend([_ts(ts_ms), event_id])
            where.append(f"(timestamp, event_id) > (${len(args) - 1}, ${len(args)})")
        args.append(limit)
        sql = (f"SELECT event_id, event_type, timestamp, token, data::text AS data, source FROM events "
               f"WHERE {' AND '.join(where)} ORDER BY timestamp, event_id LIMIT ${len(args)}")
        out: list[dict] = []
        last = None
        full = False
        size = 0
        pool = await self.pool()
        async with pool.acquire() as conn, conn.transaction(readonly=True):
            async for r in conn.cursor(sql, *args, prefetch=min(limit, 500)):
                size += len(r["data"]) + 200  # the row's other fields, as JSON, at most about this
                if out and max_bytes is not None and size > max_bytes:
                    full = True
                    break
                out.append({"event_id": str(r["event_id"]), "event_type": r["event_type"],
                            "timestamp": int(r["timestamp"].timestamp() * 1000), "token": r["token"],
                            "source": r["source"], "data": r["data"]})
                last = r
        nxt = encode_cursor(last["timestamp"], last["event_id"]) if last is not None and (full or len(out) == limit) else None
        return out, nxt


def encode_cursor(ts: datetime, event_id: uuid.UUID) -> str:
    """Opaque page cursor: the last row's exact timestamp (µs) and id."""
    us = int(ts.timestamp()) * 1_000_000 + ts.microsecond
    return base64.urlsafe_b64encode(f"{us}:{event_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, uuid.UUID]:
    """Inverse of :func:`encode_cursor` as (timestamp ms, event id); raises ``ValueError``."""
    try:
        if len(cursor) > 200:
            raise ValueError("too long")
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        us, event_id = raw.split(":", 1)
        ms = int(us) / 1000.0
        _ts(ms)
        return ms, uuid.UUID(event_id)
    except (ValueError, UnicodeDecodeError, OverflowError) as exc:
        raise ValueError(f"bad cursor {cursor[:80]!r}") from exc


def _ts(ms: float) -> datetime:
    """UTC datetime of ``ms`` since the epoch; raises ``ValueError`` outside what datetime holds."""
    try:
        return datetime.fromtimestamp(ms / 1000.0, tz=timezone.utc)
    except (OverflowError, OSError, ValueError):
        raise ValueError(f"time {ms!r} ms is out of range") from None

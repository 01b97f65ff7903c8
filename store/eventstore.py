"""The immutable event store in PostgreSQL (SPEC §5), through asyncpg.

Table ``events(event_id uuid primary key, event_type text, timestamp timestamptz, token text,
data jsonb, source text, created_at timestamptz default now())`` with indices on
(timestamp, token, event_type). Writes are idempotent on ``event_id`` (``ON CONFLICT DO NOTHING``):
a batch redelivered after a crash stores nothing twice.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone

import asyncpg

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1

MIGRATIONS: dict[int, str] = {
    1: """
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
    """,
}


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

    async def migrate(self) -> int:
        """Create or upgrade the schema; idempotent. Returns the schema version now in place."""
        pool = await self.pool()
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(7242001)")
            await conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version int PRIMARY KEY, "
                               "applied_at timestamptz NOT NULL DEFAULT now())")
            current = await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_version")
            for version in sorted(MIGRATIONS):
                if version > current:
                    await conn.execute(MIGRATIONS[version])
                    await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", version)
                    log.info("event store migrated to schema version %d", version)
            return max(current, max(MIGRATIONS))

    async def write(self, rows: list[Row]) -> int:
        """Insert rows in one transaction; returns how many were new. Raises on any database error
        (nothing of the batch is then stored)."""
        if not rows:
            return 0
        pool = await self.pool()
        async with pool.acquire() as conn:
            status = await conn.execute(
                """
                INSERT INTO events (event_id, event_type, timestamp, token, data, source)
                SELECT e.id, e.type, to_timestamp(e.ts / 1000.0), e.token, e.data::jsonb, e.source
                FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[])
                     AS e(id, type, ts, token, data, source)
                ON CONFLICT (event_id) DO NOTHING
                """,
                [r.event_id for r in rows], [r.event_type for r in rows], [r.timestamp_ms for r in rows],
                [r.token for r in rows], [r.data for r in rows], [r.source for r in rows])
        return int(status.rsplit(" ", 1)[-1])

    async def query(self, start_ms: int, end_ms: int, token: str | None = None,
                    event_types: list[str] | None = None, limit: int = 1000,
                    after: tuple[int, str] | None = None) -> list[dict]:
        """Events with ``start_ms <= timestamp < end_ms`` ordered by (timestamp, event_id), at most
        ``limit``; ``after`` = (timestamp_ms, event_id) of the last row of the previous page."""
        pool = await self.pool()
        args: list = [_ts(start_ms), _ts(end_ms)]
        where = ["timestamp >= $1", "timestamp < $2"]
        if token:
            args.append(token)
            where.append(f"token = ${len(args)}")
        if event_types:
            args.append(event_types)
            where.append(f"event_type = ANY(${len(args)}::text[])")
        if after:
            args.extend([_ts(after[0]), uuid.UUID(after[1])])
            where.append(f"(timestamp, event_id) > (${len(args) - 1}, ${len(args)})")
        args.append(limit)
        rows = await pool.fetch(
            f"SELECT event_id, event_type, timestamp, token, data::text AS data, source FROM events "
            f"WHERE {' AND '.join(where)} ORDER BY timestamp, event_id LIMIT ${len(args)}", *args)
        return [dict(r) for r in rows]


def _ts(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000.0, tz=timezone.utc)

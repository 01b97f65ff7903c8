"""Integration fixtures: the real local Kafka broker and PostgreSQL server (``make up``), a fresh
database per test session, and isolated worker runs (own app id and topic prefix)."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid

import asyncpg
import pytest

pytestmark = pytest.mark.integration

PG_ADMIN = os.environ.get("TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:55432/postgres")


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="session", autouse=True)
def local_services():
    missing = [name for name, port in (("Kafka", 9092), ("PostgreSQL", 55432)) if not _port_open(port)]
    if missing:
        pytest.fail(f"{' and '.join(missing)} not running on 127.0.0.1: run 'make up' (make test does)")


def _temporary_database():
    """Create a database, yield its URL, drop it (kept, and named, with KEEP_TEST_DATABASES=1, to
    look into what a failed run stored)."""
    name = f"moondev_test_{uuid.uuid4().hex[:8]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(PG_ADMIN)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    yield PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    if os.environ.get("KEEP_TEST_DATABASES"):
        print(f"test database kept: {name}", flush=True)
        return
    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def database_url(local_services):
    yield from _temporary_database()


@pytest.fixture(scope="module")
def module_database_url(local_services):
    """An empty database for one test module, for modules whose events must not mix with the
    session database's (tests there count what the store holds)."""
    yield from _temporary_database()


@pytest.fixture
def fresh_database_url(local_services):
    """An empty database of its own, for tests that count what the store holds."""
    yield from _temporary_database()

"""PostgreSQL event store (asyncpg)."""

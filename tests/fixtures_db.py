"""pytest plugin: a real PostgreSQL for the tests, and a clean database per test.

Session: ``$TEST_DATABASE_URL`` when set (a role allowed to CREATE DATABASE; the database it names
is used only to create and drop others), else a throwaway server from the installed binaries
(:mod:`daemon.devtools.pgserver`), removed at the end of the session.

Clean and fast: the migrations are applied once, into a template database. A test gets a clone
of it; afterwards the clone is emptied (every table but ``schema_migrations`` deleted, sequences
restarted: ~15 ms) and handed to the next test, unless the test changed the schema (its
fingerprint differs from the template's) or the reset fails — then it is dropped and the next test
gets a fresh ``CREATE DATABASE … TEMPLATE`` (~200 ms on 2 cores). Tests that need an empty or
unmigrated database create their own with :func:`daemon.db.create_database`.

Session fixtures are synchronous (pytest-trio runs async fixtures per test only); they call
``trio.run`` themselves.

Fixtures: ``pg_server`` (session; the throwaway server, None with an external one),
``pg_admin_url`` (session; URL on which databases may be created), ``test_databases``
(session; the pool of clones), ``db_url`` (a clean migrated database for this test),
``db_config`` (:class:`DatabaseConfig` for it), ``db`` (an opened :class:`Database` on it).
"""

from __future__ import annotations

import functools
import os
import uuid
from collections.abc import AsyncIterator, Iterator

import attrs
import pytest
import trio

from daemon.config import DatabaseConfig
from daemon.db import (
    Database,
    DatabaseError,
    admin_execute,
    create_database,
    database_url,
    drop_database,
    migrate,
    open_database,
)
from daemon.devtools.pgserver import PostgresServer, running_server

TEST_DATABASE_ENV = "TEST_DATABASE_URL"

_FINGERPRINT = """
SELECT md5(coalesce(string_agg(x, ',' ORDER BY x), '')) FROM (
    SELECT c.relkind::text || ':' || c.relname FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public'
    UNION ALL
    SELECT 'a:' || c.relname || '.' || a.attname || ':' || format_type(a.atttypid, a.atttypmod)
        FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public' AND a.attnum > 0 AND NOT a.attisdropped
    UNION ALL
    SELECT 'f:' || p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')'
           || md5(p.prosrc) FROM pg_proc p
        JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'public'
    UNION ALL
    SELECT 'c:' || conname || md5(pg_get_constraintdef(oid)) FROM pg_constraint
        WHERE connamespace = 'public'::regnamespace
    UNION ALL
    SELECT 't:' || tgname || tgenabled::text FROM pg_trigger WHERE NOT tgisinternal
    UNION ALL
    SELECT 'm:' || version || ':' || checksum FROM schema_migrations
) s(x)
"""

# Delete every row (triggers and foreign keys off: replica role, superuser only) and restart the
# sequences. Without superuser rights the fallback is TRUNCATE (slower, same effect).
_RESET_FAST = """
DO $$
DECLARE r record;
BEGIN
    SET LOCAL lock_timeout = '2s';
    SET LOCAL session_replication_role = replica;
    FOR r IN SELECT format('%I.%I', n.nspname, c.relname) AS name FROM pg_class c
             JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')
               AND c.relname <> 'schema_migrations' LOOP
        EXECUTE 'DELETE FROM ' || r.name;
    END LOOP;
    FOR r IN SELECT format('%I.%I', n.nspname, c.relname) AS name FROM pg_class c
             JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = 'public' AND c.relkind = 'S' LOOP
        EXECUTE 'ALTER SEQUENCE ' || r.name || ' RESTART';
    END LOOP;
END $$
"""
_RESET_TRUNCATE = """
DO $$
DECLARE tables text;
BEGIN
    SET LOCAL lock_timeout = '2s';
    SELECT string_agg(format('%I.%I', n.nspname, c.relname), ', ') INTO tables FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')
          AND c.relname <> 'schema_migrations';
    IF tables IS NOT NULL THEN
        EXECUTE 'TRUNCATE ' || tables || ' RESTART IDENTITY CASCADE';
    END IF;
END $$
"""


def _config(url: str) -> DatabaseConfig:
    return DatabaseConfig(url=url, min_connections=1, max_connections=4, command_timeout=10.0)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer | None]:
    """The session's throwaway server (None with ``$TEST_DATABASE_URL``). A test may stop and
    start it (outages); it must leave it running."""
    if os.environ.get(TEST_DATABASE_ENV, "").strip():
        yield None
        return
    with running_server() as server:
        yield server


@pytest.fixture(scope="session")
def pg_admin_url(pg_server: PostgresServer | None) -> str:
    """A PostgreSQL URL on which databases may be created (the session's server)."""
    if pg_server is None:
        return os.environ[TEST_DATABASE_ENV].strip()
    return pg_server.url()


@attrs.define(eq=False)
class TestDatabases:
    """Clones of the migrated template, reused across tests after a reset."""

    admin_url: str
    template: str
    fingerprint: str = ""
    free: list[str] = attrs.Factory(list)
    created: list[str] = attrs.Factory(list)
    fast_reset: bool = True

    async def _build(self) -> None:
        url = await create_database(self.admin_url, self.template, drop_existing=True)
        await migrate(_config(url))
        self.fingerprint = await admin_execute(url, [_FINGERPRINT])

    def build(self) -> None:
        trio.run(self._build)

    def acquire(self) -> str:
        """URL of a clean database, reused or cloned."""
        if self.free:
            return database_url(self.admin_url, self.free.pop())
        name = f"driftd_test_{uuid.uuid4().hex[:12]}"
        url = trio.run(
            functools.partial(create_database, self.admin_url, name, template=self.template)
        )
        self.created.append(name)
        return url

    async def _reset(self, url: str) -> bool:
        try:
            if await admin_execute(url, [_FINGERPRINT]) != self.fingerprint:
                return False
            if self.fast_reset:
                try:
                    await admin_execute(url, [_RESET_FAST])
                    return True
                except DatabaseError:
                    self.fast_reset = False
            await admin_execute(url, [_RESET_TRUNCATE])
        except DatabaseError:
            return False
        return True

    def release(self, url: str) -> None:
        """Reset the database for the next test, or drop it if it cannot be trusted."""
        name = url.rsplit("/", 1)[1]
        if trio.run(self._reset, url):
            self.free.append(name)
        else:
            trio.run(drop_database, self.admin_url, name)
            self.created.remove(name)

    def remove_all(self) -> None:
        async def drop() -> None:
            for name in [*self.created, self.template]:
                await drop_database(self.admin_url, name)

        trio.run(drop)


@pytest.fixture(scope="session")
def test_databases(pg_admin_url: str) -> Iterator[TestDatabases]:
    """The session's pool of clean migrated databases."""
    databases = TestDatabases(pg_admin_url, f"driftd_template_{uuid.uuid4().hex[:8]}")
    databases.build()
    try:
        yield databases
    finally:
        databases.remove_all()


@pytest.fixture
def db_url(test_databases: TestDatabases) -> Iterator[str]:
    """URL of a clean, migrated database that only this test uses."""
    url = test_databases.acquire()
    try:
        yield url
    finally:
        test_databases.release(url)


@pytest.fixture
def db_config(db_url: str) -> DatabaseConfig:
    """Connection settings for this test's database (small pool, 10 s statement timeout)."""
    return _config(db_url)


@pytest.fixture
async def db(db_config: DatabaseConfig) -> AsyncIterator[Database]:
    """An open :class:`Database` on this test's database."""
    async with open_database(db_config) as database:
        yield database

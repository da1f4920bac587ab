"""Tests of schema migrations: order, idempotence, concurrency, integrity checks."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from daemon.config import DatabaseConfig
from daemon.db import (
    Database,
    DatabaseError,
    Migration,
    MigrationError,
    create_database,
    drop_database,
    load_migrations,
    open_database,
)

_MIGRATE_SCRIPT = (
    "import argparse, sys\n"
    "from daemon.cli import db as cli_db\n"
    "from daemon.config import load_config\n"
    "sys.exit(cli_db.cmd_migrate(argparse.Namespace(json=False), load_config(None)))\n"
)


@pytest.fixture
async def empty_config(pg_admin_url: str) -> AsyncIterator[DatabaseConfig]:
    """A database with nothing in it (not even schema_migrations)."""
    name = f"driftd_mig_{uuid.uuid4().hex[:10]}"
    url = await create_database(pg_admin_url, name)
    yield DatabaseConfig(url=url, max_connections=4)
    await drop_database(pg_admin_url, name)


async def _versions(db: Database) -> list[int]:
    rows = await db.fetch("SELECT version FROM schema_migrations ORDER BY version")
    return [r["version"] for r in rows]


async def test_migrate_applies_in_order_and_is_idempotent(empty_config: DatabaseConfig) -> None:
    with trio.fail_after(20):
        async with open_database(empty_config) as db:
            assert await db.schema_version() == 0
            applied = await db.migrate()
            assert [m.version for m in applied] == [m.version for m in load_migrations()]
            assert await db.migrate() == []
            assert await db.schema_version() == load_migrations()[-1].version
            assert await _versions(db) == [m.version for m in load_migrations()]
            tables = {
                r["tablename"]
                for r in await db.fetch(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                )
            }
            assert {
                "token",
                "portfolio",
                "allocation",
                "price",
                "portfolio_snapshot",
                "rebalance_log",
                "tx_intent",
                "system_config",
                "schema_migrations",
            } <= tables


async def test_two_concurrent_migrations_in_one_process(empty_config: DatabaseConfig) -> None:
    results: list[int] = []
    with trio.fail_after(20):
        async with open_database(empty_config) as one, open_database(empty_config) as two:

            async def run(db: Database) -> None:
                results.append(len(await db.migrate()))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(run, one)
                nursery.start_soon(run, two)
            assert sorted(results) == [0, len(load_migrations())]
            assert await _versions(one) == [m.version for m in load_migrations()]


async def test_two_concurrent_driftd_migrate_processes(empty_config: DatabaseConfig) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTD_")}
    env["DRIFTD_DATABASE_URL"] = empty_config.url
    env.pop("DRIFTD_CONFIG", None)
    outputs: list[subprocess.CompletedProcess[bytes]] = []
    with trio.fail_after(60):

        async def run() -> None:
            outputs.append(
                await trio.run_process(
                    [sys.executable, "-c", _MIGRATE_SCRIPT],
                    env=env,
                    capture_stdout=True,
                    capture_stderr=True,
                    check=False,
                )
            )

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)
            nursery.start_soon(run)
        assert [p.returncode for p in outputs] == [0, 0], [p.stderr for p in outputs]
        texts = sorted(p.stdout.decode() for p in outputs)
        assert sum("applied 0001_initial" in t for t in texts) == 1
        assert sum("schema up to date" in t for t in texts) == 1
        async with open_database(empty_config) as db:
            assert await _versions(db) == [m.version for m in load_migrations()]


def _extra(version: int, sql: str) -> Migration:
    return Migration(version=version, name="extra", sql=sql, checksum=str(hash(sql)))


async def test_a_failing_migration_is_rolled_back(empty_config: DatabaseConfig) -> None:
    migrations = [*load_migrations(), _extra(9001, "CREATE TABLE half_done (x int); SELECT 1/0;")]
    with trio.fail_after(20):
        async with open_database(empty_config) as db:
            with pytest.raises(DatabaseError, match="division by zero"):
                await db.migrate(migrations)
            # The earlier migration committed; the failing one left nothing.
            assert await _versions(db) == [m.version for m in load_migrations()]
            assert await db.fetchval("SELECT to_regclass('half_done')") is None
            # The lock was released: a later run works.
            assert await db.migrate() == []


async def test_changed_or_unknown_migrations_are_refused(empty_config: DatabaseConfig) -> None:
    with trio.fail_after(20):
        async with open_database(empty_config) as db:
            await db.migrate()
            first = load_migrations()[0]
            changed = Migration(first.version, first.name, first.sql + "\n-- edited", "other")
            with pytest.raises(MigrationError, match="was changed after it was applied"):
                await db.migrate([changed, *load_migrations()[1:]])
            await db.migrate([*load_migrations(), _extra(9002, "SELECT 1")])
            with pytest.raises(MigrationError, match="newer version"):
                await db.migrate()


def test_migration_files_are_named_and_numbered(tmp_path: Path) -> None:
    assert [m.version for m in load_migrations()] == sorted({m.version for m in load_migrations()})
    assert load_migrations()[0].version == 1
    (tmp_path / "1_bad.sql").write_text("SELECT 1")
    with pytest.raises(MigrationError, match=r"NNNN_name\.sql"):
        load_migrations(tmp_path)

"""Schema migrations: the versioned SQL files in ``daemon/migrations/`` and applying them.

Applying is safe to run concurrently (an advisory lock) and idempotent; a migration changed after
it was applied, or one this driftd does not know, is a :class:`~daemon.db.errors.MigrationError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import asyncpg
import attrs

from daemon.db.errors import MigrationError
from daemon.db.pool import Store
from daemon.db.records import AppliedMigration

MIGRATION_LOCK_KEY: Final = 0x64726966_74640001
"""``pg_advisory_lock`` key held while migrating ("driftd" + 1)."""
MIGRATION_LOCK_POLL: Final = 0.05
MIGRATIONS_DIR: Final = Path(__file__).parent.parent / "migrations"
_MIGRATION_NAME: Final = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@attrs.frozen
class Migration:
    """One versioned SQL file."""

    version: int
    name: str
    sql: str
    checksum: str


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """The migration files in version order; file names are ``NNNN_name.sql``."""
    migrations: list[Migration] = []
    for path in sorted(directory.glob("*.sql")):
        match = _MIGRATION_NAME.match(path.name)
        if not match:
            raise MigrationError(f"{path.name}: migration files are named NNNN_name.sql")
        data = path.read_bytes()
        migrations.append(
            Migration(
                version=int(match.group(1)),
                name=match.group(2),
                sql=data.decode("utf-8"),
                checksum=hashlib.sha256(data).hexdigest(),
            )
        )
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"duplicate migration versions in {directory}")
    return migrations


_SCHEMA_MIGRATIONS_DDL: Final = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


async def _migrate(
    conn: asyncpg.Connection, migrations: Sequence[Migration]
) -> list[AppliedMigration]:
    """Apply pending migrations under the advisory lock. Runs on the loop thread."""
    # pg_try_advisory_lock in a loop rather than pg_advisory_lock: a waiting migrator stays
    # cancellable and is not cut off by command_timeout while another one works.
    while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", MIGRATION_LOCK_KEY):  # noqa: ASYNC110 - polling the server
        await asyncio.sleep(MIGRATION_LOCK_POLL)
    try:
        await conn.execute(_SCHEMA_MIGRATIONS_DDL)
        rows = await conn.fetch("SELECT version, name, checksum FROM schema_migrations")
        applied = {row["version"]: row for row in rows}
        known = {m.version for m in migrations}
        unknown = sorted(set(applied) - known)
        if unknown:
            raise MigrationError(
                f"the database has migrations this driftd does not know ({unknown}); "
                "it was migrated by a newer version"
            )
        done: list[AppliedMigration] = []
        for migration in migrations:
            row = applied.get(migration.version)
            if row is not None:
                if row["checksum"] != migration.checksum:
                    raise MigrationError(
                        f"migration {migration.version:04d}_{migration.name} was changed after "
                        "it was applied; add a new migration instead"
                    )
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    migration.version,
                    migration.name,
                    migration.checksum,
                )
            done.append(AppliedMigration(migration.version, migration.name))
        return done
    finally:
        with contextlib.suppress(Exception):
            await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)


class Migrations(Store):
    """Bringing the schema up to date, and its version."""

    __slots__ = ()

    async def migrate(
        self, migrations: Sequence[Migration] | None = None
    ) -> list[AppliedMigration]:
        """Bring the schema up to date; safe to run concurrently (advisory lock); idempotent."""
        todo = list(migrations) if migrations is not None else load_migrations()
        return await self._unit(lambda conn: _migrate(conn, todo), transaction=False)

    async def schema_version(self) -> int:
        """The highest applied migration (0 when none)."""

        async def work(conn: asyncpg.Connection) -> int:
            exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
            if not exists:
                return 0
            return int(
                await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_migrations")
            )

        return await self._unit(work, transaction=False)

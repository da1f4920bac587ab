"""Administration on a one-off connection: creating and dropping databases (tests, tooling)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import trio

from daemon.config import mask_url
from daemon.db.bridge import CONNECT_TIMEOUT, _Bridge
from daemon.db.errors import _translate

_IDENTIFIER: Final = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def database_url(url: str, database: str) -> str:
    """``url`` pointing at another database on the same server."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + database))


def _identifier(name: str) -> str:
    if not _IDENTIFIER.match(name):
        raise ValueError(f"not a plain identifier: {name!r}")
    return f'"{name}"'


async def create_database(
    admin_url: str, name: str, *, template: str | None = None, drop_existing: bool = False
) -> str:
    """CREATE DATABASE ``name`` (optionally from a template); returns its URL. For tests."""
    sql = f"CREATE DATABASE {_identifier(name)}"
    if template is not None:
        sql += f" TEMPLATE {_identifier(template)}"
    statements = [sql]
    if drop_existing:
        statements.insert(0, f"DROP DATABASE IF EXISTS {_identifier(name)} WITH (FORCE)")
    await admin_execute(admin_url, statements)
    return database_url(admin_url, name)


async def drop_database(admin_url: str, name: str) -> None:
    """DROP DATABASE ``name`` (disconnecting its sessions)."""
    await admin_execute(admin_url, [f"DROP DATABASE IF EXISTS {_identifier(name)} WITH (FORCE)"])


async def admin_execute(admin_url: str, statements: Sequence[str]) -> Any:
    """Run statements one by one, outside a transaction, on a one-off connection; returns the
    first column of the first row of the last one. For tests and tooling (CREATE DATABASE…)."""
    bridge = _Bridge(name="driftd-db-admin", token=trio.lowlevel.current_trio_token())
    bridge.start()
    where = mask_url(admin_url)

    async def run() -> Any:
        try:
            conn = await asyncpg.connect(dsn=admin_url, timeout=CONNECT_TIMEOUT)
        except Exception as exc:
            raise _translate(exc, where) from exc
        try:
            result = None
            for sql in statements:
                result = await conn.fetchval(sql)
            return result
        except Exception as exc:
            raise _translate(exc, where) from exc
        finally:
            await conn.close()

    try:
        return await bridge.call(run)
    finally:
        with trio.CancelScope(shield=True):
            await bridge.stop()

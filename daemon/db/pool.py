"""The open connection pool and its units of work; the repositories build on :class:`Store`.

Each repository method is **one unit of work** on the asyncio side (one bridge call): acquire,
transaction, statements, commit, release. A transaction never spans two bridge calls, so no
connection is ever left idle in transaction by a Trio-side cancellation.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast

import asyncpg
import attrs

from daemon.config import DatabaseConfig, mask_url
from daemon.db.bridge import CLOSE_TIMEOUT, CONNECT_TIMEOUT, T, _Bridge
from daemon.db.codec import _init_connection
from daemon.db.errors import DatabaseUnavailable, _translate

Work = Callable[[asyncpg.Connection], Awaitable[T]]


@attrs.define(eq=False)
class Store:
    """The connection pool and units of work on it; the repositories are its subclasses."""

    _config: DatabaseConfig
    _bridge: _Bridge
    _pool: asyncpg.Pool | None = None

    @property
    def where(self) -> str:
        """The database URL with its password masked (for logs and errors)."""
        return mask_url(self._config.url)

    # --- plumbing ---

    async def _open(self) -> None:
        async def create() -> asyncpg.Pool:
            try:
                return await asyncpg.create_pool(
                    dsn=self._config.url,
                    min_size=self._config.min_connections,
                    max_size=self._config.max_connections,
                    command_timeout=self._config.command_timeout,
                    timeout=CONNECT_TIMEOUT,
                    init=_init_connection,
                    server_settings={"application_name": "driftd"},
                )
            except Exception as exc:
                raise _translate(exc, self.where) from exc

        self._pool = await self._bridge.call(create)

    async def _close(self) -> None:
        pool = self._pool
        if pool is None:
            return
        self._pool = None

        async def close() -> None:
            try:
                await asyncio.wait_for(pool.close(), CLOSE_TIMEOUT)
            except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                pool.terminate()

        await self._bridge.call(close)

    async def _unit(self, work: Work[T], *, transaction: bool = True) -> T:
        """Run ``work(conn)`` as one unit of work (one transaction) on the loop thread."""
        pool = self._pool
        if pool is None:
            raise DatabaseUnavailable(f"database {self.where} is closed")
        where = self.where

        async def run() -> T:
            try:
                async with pool.acquire() as conn:
                    if not transaction:
                        return await work(conn)
                    async with conn.transaction():
                        return await work(conn)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                error = _translate(exc, where)
                if isinstance(error, DatabaseUnavailable):
                    # Every pooled connection may be dead: replace them all on next acquire.
                    await pool.expire_connections()
                raise error from exc

        return await self._bridge.call(run)

    # --- low level (tests, benchmarks, admin) ---

    async def fetch(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        """Rows as dicts. For tests, benchmarks and ad-hoc admin; repositories are preferred."""

        async def work(conn: asyncpg.Connection) -> list[dict[str, Any]]:
            return [dict(row) for row in await conn.fetch(sql, *args)]

        return await self._unit(work, transaction=False)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        """The first column of the first row."""

        async def work(conn: asyncpg.Connection) -> Any:
            return await conn.fetchval(sql, *args)

        return await self._unit(work, transaction=False)

    async def execute(self, sql: str, *args: Any) -> str:
        """Run a statement (or, without arguments, several); returns the status tag."""

        async def work(conn: asyncpg.Connection) -> str:
            return cast(str, await conn.execute(sql, *args))

        return await self._unit(work)

    async def transaction(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> list[str]:
        """Several statements in one transaction (one bridge call)."""

        async def work(conn: asyncpg.Connection) -> list[str]:
            return [await conn.execute(sql, *args) for sql, args in statements]

        return await self._unit(work)

    async def ping(self) -> None:
        """Raise :class:`DatabaseUnavailable` unless a round trip succeeds."""
        await self.fetchval("SELECT 1")

"""System configuration: JSON values by key in ``system_config`` (e.g. rebalancing parameters)."""

from __future__ import annotations

from typing import Any, Final

import asyncpg

from daemon.db.codec import _json_encode
from daemon.db.pool import Store

REBALANCING_PARAMS: Final = "REBALANCING_PARAMS"


class SystemConfig(Store):
    """System configuration values (``system_config``)."""

    __slots__ = ()

    async def get_system_config(self, key: str) -> Any:
        """The JSON value stored under ``key`` (numbers as int / Decimal), or None."""

        async def work(conn: asyncpg.Connection) -> Any:
            return await conn.fetchval("SELECT value FROM system_config WHERE key = $1", key)

        return await self._unit(work, transaction=False)

    async def set_system_config(self, key: str, value: Any) -> None:
        """Store a JSON value (announced on :data:`SYSTEM_CONFIG_CHANNEL`).

        Numbers must be int or Decimal: a float raises ``TypeError`` here, before any I/O.
        """
        _json_encode(value)

        async def work(conn: asyncpg.Connection) -> None:
            await conn.execute(
                "INSERT INTO system_config (key, value) VALUES ($1, $2)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                key,
                value,
            )

        await self._unit(work)

"""The token repository: the ERC-20 tokens driftd knows, per chain."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import asyncpg

from daemon.db.pool import Store
from daemon.db.records import TokenRecord


class TokenStore(Store):
    """Tokens."""

    __slots__ = ()

    async def add_token(
        self,
        symbol: str,
        address: str,
        *,
        chain_id: int,
        decimals: int,
        coingecko_id: str | None = None,
        is_quote: bool = False,
        price_feed: str | None = None,
    ) -> TokenRecord:
        """Register a token; duplicate symbol or address → :class:`ConstraintViolation`."""

        async def work(conn: asyncpg.Connection) -> TokenRecord:
            row = await conn.fetchrow(
                "INSERT INTO token"
                " (symbol, address, chain_id, decimals, coingecko_id, is_quote, price_feed)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING *",
                symbol,
                address,
                chain_id,
                decimals,
                coingecko_id,
                is_quote,
                price_feed,
            )
            return _token(row)

        return await self._unit(work)

    async def tokens(self, chain_id: int | None = None) -> list[TokenRecord]:
        """All tokens (of one chain, if given), by symbol."""

        async def work(conn: asyncpg.Connection) -> list[TokenRecord]:
            rows = await conn.fetch(
                "SELECT * FROM token WHERE $1::bigint IS NULL OR chain_id = $1 ORDER BY symbol",
                chain_id,
            )
            return [_token(r) for r in rows]

        return await self._unit(work, transaction=False)


def _token(row: Mapping[str, Any]) -> TokenRecord:
    return TokenRecord(
        id=row["id"],
        symbol=row["symbol"],
        address=row["address"],
        chain_id=row["chain_id"],
        decimals=row["decimals"],
        coingecko_id=row["coingecko_id"],
        is_quote=row["is_quote"],
        price_feed=row.get("price_feed"),
    )

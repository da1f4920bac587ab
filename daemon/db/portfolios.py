"""The portfolio repository: portfolios, their target allocations and their flags."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any, Final, Literal

import asyncpg

from daemon.db.errors import NotFound
from daemon.db.pool import Store
from daemon.db.records import Allocation, Portfolio, TokenRecord


class PortfolioStore(Store):
    """Portfolios and their allocations."""

    __slots__ = ()

    async def add_portfolio(
        self,
        name: str,
        smart_account: str,
        *,
        chain_id: int,
        targets: Mapping[str, Decimal],
        delegation: Sequence[Mapping[str, Any]],
        owner: str | None = None,
    ) -> Portfolio:
        """Insert a portfolio with its allocations (symbol → weight) in one transaction."""

        async def work(conn: asyncpg.Connection) -> Portfolio:
            portfolio_id = await conn.fetchval(
                "INSERT INTO portfolio (name, smart_account, chain_id, owner, delegation)"
                " VALUES ($1, $2, $3, $4, $5) RETURNING id",
                name,
                smart_account,
                chain_id,
                owner,
                list(delegation),
            )
            await _write_allocations(conn, portfolio_id, targets)
            # Check the deferred sum rule now, so the error names it before commit.
            await conn.execute("SET CONSTRAINTS allocation_weights_sum_to_one IMMEDIATE")
            return (await _load_portfolios(conn, "p.id = $1", portfolio_id))[0]

        return await self._unit(work)

    async def set_allocations(self, portfolio_id: int, targets: Mapping[str, Decimal]) -> Portfolio:
        """Replace a portfolio's target weights (symbol → weight) atomically."""

        async def work(conn: asyncpg.Connection) -> Portfolio:
            await conn.execute("DELETE FROM allocation WHERE portfolio_id = $1", portfolio_id)
            await _write_allocations(conn, portfolio_id, targets)
            await conn.execute("SET CONSTRAINTS allocation_weights_sum_to_one IMMEDIATE")
            found = await _load_portfolios(conn, "p.id = $1", portfolio_id)
            if not found:
                raise NotFound(f"no portfolio with id {portfolio_id}")
            return found[0]

        return await self._unit(work)

    async def portfolios(
        self, *, active_only: bool = False, chain_id: int | None = None
    ) -> list[Portfolio]:
        """Portfolios (active ones, of one chain, if asked) with allocations and tokens, by
        name."""

        async def work(conn: asyncpg.Connection) -> list[Portfolio]:
            where = "($1::bigint IS NULL OR p.chain_id = $1)"
            if active_only:
                where += " AND p.is_active"
            return await _load_portfolios(conn, where, chain_id)

        return await self._unit(work, transaction=False)

    async def active_portfolios(self, chain_id: int | None = None) -> list[Portfolio]:
        """What the supervisor runs an actor for (the daemon passes its chain id)."""
        return await self.portfolios(active_only=True, chain_id=chain_id)

    async def active_portfolio_on(self, chain_id: int, smart_account: str) -> Portfolio | None:
        """The active portfolio of ``smart_account`` (any letter case) on ``chain_id``, if any.

        At most one exists: the index ``portfolio_one_active_per_account`` (migration 0005)."""

        async def work(conn: asyncpg.Connection) -> Portfolio | None:
            found = await _load_portfolios(
                conn,
                "p.is_active AND p.chain_id = $1 AND lower(p.smart_account) = lower($2)",
                chain_id,
                smart_account,
            )
            return min(found, key=lambda p: p.id) if found else None

        return await self._unit(work, transaction=False)

    async def set_portfolio_paused(self, key: int | str, paused: bool) -> Portfolio:
        """``driftd pause`` / ``resume``: durable, announced on :data:`PORTFOLIO_CHANNEL`."""
        return await self._set_portfolio_flag(key, "is_paused", paused)

    async def portfolio(self, key: int | str) -> Portfolio:
        """One portfolio by id or name; :class:`NotFound` if there is none."""

        async def work(conn: asyncpg.Connection) -> Portfolio:
            where = "p.id = $1" if isinstance(key, int) else "p.name = $1"
            found = await _load_portfolios(conn, where, key)
            if not found:
                raise NotFound(f"no portfolio {key!r}")
            return found[0]

        return await self._unit(work, transaction=False)

    async def set_portfolio_active(self, key: int | str, active: bool) -> Portfolio:
        """Activate or deactivate a portfolio (announced on :data:`PORTFOLIO_CHANNEL`)."""
        return await self._set_portfolio_flag(key, "is_active", active)

    async def _set_portfolio_flag(
        self, key: int | str, flag: Literal["is_active", "is_paused"], value: bool
    ) -> Portfolio:
        async def work(conn: asyncpg.Connection) -> Portfolio:
            column = "id" if isinstance(key, int) else "name"
            portfolio_id = await conn.fetchval(
                f"UPDATE portfolio SET {flag} = $2 WHERE {column} = $1 RETURNING id",  # noqa: S608
                key,
                value,
            )
            if portfolio_id is None:
                raise NotFound(f"no portfolio {key!r}")
            return (await _load_portfolios(conn, "p.id = $1", portfolio_id))[0]

        return await self._unit(work)


async def _write_allocations(
    conn: asyncpg.Connection, portfolio_id: int, targets: Mapping[str, Decimal]
) -> None:
    symbols = list(targets)
    rows = await conn.fetch("SELECT id, symbol FROM token WHERE symbol = any($1::text[])", symbols)
    ids = {r["symbol"]: r["id"] for r in rows}
    missing = [s for s in symbols if s not in ids]
    if missing:
        raise NotFound(f"unknown token symbol(s): {', '.join(missing)}")
    await conn.executemany(
        "INSERT INTO allocation (portfolio_id, token_id, weight) VALUES ($1, $2, $3)",
        [(portfolio_id, ids[s], Decimal(targets[s])) for s in symbols],
    )


_PORTFOLIO_SELECT: Final = """
SELECT p.id, p.name, p.smart_account, p.chain_id, p.owner, p.is_active, p.is_paused,
       p.delegation, p.created_at, p.updated_at, a.weight,
       t.id AS t_id, t.symbol AS t_symbol, t.address AS t_address, t.chain_id AS t_chain_id,
       t.decimals AS t_decimals, t.coingecko_id AS t_coingecko_id, t.is_quote AS t_is_quote,
       t.price_feed AS t_price_feed
FROM portfolio p
LEFT JOIN allocation a ON a.portfolio_id = p.id
LEFT JOIN token t ON t.id = a.token_id
WHERE {where}
ORDER BY p.name, t.symbol
"""


async def _load_portfolios(conn: asyncpg.Connection, where: str, *args: Any) -> list[Portfolio]:
    rows = await conn.fetch(_PORTFOLIO_SELECT.format(where=where), *args)
    grouped: dict[int, list[Mapping[str, Any]]] = {}
    for row in rows:
        grouped.setdefault(row["id"], []).append(row)
    portfolios = []
    for group in grouped.values():
        first = group[0]
        allocations = tuple(
            Allocation(
                token=TokenRecord(
                    id=r["t_id"],
                    symbol=r["t_symbol"],
                    address=r["t_address"],
                    chain_id=r["t_chain_id"],
                    decimals=r["t_decimals"],
                    coingecko_id=r["t_coingecko_id"],
                    is_quote=r["t_is_quote"],
                    price_feed=r["t_price_feed"],
                ),
                weight=r["weight"],
            )
            for r in group
            if r["t_id"] is not None
        )
        portfolios.append(
            Portfolio(
                id=first["id"],
                name=first["name"],
                smart_account=first["smart_account"],
                chain_id=first["chain_id"],
                owner=first["owner"],
                is_active=first["is_active"],
                delegation=first["delegation"],
                allocations=allocations,
                created_at=first["created_at"],
                updated_at=first["updated_at"],
                is_paused=first["is_paused"],
            )
        )
    return portfolios

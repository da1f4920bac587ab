"""Valuation snapshots: a portfolio's holdings, their USD value, weights and drift."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import asyncpg

from daemon.db.pool import Store
from daemon.db.records import HoldingValue, PortfolioSnapshot


class Valuations(Store):
    """Valuation snapshots."""

    __slots__ = ()

    async def insert_snapshots(self, snapshots: Sequence[PortfolioSnapshot]) -> None:
        """Append a batch of valuations in one transaction."""
        if not snapshots:
            return
        rows = [
            (
                s.portfolio_id,
                s.taken_at,
                s.total_usd,
                s.max_drift,
                s.price_source,
                [_holding_json(h) for h in s.holdings],
            )
            for s in snapshots
        ]

        async def work(conn: asyncpg.Connection) -> None:
            await conn.executemany(
                "INSERT INTO portfolio_snapshot (portfolio_id, taken_at, total_usd, max_drift,"
                " price_source, holdings) VALUES ($1, coalesce($2, now()), $3, $4, $5, $6)",
                rows,
            )

        await self._unit(work)

    async def latest_snapshot(self, portfolio_id: int) -> PortfolioSnapshot | None:
        """The newest valuation of a portfolio."""

        async def work(conn: asyncpg.Connection) -> PortfolioSnapshot | None:
            row = await conn.fetchrow(
                "SELECT * FROM portfolio_snapshot WHERE portfolio_id = $1"
                " ORDER BY taken_at DESC, id DESC LIMIT 1",
                portfolio_id,
            )
            if row is None:
                return None
            return PortfolioSnapshot(
                portfolio_id=row["portfolio_id"],
                total_usd=row["total_usd"],
                max_drift=row["max_drift"],
                price_source=row["price_source"],
                taken_at=row["taken_at"],
                holdings=tuple(
                    HoldingValue(
                        token_id=h["token_id"],
                        amount=int(h["amount"]),
                        usd=Decimal(h["usd"]),
                        weight=Decimal(h["weight"]),
                        drift=None if h.get("drift") is None else Decimal(h["drift"]),
                    )
                    for h in row["holdings"]
                ),
            )

        return await self._unit(work, transaction=False)


def _holding_json(h: HoldingValue) -> dict[str, Any]:
    return {
        "token_id": h.token_id,
        "amount": str(h.amount),
        "usd": str(h.usd),
        "weight": str(h.weight),
        "drift": None if h.drift is None else str(h.drift),
    }

"""Valuation snapshots: a portfolio's holdings, their USD value, weights and drift."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
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
                s.kind,
            )
            for s in snapshots
        ]

        async def work(conn: asyncpg.Connection) -> None:
            await conn.executemany(
                "INSERT INTO portfolio_snapshot (portfolio_id, taken_at, total_usd, max_drift,"
                " price_source, holdings, kind)"
                " VALUES ($1, coalesce($2, now()), $3, $4, $5, $6, $7)",
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
            return None if row is None else _snapshot(row)

        return await self._unit(work, transaction=False)

    async def valuation_series(
        self, portfolio_id: int, since: dt.datetime, until: dt.datetime
    ) -> list[PortfolioSnapshot]:
        """A portfolio's valuations taken in [since, until], oldest first."""

        async def work(conn: asyncpg.Connection) -> list[PortfolioSnapshot]:
            rows = await conn.fetch(
                "SELECT * FROM portfolio_snapshot WHERE portfolio_id = $1"
                " AND taken_at BETWEEN $2 AND $3 ORDER BY taken_at, id",
                portfolio_id,
                since,
                until,
            )
            return [_snapshot(row) for row in rows]

        return await self._unit(work, transaction=False)


def _snapshot(row: Mapping[str, Any]) -> PortfolioSnapshot:
    return PortfolioSnapshot(
        portfolio_id=row["portfolio_id"],
        total_usd=row["total_usd"],
        max_drift=row["max_drift"],
        price_source=row["price_source"],
        taken_at=row["taken_at"],
        kind=row["kind"],
        holdings=tuple(
            HoldingValue(
                token_id=h["token_id"],
                amount=int(h["amount"]),
                usd=Decimal(h["usd"]),
                weight=Decimal(h["weight"]),
                drift=_decimal_or_none(h.get("drift")),
                price_usd=_decimal_or_none(h.get("price_usd")),
                target=_decimal_or_none(h.get("target")),
            )
            for h in row["holdings"]
        ),
    )


def _decimal_or_none(value: Any) -> Decimal | None:
    return None if value is None else Decimal(value)


def _holding_json(h: HoldingValue) -> dict[str, Any]:
    document: dict[str, Any] = {
        "token_id": h.token_id,
        "amount": str(h.amount),
        "usd": str(h.usd),
        "weight": str(h.weight),
        "drift": None if h.drift is None else str(h.drift),
    }
    # Written only when known, so rows stay as small as before for callers that do not know.
    if h.price_usd is not None:
        document["price_usd"] = str(h.price_usd)
    if h.target is not None:
        document["target"] = str(h.target)
    return document

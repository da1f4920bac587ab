"""Reading a report's history from PostgreSQL: the portfolio, its valuations and its finished
rebalance attempts over a period, as :mod:`daemon.report.history` records.

How the stored rows read: amounts are base units (divided by the token's decimals); a valuation
written before holdings carried their price gets it from value over amount; an attempt's mined
legs are the ``expected_outputs`` entries with an ``actual_out``, sized by the plan leg of the
same sell, buy and amount in ``token_amounts``, through as many pools as their ``swap_path``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from daemon import db as dbm
from daemon.report.history import Attempt, ExecutedLeg, History, Position, Valuation


async def load_history(
    database: dbm.Database,
    portfolio: dbm.Portfolio,
    since: dt.datetime,
    until: dt.datetime,
    threshold: Decimal,
) -> History:
    tokens = {t.id: t for t in await database.tokens()}
    snapshots = await database.valuation_series(portfolio.id, since, until)
    rows = await database.finished_attempts(portfolio.id, since, until)
    return History(
        portfolio=portfolio.name,
        since=since,
        until=until,
        threshold=threshold,
        targets={a.token.symbol: a.weight for a in portfolio.allocations},
        valuations=tuple(valuation(s, tokens) for s in snapshots),
        attempts=tuple(attempt(r) for r in rows),
    )


def valuation(snapshot: dbm.PortfolioSnapshot, tokens: Mapping[int, dbm.TokenRecord]) -> Valuation:
    positions = []
    for h in snapshot.holdings:
        token = tokens[h.token_id]
        amount = Decimal(h.amount).scaleb(-token.decimals)
        price = h.price_usd
        if price is None and amount > 0:
            price = h.usd / amount
        positions.append(
            Position(
                symbol=token.symbol,
                amount=amount,
                usd=h.usd,
                weight=h.weight,
                target=h.target,
                price_usd=price,
            )
        )
    assert snapshot.taken_at is not None  # stored rows always have their time
    return Valuation(
        taken_at=snapshot.taken_at,
        kind=snapshot.kind,
        total_usd=snapshot.total_usd,
        max_drift=snapshot.max_drift,
        positions=tuple(positions),
    )


def attempt(row: dbm.RebalanceLogEntry) -> Attempt:
    legs: tuple[ExecutedLeg, ...] = ()
    if row.status in ("SUCCESS", "PARTIAL"):
        legs = executed_legs(row.token_amounts or [], row.expected_outputs or [], row.swap_path)
    return Attempt(
        started_at=row.timestamp,
        status=row.status,
        drift=row.drift_percentage,
        gas_usd=row.gas_cost_usd,
        legs=legs,
    )


def executed_legs(
    planned: Sequence[Mapping[str, Any]],
    quoted: Sequence[Mapping[str, Any]],
    paths: Sequence[Sequence[str]] | None,
) -> tuple[ExecutedLeg, ...]:
    """The mined legs of an attempt, from its ``rebalance_log`` JSON columns."""
    plan = {(p["sell"], p["buy"], str(p["amount_in"])): p for p in planned}
    legs = []
    for index, q in enumerate(quoted):
        if q.get("actual_out") is None:
            continue
        leg = plan.get((q["sell"], q["buy"], str(q["amount_in"])))
        if leg is None:
            continue  # not a leg of the plan: nothing to size it by
        usd = Decimal(leg["usd"])
        at_prices = int(leg.get("expected_out_at_prices") or 0)
        path = paths[index] if paths is not None and index < len(paths) else None
        legs.append(
            ExecutedLeg(
                sell=q["sell"],
                buy=q["buy"],
                usd=usd,
                quoted_out=int(q["quoted_out"]),
                actual_out=int(q["actual_out"]),
                usd_per_out_unit=usd / at_prices if at_prices > 0 else None,
                price_impact=Decimal(q["price_impact"]),
                hops=len(path) - 1 if path else 1,
            )
        )
    return tuple(legs)

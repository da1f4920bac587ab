"""The records a report is computed from: a portfolio's valuations and rebalance attempts over a
period, as plain values (whole tokens, USD as Decimal), whatever stored them."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from decimal import Decimal

import attrs


@attrs.frozen
class Position:
    """One token inside a valuation."""

    symbol: str
    amount: Decimal
    """Whole tokens."""
    usd: Decimal
    weight: Decimal
    target: Decimal | None
    price_usd: Decimal | None
    """USD per whole token (None when it was not stored and the amount was 0)."""


@attrs.frozen
class Valuation:
    """A portfolio's holdings and value at one moment."""

    taken_at: dt.datetime
    kind: str
    """interval, before_rebalance or after_rebalance."""
    total_usd: Decimal
    max_drift: Decimal | None
    positions: tuple[Position, ...]

    def prices(self) -> dict[str, Decimal]:
        return {p.symbol: p.price_usd for p in self.positions if p.price_usd is not None}


@attrs.frozen
class ExecutedLeg:
    """One swap that was mined, with what was quoted and what it paid out."""

    sell: str
    buy: str
    usd: Decimal
    """The leg's size in USD at the prices its plan was made with."""
    quoted_out: int
    """Base units of ``buy`` the fresh quote promised."""
    actual_out: int
    """Base units of ``buy`` the account received."""
    usd_per_out_unit: Decimal | None
    """USD per base unit of ``buy`` at the plan's prices (values the slippage)."""
    price_impact: Decimal
    """1 − execution price / the pools' mid price at the quote (the 0.3 % fee per hop included)."""
    hops: int
    """Pools the swap went through."""


@attrs.frozen
class Attempt:
    """One finished rebalance attempt (a ``rebalance_log`` row)."""

    started_at: dt.datetime
    status: str
    drift: Decimal | None
    """The max drift that triggered it."""
    gas_usd: Decimal | None
    legs: tuple[ExecutedLeg, ...] = ()
    """Its mined swaps (none unless SUCCESS or PARTIAL)."""


@attrs.frozen
class History:
    """Everything one report is computed from."""

    portfolio: str
    since: dt.datetime
    until: dt.datetime
    threshold: Decimal
    """``rebalance.drift_threshold`` now (the report's threshold line)."""
    targets: Mapping[str, Decimal]
    """The portfolio's target weights now."""
    valuations: tuple[Valuation, ...]
    """Oldest first."""
    attempts: tuple[Attempt, ...]
    """Oldest first."""

"""Values and messages shared between actors. All frozen: they cross task boundaries.

Grouped by direction: price feed → portfolio actors (a :class:`PriceSnapshot` in a latest-value
cell), portfolio actor → executor (a :class:`RebalanceRequest` carrying its own reply channel),
executor → portfolio actor (a :class:`RebalanceOutcome`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Literal

import attrs
import trio

from daemon.drift import Rebalance

PriceSourceName = Literal["oracle", "router"]
ValuationKind = Literal["interval", "before_rebalance", "after_rebalance"]
"""Why a portfolio's valuation was stored: on ``report.valuation_interval``, or around a trade."""


@attrs.frozen
class Token:
    """A registered ERC-20 token."""

    symbol: str
    address: str
    """Checksummed address."""
    decimals: int
    coingecko_id: str | None = None
    is_quote: bool = False
    """The stablecoin prices are quoted in (router source)."""


@attrs.frozen
class PricePoint:
    """One token's USD price from one source."""

    symbol: str
    usd: Decimal
    observed_at: datetime
    """When the source says the price was current: CoinGecko's ``last_updated_at``; for a router
    price the time it was read (reserves hold until the next block — if the node's head is
    current, which :attr:`block_timestamp` tells)."""
    source: PriceSourceName
    block_number: int | None = None
    block_timestamp: datetime | None = None
    """Router prices: the timestamp of the block they were read at. A node stuck on an old head
    serves old reserves as if they were current; ``prices.max_head_age`` judges this."""


@attrs.frozen
class NoPrices:
    """Why a portfolio has no usable prices this tick (the reason names the token)."""

    reason: str
    stale: bool
    """The price exists but is too old (the source or the node is behind): PRICE_STALE."""


@attrs.frozen
class PriceSnapshot:
    """Every token's latest price at one tick; published whole, never mutated."""

    prices: Mapping[str, PricePoint]
    taken_at: datetime
    source: PriceSourceName
    health: Mapping[str, str] = attrs.Factory(dict)
    """Tokens marked unhealthy by the feed (e.g. oracle/router divergence), with the status."""
    problems: tuple[str, ...] = ()
    """Why some tokens have no price in this snapshot (or are unhealthy), each ``SYMBOL: …``."""
    max_head_age: float | None = None
    """``prices.max_head_age`` when the snapshot was taken: a price read at a block older than
    this is stale (None: block age not judged — an idle devnet mines no blocks)."""

    def usable_prices(
        self, symbols: list[str], now: datetime, max_age: float
    ) -> dict[str, Decimal] | NoPrices:
        """USD prices of ``symbols`` if every one is present, fresh, positive and finite and, for
        router prices, read at a head younger than :attr:`max_head_age`; otherwise the reason
        there is no trade (naming the token), and whether it is staleness."""
        out: dict[str, Decimal] = {}
        for symbol in symbols:
            point = self.prices.get(symbol)
            if point is None:
                why = next((p for p in self.problems if p.startswith(f"{symbol}: ")), None)
                reason = f"No trade: price for {symbol} is missing" + (f" ({why})" if why else "")
                return NoPrices(reason, stale=False)
            if not point.usd.is_finite() or point.usd <= 0:
                reason = f"No trade: price for {symbol} is invalid: {point.usd}"
                return NoPrices(reason, stale=False)
            age = (now - point.observed_at).total_seconds()
            if age > max_age:
                return NoPrices(
                    f"No trade: price for {symbol} is stale "
                    f"({math.floor(age)} s old, max_age {math.floor(max_age)} s)",
                    stale=True,
                )
            if point.block_timestamp is not None and self.max_head_age:
                head_age = (now - point.block_timestamp).total_seconds()
                if head_age > self.max_head_age:
                    return NoPrices(
                        f"No trade: price for {symbol} is stale (read at block "
                        f"{point.block_number}, {math.floor(head_age)} s old, max_head_age "
                        f"{math.floor(self.max_head_age)} s)",
                        stale=True,
                    )
            out[symbol] = point.usd
        return out


@attrs.frozen
class RebalanceOutcome:
    """The executor's answer to one request."""

    rebalance_id: int | None
    """None when not even a row could be written (the database is unavailable)."""
    status: Literal["SUCCESS", "PARTIAL", "FAILED", "DRY_RUN", "SKIPPED"]
    tx_hash: str | None = None
    error: str | None = None


@attrs.frozen
class RebalanceRequest:
    """Portfolio actor → executor: carry out this plan, answer on ``reply`` (capacity 1)."""

    portfolio_id: int
    portfolio_name: str
    account: str
    """The smart account (delegation mode) whose tokens are traded."""
    plan: Rebalance
    prices: Mapping[str, Decimal]
    """The prices the plan was made with (gas cost in USD, slippage tracking)."""
    reply: trio.MemorySendChannel[RebalanceOutcome]
    requested_at: float
    """trio.current_time() when the actor decided, for execution time."""
    balances_block: int | None = None
    """The block the plan's balances were read at (or later): the executor refuses the plan if
    a trade of this portfolio was mined after it."""
    prices_observed_at: datetime | None = None
    """When the oldest price the plan used was current: the executor refuses the plan once it
    is older than ``prices.max_age``."""

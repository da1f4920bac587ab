"""What rebalancing cost, from the attempts' rows: gas, DEX fees, price impact and slippage.

Per mined leg, valued in USD at the prices its plan was made with: the DEX fee is
``size × (1 − 0.997^hops)`` (Uniswap V2's 0.3 % per pool); the price impact beyond the fee is
``size × recorded impact − fee`` (the recorded impact compares the quote with the pools' mid
price and includes the fee); the slippage is what the swap paid out below its fresh quote
(negative: better than quoted), ``(quoted − actual) / quoted`` and in USD at the plan's price of
the bought token. Gas is every attempt's gas in USD (a reverted transaction pays gas too); it is
paid by the daemon's signer, outside the portfolio, while fees, impact and slippage come out of
the portfolio's value. The success rate is SUCCESS over the attempts that went to the chain
(SUCCESS, PARTIAL, FAILED).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from decimal import Decimal

import attrs

from daemon.amm import FEE_DENOMINATOR, FEE_NUMERATOR
from daemon.report.history import Attempt, ExecutedLeg

KEPT_PER_HOP = Decimal(FEE_NUMERATOR) / Decimal(FEE_DENOMINATOR)


def leg_fee_usd(leg: ExecutedLeg) -> Decimal:
    return leg.usd * (1 - KEPT_PER_HOP**leg.hops)


def leg_impact_usd(leg: ExecutedLeg) -> Decimal:
    return leg.usd * leg.price_impact - leg_fee_usd(leg)


def leg_slippage(leg: ExecutedLeg) -> Decimal | None:
    if leg.quoted_out <= 0:
        return None
    return Decimal(leg.quoted_out - leg.actual_out) / Decimal(leg.quoted_out)


def leg_slippage_usd(leg: ExecutedLeg) -> Decimal:
    if leg.usd_per_out_unit is None:
        return Decimal(0)
    return Decimal(leg.quoted_out - leg.actual_out) * leg.usd_per_out_unit


@attrs.frozen
class Costs:
    statuses: Counter[str]
    success_rate: Decimal | None
    traded_usd: Decimal
    gas_usd: Decimal
    fees_usd: Decimal
    impact_usd: Decimal
    slippage_usd: Decimal
    slippage_mean: Decimal | None
    slippage_worst: Decimal | None
    """The largest shortfall below the quote (the most negative when all were better)."""

    @property
    def trading_usd(self) -> Decimal:
        """What trading took out of the portfolio's value: fees, impact and slippage."""
        return self.fees_usd + self.impact_usd + self.slippage_usd

    @property
    def total_usd(self) -> Decimal:
        """The total cost of ownership: trading costs and gas."""
        return self.trading_usd + self.gas_usd

    @property
    def gas_per_dollar(self) -> Decimal | None:
        return self.gas_usd / self.traded_usd if self.traded_usd > 0 else None


def costs(attempts: Sequence[Attempt]) -> Costs:
    statuses = Counter(a.status for a in attempts)
    on_chain = statuses["SUCCESS"] + statuses["PARTIAL"] + statuses["FAILED"]
    legs = [leg for a in attempts for leg in a.legs]
    slippages = [s for s in map(leg_slippage, legs) if s is not None]
    return Costs(
        statuses=statuses,
        success_rate=Decimal(statuses["SUCCESS"]) / on_chain if on_chain else None,
        traded_usd=sum((leg.usd for leg in legs), Decimal(0)),
        gas_usd=sum((a.gas_usd for a in attempts if a.gas_usd is not None), Decimal(0)),
        fees_usd=sum(map(leg_fee_usd, legs), Decimal(0)),
        impact_usd=sum(map(leg_impact_usd, legs), Decimal(0)),
        slippage_usd=sum(map(leg_slippage_usd, legs), Decimal(0)),
        slippage_mean=sum(slippages, Decimal(0)) / len(slippages) if slippages else None,
        slippage_worst=max(slippages) if slippages else None,
    )

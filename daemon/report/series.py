"""The valuation series over time: drift, the buy-and-hold benchmark, and samples for risk.

Drift over time is a step function: each valuation's max drift holds until the next valuation
(the daemon stores one every ``report.valuation_interval`` seconds and around every trade).
The benchmark is the first valuation's holdings never rebalanced, valued at each valuation's
recorded prices (a price a valuation lacks is the last one recorded before it). Volatility and
Sharpe need regular samples: the last value of each UTC day, or of each hour or minute when
the history is too short for two daily returns (annualised accordingly).
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Sequence
from decimal import Decimal
from typing import Final

import attrs

from daemon.report.history import Valuation
from daemon.returns import DAYS_PER_YEAR

SAMPLING_PERIODS: Final = (
    ("day", dt.timedelta(days=1), DAYS_PER_YEAR),
    ("hour", dt.timedelta(hours=1), DAYS_PER_YEAR * 24),
    ("minute", dt.timedelta(minutes=1), DAYS_PER_YEAR * 24 * 60),
)
"""(name, bucket, periods per year), coarsest first: the first giving two returns is used."""


@attrs.frozen
class DriftOverTime:
    average: Decimal
    """Time-weighted mean of the max drift (a plain mean when all valuations share a moment)."""
    maximum: Decimal
    above_threshold: dt.timedelta
    """How long the max drift was at or above the threshold."""
    span: dt.timedelta
    """From the first valuation with a drift to the last."""


def drift_over_time(valuations: Sequence[Valuation], threshold: Decimal) -> DriftOverTime | None:
    """None when no valuation has a drift."""
    points = [(v.taken_at, v.max_drift) for v in valuations if v.max_drift is not None]
    if not points:
        return None
    span = points[-1][0] - points[0][0]
    above = dt.timedelta(0)
    weighted = Decimal(0)
    for (start, drift), (end, _) in itertools.pairwise(points):
        held = end - start
        weighted += drift * Decimal(held.total_seconds())
        if drift >= threshold:
            above += held
    seconds = Decimal(span.total_seconds())
    drifts = [drift for _, drift in points]
    average = weighted / seconds if seconds > 0 else sum(drifts, Decimal(0)) / len(drifts)
    return DriftOverTime(average=average, maximum=max(drifts), above_threshold=above, span=span)


def benchmark_values(valuations: Sequence[Valuation]) -> list[Decimal]:
    """Buy-and-hold: the first valuation's amounts at each valuation's prices."""
    start = valuations[0]
    held = {p.symbol: p.amount for p in start.positions if p.amount != 0}
    last_price: dict[str, Decimal] = {}
    values = []
    for valuation in valuations:
        last_price.update(valuation.prices())
        values.append(sum((amount * last_price[s] for s, amount in held.items()), Decimal(0)))
    return values


def missing_start_prices(valuations: Sequence[Valuation]) -> list[str]:
    """Tokens held at the start whose price the first valuation does not give."""
    start = valuations[0]
    prices = start.prices()
    return [p.symbol for p in start.positions if p.amount != 0 and p.symbol not in prices]


@attrs.frozen
class Samples:
    """Regular samples of two series (portfolio and benchmark) for volatility and Sharpe."""

    period: str
    """day, hour or minute."""
    periods_per_year: int
    portfolio: list[float]
    benchmark: list[float]


def risk_samples(
    times: Sequence[dt.datetime], portfolio: Sequence[Decimal], benchmark: Sequence[Decimal]
) -> Samples:
    """The opening values and the last values of each period (UTC), at the coarsest period
    giving at least two returns (else daily, with fewer)."""
    chosen = next(
        (
            (name, per_year, indexes)
            for name, bucket, per_year in SAMPLING_PERIODS
            if len(indexes := _sample_indexes(times, bucket)) >= 3
        ),
        None,
    )
    if chosen is None:
        name, bucket, per_year = SAMPLING_PERIODS[0]
        chosen = (name, per_year, _sample_indexes(times, bucket))
    name, per_year, indexes = chosen
    return Samples(
        period=name,
        periods_per_year=per_year,
        portfolio=[float(portfolio[i]) for i in indexes],
        benchmark=[float(benchmark[i]) for i in indexes],
    )


def _sample_indexes(times: Sequence[dt.datetime], bucket: dt.timedelta) -> list[int]:
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    last_of_bucket: dict[int, int] = {}
    for index, at in enumerate(times):
        last_of_bucket[(at - epoch) // bucket] = index
    indexes = [0, *sorted(last_of_bucket.values())]
    return indexes[1:] if len(indexes) > 1 and indexes[1] == 0 else indexes

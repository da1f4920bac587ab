"""Risk and return of a value series: period returns, volatility, Sharpe ratio, drawdown.

Pure arithmetic on floats (statistics, not money), shared by the backtester and ``driftd
report``. Volatility and Sharpe are annualised with the number of sampling periods in a year
(crypto trades every day: 365 daily periods); the risk-free rate is yearly.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Final

DAYS_PER_YEAR: Final = 365


def period_returns(samples: Sequence[float]) -> list[float]:
    """``b / a − 1`` between consecutive samples (a pair starting at a non-positive value has
    no return and is left out)."""
    return [b / a - 1 for a, b in itertools.pairwise(samples) if a > 0]


def volatility_and_sharpe(
    samples: Sequence[float], risk_free: float, periods_per_year: float = DAYS_PER_YEAR
) -> tuple[float, float | None]:
    """(annualised volatility, annualised Sharpe ratio) of the samples' period returns.

    The sample standard deviation (n − 1) of the returns; the Sharpe ratio is the mean excess
    return over the risk-free rate's share of one period, over that deviation. Fewer than two
    returns, or returns that never vary: volatility 0 and no Sharpe ratio (None)."""
    returns = period_returns(samples)
    if len(returns) < 2:
        return 0.0, None
    mean = math.fsum(returns) / len(returns)
    variance = math.fsum((r - mean) ** 2 for r in returns) / (len(returns) - 1)
    deviation = math.sqrt(variance)
    if deviation == 0:
        return 0.0, None
    scale = math.sqrt(periods_per_year)
    return deviation * scale, (mean - risk_free / periods_per_year) / deviation * scale


def max_drawdown(values: Sequence[float]) -> float:
    """The largest fall from a running peak, as a fraction of that peak (0 when none)."""
    peak = -math.inf
    worst = 0.0
    for value in values:
        peak = max(peak, value)
        if peak > 0:
            worst = max(worst, 1 - value / peak)
    return worst

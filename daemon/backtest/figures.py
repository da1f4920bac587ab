"""The figures a backtest reports, computed from a run's record.

Returns, volatility and Sharpe come from daily samples of the value net of gas (the last value
of each day); volatility and Sharpe are annualised over 365 days (crypto trades every day).
Drift figures are over every step's largest |drift|. "Stuck" is the share of the horizon spent
in stretches above ``stuck_threshold`` that lasted longer than a day (the whole stretch counts).
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Sequence
from typing import Any, Final

import attrs

from daemon.backtest.simulate import RunResult
from daemon.returns import max_drawdown, volatility_and_sharpe

DAY: Final = 86400
STUCK_AFTER: Final = DAY


@attrs.frozen
class Figures:
    strategy: str
    initial_value_usd: float
    final_value_usd: float
    return_pct: float
    return_vs_hold_pct: float | None
    rebalances: int
    legs: int
    skipped_legs: int
    turnover_usd: float
    mean_drift_pct: float
    rms_drift_pct: float
    max_drift_pct: float
    stuck_pct: float
    gas_units: int
    gas_usd: float
    fees_usd: float
    impact_usd: float
    cost_usd: float
    volatility_pct: float
    sharpe: float | None
    max_drawdown_pct: float

    def as_json(self) -> dict[str, Any]:
        return {
            name: (round(value, 6) if isinstance(value, float) else value)
            for name, value in attrs.asdict(self).items()
        }


def daily_values(values: Sequence[float], step: int) -> list[float]:
    per_day = max(1, DAY // step)
    samples = [values[i] for i in range(0, len(values), per_day)]
    if (len(values) - 1) % per_day:
        samples.append(values[-1])
    return samples


def stuck_share(drifts: array[float], step: int, threshold: float) -> float:
    """Share of steps inside stretches above ``threshold`` that last more than a day."""
    stuck = 0
    run = 0
    limit = STUCK_AFTER // step
    for drift in drifts:
        if drift >= threshold:
            run += 1
            continue
        if run > limit:
            stuck += run
        run = 0
    if run > limit:
        stuck += run
    return stuck / len(drifts) if drifts else 0.0


def figures(
    result: RunResult,
    threshold: float,
    risk_free: float = 0.0,
    hold_return: float | None = None,
) -> Figures:
    values = result.net_value
    start, end = values[0], values[-1]
    drifts = result.max_drift
    daily = daily_values(values, result.step)
    volatility, sharpe = volatility_and_sharpe(daily, risk_free)
    change = end / start - 1
    return Figures(
        strategy=result.strategy,
        initial_value_usd=start,
        final_value_usd=end,
        return_pct=100 * change,
        return_vs_hold_pct=None if hold_return is None else 100 * (change - hold_return),
        rebalances=result.rebalances,
        legs=result.legs,
        skipped_legs=result.skipped_legs,
        turnover_usd=result.turnover_usd,
        mean_drift_pct=100 * sum(drifts) / len(drifts),
        rms_drift_pct=100 * math.sqrt(sum(d * d for d in drifts) / len(drifts)),
        max_drift_pct=100 * max(drifts),
        stuck_pct=100 * stuck_share(drifts, result.step, threshold),
        gas_units=result.gas_units,
        gas_usd=result.costs.gas_usd,
        fees_usd=result.costs.fees_usd,
        impact_usd=result.costs.impact_usd,
        cost_usd=result.costs.total_usd,
        volatility_pct=100 * volatility,
        sharpe=sharpe,
        max_drawdown_pct=100 * max_drawdown(values),
    )

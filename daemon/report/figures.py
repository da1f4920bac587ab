"""The report: every figure computed from a :class:`~daemon.report.history.History`, each with
its JSON name, label, unit and precision, so the table, JSON and HTML show the same numbers.

Attribution against buy-and-hold: the portfolio's return is its last valuation over its first;
the benchmark's is the first valuation's holdings, never rebalanced, at the same recorded
prices. Rebalancing alpha is the difference (in USD: last value − benchmark's last value). Fees,
price impact and slippage are already inside the portfolio's value, so alpha before costs adds
them back; gas is paid by the signer, so alpha after all costs takes it off. Money figures are
Decimal; statistics (volatility, Sharpe, drawdown) are floats. The history must hold two
valuations at different moments; with less, :class:`NoData` says what is missing.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import attrs

from daemon.report.costs import Costs, costs
from daemon.report.daily import Day, daily
from daemon.report.history import History
from daemon.report.series import (
    Samples,
    benchmark_values,
    drift_over_time,
    missing_start_prices,
    risk_samples,
)
from daemon.returns import max_drawdown, volatility_and_sharpe

Number = Decimal | float | int | None


class NoData(Exception):
    """The history is empty or too short for a report; the message names what is missing."""


@attrs.frozen
class Figure:
    key: str
    """Its name in JSON."""
    label: str
    section: str
    unit: str
    """"USD", "%", "h", or "" (a count or a ratio)."""
    value: Number
    digits: int

    def rounded(self) -> Number:
        """The value as every format shows it."""
        if self.value is None or isinstance(self.value, int):
            return self.value
        if isinstance(self.value, Decimal):
            exponent = Decimal(1).scaleb(-self.digits)
            return self.value.quantize(exponent, rounding=ROUND_HALF_EVEN)
        return round(self.value, self.digits)

    def text(self) -> str:
        shown = self.rounded()
        if shown is None:
            return "n/a"
        if isinstance(shown, float):
            return f"{shown:.{self.digits}f}"
        return str(shown)

    def json(self) -> Any:
        shown = self.rounded()
        return str(shown) if isinstance(shown, Decimal) else shown


@attrs.frozen
class Series:
    """What the charts draw: the valuations over time and the benchmark beside them."""

    times: list[dt.datetime]
    values: list[Decimal]
    benchmark: list[Decimal]
    max_drift: list[Decimal | None]
    weights: dict[str, list[Decimal | None]]
    targets: dict[str, list[Decimal | None]]
    rebalances: list[dt.datetime]
    """When the attempts that traded started."""


@attrs.frozen
class Report:
    history: History
    figures: list[Figure]
    days: list[Day]
    series: Series
    costs: Costs
    sampling: str

    def figure(self, key: str) -> Figure:
        return next(f for f in self.figures if f.key == key)


def _pct(value: Decimal | float | None) -> Decimal | float | None:
    return None if value is None else value * 100


def check_enough(history: History) -> None:
    """:class:`NoData` unless the history has two valuations at different moments with prices."""
    where = (
        f"portfolio {history.portfolio!r} between {history.since:%Y-%m-%d %H:%M} and "
        f"{history.until:%Y-%m-%d %H:%M} UTC"
    )
    valuations = history.valuations
    if not valuations:
        attempts = f"; {len(history.attempts)} rebalance attempt(s)" if history.attempts else ""
        raise NoData(
            f"no data for {where}: no valuations recorded{attempts} (the daemon stores one every "
            "report.valuation_interval seconds while it runs the portfolio)"
        )
    if len(valuations) < 2 or valuations[0].taken_at == valuations[-1].taken_at:
        first = f"{valuations[0].taken_at:%Y-%m-%d %H:%M:%S}"
        raise NoData(
            f"no data for {where}: only one valuation (at {first} UTC); returns need at least "
            "two at different times"
        )
    missing = missing_start_prices(valuations)
    if missing:
        raise NoData(
            f"no data for {where}: the first valuation has no price for {', '.join(missing)}, "
            "so the buy-and-hold benchmark cannot be valued"
        )


def build_report(history: History, risk_free: float) -> Report:
    """Every figure of the report (raises :class:`NoData` when the history is too short)."""
    check_enough(history)
    valuations = history.valuations
    times = [v.taken_at for v in valuations]
    values = [v.total_usd for v in valuations]
    benchmark = benchmark_values(valuations)
    samples = risk_samples(times, values, benchmark)
    spent = costs(history.attempts)
    series = Series(
        times=times,
        values=values,
        benchmark=benchmark,
        max_drift=[v.max_drift for v in valuations],
        weights=_per_token(history, "weight"),
        targets=_per_token(history, "target"),
        rebalances=[a.started_at for a in history.attempts if a.status in ("SUCCESS", "PARTIAL")],
    )
    figures = [
        *_attribution(values, benchmark, spent),
        *_rebalancing(spent),
        *_drift(history),
        *_risk(samples, values, benchmark, risk_free),
    ]
    return Report(
        history=history,
        figures=figures,
        days=daily(valuations, history.attempts),
        series=series,
        costs=spent,
        sampling=samples.period,
    )


def _per_token(history: History, field: str) -> dict[str, list[Decimal | None]]:
    symbols = sorted({p.symbol for v in history.valuations for p in v.positions})
    table: dict[str, list[Decimal | None]] = {s: [] for s in symbols}
    for valuation in history.valuations:
        found = {p.symbol: getattr(p, field) for p in valuation.positions}
        if field == "target":
            # Rows written before targets were stored: the portfolio's targets now.
            found = {s: found.get(s) or history.targets.get(s) for s in symbols}
        for symbol in symbols:
            table[symbol].append(found.get(symbol))
    return table


def _attribution(
    values: Sequence[Decimal], benchmark: Sequence[Decimal], spent: Costs
) -> list[Figure]:
    start, end, hold_end = values[0], values[-1], benchmark[-1]
    section = "Attribution against buy-and-hold"

    def share(usd: Decimal) -> Decimal | None:
        return usd / start * 100 if start > 0 else None

    portfolio_return = share(end - start)
    benchmark_return = share(hold_end - start)
    alpha_usd = end - hold_end
    gross = alpha_usd + spent.trading_usd
    net = alpha_usd - spent.gas_usd
    return [
        Figure("start_value_usd", "start value", section, "USD", start, 2),
        Figure("end_value_usd", "end value", section, "USD", end, 2),
        Figure("benchmark_end_value_usd", "buy-and-hold end value", section, "USD", hold_end, 2),
        Figure("portfolio_return_pct", "portfolio return", section, "%", portfolio_return, 4),
        Figure("benchmark_return_pct", "buy-and-hold return", section, "%", benchmark_return, 4),
        Figure("rebalancing_alpha_pct", "rebalancing alpha", section, "%", share(alpha_usd), 4),
        Figure("rebalancing_alpha_usd", "rebalancing alpha", section, "USD", alpha_usd, 2),
        Figure("alpha_before_costs_usd", "alpha before costs", section, "USD", gross, 2),
        Figure("alpha_after_all_costs_usd", "alpha after all costs", section, "USD", net, 2),
        Figure(
            "costs_taken_back_pct",
            "costs taken back (of alpha before costs)",
            section,
            "%",
            spent.total_usd / gross * 100 if gross > 0 else None,
            2,
        ),
        Figure("total_cost_usd", "total cost of ownership", section, "USD", spent.total_usd, 2),
        Figure(
            "total_cost_pct", "total cost of ownership", section, "%", share(spent.total_usd), 4
        ),
    ]


def _rebalancing(spent: Costs) -> list[Figure]:
    section = "Rebalances and costs"
    count = spent.statuses
    return [
        Figure("attempts", "attempts", section, "", sum(count.values()), 0),
        Figure("successes", "successful", section, "", count["SUCCESS"], 0),
        Figure("partial", "partial", section, "", count["PARTIAL"], 0),
        Figure("failed", "failed", section, "", count["FAILED"], 0),
        Figure("skipped", "skipped", section, "", count["SKIPPED"], 0),
        Figure("success_rate_pct", "success rate", section, "%", _pct(spent.success_rate), 2),
        Figure("traded_usd", "traded", section, "USD", spent.traded_usd, 2),
        Figure("gas_usd", "gas", section, "USD", spent.gas_usd, 2),
        Figure(
            "gas_per_dollar", "gas per dollar rebalanced", section, "USD", spent.gas_per_dollar, 6
        ),
        Figure("fees_usd", "DEX fees", section, "USD", spent.fees_usd, 2),
        Figure(
            "price_impact_usd", "price impact (beyond fees)", section, "USD", spent.impact_usd, 2
        ),
        Figure("slippage_usd", "slippage vs quote", section, "USD", spent.slippage_usd, 2),
        Figure(
            "slippage_mean_pct",
            "slippage vs quote, mean",
            section,
            "%",
            _pct(spent.slippage_mean),
            4,
        ),
        Figure(
            "slippage_worst_pct",
            "slippage vs quote, worst",
            section,
            "%",
            _pct(spent.slippage_worst),
            4,
        ),
    ]


def _drift(history: History) -> list[Figure]:
    section = "Drift"
    over_time = drift_over_time(history.valuations, history.threshold)
    above = None if over_time is None else over_time.above_threshold.total_seconds()
    span = None if over_time is None else over_time.span.total_seconds()
    return [
        Figure("threshold_pct", "threshold", section, "%", history.threshold * 100, 2),
        Figure(
            "avg_drift_pct",
            "average max drift (time-weighted)",
            section,
            "%",
            None if over_time is None else over_time.average * 100,
            4,
        ),
        Figure(
            "max_drift_pct",
            "highest max drift",
            section,
            "%",
            None if over_time is None else over_time.maximum * 100,
            4,
        ),
        Figure(
            "time_above_threshold_hours",
            "time at or above the threshold",
            section,
            "h",
            None if above is None else above / 3600,
            4,
        ),
        Figure(
            "time_above_threshold_pct",
            "time at or above the threshold",
            section,
            "%",
            None if above is None or not span else above / span * 100,
            2,
        ),
    ]


def _risk(
    samples: Samples, values: Sequence[Decimal], benchmark: Sequence[Decimal], risk_free: float
) -> list[Figure]:
    section = f"Risk (from {samples.period}ly samples, annualised)"
    figures = []
    for who, sampled, full in (
        ("portfolio", samples.portfolio, values),
        ("benchmark", samples.benchmark, benchmark),
    ):
        volatility, sharpe = volatility_and_sharpe(sampled, risk_free, samples.periods_per_year)
        label = "buy-and-hold" if who == "benchmark" else who
        figures += [
            Figure(
                f"{who}_volatility_pct", f"{label} volatility", section, "%", volatility * 100, 4
            ),
            Figure(f"{who}_sharpe", f"{label} Sharpe ratio", section, "", sharpe, 4),
            Figure(
                f"{who}_max_drawdown_pct",
                f"{label} max drawdown",
                section,
                "%",
                max_drawdown([float(v) for v in full]) * 100,
                4,
            ),
        ]
    figures.append(Figure("risk_free_rate_pct", "risk-free rate", section, "%", risk_free * 100, 4))
    return figures

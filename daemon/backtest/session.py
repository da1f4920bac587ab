"""A whole backtest: one series, several strategies, figures for each (what the CLI runs)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import TextIO

import attrs

from daemon.backtest.figures import Figures, figures
from daemon.backtest.series import PriceSeries
from daemon.backtest.simulate import MarketSetup, PortfolioSetup, Rules, RunResult, run
from daemon.backtest.strategies import HoldStrategy, Strategy


@attrs.frozen
class Outcome:
    results: tuple[RunResult, ...]
    rows: tuple[Figures, ...]


class ProgressBar:
    """``backtest [#####.....] 45 % target`` on one terminal line, redrawn in place."""

    def __init__(self, total: int, stream: TextIO = sys.stderr, width: int = 30) -> None:
        self.total = max(1, total)
        self.stream = stream
        self.width = width
        self.done = 0
        self.label = ""

    def advance(self, label: str, base: int) -> Callable[[int], None]:
        def update(index: int) -> None:
            self.done = base + index
            filled = self.width * self.done // self.total
            bar = "#" * filled + "." * (self.width - filled)
            percent = 100 * self.done // self.total
            self.stream.write(f"\rbacktest [{bar}] {percent:3d} % {label:<20.20}")
            self.stream.flush()

        return update

    def close(self) -> None:
        self.stream.write("\n")
        self.stream.flush()


def backtest(
    series: PriceSeries,
    setup: PortfolioSetup,
    market: MarketSetup,
    strategies: Sequence[Strategy],
    rules: Rules,
    risk_free: float = 0.0,
    progress: ProgressBar | None = None,
) -> Outcome:
    """Run every strategy on ``series``; returns also appear against buy-and-hold."""
    results = []
    for number, strategy in enumerate(strategies):
        callback = None
        if progress is not None:
            callback = progress.advance(strategy.name, number * series.length)
        results.append(run(series, setup, market, strategy, rules, callback))
    if progress is not None:
        progress.close()
    hold = next((r for r in results if r.strategy == "hold"), None)
    if hold is None:
        hold = run(series, setup, market, HoldStrategy(), rules)
    hold_return = hold.net_value[-1] / hold.net_value[0] - 1
    rows = tuple(
        figures(result, rules.stuck_threshold, risk_free, hold_return) for result in results
    )
    return Outcome(results=tuple(results), rows=rows)

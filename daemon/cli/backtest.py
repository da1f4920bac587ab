"""``driftd backtest``: replay prices through the engine and compare strategies.

The backtester (:mod:`daemon.backtest`) is imported only when the command runs. It needs no
database, chain or network: prices come from a CSV or a seeded generator, pools are simulated.
"""

from __future__ import annotations

import argparse
import sys
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon import exitcodes
from daemon.config import Config

if TYPE_CHECKING:
    from daemon.cli.main import Subparsers


def _positive(kind: type[int] | type[float]) -> Any:
    def parse(raw: str) -> int | float:
        try:
            value = kind(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {raw!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {raw}")
        return value

    return parse


def _non_negative_decimal(raw: str) -> Decimal:
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"must be a number, got {raw!r}") from None
    if not value.is_finite() or value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {raw}")
    return value


def register(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "backtest",
        help="replay prices through the engine and compare strategies (no chain needed)",
        description="Replay a price series (a CSV, or generated from a seed) through the "
        "engine the daemon runs, on simulated Uniswap V2 pools, and compare strategies.",
    )
    source = parser.add_argument_group("prices")
    source.add_argument("--csv", type=Path, metavar="PATH", help="timestamp,symbol,price_usd rows")
    source.add_argument("--seed", type=int, default=1, help="generator seed (default 1)")
    source.add_argument("--days", type=_positive(float), default=365.0, help="generated horizon")
    source.add_argument(
        "--step", type=_positive(int), default=300, metavar="SECONDS", help="generated step"
    )
    market = parser.add_argument_group("portfolio and market")
    market.add_argument(
        "--scenario",
        default="medium",
        help="small, medium or large: tokens, targets, value and pool depth (default medium)",
    )
    market.add_argument("--value", type=_positive(float), metavar="USD", help="starting value")
    market.add_argument(
        "--pool-depth", type=_positive(float), metavar="USD", help="each pool's value at start"
    )
    market.add_argument(
        "--targets", metavar="SYM=W,…", help="target weights (default: the scenario's)"
    )
    market.add_argument("--decimals", metavar="SYM=N,…", help="token decimals (default 18)")
    market.add_argument("--quote", default="USDC", help="the quote token routes go through")
    costs = parser.add_argument_group("costs")
    costs.add_argument("--gas-gwei", type=_non_negative_decimal, default=Decimal(20))
    costs.add_argument(
        "--native-usd",
        type=_non_negative_decimal,
        metavar="USD",
        help="the gas token's price (default: WETH's price in the series)",
    )
    costs.add_argument("--risk-free", type=float, default=0.0, help="yearly rate for Sharpe")
    from daemon.backtest.scenarios import DEFAULT_STRATEGIES, STRATEGY_HELP

    parser.add_argument(
        "--strategy",
        action="append",
        metavar="SPEC",
        help=f"a strategy, repeatable (default: {', '.join(DEFAULT_STRATEGIES)}): {STRATEGY_HELP}",
    )
    output = parser.add_argument_group("output")
    output.add_argument("--format", choices=("table", "json"), default="table")
    output.add_argument("--charts", type=Path, metavar="DIR", help="write value/drift/cost charts")
    output.add_argument("--chart-format", choices=("svg", "png"), default="svg")
    output.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: when stderr is a terminal)",
    )
    parser.set_defaults(func=cmd_backtest)


def cmd_backtest(args: argparse.Namespace, config: Config) -> int:
    from daemon.backtest.runner import BacktestError, run_command

    try:
        report = run_command(args, config)
    except BacktestError as exc:
        print(f"driftd backtest: {exc}", file=sys.stderr)
        return exitcodes.USAGE
    print(report.text)
    if report.charts:
        print("charts: " + ", ".join(str(path) for path in report.charts), file=sys.stderr)
    return exitcodes.OK

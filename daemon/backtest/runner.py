"""``driftd backtest`` from parsed arguments: inputs → backtest → table, JSON and charts."""

from __future__ import annotations

import argparse
import sys
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import attrs

from daemon.backtest.gas import GasModel, GasPrice
from daemon.backtest.output import document, table, write_charts
from daemon.backtest.pools import NoPool
from daemon.backtest.scenarios import (
    DECIMALS,
    DEFAULT_STRATEGIES,
    Scenario,
    ScenarioError,
    pairs_for,
    scenario,
    strategy,
)
from daemon.backtest.series import PriceSeries, SeriesError, generate, read_csv
from daemon.backtest.session import ProgressBar, backtest
from daemon.backtest.simulate import MarketSetup, PortfolioSetup, Rules
from daemon.config import Config
from daemon.drift import EngineParams


class BacktestError(ValueError):
    """The backtest cannot run with these inputs; the message names what is wrong."""


def _mapping(text: str, what: str, kind: type[Decimal] | type[int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        symbol, sep, value = item.partition("=")
        try:
            out[symbol.strip()] = kind(value.strip())
        except (InvalidOperation, ValueError):
            sep = ""
        if not sep or not symbol.strip():
            raise BacktestError(f"--{what}: expected SYMBOL=NUMBER, got {item!r}")
    return out


def portfolio(args: argparse.Namespace, chosen: Scenario) -> PortfolioSetup:
    targets = _mapping(args.targets, "targets", Decimal) if args.targets else chosen.targets
    decimals = {s: DECIMALS.get(s, 18) for s in targets}
    decimals |= _mapping(args.decimals, "decimals", int) if args.decimals else {}
    if args.quote not in targets:
        raise BacktestError(f"--quote: {args.quote} is not one of the portfolio's tokens")
    if abs(sum(targets.values()) - 1) > Decimal("1e-9"):
        raise BacktestError(f"--targets: weights must sum to 1, got {sum(targets.values())}")
    value = Decimal(repr(args.value)) if args.value else chosen.value_usd
    return PortfolioSetup(value_usd=value, targets=targets, decimals=decimals, quote=args.quote)


def market(args: argparse.Namespace, chosen: Scenario, setup: PortfolioSetup) -> MarketSetup:
    depth = args.pool_depth or chosen.depth_usd
    return MarketSetup(depth_usd=depth, pairs=pairs_for(setup.targets, setup.quote))


def series(args: argparse.Namespace, chosen: Scenario, setup: PortfolioSetup) -> PriceSeries:
    if args.csv is None:
        if set(setup.targets) - set(chosen.targets):
            unknown = ", ".join(sorted(set(setup.targets) - set(chosen.targets)))
            raise BacktestError(f"no price model for {unknown}: give prices with --csv")
        model = chosen.market_model(days=args.days, step=args.step)
        return generate(model, args.seed)
    loaded = read_csv(args.csv)
    missing = sorted(set(setup.targets) - set(loaded.symbols))
    if missing:
        raise BacktestError(f"{args.csv}: no prices for {', '.join(missing)}")
    return loaded


@attrs.frozen
class Report:
    """What the command prints (``text``) and the chart files it wrote."""

    text: str
    charts: tuple[Path, ...]


def run_command(args: argparse.Namespace, config: Config) -> Report:
    try:
        chosen = scenario(args.scenario)
        setup = portfolio(args, chosen)
        base = EngineParams.from_config(config)
        strategies = [
            strategy(spec, base, config.rebalance.cooldown_minutes)
            for spec in (args.strategy or DEFAULT_STRATEGIES)
        ]
        prices = series(args, chosen, setup)
        market_setup = market(args, chosen, setup)
    except (ScenarioError, SeriesError) as exc:
        raise BacktestError(str(exc)) from None
    rules = Rules(
        price_impact_threshold=config.rebalance.price_impact_threshold,
        gas=GasModel(),
        gas_price=GasPrice(gwei=args.gas_gwei, native_usd=args.native_usd),
        stuck_threshold=float(base.drift_threshold),
    )
    if rules.gas_price.native_usd is None and rules.gas_price.native_symbol not in setup.targets:
        raise BacktestError("--native-usd: the portfolio holds no WETH to price gas with")
    show = sys.stderr.isatty() if args.progress is None else args.progress
    bar = ProgressBar(len(strategies) * prices.length) if show else None
    try:
        outcome = backtest(prices, setup, market_setup, strategies, rules, args.risk_free, bar)
    except NoPool as exc:
        raise BacktestError(str(exc)) from None
    inputs = {
        "source": str(args.csv) if args.csv else f"generated, seed {args.seed}",
        "scenario": chosen.name,
        "steps": prices.length,
        "step_seconds": prices.step,
        "value_usd": str(setup.value_usd),
        "targets": {s: str(w) for s, w in setup.targets.items()},
        "pool_depth_usd": market_setup.depth_usd,
        "gas_gwei": str(args.gas_gwei),
    }
    if args.format == "json":
        text = document(inputs, outcome.rows)
    else:
        text = f"backtest: {inputs['source']}, {chosen.summary}, {prices.length} steps\n"
        text += table(outcome.rows)
    charts: list[Path] = []
    if args.charts is not None:
        try:
            charts = write_charts(
                outcome.results, outcome.rows, args.charts, rules.stuck_threshold, args.chart_format
            )
        except ImportError:
            raise BacktestError(
                "--charts needs matplotlib: pip install 'driftd[analytics]'"
            ) from None
    return Report(text=text, charts=tuple(charts))

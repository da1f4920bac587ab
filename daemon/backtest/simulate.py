"""One backtest run: a strategy trading a portfolio through a price series on simulated pools.

Per step: value the portfolio at the step's prices (floats: these numbers are reported, never
sent), record its value net of gas spent and its largest |drift|; if the cooldown has passed and
the strategy's screen says it may trade, let it plan from exact Decimal prices and integer
balances, as the daemon does; then execute the legs as the executor would — each leg routed
(direct pair, else through the quote token), quoted on the pools, dropped when its price impact
exceeds the cap, otherwise swapped with exact integer math — and charge the transaction's gas.
A rebalance with at least one executed leg starts the cooldown.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Mapping
from decimal import Decimal

import attrs

from daemon.backtest.gas import GasModel, GasPrice
from daemon.backtest.pools import FEE, Market
from daemon.backtest.series import PriceSeries
from daemon.backtest.strategies import Strategy
from daemon.drift import Holding, Leg


@attrs.frozen
class PortfolioSetup:
    """What is held at the start: ``value_usd`` split by ``targets``."""

    value_usd: Decimal
    targets: Mapping[str, Decimal]
    decimals: Mapping[str, int]
    quote: str


@attrs.frozen
class MarketSetup:
    depth_usd: float
    pairs: tuple[tuple[str, str], ...]
    """Pools; every other pair is routed through the quote token."""


@attrs.frozen
class Rules:
    """The executor's rules and the chain's costs."""

    price_impact_threshold: Decimal = Decimal("0.05")
    gas: GasModel = attrs.Factory(GasModel)
    gas_price: GasPrice = attrs.Factory(GasPrice)
    stuck_threshold: float = 0.15
    """The drift that counts as "above the threshold" when measuring time stuck (the same for
    every strategy, so they compare)."""


@attrs.define
class Costs:
    gas_usd: float = 0.0
    fees_usd: float = 0.0
    impact_usd: float = 0.0

    @property
    def total_usd(self) -> float:
        return self.gas_usd + self.fees_usd + self.impact_usd


@attrs.define
class RunResult:
    """A run's record: per-step series and counters (figures are computed from them)."""

    strategy: str
    step: int
    start: int
    net_value: array[float]
    """Portfolio value at each step minus the gas spent so far, USD."""
    max_drift: array[float]
    rebalances: int = 0
    legs: int = 0
    skipped_legs: int = 0
    turnover_usd: float = 0.0
    gas_units: int = 0
    costs: Costs = attrs.Factory(Costs)
    rebalance_steps: list[int] = attrs.Factory(list)


def _initial_balances(setup: PortfolioSetup, prices: Mapping[str, float]) -> dict[str, int]:
    balances = {}
    for symbol, weight in setup.targets.items():
        usd = setup.value_usd * weight
        price = Decimal(repr(prices[symbol]))
        balances[symbol] = int((usd / price).scaleb(setup.decimals[symbol]))
    return balances


def run(
    series: PriceSeries,
    setup: PortfolioSetup,
    market_setup: MarketSetup,
    strategy: Strategy,
    rules: Rules,
    progress: Callable[[int], None] | None = None,
) -> RunResult:
    symbols = tuple(setup.targets)
    columns = [series.prices[s] for s in symbols]
    scales = [10.0 ** -setup.decimals[s] for s in symbols]
    weights = [float(setup.targets[s]) for s in symbols]
    first = {s: series.prices[s][0] for s in symbols}
    market = Market.create(
        setup.decimals, setup.quote, market_setup.pairs, market_setup.depth_usd, first
    )
    balances = _initial_balances(setup, first)
    result = RunResult(
        strategy=strategy.name,
        step=series.step,
        start=series.start,
        net_value=array("d"),
        max_drift=array("d"),
    )
    ready_at = series.start
    for index in range(series.length):
        time = series.time(index)
        total = 0.0
        values = []
        for column, scale, symbol in zip(columns, scales, symbols, strict=True):
            value = balances[symbol] * scale * column[index]
            values.append(value)
            total += value
        worst = max(abs(v / (w * total) - 1) for v, w in zip(values, weights, strict=True))
        result.max_drift.append(worst)
        result.net_value.append(total - result.costs.gas_usd)
        if progress is not None and index % 4096 == 0:
            progress(index)
        if time < ready_at or not strategy.screen(time, worst):
            continue
        prices = {s: Decimal(repr(c[index])) for s, c in zip(symbols, columns, strict=True)}
        holdings = [Holding(s, balances[s], setup.decimals[s]) for s in symbols]
        legs = strategy.plan(holdings, setup.targets, prices)
        if not legs:
            continue
        market.arbitrage({s: c[index] for s, c in zip(symbols, columns, strict=True)})
        executed = _execute(legs, market, balances, prices, rules, result)
        if executed:
            gas = rules.gas.rebalance(executed)
            native = rules.gas_price.native_usd or prices[rules.gas_price.native_symbol]
            result.gas_units += gas
            result.costs.gas_usd += float(rules.gas_price.usd(gas, native))
            result.rebalances += 1
            result.legs += executed
            result.rebalance_steps.append(index)
            ready_at = time + strategy.cooldown_seconds
    if progress is not None:
        progress(series.length)
    return result


def _execute(
    legs: list[Leg],
    market: Market,
    balances: dict[str, int],
    prices: Mapping[str, Decimal],
    rules: Rules,
    result: RunResult,
) -> int:
    """Swap ``legs`` in order as one transaction; returns how many were executed."""
    executed = 0
    for leg in legs:
        amount_in = min(leg.amount_in, balances[leg.sell])
        if amount_in <= 0:
            continue
        swap = market.quote_path(market.route(leg.sell, leg.buy), amount_in)
        if swap.impact > rules.price_impact_threshold:
            result.skipped_legs += 1
            continue
        market.execute(swap)
        balances[leg.sell] -= amount_in
        balances[leg.buy] += swap.amount_out
        value_in = float(prices[leg.sell]) * amount_in * 10.0 ** -market.decimals[leg.sell]
        value_out = float(prices[leg.buy]) * swap.amount_out * 10.0 ** -market.decimals[leg.buy]
        fees = value_in * (1 - (1 - float(FEE)) ** swap.hops)
        result.turnover_usd += value_in
        result.costs.fees_usd += fees
        result.costs.impact_usd += value_in - value_out - fees
        executed += 1
    return executed

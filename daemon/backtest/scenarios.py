"""Ready-made markets and portfolios, and the catalogue of strategies by name.

The three benchmark scenarios (issue 14): *small* ($5k, 3 tokens, deep pools: gas dominates),
*medium* ($100k, 5 tokens, $5M pools: fees dominate), *large* ($5M, 5 tokens, $5M pools: price
impact dominates). Volatilities are crypto-like (50–90 % a year), correlation 0.65, three
market-wide crashes a year on average.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any, Final

import attrs

from daemon.backtest.series import MarketModel, TokenModel
from daemon.backtest.simulate import MarketSetup, PortfolioSetup
from daemon.backtest.strategies import (
    CalendarStrategy,
    EngineStrategy,
    HoldStrategy,
    SeedStrategy,
    Strategy,
)
from daemon.drift import EngineParams

DAY: Final = 86400
TOKENS: Final = {
    "USDC": TokenModel("USDC", 1.0, 0.0),
    "WETH": TokenModel("WETH", 3000.0, 0.70),
    "WBTC": TokenModel("WBTC", 60000.0, 0.55),
    "LINK": TokenModel("LINK", 15.0, 0.85),
    "UNI": TokenModel("UNI", 8.0, 0.90),
}
DECIMALS: Final = {"USDC": 6, "WETH": 18, "WBTC": 8, "LINK": 18, "UNI": 18}
QUOTE: Final = "USDC"


class ScenarioError(ValueError):
    """An unknown scenario or strategy, or a bad strategy parameter."""


@attrs.frozen
class Scenario:
    name: str
    summary: str
    targets: Mapping[str, Decimal]
    value_usd: Decimal
    depth_usd: float

    def market_model(self, days: float = 365.0, step: int = 300) -> MarketModel:
        return MarketModel(tokens=tuple(TOKENS[s] for s in self.targets), days=days, step=step)

    def portfolio(self) -> PortfolioSetup:
        return PortfolioSetup(
            value_usd=self.value_usd,
            targets=self.targets,
            decimals={s: DECIMALS[s] for s in self.targets},
            quote=QUOTE,
        )

    def market(self) -> MarketSetup:
        return MarketSetup(depth_usd=self.depth_usd, pairs=pairs_for(self.targets, QUOTE))


def pairs_for(symbols: Iterable[str], quote: str) -> tuple[tuple[str, str], ...]:
    """Every token paired with the quote token, plus WETH/WBTC (as on mainnet)."""
    chosen = list(symbols)
    pairs = [(s, quote) for s in chosen if s != quote]
    if "WETH" in chosen and "WBTC" in chosen:
        pairs.append(("WETH", "WBTC"))
    return tuple(pairs)


_THREE = {"USDC": Decimal("0.4"), "WETH": Decimal("0.3"), "WBTC": Decimal("0.3")}
_FIVE = {
    "USDC": Decimal("0.2"),
    "WETH": Decimal("0.25"),
    "WBTC": Decimal("0.25"),
    "LINK": Decimal("0.15"),
    "UNI": Decimal("0.15"),
}
SCENARIOS: Final = {
    "small": Scenario(
        "small", "$5k, 3 tokens, $50M pools (gas dominates)", _THREE, Decimal(5000), 50e6
    ),
    "medium": Scenario(
        "medium", "$100k, 5 tokens, $5M pools (fees dominate)", _FIVE, Decimal(100_000), 5e6
    ),
    "large": Scenario(
        "large", "$5M, 5 tokens, $5M pools (price impact dominates)", _FIVE, Decimal(5_000_000), 5e6
    ),
}


def scenario(name: str) -> Scenario:
    try:
        return SCENARIOS[name]
    except KeyError:
        raise ScenarioError(f"unknown scenario {name!r} (one of {', '.join(SCENARIOS)})") from None


_PARAM_KEYS: Final = (
    "drift_threshold",
    "min_trade_usd",
    "max_trade_usd",
    "rebalance_to",
    "band_fraction",
    "cooldown_minutes",
)


def _parse_params(text: str, base: EngineParams, cooldown: Decimal) -> tuple[EngineParams, Decimal]:
    changes: dict[str, Any] = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in _PARAM_KEYS:
            raise ScenarioError(
                f"strategy parameter {item!r}: expected KEY=VALUE with KEY one of "
                f"{', '.join(_PARAM_KEYS)}"
            )
        if key == "rebalance_to":
            changes[key] = value.strip()
            continue
        try:
            number = Decimal(value.strip())
        except InvalidOperation:
            raise ScenarioError(f"strategy parameter {key}: {value!r} is not a number") from None
        if key == "cooldown_minutes":
            cooldown = number
        else:
            changes[key] = number
    try:
        return attrs.evolve(base, **changes), cooldown
    except (ValueError, TypeError) as exc:
        raise ScenarioError(f"strategy parameters {text!r}: {exc}") from None


def strategy(
    spec: str, base: EngineParams, cooldown_minutes: Decimal, label: str | None = None
) -> Strategy:
    """A strategy from ``NAME`` or ``NAME:KEY=VALUE,…`` (see :data:`STRATEGY_HELP`), shown as
    ``label`` (default: ``spec``)."""
    name, _, text = spec.partition(":")
    name = name.strip()
    shown = label or spec
    params, cooldown = _parse_params(text, base, cooldown_minutes)
    seconds = int(cooldown * 60)
    calendars = {"daily": DAY, "weekly": 7 * DAY, "monthly": 30 * DAY}
    builders: dict[str, Callable[[], Strategy]] = {
        "hold": HoldStrategy,
        "seed": lambda: SeedStrategy(params, name=shown, cooldown_seconds=seconds),
        "target": lambda: EngineStrategy(
            shown, attrs.evolve(params, rebalance_to="target"), seconds
        ),
        "band": lambda: EngineStrategy(shown, attrs.evolve(params, rebalance_to="band"), seconds),
        "engine": lambda: EngineStrategy(shown, params, seconds),
    }
    if name in calendars:
        return CalendarStrategy(shown, calendars[name], params)
    if name not in builders:
        raise ScenarioError(
            f"unknown strategy {name!r} (one of {', '.join([*builders, *calendars])})"
        )
    return builders[name]()


DEFAULT_STRATEGIES: Final = ("hold", "seed", "daily", "weekly", "monthly", "target", "band")
STRATEGY_HELP: Final = (
    "hold (buy-and-hold), seed (the seed's logic), daily / weekly / monthly (calendar), "
    "target / band (driftd's threshold modes), engine (the configured [rebalance]); any of them "
    "takes parameters: NAME:drift_threshold=0.1,band_fraction=0.5,cooldown_minutes=60,…"
)

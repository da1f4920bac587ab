"""The strategies a backtest compares, each deciding from the same inputs the daemon sees.

``EngineStrategy`` is the daemon itself: :func:`daemon.drift.evaluate` with the engine's
parameters and the cooldown, exactly as a portfolio actor calls it. The others are references:

- ``HoldStrategy`` never trades (buy-and-hold);
- ``SeedStrategy`` reproduces the seed's original logic: only tokens individually beyond the
  threshold trade (sells of those above it against buys of those below it, back to target),
  so a portfolio at +14 % / +14 % / −28 % stays stuck;
- ``CalendarStrategy`` trades back to target on a fixed clock (daily, weekly, monthly),
  whatever the drift.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Protocol

import attrs

from daemon.drift import (
    EngineParams,
    Holding,
    Leg,
    NoRebalance,
    Rebalance,
    TokenDrift,
    evaluate,
    plan_legs,
    value_portfolio,
)


class Strategy(Protocol):
    """Decides, at one step, which legs to trade (none: no trade)."""

    @property
    def name(self) -> str: ...

    @property
    def cooldown_seconds(self) -> int: ...

    def screen(self, time: int, max_drift: float) -> bool:
        """Whether :meth:`plan` could trade now (a cheap test, run every step; it must never
        say no where :meth:`plan` could say yes)."""

    def plan(
        self,
        holdings: Sequence[Holding],
        targets: Mapping[str, Decimal],
        prices: Mapping[str, Decimal],
    ) -> list[Leg]: ...


SCREEN_MARGIN = 1e-6
"""A float max drift this far below the threshold is certainly below it in exact Decimal
arithmetic too (float error here is ~1e-15), so the exact evaluation can be skipped."""


@attrs.frozen
class HoldStrategy:
    name: str = "hold"
    cooldown_seconds: int = 0

    def screen(self, time: int, max_drift: float) -> bool:
        return False

    def plan(
        self,
        holdings: Sequence[Holding],
        targets: Mapping[str, Decimal],
        prices: Mapping[str, Decimal],
    ) -> list[Leg]:
        return []


@attrs.frozen
class EngineStrategy:
    """The daemon's engine with ``params``, and its cooldown."""

    name: str
    params: EngineParams
    cooldown_seconds: int = 900

    def screen(self, time: int, max_drift: float) -> bool:
        return max_drift >= float(self.params.drift_threshold) - SCREEN_MARGIN

    def plan(
        self,
        holdings: Sequence[Holding],
        targets: Mapping[str, Decimal],
        prices: Mapping[str, Decimal],
    ) -> list[Leg]:
        decision = evaluate(holdings, targets, prices, params=self.params)
        return list(decision.legs) if isinstance(decision, Rebalance) else []


@attrs.frozen
class SeedStrategy:
    """The seed's logic: only tokens individually beyond the threshold trade."""

    params: EngineParams
    name: str = "seed"
    cooldown_seconds: int = 900

    def screen(self, time: int, max_drift: float) -> bool:
        return max_drift >= float(self.params.drift_threshold) - SCREEN_MARGIN

    def plan(
        self,
        holdings: Sequence[Holding],
        targets: Mapping[str, Decimal],
        prices: Mapping[str, Decimal],
    ) -> list[Leg]:
        drifts = _drifts(holdings, targets, prices)
        beyond = [d for d in drifts if abs(d.drift) >= self.params.drift_threshold]
        return plan_legs(beyond, _by_symbol(holdings), prices, self.params)


@attrs.frozen
class CalendarStrategy:
    """Back to target every ``period_seconds`` (aligned to the epoch), whatever the drift."""

    name: str
    period_seconds: int
    params: EngineParams
    cooldown_seconds: int = 0

    def screen(self, time: int, max_drift: float) -> bool:
        return time % self.period_seconds == 0

    def plan(
        self,
        holdings: Sequence[Holding],
        targets: Mapping[str, Decimal],
        prices: Mapping[str, Decimal],
    ) -> list[Leg]:
        to_target = attrs.evolve(self.params, rebalance_to="target")
        return plan_legs(
            _drifts(holdings, targets, prices), _by_symbol(holdings), prices, to_target
        )


def _drifts(
    holdings: Sequence[Holding], targets: Mapping[str, Decimal], prices: Mapping[str, Decimal]
) -> tuple[TokenDrift, ...]:
    """Every token's drift, or none when the portfolio cannot be valued (then nothing trades)."""
    valued = value_portfolio(holdings, targets, prices, {})
    return () if isinstance(valued, NoRebalance) else valued[1]


def _by_symbol(holdings: Sequence[Holding]) -> dict[str, Holding]:
    return {holding.symbol: holding for holding in holdings}

"""The float screen: it may only ever let a caller skip what the exact engine calls in tolerance."""

from __future__ import annotations

from decimal import Decimal as D

from hypothesis import given, settings
from hypothesis import strategies as st
from schema_defaults import engine_params
from test_drift import Scenario, scenarios

from daemon.drift import (
    SCREEN_MARGIN,
    WITHIN_TOLERANCE,
    Holding,
    NoRebalance,
    evaluate,
    screened_max_drift,
)


@settings(max_examples=500, deadline=None)
@given(scenarios(), st.sampled_from([D("0.01"), D("0.05"), D("0.15"), D("0.3")]))
def test_a_screened_drift_below_the_margin_is_always_within_tolerance(
    scenario: Scenario, threshold: D
) -> None:
    holdings, weights, prices, health, _ = scenario
    params = engine_params(drift_threshold=threshold)
    decision = evaluate(holdings, weights, prices, health, params=params)
    screened = screened_max_drift(holdings, weights, prices, health)
    if screened is None:
        return
    if decision.max_drift is not None:
        assert abs(screened - float(decision.max_drift)) <= 1e-9 * max(1.0, screened)
    if screened < float(threshold) - SCREEN_MARGIN:
        assert isinstance(decision, NoRebalance)
        assert decision.reason == WITHIN_TOLERANCE


def test_the_screen_defers_to_the_exact_path_on_bad_prices() -> None:
    holdings = [Holding("ETH", 10**18, 18), Holding("USDC", 3000 * 10**6, 6)]
    targets = {"ETH": D("0.5"), "USDC": D("0.5")}
    for bad in ({"ETH": D(0)}, {"ETH": D("NaN")}, {"ETH": D(-1)}, {}):
        prices = {"USDC": D(1), **bad}
        assert screened_max_drift(holdings, targets, prices, {}) is None
    assert screened_max_drift(holdings, targets, {"ETH": D(3000), "USDC": D(1)}, {}) == 0.0
    unhealthy = {"ETH": "UNHEALTHY", "USDC": "UNHEALTHY"}
    assert screened_max_drift(holdings, targets, {"ETH": D(3000), "USDC": D(1)}, unhealthy) is None

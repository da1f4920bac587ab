"""The float screen: it may only ever let a caller skip what the exact engine calls in tolerance."""

from __future__ import annotations

from decimal import Decimal as D
from decimal import localcontext
from typing import Final

from hypothesis import assume, given, settings
from hypothesis import strategies as st
from schema_defaults import engine_params
from test_drift import Scenario, scenarios

from daemon.drift import (
    SCREEN_MARGIN,
    WITHIN_TOLERANCE,
    Holding,
    InvalidPortfolio,
    NoRebalance,
    ScreenPrices,
    ScreenTargets,
    evaluate,
    screen_drift,
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


# --- adversarial inputs: the float error bound, and the screen's refusals -----------------------

_U: Final = 2.0**-53
"""The unit roundoff of a float."""


@st.composite
def extreme_portfolios(
    draw: st.DrawFn,
) -> tuple[list[Holding], dict[str, D], dict[str, D], dict[str, str]]:
    """Portfolios at the edges of what the screen meets: 1 to 6 tokens, weights from 1e-12 to
    1, decimals from 0 to 77, prices from 1e-320 (below the normal float range: refused) to
    1e300, balances up to 2^256, holdings drawn within 2 to 60 % of their targets (so that
    drifts near every threshold are common) or, in one portfolio out of four, some anywhere."""
    n = draw(st.integers(min_value=1, max_value=6))
    symbols = [f"T{i}" for i in range(n)]
    raw = [draw(st.integers(min_value=1, max_value=10**12)) for _ in symbols]
    weights = {s: D(r) / sum(raw) for s, r in zip(symbols, raw, strict=True)}
    weights[symbols[-1]] = 1 - sum(weights[s] for s in symbols[:-1])
    prices = {
        s: D(draw(st.integers(min_value=1, max_value=9999)))
        * D(10) ** draw(st.integers(-30, 30) | st.integers(min_value=-320, max_value=300))
        for s in symbols
    }
    total = D(draw(st.integers(min_value=1, max_value=10**9)))
    spread = draw(st.sampled_from([20, 100, 200, 600]))  # in thousandths
    wild = draw(st.integers(min_value=0, max_value=3)) == 0
    holdings = []
    for s in symbols:
        decimals = draw(st.integers(min_value=0, max_value=77))
        if not (wild and draw(st.booleans())):
            deviation = D(draw(st.integers(min_value=-spread, max_value=spread))) / 1000
            value = weights[s] * total * (1 + deviation)
            with localcontext(prec=200):
                balance = int(value / prices[s] * D(10) ** decimals)
        else:
            balance = draw(st.integers(min_value=0, max_value=2**256 - 1))
        holdings.append(Holding(s, min(max(balance, 0), 2**256 - 1), decimals))
    health = {s: "UNHEALTHY" for s in symbols if draw(st.integers(0, 9)) == 0}
    return holdings, weights, prices, health


# 400 adversarial portfolios: about 3 s; the bound it checks has twelve orders of margin.
@settings(max_examples=400, deadline=None)
@given(extreme_portfolios(), st.sampled_from([D("0.01"), D("0.05"), D("0.15"), D("0.3")]))
def test_the_float_error_stays_within_its_bound_and_never_hides_a_trade(
    portfolio: tuple[list[Holding], dict[str, D], dict[str, D], dict[str, str]], threshold: D
) -> None:
    """SCREEN_MARGIN's justification, checked: whenever the screen answers, it is within
    2(n + 13)u of the exact largest drift when that is below 1 (every threshold is), at least 1
    when it is not, and a screened drift below the threshold minus the margin is always
    "within tolerance"."""
    holdings, weights, prices, health = portfolio
    try:
        decision = evaluate(holdings, weights, prices, health, params=engine_params())
    except InvalidPortfolio:
        assume(False)
        return
    screened = screened_max_drift(holdings, weights, prices, health)
    if screened is None:
        return
    assert decision.max_drift is not None, decision
    exact = float(decision.max_drift)
    if exact < 1:
        assert abs(screened - exact) <= 2 * (len(holdings) + 13) * _U
    else:  # far over every threshold: the ratio may even overflow, never fall below 1
        assert screened >= 1 - 2 * (len(holdings) + 13) * _U
    if screened < float(threshold) - SCREEN_MARGIN:
        params = engine_params(drift_threshold=threshold)
        exact_decision = evaluate(holdings, weights, prices, health, params=params)
        assert isinstance(exact_decision, NoRebalance)
        assert exact_decision.reason == WITHIN_TOLERANCE


def test_the_screen_refuses_what_a_float_cannot_carry() -> None:
    """Subnormal prices, amounts and weights, and balances beyond the float range, are the
    exact path's: the error bound only holds for normal floats."""
    targets = {"A": D("0.5"), "B": D("0.5")}
    holdings = [Holding("A", 10**18, 18), Holding("B", 10**6, 6)]
    fine = {"A": D(1), "B": D(1)}
    assert screened_max_drift(holdings, targets, fine, {}) == 0.0
    for tiny in (D("1e-310"), D("1e-400"), D("1e400")):
        assert screened_max_drift(holdings, targets, {**fine, "A": tiny}, {}) is None
    # Each value normal, but their product with the smallest price underflows.
    dust = [Holding("A", 1, 77), Holding("B", 10**6, 6)]
    assert screened_max_drift(dust, targets, {"A": D("1e-250"), "B": D(1)}, {}) is None
    huge = [Holding("A", 2**1100, 0), Holding("B", 10**6, 6)]
    assert screened_max_drift(huge, targets, fine, {}) is None
    skewed = {"A": D("1e-320"), "B": 1 - D("1e-320")}
    assert screened_max_drift(holdings, skewed, fine, {}) is None


@settings(max_examples=500, deadline=None)
@given(extreme_portfolios())
def test_the_one_pass_screen_and_the_tick_screen_s_pieces_agree_to_the_last_bit(
    portfolio: tuple[list[Holding], dict[str, D], dict[str, D], dict[str, str]],
) -> None:
    """An actor screening itself (one pass) and the tick screen (targets, holdings and prices
    prepared apart) compute the same floats: one screen, two speeds."""
    holdings, weights, prices, health = portfolio
    symbols = [h.symbol for h in holdings]
    targets = ScreenTargets.of(symbols, [h.decimals for h in holdings], list(weights.values()))
    held = None if targets is None else targets.holdings([h.balance for h in holdings])
    priced = ScreenPrices.of(symbols, prices, health)
    pieces = None if held is None or priced is None else screen_drift(held, priced)
    assert screened_max_drift(holdings, weights, prices, health) == pieces

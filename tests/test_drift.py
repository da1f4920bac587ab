"""The pure engine: every rule of DESIGN.md §3 and the Foundation issue, plus property tests."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from schema_defaults import engine_params

from daemon import drift
from daemon.drift import (
    WITHIN_TOLERANCE,
    Action,
    EngineParams,
    Holding,
    InvalidPortfolio,
    Leg,
    NoRebalance,
    Rebalance,
    from_base_units,
    to_base_units,
)

D = Decimal


def evaluate(
    holdings: list[Holding],
    targets: dict[str, Decimal],
    prices: dict[str, Decimal],
    health: dict[str, str] | None = None,
    params: EngineParams | None = None,
) -> drift.Decision:
    """:func:`daemon.drift.evaluate` with ``[rebalance]`` at the schema's defaults unless
    ``params`` are given."""
    # These tests state the target mode's rules (the band mode's are in test_trade_goals.py).
    params = params or engine_params(rebalance_to="target")
    return drift.evaluate(holdings, targets, prices, health, params=params)


def usd_holding(symbol: str, usd: Decimal, price: Decimal, decimals: int) -> Holding:
    """A holding worth ``usd`` at ``price``."""
    return Holding(symbol, to_base_units(usd / price, decimals), decimals)


def portfolio(
    values: dict[str, Decimal], prices: dict[str, Decimal], decimals: dict[str, int] | None = None
) -> list[Holding]:
    decimals = decimals or {}
    return [usd_holding(s, v, prices[s], decimals.get(s, 18)) for s, v in values.items()]


PRICES = {"ETH": D(3000), "USDC": D("1.0"), "WBTC": D(60000)}
DECIMALS = {"ETH": 18, "USDC": 6, "WBTC": 8}


def test_seed_example_balanced_portfolio_does_not_rebalance() -> None:
    # The seed's own test: ETH 3000, USDC 1.0, a balanced portfolio, threshold 0.15.
    holdings = [Holding("ETH", 5 * 10**18, 18), Holding("USDC", 15000 * 10**6, 6)]
    targets = {"ETH": D("0.5"), "USDC": D("0.5")}
    decision = evaluate(holdings, targets, {"ETH": D(3000), "USDC": D("1.0")}, {}, engine_params())
    assert isinstance(decision, NoRebalance)
    assert decision.action == Action.NO_REBALANCE
    assert decision.reason == "All tokens within drift tolerance"
    assert decision.max_drift == 0


def test_drift_follows_the_seed_formula() -> None:
    holdings = portfolio({"ETH": D(6000), "USDC": D(4000)}, PRICES, DECIMALS)
    decision = evaluate(holdings, {"ETH": D("0.5"), "USDC": D("0.5")}, PRICES)
    drifts = {d.symbol: d.drift for d in decision.drifts}
    # (current − target) / target with target = 0.5 × 10 000 = 5 000.
    assert drifts["ETH"] == D("0.2")
    assert drifts["USDC"] == D("-0.2")
    assert decision.max_drift == D("0.2")


def test_just_below_threshold_is_within_tolerance_and_at_threshold_trades() -> None:
    targets = {"ETH": D("0.5"), "USDC": D("0.5")}
    prices = {"ETH": D(2500), "USDC": D(1)}  # exact in base units, so drift is exactly 0.15
    below = evaluate(
        portfolio({"ETH": D(5700), "USDC": D(4300)}, prices, DECIMALS), targets, prices
    )
    assert isinstance(below, NoRebalance)
    assert below.reason == WITHIN_TOLERANCE
    at = evaluate(portfolio({"ETH": D(5750), "USDC": D(4250)}, prices, DECIMALS), targets, prices)
    assert isinstance(at, Rebalance)
    assert at.max_drift == D("0.15")


def test_rebalance_sells_the_excess_into_the_need_exactly() -> None:
    targets = {"ETH": D("0.5"), "USDC": D("0.5")}
    decision = evaluate(
        portfolio({"ETH": D(6000), "USDC": D(4000)}, PRICES, DECIMALS), targets, PRICES
    )
    assert isinstance(decision, Rebalance)
    assert len(decision.legs) == 1
    leg = decision.legs[0]
    assert (leg.sell, leg.buy, leg.usd, leg.capped) == ("ETH", "USDC", D(1000), False)
    # 1000 USD of ETH at 3000 = 0.3333… ETH, rounded down in wei.
    assert leg.amount_in == 333333333333333333
    assert leg.expected_out == 1000 * 10**6


def test_sub_threshold_tokens_fund_each_other_once_threshold_is_passed() -> None:
    # +14 % / +14 % / −28 % with a 15 % threshold: the seed's rule trades nothing (only tokens
    # individually beyond the threshold may trade, and no seller is). Ours rebalances.
    third = D(1) / 3
    targets = {"ETH": third, "WBTC": third, "USDC": 1 - 2 * third}
    values = {"ETH": D(11400), "WBTC": D(11400), "USDC": D(7200)}
    decision = evaluate(portfolio(values, PRICES, DECIMALS), targets, {**PRICES})
    assert isinstance(decision, Rebalance)
    drifts = {d.symbol: d.drift for d in decision.drifts}
    assert drifts["ETH"] == pytest.approx(D("0.14"), abs=D("1e-12"))
    assert drifts["USDC"] == pytest.approx(D("-0.28"), abs=D("1e-12"))
    sells = {leg.sell for leg in decision.legs}
    assert sells == {"ETH", "WBTC"}
    assert {leg.buy for leg in decision.legs} == {"USDC"}
    assert sum(leg.usd for leg in decision.legs) == pytest.approx(D(2800), abs=D("1e-9"))


def test_oversized_leg_is_capped_not_skipped() -> None:
    targets = {"ETH": D("0.5"), "USDC": D("0.5")}
    values = {"ETH": D(600_000), "USDC": D(400_000)}  # needs a 100 000 USD leg
    decision = evaluate(portfolio(values, PRICES, DECIMALS), targets, PRICES)
    assert isinstance(decision, Rebalance)
    (leg,) = decision.legs
    assert leg.usd == D(10000)
    assert leg.capped
    assert leg.amount_in == to_base_units(D(10000) / D(3000), 18)


def test_capped_pair_trades_once_and_other_pairs_still_trade() -> None:
    targets = {"ETH": D("0.4"), "WBTC": D("0.2"), "USDC": D("0.4")}
    values = {"ETH": D(60_000), "WBTC": D(20_000), "USDC": D(20_000)}  # ETH +50 %, USDC −50 %
    decision = evaluate(portfolio(values, PRICES, DECIMALS), targets, PRICES)
    assert isinstance(decision, Rebalance)
    pairs = [(leg.sell, leg.buy) for leg in decision.legs]
    assert pairs == [("ETH", "USDC")]
    assert decision.legs[0].usd == D(10000)


def test_legs_below_minimum_are_dropped() -> None:
    # A 100 USD portfolio 20 % off: the 10 USD leg is dust.
    targets = {"ETH": D("0.5"), "USDC": D("0.5")}
    decision = evaluate(portfolio({"ETH": D(60), "USDC": D(40)}, PRICES, DECIMALS), targets, PRICES)
    assert isinstance(decision, NoRebalance)
    assert "min_trade_usd" in decision.reason
    assert decision.max_drift == D("0.2")


def test_small_leg_dropped_while_large_leg_kept() -> None:
    targets = {"ETH": D("0.45"), "WBTC": D("0.05"), "USDC": D("0.5")}
    values = {"ETH": D(5500), "WBTC": D(530), "USDC": D(3970)}
    decision = evaluate(portfolio(values, PRICES, DECIMALS), targets, PRICES)
    assert isinstance(decision, Rebalance)
    # ETH → USDC 1000 USD; WBTC's 30 USD excess is under the 50 USD minimum.
    assert [(leg.sell, leg.buy) for leg in decision.legs] == [("ETH", "USDC")]


def test_unhealthy_tokens_are_neither_bought_nor_sold() -> None:
    targets = {"ETH": D("0.4"), "WBTC": D("0.2"), "USDC": D("0.4")}
    values = {"ETH": D(6000), "WBTC": D(1000), "USDC": D(3000)}
    health = {"USDC": "DEPEGGED"}
    decision = evaluate(portfolio(values, PRICES, DECIMALS), targets, PRICES, health)
    assert isinstance(decision, Rebalance)
    assert all("USDC" not in (leg.sell, leg.buy) for leg in decision.legs)
    assert [(leg.sell, leg.buy) for leg in decision.legs] == [("ETH", "WBTC")]
    usdc = next(d for d in decision.drifts if d.symbol == "USDC")
    assert not usdc.tradable
    assert usdc.health == "DEPEGGED"


def test_unhealthy_token_drift_does_not_trigger_a_rebalance() -> None:
    targets = {"ETH": D("0.5"), "USDC": D("0.5")}
    values = {"ETH": D(5000), "USDC": D(5000)}
    holdings = [*portfolio(values, PRICES, DECIMALS)]
    holdings.append(Holding("WBTC", 0, 8))
    decision = evaluate(
        holdings,
        {"ETH": D("0.45"), "USDC": D("0.45"), "WBTC": D("0.1")},
        PRICES,
        {"WBTC": "PAUSED"},
    )
    # WBTC is −100 % but unhealthy; ETH/USDC are +11 % each: within tolerance.
    assert isinstance(decision, NoRebalance)
    assert decision.reason == WITHIN_TOLERANCE
    assert targets  # the two-token target above is not the one evaluated


def test_all_tokens_unhealthy_is_no_rebalance() -> None:
    targets = {"ETH": D("0.5"), "USDC": D("0.5")}
    holdings = portfolio({"ETH": D(9000), "USDC": D(1000)}, PRICES, DECIMALS)
    decision = evaluate(holdings, targets, PRICES, {"ETH": "X", "USDC": "Y"})
    assert isinstance(decision, NoRebalance)
    assert decision.reason == "No trade: no token is healthy"


def test_band_mode_trades_only_to_the_band_edge() -> None:
    targets = {"ETH": D("0.5"), "USDC": D("0.5")}
    params = engine_params(rebalance_to="band", band_fraction=D("0.5"))  # band = 7.5 %
    decision = evaluate(
        portfolio({"ETH": D(6000), "USDC": D(4000)}, PRICES, DECIMALS), targets, PRICES, {}, params
    )
    assert isinstance(decision, Rebalance)
    (leg,) = decision.legs
    # ETH 6000 → 5000 × 1.075 = 5375: 625 USD; USDC 4000 → 5000 × 0.925 = 4625: 625 USD.
    assert leg.usd == D(625)


@pytest.mark.parametrize(
    ("price", "fragment"),
    [
        (None, "missing"),
        (D(0), "not positive"),
        (D(-3), "not positive"),
        (D("NaN"), "not finite"),
        (D("Infinity"), "not finite"),
        (float("nan"), "not finite"),
        (float("inf"), "not finite"),
        ("3000", "not a number"),
    ],
)
def test_bad_price_means_no_trade_naming_the_token(price: object, fragment: str) -> None:
    holdings = [Holding("ETH", 10**18, 18), Holding("USDC", 0, 6)]
    prices: dict[str, object] = {"USDC": D(1)}
    if price is not None:
        prices["ETH"] = price
    decision = evaluate(holdings, {"ETH": D("0.5"), "USDC": D("0.5")}, prices)  # type: ignore[arg-type]
    assert isinstance(decision, NoRebalance)
    assert "ETH" in decision.reason
    assert fragment in decision.reason


def test_missing_price_is_never_valued_at_zero_and_bought() -> None:
    # The seed valued a token without a price at 0, saw it as −100 % and bought it.
    holdings = [Holding("ETH", 10**18, 18), Holding("USDC", 3000 * 10**6, 6)]
    decision = evaluate(holdings, {"ETH": D("0.5"), "USDC": D("0.5")}, {"USDC": D(1)})
    assert isinstance(decision, NoRebalance)
    assert decision.reason == "No trade: price for ETH is missing"


@pytest.mark.parametrize(
    ("holdings", "targets", "message"),
    [
        ([], {"ETH": D(1)}, "portfolio is empty"),
        ([Holding("ETH", 1, 18)], {}, "no target weights"),
        ([Holding("ETH", -1, 18)], {"ETH": D(1)}, "negative"),
        ([Holding("ETH", 1, 18)], {"ETH": D("0.5"), "BTC": D("0.5")}, "unknown token(s): BTC"),
        ([Holding("ETH", 1, 18), Holding("USDC", 1, 6)], {"ETH": D(1)}, "no target weight"),
        (
            [Holding("ETH", 1, 18), Holding("USDC", 1, 6)],
            {"ETH": D("0.5"), "USDC": D("0.4")},
            "sum to 1",
        ),
        (
            [Holding("ETH", 1, 18), Holding("USDC", 1, 6)],
            {"ETH": D("-0.1"), "USDC": D("1.1")},
            "must be > 0",
        ),
        (
            [Holding("ETH", 1, 18), Holding("USDC", 1, 6)],
            {"ETH": D(1), "USDC": D(0)},
            "must be > 0",
        ),
        ([Holding("ETH", 1, 18), Holding("ETH", 1, 18)], {"ETH": D(1)}, "held twice"),
    ],
)
def test_malformed_portfolio_raises_a_typed_error(
    holdings: list[Holding], targets: dict[str, Decimal], message: str
) -> None:
    with pytest.raises(InvalidPortfolio, match=message.replace("(", r"\(").replace(")", r"\)")):
        evaluate(holdings, targets, PRICES)


def test_weights_within_1e9_of_one_are_accepted() -> None:
    holdings = [Holding("ETH", 10**18, 18), Holding("USDC", 3000 * 10**6, 6)]
    decision = evaluate(holdings, {"ETH": D("0.5"), "USDC": D("0.4999999999")}, PRICES)
    assert isinstance(decision, NoRebalance)


def test_empty_balances_have_no_value() -> None:
    holdings = [Holding("ETH", 0, 18), Holding("USDC", 0, 6)]
    decision = evaluate(holdings, {"ETH": D("0.5"), "USDC": D("0.5")}, PRICES)
    assert isinstance(decision, NoRebalance)
    assert decision.reason == "No trade: portfolio has no value"


def test_huge_balances_keep_exact_integer_amounts() -> None:
    # 10^30 wei: far beyond float precision. Amounts must still be exact integers.
    prices = {"A": D("0.000001"), "B": D("1")}
    holdings = [Holding("A", 10**30, 18), Holding("B", 0, 18)]
    params = engine_params(rebalance_to="target", max_trade_usd=D(10) ** 20)
    decision = evaluate(holdings, {"A": D("0.5"), "B": D("0.5")}, prices, {}, params)
    assert isinstance(decision, Rebalance)
    (leg,) = decision.legs
    assert leg.amount_in == 5 * 10**29
    assert leg.expected_out == 500_000 * 10**18
    assert isinstance(leg.amount_in, int)


def test_base_unit_conversions_round_down_and_round_trip() -> None:
    assert to_base_units(D("1.9999999"), 6) == 1999999
    assert to_base_units(D("0.0000009"), 6) == 0
    assert from_base_units(1999999, 6) == D("1.999999")
    assert to_base_units(from_base_units(123456789, 8), 8) == 123456789


def test_engine_params_reject_nonsense() -> None:
    with pytest.raises(ValueError, match="drift_threshold"):
        engine_params(drift_threshold=D("1.5"))
    with pytest.raises(ValueError, match="min_trade_usd"):
        engine_params(min_trade_usd=D(100), max_trade_usd=D(10))


# --- property tests --------------------------------------------------------------------------

SYMBOLS = ["A", "B", "C", "D", "E"]

money = st.decimals(min_value=D(0), max_value=D(2_000_000), places=2)
price = st.decimals(min_value=D("0.0001"), max_value=D(100_000), places=4)


@st.composite
def scenarios(
    draw: st.DrawFn,
) -> tuple[list[Holding], dict[str, Decimal], dict[str, Decimal], dict[str, str], EngineParams]:
    n = draw(st.integers(min_value=2, max_value=5))
    symbols = SYMBOLS[:n]
    raw_weights = [draw(st.integers(min_value=1, max_value=100)) for _ in symbols]
    weights = {s: D(w) / sum(raw_weights) for s, w in zip(symbols, raw_weights, strict=True)}
    # Make them sum to exactly 1 despite division rounding.
    weights[symbols[-1]] = 1 - sum(weights[s] for s in symbols[:-1])
    prices = {s: draw(price) for s in symbols}
    decimals = {s: draw(st.sampled_from([0, 2, 6, 8, 18])) for s in symbols}
    holdings = [usd_holding(s, draw(money), prices[s], decimals[s]) for s in symbols]
    health = {s: "UNHEALTHY" for s in symbols if draw(st.integers(0, 9)) == 0}
    params = engine_params(
        drift_threshold=draw(st.sampled_from([D("0.01"), D("0.05"), D("0.15"), D("0.3")])),
        min_trade_usd=draw(st.sampled_from([D(0), D(1), D(50)])),
        max_trade_usd=draw(st.sampled_from([D(100), D(10_000), D(10_000_000)])),
        rebalance_to=draw(st.sampled_from(["target", "band"])),
        band_fraction=draw(st.sampled_from([D(0), D("0.5"), D("0.9")])),
    )
    return holdings, weights, prices, health, params


def apply(holdings: list[Holding], legs: tuple[Leg, ...]) -> dict[str, int]:
    balances = {h.symbol: h.balance for h in holdings}
    for leg in legs:
        balances[leg.sell] -= leg.amount_in
        balances[leg.buy] += leg.expected_out
    return balances


Scenario = tuple[
    list[Holding], dict[str, Decimal], dict[str, Decimal], dict[str, str], EngineParams
]


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_plan_moves_traded_tokens_toward_target_never_past(scenario: Scenario) -> None:
    holdings, weights, prices, health, params = scenario
    decision = evaluate(holdings, weights, prices, health, params)
    assume(isinstance(decision, Rebalance))
    assert isinstance(decision, Rebalance)
    after = apply(holdings, decision.legs)
    decimals = {h.symbol: h.decimals for h in holdings}
    before = {d.symbol: d for d in decision.drifts}
    traded = {leg.sell for leg in decision.legs} | {leg.buy for leg in decision.legs}
    for symbol in traded:
        value_after = from_base_units(after[symbol], decimals[symbol]) * prices[symbol]
        gap_before = before[symbol].value_usd - before[symbol].target_usd
        gap_after = value_after - before[symbol].target_usd
        # Closer to target, and on the same side of it (not past it), up to one base unit.
        unit = prices[symbol] * D(10) ** -decimals[symbol]
        assert abs(gap_after) <= abs(gap_before) + unit
        assert gap_after * gap_before >= 0 or abs(gap_after) <= unit


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_plan_invariants(scenario: Scenario) -> None:
    holdings, weights, prices, health, params = scenario
    decision = evaluate(holdings, weights, prices, health, params)
    if isinstance(decision, NoRebalance):
        if decision.max_drift is not None and decision.max_drift < params.drift_threshold:
            assert decision.reason == WITHIN_TOLERANCE
        return
    balances = {h.symbol: h.balance for h in holdings}
    decimals = {h.symbol: h.decimals for h in holdings}
    sold = {leg.sell for leg in decision.legs}
    bought = {leg.buy for leg in decision.legs}
    assert decision.max_drift >= params.drift_threshold
    # No token both bought and sold; unhealthy tokens untouched.
    assert not sold & bought
    assert not (sold | bought) & set(health)
    spent: dict[str, int] = {}
    for leg in decision.legs:
        # Every leg within [min, max] and priced consistently.
        assert params.min_trade_usd <= leg.usd <= params.max_trade_usd
        assert isinstance(leg.amount_in, int)
        assert isinstance(leg.expected_out, int)
        assert leg.amount_in > 0
        spent[leg.sell] = spent.get(leg.sell, 0) + leg.amount_in
        # Value is conserved at the evaluated prices, up to one base unit per side.
        sell_value = from_base_units(leg.amount_in, decimals[leg.sell]) * prices[leg.sell]
        buy_value = from_base_units(leg.expected_out, decimals[leg.buy]) * prices[leg.buy]
        sell_unit = prices[leg.sell] * D(10) ** -decimals[leg.sell]
        buy_unit = prices[leg.buy] * D(10) ** -decimals[leg.buy]
        assert leg.usd - sell_unit <= sell_value <= leg.usd
        assert leg.usd - buy_unit <= buy_value <= leg.usd
    # No leg (nor all legs together) sells more than is held.
    for symbol, amount in spent.items():
        assert amount <= balances[symbol]
    # Each sell/buy pair trades at most once.
    pairs = [(leg.sell, leg.buy) for leg in decision.legs]
    assert len(pairs) == len(set(pairs))


@settings(max_examples=200, deadline=None)
@given(scenarios())
def test_target_mode_without_caps_lands_on_target(scenario: Scenario) -> None:
    holdings, weights, prices, _health, params = scenario
    params = engine_params(
        drift_threshold=params.drift_threshold,
        rebalance_to="target",
        min_trade_usd=D(0),
        max_trade_usd=D(10) ** 12,
    )
    decision = evaluate(holdings, weights, prices, {}, params)
    assume(isinstance(decision, Rebalance))
    assert isinstance(decision, Rebalance)
    after = apply(holdings, decision.legs)
    total = decision.total_usd
    # Rounding to whole base units is the only slack: each of the at most n² pairs may leave up
    # to one base unit behind (or be dropped for being under one). Coarse tokens whose base
    # unit is worth more than a dollar would make that bound meaningless, so they are excluded.
    largest_unit = max(prices[h.symbol] * D(10) ** -h.decimals for h in holdings)
    assume(largest_unit <= 1)
    slack = len(holdings) ** 2 * largest_unit + D("1e-6")
    for holding in holdings:
        value = from_base_units(after[holding.symbol], holding.decimals) * prices[holding.symbol]
        assert abs(value - weights[holding.symbol] * total) <= slack

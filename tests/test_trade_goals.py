"""The band mode: every token into the band, with the least turnover (issue 14)."""

from __future__ import annotations

from decimal import Decimal as D

from hypothesis import given, settings
from hypothesis import strategies as st
from schema_defaults import engine_params

from daemon.drift import Holding, NoRebalance, Rebalance, evaluate, from_base_units

PRICES = {"A": D(1), "B": D(1), "C": D(1), "D": D(1)}


def holdings(values: dict[str, int]) -> list[Holding]:
    return [Holding(symbol, usd * 10**6, 6) for symbol, usd in values.items()]


BAND = engine_params(rebalance_to="band", band_fraction=D("0.5"), min_trade_usd=D(0))


def test_one_violator_is_balanced_by_the_others_moving_toward_target() -> None:
    """A at +20 %, B, C and D below target but inside the 7.5 % band: the first band mode moved A
    to its edge and found no buyer (no trade, while over the threshold, for as long as prices
    stayed); now the others take A's excess, the one with the most room first."""
    targets = {"A": D("0.25"), "B": D("0.25"), "C": D("0.25"), "D": D("0.25")}
    held = holdings({"A": 3000, "B": 2320, "C": 2340, "D": 2340})  # B −7.2 %, C and D −6.4 %
    decision = evaluate(held, targets, PRICES, {}, params=BAND)
    assert isinstance(decision, Rebalance)
    # A sells 3000 − 2687.5 = 312.5: B takes its room to target (180), C the rest (C before D).
    assert {(leg.sell, leg.buy): leg.usd for leg in decision.legs} == {
        ("A", "B"): D(180),
        ("A", "C"): D("132.5"),
    }


def test_two_token_band_example_unchanged() -> None:
    targets = {"A": D("0.5"), "B": D("0.5")}
    decision = evaluate(holdings({"A": 6000, "B": 4000}), targets, PRICES, {}, params=BAND)
    assert isinstance(decision, Rebalance)
    (leg,) = decision.legs
    assert leg.usd == D(625)  # both to the 7.5 % band edge


@st.composite
def portfolios(draw: st.DrawFn) -> tuple[dict[str, D], list[Holding], D]:
    symbols = ["A", "B", "C", "D"][: draw(st.integers(2, 4))]
    raw = [draw(st.integers(1, 50)) for _ in symbols]
    targets = {s: D(w) / sum(raw) for s, w in zip(symbols, raw, strict=True)}
    targets[symbols[-1]] = 1 - sum(targets[s] for s in symbols[:-1])
    values = {s: draw(st.integers(0, 100_000)) for s in symbols}
    fraction = draw(st.sampled_from([D("0.2"), D("0.5"), D("0.8")]))
    return targets, holdings(values), fraction


@settings(max_examples=300, deadline=None)
@given(portfolios())
def test_band_mode_puts_every_token_in_the_band_with_least_turnover(
    case: tuple[dict[str, D], list[Holding], D],
) -> None:
    targets, held, fraction = case
    params = engine_params(
        rebalance_to="band",
        band_fraction=fraction,
        min_trade_usd=D(0),
        max_trade_usd=D(10**9),
    )
    decision = evaluate(held, targets, PRICES, {}, params=params)
    if isinstance(decision, NoRebalance):
        return
    assert isinstance(decision, Rebalance)
    band = fraction * params.drift_threshold
    total = decision.total_usd
    after = {h.symbol: from_base_units(h.balance, 6) for h in held}
    for leg in decision.legs:
        after[leg.sell] -= leg.usd
        after[leg.buy] += leg.usd
    outside_sell = outside_buy = D(0)
    for drift in decision.drifts:
        target = targets[drift.symbol] * total
        upper, lower = target * (1 + band), target * (1 - band)
        cent = D("0.01")
        assert lower - cent <= after[drift.symbol] <= upper + cent  # inside the band
        # never past target: a token above target stays at or above it, and below, below
        if drift.value_usd >= target:
            assert after[drift.symbol] >= target - cent
            outside_sell += max(D(0), drift.value_usd - upper)
        else:
            assert after[drift.symbol] <= target + cent
            outside_buy += max(D(0), lower - drift.value_usd)
    turnover = sum((leg.usd for leg in decision.legs), D(0))
    # Least turnover: what has to move for the violators to reach their edges, no more.
    assert abs(turnover - max(outside_sell, outside_buy)) <= D("0.000001")

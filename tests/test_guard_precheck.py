"""The daemon's own check of the oracle guard's bound before it sends (pure part).

The executor values the account's listed tokens at the feeds' prices before the swaps and at the
worst outcome the router allows (every swap paid exactly ``amountOutMin``), as the contract rounds
them; a redemption whose worst case the guard would revert is never sent. The on-chain half of
the argument (the guard accepts what this accepts) is in ``test_delegation_runtime.py``.
"""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from daemon.guard import (
    GuardTerms,
    GuardToken,
    PlannedSwap,
    usd,
    value_of,
    worst_case_balances,
    worst_case_refusal,
)

USDC = "0x" + "11" * 20
WETH = "0x" + "12" * 20
MINTED = "0x" + "66" * 20
PRICES = [100_000_000, 2_000 * 100_000_000]  # USDC $1, WETH $2 000 (8-decimal feeds)


def terms(max_loss_bps: int = 100, period_cap: int = usd(1_000)) -> GuardTerms:
    return GuardTerms(
        tokens=(
            GuardToken(USDC, "0x" + "21" * 20, 6, 8),
            GuardToken(WETH, "0x" + "22" * 20, 18, 8),
        ),
        max_loss_bps=max_loss_bps,
        max_staleness=3_600,
        period=86_400,
        period_cap=period_cap,
    )


BALANCES = {USDC: 10_000 * 10**6, WETH: 5 * 10**18}  # $20 000 in all


def sell_weth(weth: Decimal, usdc_min: Decimal) -> PlannedSwap:
    return PlannedSwap(
        path=(WETH, USDC),
        amount_in=int(weth * 10**18),
        amount_out_min=int(usdc_min * 10**6),
    )


def test_worst_case_is_every_swap_paid_its_minimum() -> None:
    swaps = [sell_weth(Decimal(1), Decimal(1_900)), PlannedSwap((USDC, WETH), 10**6, 1)]
    after = worst_case_balances(BALANCES, swaps)
    assert after == {USDC: BALANCES[USDC] + 1_900 * 10**6 - 10**6, WETH: 4 * 10**18 + 1}


def test_a_worst_case_within_the_bound_passes() -> None:
    # Sell $2 000 of WETH for at least $1 900: at worst $100 of $20 000 = 0.5 % < 1 %.
    assert (
        worst_case_refusal(terms(), [sell_weth(Decimal(1), Decimal(1_900))], BALANCES, PRICES, 0)
        is None
    )


def test_a_minimum_that_allows_more_than_the_bound_is_refused() -> None:
    # At least $1 700 for $2 000: the guard would accept the quote, but not a sandwich to $1 700.
    refusal = worst_case_refusal(
        terms(), [sell_weth(Decimal(1), Decimal(1_700))], BALANCES, PRICES, 0
    )
    assert refusal is not None
    assert refusal.startswith("LossAboveBound: loses 300")


def test_the_period_loss_so_far_counts() -> None:
    swap = [sell_weth(Decimal(1), Decimal(1_900))]
    assert worst_case_refusal(terms(period_cap=usd(150)), swap, BALANCES, PRICES, usd(50)) is None
    refusal = worst_case_refusal(terms(period_cap=usd(150)), swap, BALANCES, PRICES, usd(51))
    assert refusal is not None
    assert refusal.startswith("PeriodCapExceeded")


def test_a_path_through_an_unlisted_token_is_refused() -> None:
    swap = PlannedSwap(path=(WETH, MINTED, USDC), amount_in=10**18, amount_out_min=1_999 * 10**6)
    refusal = worst_case_refusal(terms(), [swap], BALANCES, PRICES, 0)
    assert refusal is not None
    assert refusal.startswith(f"TokenNotAllowed: {MINTED}")


@given(
    weth_in=st.integers(min_value=1, max_value=5 * 10**18),
    usdc_min=st.integers(min_value=1, max_value=20_000 * 10**6),
    bps=st.integers(min_value=0, max_value=10_000),
)
def test_refusal_is_exactly_the_contracts_bound(weth_in: int, usdc_min: int, bps: int) -> None:
    """Refused ⇔ the worst case loses more than ``bps`` of the value before (period cap apart),
    in the contract's integer arithmetic."""
    bound = terms(max_loss_bps=bps, period_cap=2**127)
    swap = PlannedSwap(path=(WETH, USDC), amount_in=weth_in, amount_out_min=usdc_min)
    before = value_of(BALANCES, PRICES, bound)
    after = value_of(worst_case_balances(BALANCES, [swap]), PRICES, bound)
    refused = worst_case_refusal(bound, [swap], BALANCES, PRICES, 0) is not None
    assert refused == ((before - after) * 10_000 > before * bps)

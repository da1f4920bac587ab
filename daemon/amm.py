"""Uniswap V2's arithmetic, pure: exact outputs, price impact and bounded swap parameters.

Why reimplement the router's arithmetic: the daemon must know a swap's output *before* sending it
(to cap price impact and to set ``amountOutMin``), and must know it exactly, so these functions
mirror ``UniswapV2Library.getAmountOut`` integer for integer (0.3 % fee: ×997/1000, floor
division). Tests check them against the router's own ``getAmountsOut`` and executed swaps. The
backtester simulates its pools with the same functions.

Amounts that go on chain are ints in base units; prices and ratios are :class:`~decimal.Decimal`
computed with 50 significant digits; no float ever decides an on-chain amount.
"""

from __future__ import annotations

import decimal
from collections.abc import Sequence
from decimal import Decimal
from fractions import Fraction
from typing import Final

FEE_NUMERATOR: Final = 997
FEE_DENOMINATOR: Final = 1000

_PRECISION: Final = 50


class InsufficientLiquidity(ValueError):
    """A pool on the path has no reserves (the router would revert the same way)."""


def _context() -> decimal.Context:
    return decimal.Context(prec=_PRECISION, rounding=decimal.ROUND_HALF_EVEN)


# --- pure arithmetic --------------------------------------------------------------------------


def get_amount_out(amount_in: int, reserve_in: int, reserve_out: int) -> int:
    """Output of one hop, exactly as ``UniswapV2Library.getAmountOut`` computes it."""
    if amount_in <= 0:
        raise ValueError("amount_in must be positive")
    if reserve_in <= 0 or reserve_out <= 0:
        raise InsufficientLiquidity("pool has no liquidity")
    amount_in_with_fee = amount_in * FEE_NUMERATOR
    numerator = amount_in_with_fee * reserve_out
    denominator = reserve_in * FEE_DENOMINATOR + amount_in_with_fee
    return numerator // denominator


def get_amounts_out(amount_in: int, reserves: Sequence[tuple[int, int]]) -> list[int]:
    """Amounts along a path, like the router's ``getAmountsOut``.

    ``reserves[i]`` is ``(reserve_in, reserve_out)`` of hop ``i``; the result starts with
    ``amount_in`` and ends with the final output.
    """
    amounts = [amount_in]
    for reserve_in, reserve_out in reserves:
        amounts.append(get_amount_out(amounts[-1], reserve_in, reserve_out))
    return amounts


def mid_price(reserves: Sequence[tuple[int, int]]) -> Fraction:
    """Marginal price of the path in base units: output units per input unit, before fees."""
    price = Fraction(1)
    for reserve_in, reserve_out in reserves:
        if reserve_in <= 0 or reserve_out <= 0:
            raise InsufficientLiquidity("pool has no liquidity")
        price *= Fraction(reserve_out, reserve_in)
    return price


def price_impact(amount_in: int, amount_out: int, reserves: Sequence[tuple[int, int]]) -> Decimal:
    """How much worse a swap's rate is than the pools' mid price, as a fraction.

    ``impact = 1 − execution_price / mid_price`` where ``execution_price = amount_out /
    amount_in`` and ``mid_price = Π reserve_out / reserve_in`` over the hops (base units, the
    reserves *before* the swap). The 0.3 % LP fee of each hop is included, so even a tiny swap
    through one pool has an impact of about 0.003; ``amount_out`` is normally
    ``get_amounts_out(amount_in, reserves)[-1]`` so the value describes exactly the swap that
    will execute.
    """
    if amount_in <= 0:
        raise ValueError("amount_in must be positive")
    ratio = Fraction(amount_out, amount_in) / mid_price(reserves)
    value = 1 - ratio
    return _context().divide(Decimal(value.numerator), Decimal(value.denominator))


def amount_out_min(quote: int, slippage: Decimal) -> int:
    """``floor(quote × (1 − slippage))``: the least output the swap may accept.

    Exact (rational arithmetic, rounding down so the bound is never looser than asked);
    ``slippage`` must be in [0, 1).
    """
    if quote < 0:
        raise ValueError("quote must be >= 0")
    if not slippage.is_finite() or not Decimal(0) <= slippage < Decimal(1):
        raise ValueError(f"slippage must be in [0, 1), got {slippage}")
    kept = 1 - Fraction(slippage)
    return (quote * kept.numerator) // kept.denominator


def spot_price(
    reserve_token: int, reserve_quote: int, token_decimals: int, quote_decimals: int
) -> Decimal:
    """Price of one whole token in whole quote tokens, from a pair's reserves (no fee).

    E.g. reserves of 1 000 WETH (18 decimals) and 3 000 000 USDC (6 decimals) give 3000.
    """
    if reserve_token <= 0 or reserve_quote <= 0:
        raise InsufficientLiquidity("pool has no liquidity")
    value = Fraction(reserve_quote * 10**token_decimals, reserve_token * 10**quote_decimals)
    return _context().divide(Decimal(value.numerator), Decimal(value.denominator))


def deadline_from(block_timestamp: int, seconds: int) -> int:
    """A swap deadline ``seconds`` after the latest block's timestamp (chain time, not ours)."""
    if seconds <= 0:
        raise ValueError("deadline seconds must be positive")
    return block_timestamp + seconds

"""The simulated market: one Uniswap V2 constant-product pool per pair, exact integer math.

Each pool is set up with a depth in USD (half on each side at the starting prices), so its
invariant ``k = reserve0 × reserve1`` is fixed by the depth and the starting prices. Between
steps arbitrageurs bring every pool back to the reference price: the reserves are recomputed
from ``k`` (which keeps the LP fees the simulated swaps paid in) and the new price, so a swap
always meets a pool at the market price, and its own price impact and fee are the only costs.

Swaps use :func:`daemon.amm.get_amounts_out`, the code the executor quotes with, which equals
the router's ``getAmountsOut`` (the devnet test checks this on the real contracts). Routes are
picked as the executor picks them: the direct pair if there is one, else through the quote
token.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from fractions import Fraction
from typing import Final

import attrs

from daemon.amm import FEE_DENOMINATOR, FEE_NUMERATOR, get_amounts_out, price_impact

FEE: Final = Fraction(FEE_DENOMINATOR - FEE_NUMERATOR, FEE_DENOMINATOR)


class NoPool(LookupError):
    """No route between two tokens in the simulated market."""


@attrs.define
class Pool:
    """A pair's reserves in base units, ``token0`` < ``token1`` by symbol."""

    token0: str
    token1: str
    reserve0: int
    reserve1: int

    def reserves_for(self, token_in: str) -> tuple[int, int]:
        """``(reserve_in, reserve_out)`` for a swap selling ``token_in``."""
        if token_in == self.token0:
            return self.reserve0, self.reserve1
        return self.reserve1, self.reserve0

    def apply(self, token_in: str, amount_in: int, amount_out: int) -> None:
        if token_in == self.token0:
            self.reserve0 += amount_in
            self.reserve1 -= amount_out
        else:
            self.reserve1 += amount_in
            self.reserve0 -= amount_out


@attrs.frozen
class Swap:
    """An executed (or quoted) swap along a route."""

    path: tuple[str, ...]
    amounts: tuple[int, ...]
    impact: Decimal
    """As :func:`daemon.amm.price_impact`: 1 − execution rate / mid rate, fees included."""

    @property
    def amount_out(self) -> int:
        return self.amounts[-1]

    @property
    def hops(self) -> int:
        return len(self.path) - 1


def _units(usd: float, price: float, decimals: int) -> int:
    return int(usd / price * 10**decimals)


@attrs.define
class Market:
    """Every pool, and the token metadata the math needs."""

    decimals: Mapping[str, int]
    quote: str
    pools: dict[tuple[str, str], Pool]

    @classmethod
    def create(
        cls,
        decimals: Mapping[str, int],
        quote: str,
        pairs: Iterable[tuple[str, str]],
        depth_usd: float,
        prices: Mapping[str, float],
    ) -> Market:
        """Pools of ``depth_usd`` each (half per side) at ``prices``."""
        pools: dict[tuple[str, str], Pool] = {}
        for a, b in pairs:
            token0, token1 = sorted((a, b))
            pools[(token0, token1)] = Pool(
                token0,
                token1,
                _units(depth_usd / 2, prices[token0], decimals[token0]),
                _units(depth_usd / 2, prices[token1], decimals[token1]),
            )
        return cls(decimals=decimals, quote=quote, pools=pools)

    def pool(self, a: str, b: str) -> Pool | None:
        return self.pools.get((a, b) if a < b else (b, a))

    def route(self, token_in: str, token_out: str) -> tuple[str, ...]:
        if self.pool(token_in, token_out) is not None:
            return (token_in, token_out)
        if (
            self.quote not in (token_in, token_out)
            and self.pool(token_in, self.quote) is not None
            and self.pool(self.quote, token_out) is not None
        ):
            return (token_in, self.quote, token_out)
        raise NoPool(f"no pool route from {token_in} to {token_out}")

    def arbitrage(self, prices: Mapping[str, float]) -> None:
        """Move every pool to the reference ``prices``, keeping its invariant ``k``."""
        for pool in self.pools.values():
            # reserve1 / reserve0 (base units) = p0 / p1 × 10^(d1 − d0) at the market price.
            ratio = (
                prices[pool.token0]
                / prices[pool.token1]
                * 10 ** (self.decimals[pool.token1] - self.decimals[pool.token0])
            )
            k = pool.reserve0 * pool.reserve1
            reserve0 = math.isqrt(int(k / ratio)) if ratio > 0 else 0
            if reserve0 <= 0:
                continue
            pool.reserve0 = reserve0
            pool.reserve1 = k // reserve0

    def quote_path(self, path: Sequence[str], amount_in: int) -> Swap:
        hops = [self._pool_of(a, b).reserves_for(a) for a, b in itertools.pairwise(path)]
        amounts = get_amounts_out(amount_in, hops)
        return Swap(
            path=tuple(path),
            amounts=tuple(amounts),
            impact=price_impact(amount_in, amounts[-1], hops),
        )

    def execute(self, swap: Swap) -> None:
        for i, (a, b) in enumerate(zip(swap.path, swap.path[1:], strict=False)):
            self._pool_of(a, b).apply(a, swap.amounts[i], swap.amounts[i + 1])

    def _pool_of(self, a: str, b: str) -> Pool:
        pool = self.pool(a, b)
        if pool is None:
            raise NoPool(f"no pool {a}/{b}")
        return pool

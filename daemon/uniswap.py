"""Uniswap V2 on chain: pair lookup, routes, quotes from the pools' reserves, and calldata.

The arithmetic (outputs, price impact, ``amountOutMin``) is :mod:`daemon.amm`, pure.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from decimal import Decimal
from typing import Final

import attrs
from eth_abi.abi import decode as abi_decode

from daemon.abi import encode_call, function_selector, hex_int
from daemon.address import ZERO_ADDRESS, to_address
from daemon.amm import (
    amount_out_min,
    get_amounts_out,
    price_impact,
    spot_price,
)
from daemon.chain import Block, ChainClient
from daemon.chain_errors import ChainError, RpcError, RpcTransportError

APPROVE: Final = "approve(address,uint256)"
SWAP_EXACT_TOKENS_FOR_TOKENS: Final = (
    "swapExactTokensForTokens(uint256,uint256,address[],address,uint256)"
)
APPROVE_SELECTOR: Final = function_selector(APPROVE)
SWAP_EXACT_TOKENS_FOR_TOKENS_SELECTOR: Final = function_selector(SWAP_EXACT_TOKENS_FOR_TOKENS)
SWAP_RECIPIENT_OFFSET: Final = 4 + 3 * 32
"""Byte offset of ``to`` in swapExactTokensForTokens calldata (selector, amountIn, amountOutMin,
the path's offset word, then ``to``): the slot the delegation pins to the smart account."""
APPROVE_SPENDER_OFFSET: Final = 4
"""Byte offset of ``spender`` in approve calldata: the slot the delegation pins to the router."""


class NoRoute(LookupError):
    """Neither a direct pair nor a pair through the quote token exists."""


def sort_tokens(token_a: str, token_b: str) -> tuple[str, str]:
    """``(token0, token1)`` of a pair, as ``UniswapV2Library.sortTokens`` orders them."""
    a, b = to_address(token_a), to_address(token_b)
    if a == b:
        raise ValueError("identical token addresses")
    return (a, b) if int(a, 16) < int(b, 16) else (b, a)


# --- calldata ---------------------------------------------------------------------------------


def encode_approve(spender: str, amount: int) -> bytes:
    """ERC20 ``approve(spender, amount)`` calldata."""
    return encode_call(APPROVE, to_address(spender), amount)


def encode_swap_exact_tokens_for_tokens(
    amount_in: int, amount_out_min: int, path: Sequence[str], to: str, deadline: int
) -> bytes:
    """Router02 ``swapExactTokensForTokens`` calldata."""
    if len(path) < 2:
        raise ValueError("a swap path has at least two tokens")
    return encode_call(
        SWAP_EXACT_TOKENS_FOR_TOKENS,
        amount_in,
        amount_out_min,
        [to_address(token) for token in path],
        to_address(to),
        deadline,
    )


# --- on-chain reads ---------------------------------------------------------------------------


@attrs.frozen
class Quote:
    """A fresh quote for one swap, with everything needed to bound it."""

    path: tuple[str, ...]
    amounts: tuple[int, ...]
    """``amounts[0]`` is the input, ``amounts[-1]`` the output (base units)."""
    reserves: tuple[tuple[int, int], ...]
    """``(reserve_in, reserve_out)`` per hop, read in the same round trip."""
    block_number: int

    @property
    def amount_in(self) -> int:
        return self.amounts[0]

    @property
    def amount_out(self) -> int:
        return self.amounts[-1]

    @property
    def price_impact(self) -> Decimal:
        """See :func:`price_impact`."""
        return price_impact(self.amount_in, self.amount_out, self.reserves)

    def amount_out_min(self, slippage: Decimal) -> int:
        return amount_out_min(self.amount_out, slippage)


@attrs.define(eq=False)
class UniswapV2:
    """Reads a Uniswap V2 deployment through a :class:`ChainClient`.

    Pair addresses are looked up once per instance (they never change once created).
    """

    client: ChainClient
    router: str = attrs.field(converter=to_address)
    quote_token: str | None = attrs.field(
        default=None, converter=attrs.converters.optional(to_address)
    )
    """Token used as the intermediate hop when two tokens have no direct pair (USDC)."""
    _factory: str | None = attrs.field(default=None, init=False)
    _pairs: dict[tuple[str, str], str] = attrs.field(factory=dict, init=False)

    async def factory(self) -> str:
        if self._factory is None:
            raw = await self.client.call(self.router, function_selector("factory()"))
            self._factory = to_address(raw[12:32])
        return self._factory

    async def pair(self, token_a: str, token_b: str) -> str | None:
        """The pair contract of two tokens, or None if there is none."""
        key = sort_tokens(token_a, token_b)
        if key not in self._pairs:
            factory = await self.factory()
            raw = await self.client.call(
                factory, encode_call("getPair(address,address)", key[0], key[1])
            )
            address = to_address(raw[12:32])
            if address == ZERO_ADDRESS:
                return None
            self._pairs[key] = address
        return self._pairs[key]

    async def route(self, token_in: str, token_out: str) -> tuple[str, ...]:
        """The direct path if the pair exists, else through :attr:`quote_token`."""
        token_in, token_out = to_address(token_in), to_address(token_out)
        if await self.pair(token_in, token_out) is not None:
            return (token_in, token_out)
        hop = self.quote_token
        if (
            hop is not None
            and hop not in (token_in, token_out)
            and await self.pair(token_in, hop) is not None
            and await self.pair(hop, token_out) is not None
        ):
            return (token_in, hop, token_out)
        raise NoRoute(f"no Uniswap V2 route from {token_in} to {token_out}")

    async def reserves(self, path: Sequence[str]) -> tuple[tuple[tuple[int, int], ...], int]:
        """``(reserve_in, reserve_out)`` per hop and the block they were read at, one round trip."""
        pairs: list[str] = []
        for token_in, token_out in itertools.pairwise(path):
            pair = await self.pair(token_in, token_out)
            if pair is None:
                raise NoRoute(f"no pair for {token_in}/{token_out}")
            pairs.append(pair)
        get_reserves = function_selector("getReserves()")
        results = await self.client.batch(
            [
                ("eth_blockNumber", []),
                *(
                    ("eth_call", [{"to": pair, "data": "0x" + get_reserves.hex()}, "latest"])
                    for pair in pairs
                ),
            ]
        )
        block_number = int(results[0], 16)
        hops: list[tuple[int, int]] = []
        for (token_in, token_out), raw in zip(itertools.pairwise(path), results[1:], strict=True):
            reserve0, reserve1, _ = abi_decode(
                ["uint112", "uint112", "uint32"], bytes.fromhex(raw[2:])
            )
            token0, _ = sort_tokens(token_in, token_out)
            hops.append(
                (reserve0, reserve1) if to_address(token_in) == token0 else (reserve1, reserve0)
            )
        return tuple(hops), block_number

    async def reserves_at_head(
        self, pairs: Sequence[tuple[str, str]]
    ) -> tuple[Block, list[tuple[int, int] | ChainError]]:
        """The head block and each pair's reserves read with it, in one round trip.

        For price reads: ``(reserve_a, reserve_b)`` of each ``(token_a, token_b)`` as asked, or the
        error of that one read. The head is asked first in the same batch, so the reserves are at
        least as new as the returned block (its timestamp is when they were current, unless a
        block was mined within the batch). Raises :class:`NoRoute` for a pair without a pool and
        :class:`ChainError` when the head cannot be read.
        """
        addresses = []
        for token_a, token_b in pairs:
            pair = await self.pair(token_a, token_b)
            if pair is None:
                raise NoRoute(f"no pair for {token_a}/{token_b}")
            addresses.append(pair)
        get_reserves = "0x" + function_selector("getReserves()").hex()
        head, *results = await self.client.batch_outcomes(
            [
                ("eth_getBlockByNumber", ["latest", False]),
                *(
                    ("eth_call", [{"to": pair, "data": get_reserves}, "latest"])
                    for pair in addresses
                ),
            ]
        )
        if isinstance(head, ChainError):
            raise head
        if not isinstance(head, dict):
            raise RpcError(-32000, "the latest block was not found")
        try:
            block = Block(
                number=hex_int(head["number"]),
                timestamp=hex_int(head["timestamp"]),
                base_fee=hex_int(head.get("baseFeePerGas") or "0x0"),
                hash=str(head["hash"]),
            )
        except (KeyError, TypeError, ValueError):
            raise RpcTransportError("the latest block is malformed") from None
        out: list[tuple[int, int] | ChainError] = []
        for (token_a, token_b), raw in zip(pairs, results, strict=True):
            if isinstance(raw, ChainError):
                out.append(raw)
                continue
            try:
                reserve0, reserve1, _ = abi_decode(
                    ["uint112", "uint112", "uint32"], bytes.fromhex(str(raw)[2:])
                )
            except Exception:  # noqa: BLE001 - any undecodable answer is a bad read
                out.append(RpcTransportError("getReserves() answered undecodable data"))
                continue
            token0, _ = sort_tokens(token_a, token_b)
            out.append(
                (reserve0, reserve1) if to_address(token_a) == token0 else (reserve1, reserve0)
            )
        return block, out

    async def quote(self, token_in: str, token_out: str, amount_in: int) -> Quote:
        """An exact quote from the pools' current reserves (equal to the router's)."""
        path = await self.route(token_in, token_out)
        return await self.quote_path(path, amount_in)

    async def quote_path(self, path: Sequence[str], amount_in: int) -> Quote:
        hops, block_number = await self.reserves(path)
        amounts = get_amounts_out(amount_in, hops)
        return Quote(
            path=tuple(to_address(token) for token in path),
            amounts=tuple(amounts),
            reserves=hops,
            block_number=block_number,
        )

    async def router_amounts_out(self, amount_in: int, path: Sequence[str]) -> list[int]:
        """The router's own ``getAmountsOut`` (a cross-check of :meth:`quote`)."""
        raw = await self.client.call(
            self.router,
            encode_call(
                "getAmountsOut(uint256,address[])", amount_in, [to_address(t) for t in path]
            ),
        )
        (amounts,) = abi_decode(["uint256[]"], raw)
        return [int(amount) for amount in amounts]

    async def spot_price(
        self, token: str, token_decimals: int, quote: str, quote_decimals: int
    ) -> Decimal:
        """Price of one whole ``token`` in whole ``quote`` tokens from the direct pair."""
        hops, _ = await self.reserves([token, quote])
        ((reserve_token, reserve_quote),) = hops
        return spot_price(reserve_token, reserve_quote, token_decimals, quote_decimals)

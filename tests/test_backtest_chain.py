"""The backtester's pool model against the real Uniswap V2 router on the devnet."""

from __future__ import annotations

import pytest
import trio

from daemon.backtest.pools import Market, Pool
from daemon.chain import ChainClient
from daemon.devtools.devnet_records import Devnet
from daemon.uniswap import UniswapV2

pytestmark = pytest.mark.chain


async def market_of(chain: ChainClient, devnet: Devnet) -> Market:
    """The simulated market with the devnet's pools, reserves read from the chain."""
    uniswap = UniswapV2(chain, devnet.router, devnet.quote.address)
    quote = devnet.quote.symbol
    pools: dict[tuple[str, str], Pool] = {}
    for token in devnet.tokens:
        if token.symbol == quote:
            continue
        ((reserve_token, reserve_quote),), _ = await uniswap.reserves(
            [token.address, devnet.quote.address]
        )
        token0, token1 = sorted((token.symbol, quote))
        reserves = {token.symbol: reserve_token, quote: reserve_quote}
        pools[(token0, token1)] = Pool(token0, token1, reserves[token0], reserves[token1])
    decimals = {token.symbol: token.decimals for token in devnet.tokens}
    return Market(decimals=decimals, quote=quote, pools=pools)


SWAPS = [
    ("USDC", "WETH", 1_000 * 10**6),
    ("USDC", "WETH", 2_500_000 * 10**6),  # a large share of the pool: big impact
    ("WETH", "USDC", 3 * 10**18),
    ("WBTC", "USDC", 10**7),
    ("WBTC", "WETH", 2 * 10**8),  # no direct pair: routed through USDC
    ("WETH", "WBTC", 123_456_789_123_456_789),
    ("USDC", "WBTC", 1),
]


async def test_the_pool_model_equals_the_routers_get_amounts_out(
    chain: ChainClient, devnet: Devnet
) -> None:
    with trio.fail_after(20):
        market = await market_of(chain, devnet)
        uniswap = UniswapV2(chain, devnet.router, devnet.quote.address)
        for token_in, token_out, amount in SWAPS:
            path = market.route(token_in, token_out)
            modelled = market.quote_path(path, amount)
            on_chain = await uniswap.router_amounts_out(
                amount, [devnet.token(symbol).address for symbol in path]
            )
            assert list(modelled.amounts) == on_chain, (token_in, token_out, amount)

"""Uniswap V2 helpers: exact arithmetic, checked against the real router and executed swaps."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import pytest
import trio
from eth_abi.abi import decode as abi_decode
from fixtures_chain import send_call
from hypothesis import given
from hypothesis import strategies as st

from daemon.amm import (
    InsufficientLiquidity,
    amount_out_min,
    deadline_from,
    get_amount_out,
    get_amounts_out,
    price_impact,
    spot_price,
)
from daemon.chain import ChainClient
from daemon.chain_errors import Reverted
from daemon.devtools.devnet_deploy import fund
from daemon.devtools.devnet_records import Devnet
from daemon.txbuild import Call, SwapLeg, WalletMode
from daemon.uniswap import (
    APPROVE_SELECTOR,
    SWAP_EXACT_TOKENS_FOR_TOKENS_SELECTOR,
    UniswapV2,
    encode_swap_exact_tokens_for_tokens,
)

# --- pure -------------------------------------------------------------------------------------


def test_selectors() -> None:
    assert APPROVE_SELECTOR.hex() == "095ea7b3"
    assert SWAP_EXACT_TOKENS_FOR_TOKENS_SELECTOR.hex() == "38ed1739"


def test_get_amount_out_matches_the_library_formula() -> None:
    # 1 WETH into 1 000 WETH / 3 000 000 USDC: 997·10^18·3·10^12 // (1000·10^21 + 997·10^18)
    assert get_amount_out(10**18, 1_000 * 10**18, 3_000_000 * 10**6) == 2_988_020_943
    with pytest.raises(InsufficientLiquidity):
        get_amount_out(1, 0, 5)
    with pytest.raises(ValueError, match="positive"):
        get_amount_out(0, 5, 5)


def test_multi_hop_amounts_chain() -> None:
    amounts = get_amounts_out(10**8, [(150 * 10**8, 9 * 10**12), (9 * 10**12, 3_000 * 10**18)])
    assert amounts[1] == get_amount_out(10**8, 150 * 10**8, 9 * 10**12)
    assert amounts[2] == get_amount_out(amounts[1], 9 * 10**12, 3_000 * 10**18)


@given(
    quote=st.integers(min_value=0, max_value=2**256 - 1),
    slippage=st.decimals(min_value=0, max_value=Decimal("0.9999"), places=6),
)
def test_amount_out_min_rounds_down_exactly(quote: int, slippage: Decimal) -> None:
    result = amount_out_min(quote, slippage)
    exact = quote * (1 - Fraction(slippage))
    assert result <= exact < result + 1


def test_amount_out_min_examples() -> None:
    assert amount_out_min(1000, Decimal("0.01")) == 990
    assert amount_out_min(999, Decimal("0.01")) == 989  # 989.01 rounds down
    assert amount_out_min(10**30 + 1, Decimal(0)) == 10**30 + 1
    for bad in (Decimal(1), Decimal("-0.01"), Decimal("NaN")):
        with pytest.raises(ValueError, match="slippage"):
            amount_out_min(100, bad)


def test_spot_price_is_decimals_aware() -> None:
    assert spot_price(1_000 * 10**18, 3_000_000 * 10**6, 18, 6) == Decimal(3000)
    assert spot_price(150 * 10**8, 9_000_000 * 10**6, 8, 6) == Decimal(60000)


def test_price_impact_definition() -> None:
    reserves = [(1_000 * 10**18, 3_000_000 * 10**6)]
    tiny = price_impact(10**16, get_amount_out(10**16, *reserves[0]), reserves)
    assert Decimal("0.0029") < tiny < Decimal("0.0031")  # just the 0.3 % fee
    big_in = 100 * 10**18  # 10 % of the pool
    big = price_impact(big_in, get_amount_out(big_in, *reserves[0]), reserves)
    # 1 − 997·1000 / (1000·1000 + 997·100) = 0.0935…
    assert abs(big - (1 - Decimal(997_000) / Decimal(1_099_700))) < Decimal("1e-9")


def test_deadline_and_calldata() -> None:
    assert deadline_from(1_700_000_000, 300) == 1_700_000_300
    path = ["0x" + "11" * 20, "0x" + "22" * 20]
    data = encode_swap_exact_tokens_for_tokens(5, 4, path, "0x" + "33" * 20, 99)
    amount_in, minimum, decoded_path, to, deadline = abi_decode(
        ["uint256", "uint256", "address[]", "address", "uint256"], data[4:]
    )
    assert (amount_in, minimum, deadline) == (5, 4, 99)
    assert [p.lower() for p in decoded_path] == path
    assert to.lower() == "0x" + "33" * 20
    assert data[100:132] == bytes(12) + bytes.fromhex("33" * 20)  # the slot the delegation pins


# --- against the real router ------------------------------------------------------------------

pytestmark_chain = pytest.mark.chain


def uniswap_of(chain: ChainClient, devnet: Devnet) -> UniswapV2:
    return UniswapV2(chain, devnet.router, devnet.quote.address)


@pytestmark_chain
@pytest.mark.parametrize(
    ("token_in", "token_out", "amount"),
    [
        ("USDC", "WETH", 1_000 * 10**6),
        ("WETH", "USDC", 3 * 10**18),
        ("WBTC", "USDC", 10**7),
        ("WBTC", "WETH", 2 * 10**8),  # no direct pair: via USDC
        ("WETH", "WBTC", 123_456_789_123_456_789),
    ],
)
async def test_quotes_equal_router_get_amounts_out(
    chain: ChainClient, devnet: Devnet, token_in: str, token_out: str, amount: int
) -> None:
    with trio.fail_after(10):
        uniswap = uniswap_of(chain, devnet)
        quote = await uniswap.quote(
            devnet.token(token_in).address, devnet.token(token_out).address, amount
        )
        assert len(quote.path) == (3 if {token_in, token_out} == {"WBTC", "WETH"} else 2)
        assert list(quote.amounts) == await uniswap.router_amounts_out(amount, quote.path)


@pytestmark_chain
async def test_spot_prices_are_realistic(chain: ChainClient, devnet: Devnet) -> None:
    with trio.fail_after(10):
        uniswap = uniswap_of(chain, devnet)
        usdc = devnet.quote
        weth = await uniswap.spot_price(devnet.weth, 18, usdc.address, usdc.decimals)
        wbtc = await uniswap.spot_price(devnet.token("WBTC").address, 8, usdc.address, 6)
        assert weth == Decimal(3000)
        assert wbtc == Decimal(60000)


@pytestmark_chain
async def test_executed_swap_matches_formula_and_impact(chain: ChainClient, devnet: Devnet) -> None:
    """A large multi-hop swap's actual output equals the constant-product formula (±1 wei)."""
    with trio.fail_after(20):
        wbtc, weth = devnet.token("WBTC").address, devnet.weth
        amount_in = 10 * 10**8  # ~$600k: a visible impact on $9M pools
        await fund(chain, devnet, devnet.signer, {"WBTC": amount_in})
        uniswap = uniswap_of(chain, devnet)
        quote = await uniswap.quote(wbtc, weth, amount_in)
        impact = quote.price_impact
        assert Decimal("0.05") < impact < Decimal("0.2")
        # The impact is exactly the shortfall of the output against the mid price.
        mid_out = Decimal(amount_in) * Decimal(quote.reserves[0][1]) / Decimal(quote.reserves[0][0])
        mid_out = mid_out * Decimal(quote.reserves[1][1]) / Decimal(quote.reserves[1][0])
        assert abs(mid_out * (1 - impact) - quote.amount_out) <= 1

        block = await chain.latest_block()
        leg = SwapLeg(
            token_in=wbtc,
            token_out=weth,
            amount_in=amount_in,
            amount_out_min=quote.amount_out_min(Decimal("0.01")),
            path=quote.path,
            deadline=deadline_from(block.timestamp, 300),
        )
        before = (await chain.balances(devnet.signer, [weth]))[weth]
        for call in WalletMode(router=devnet.router, signer=devnet.signer).calls([leg]):
            assert (await send_call(chain, devnet.signer_key, call)).succeeded
        received = (await chain.balances(devnet.signer, [weth]))[weth] - before
        assert abs(received - quote.amount_out) <= 1


@pytestmark_chain
async def test_stale_amount_out_min_reverts_with_the_router_reason(
    chain: ChainClient, devnet: Devnet
) -> None:
    with trio.fail_after(20):
        usdc, weth = devnet.token("USDC").address, devnet.weth
        await fund(chain, devnet, devnet.signer, {"USDC": 200_000 * 10**6})
        uniswap = uniswap_of(chain, devnet)
        wallet = WalletMode(router=devnet.router, signer=devnet.signer)
        block = await chain.latest_block()
        quote = await uniswap.quote(usdc, weth, 100_000 * 10**6)
        stale = SwapLeg(
            token_in=usdc,
            token_out=weth,
            amount_in=quote.amount_in,
            amount_out_min=quote.amount_out_min(Decimal("0.001")),
            path=quote.path,
            deadline=deadline_from(block.timestamp, 300),
        )
        # Someone else buys WETH first: the price moves beyond the 0.1 % tolerance.
        front_run = SwapLeg(
            token_in=usdc,
            token_out=weth,
            amount_in=quote.amount_in,
            amount_out_min=1,
            path=quote.path,
            deadline=stale.deadline,
        )
        for call in wallet.calls([front_run]):
            assert (await send_call(chain, devnet.signer_key, call)).succeeded
        approve, swap = wallet.calls([stale])
        assert (await send_call(chain, devnet.signer_key, approve)).succeeded

        sent = chain.requests_sent
        with pytest.raises(Reverted) as raised:
            await chain.estimate_gas(swap.to, swap.data, sender=devnet.signer)
        assert raised.value.reason == "UniswapV2Router: INSUFFICIENT_OUTPUT_AMOUNT"
        assert chain.requests_sent == sent + 1  # never retried

        # Sent anyway (fixed gas): mined as a failure, and the reason is recovered.
        receipt = await send_call(chain, devnet.signer_key, Call(swap.to, swap.data), gas=500_000)
        assert not receipt.succeeded
        reverted = await chain.revert_reason_of(receipt.transaction_hash)
        assert reverted is not None
        assert reverted.reason == "UniswapV2Router: INSUFFICIENT_OUTPUT_AMOUNT"

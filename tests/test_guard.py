"""The oracle guard (DriftGuardEnforcer) against a thief holding the daemon's key.

Every on-chain test redeems through the real DelegationManager v1.3.0 on a HybridDeleGator
account (10 WETH + 60 000 USDC + 1 WBTC ≈ $150 000 at the feeds' reference prices) with the
delegations ``driftd delegation build`` makes, the swap delegation carrying the guard caveat, and
measures the account's value at oracle prices before and after. The bound under test: a
redemption loses at most ``MAX_LOSS_BPS`` of that value (0.5 % ≈ $750), all redemptions in a period
at most ``PERIOD_CAP`` ($2 000).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

import attrs
import pytest
import trio
from eth_abi.abi import decode as abi_decode
from eth_abi.abi import encode as abi_encode
from eth_utils.crypto import keccak
from fixtures_chain import send_call

from daemon.abi import encode_call, function_selector, hex_bytes
from daemon.address import to_address
from daemon.amm import deadline_from
from daemon.backtest.gas import GasModel
from daemon.chain import ChainClient, Receipt
from daemon.chain_errors import Reverted, decode_revert_reason
from daemon.config import GuardConfig
from daemon.delegation import (
    SINGLE_DEFAULT_MODE,
    Caveat,
    Delegation,
    DelegationDomain,
    Execution,
    PortfolioDelegations,
    allowed_methods_terms,
    build_portfolio_delegations,
    current_nonce,
    encode_redeem_delegations,
    permission_context,
    sign_delegation,
)
from daemon.devtools.devnet_anvil import (
    evm_increase_time,
    evm_mine,
    evm_revert,
    evm_snapshot,
    set_eth_balance,
)
from daemon.devtools.devnet_artifacts import load_artifacts
from daemon.devtools.devnet_deploy import create_address, fund, refresh_feeds, set_feed_price
from daemon.devtools.devnet_records import (
    FEED_DECIMALS,
    Devnet,
    SmartAccount,
    devnet_key,
    feed_answer,
)
from daemon.guard import (
    GuardTerms,
    GuardTermsError,
    GuardToken,
    OracleError,
    guard_caveat,
    guard_error,
    guard_terms_of,
    loss_refusal,
    oracle_prices,
    oracle_value,
    period_key,
    period_loss,
    usd,
)
from daemon.signer import TxSigner
from daemon.solidity import SOLC_VERSION, _run_solc, contract_sources, project_root
from daemon.txbuild import Call, DelegationMode, SwapLeg, WalletMode
from daemon.uniswap import UniswapV2, encode_approve

pytestmark = pytest.mark.chain

MAX_LOSS_BPS = 50
PERIOD = 86_400
PERIOD_CAP = usd(2_000)
MAX_STALENESS = 3_600
REDEEM_GAS = 3_000_000
THIEF = devnet_key("guard test thief")
THIEF_ADDRESS = TxSigner(key=THIEF).address
SWAP = "swapExactTokensForTokens(uint256,uint256,address[],address,uint256)"


# --- pure -------------------------------------------------------------------------------------


def sample_terms(**overrides: Any) -> GuardTerms:
    tokens = (
        GuardToken("0x" + "11" * 20, "0x" + "21" * 20, 6, 8),
        GuardToken("0x" + "12" * 20, "0x" + "22" * 20, 18, 8),
    )
    fields: dict[str, Any] = {
        "tokens": tokens,
        "max_loss_bps": 75,
        "max_staleness": 3_600,
        "period": 86_400,
        "period_cap": usd("1234.5"),
    }
    fields.update(overrides)
    return GuardTerms(**fields)


def test_terms_layout_and_round_trip() -> None:
    terms = sample_terms()
    encoded = terms.encode()
    assert len(encoded) == 26 + 2 * 42
    assert encoded[:2] == (75).to_bytes(2, "big")
    assert encoded[2:6] == (3_600).to_bytes(4, "big")
    assert encoded[6:10] == (86_400).to_bytes(4, "big")
    assert encoded[10:26] == (1234_5 * 10**17).to_bytes(16, "big")
    assert encoded[26:46] == b"\x11" * 20
    assert encoded[46:66] == b"\x21" * 20
    assert encoded[66:68] == bytes([6, 8])
    assert GuardTerms.decode(encoded) == terms
    caveat = guard_caveat("0x" + "ab" * 20, terms)
    assert caveat.terms == encoded
    delegation = Delegation(
        delegate="0x" + "01" * 20,
        delegator="0x" + "02" * 20,
        authority=b"\xff" * 32,
        caveats=(caveat,),
        salt=1,
    )
    assert guard_terms_of(delegation, "0x" + "ab" * 20) == [terms]
    assert guard_terms_of(delegation, "0x" + "cd" * 20) == []


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"tokens": ()}, "1..16 tokens"),
        ({"max_loss_bps": 10_001}, "max_loss_bps"),
        ({"max_staleness": 0}, "max_staleness must be positive"),
        ({"period": 2**32}, "period must fit in uint32"),
        ({"period_cap": 2**128}, "period_cap must fit in uint128"),
        (
            {"tokens": (GuardToken("0x" + "11" * 20, "0x" + "21" * 20, 6, 8),) * 2},
            "listed twice",
        ),
    ],
)
def test_terms_are_validated(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(GuardTermsError, match=message):
        sample_terms(**overrides)


@pytest.mark.parametrize("length", [0, 25, 26, 26 + 41, 26 + 43])
def test_decode_refuses_malformed_terms(length: int) -> None:
    with pytest.raises(GuardTermsError):
        GuardTerms.decode(b"\x00" * length)


def test_loss_refusal_mirrors_the_contract() -> None:
    terms = sample_terms(max_loss_bps=100, period_cap=usd(50))
    assert loss_refusal(usd(1000), usd(1001), terms, spent=usd(50)) is None
    assert loss_refusal(usd(1000), usd(990), terms, spent=0) is None
    refusal = loss_refusal(usd(1000), usd(989), terms, spent=0)
    assert refusal is not None
    assert refusal.startswith("LossAboveBound")
    refusal = loss_refusal(usd(1000), usd(990), terms, spent=usd(41))
    assert refusal is not None
    assert refusal.startswith("PeriodCapExceeded")


# --- the devnet setting -------------------------------------------------------------------------


@attrs.frozen
class Setup:
    """One account, its signed delegations with and without the guard, and the guard's terms.

    ``guarded`` are the delegations ``driftd delegation build`` makes (the stock pins, expiry,
    ValueLte(0), the account's NonceEnforcer nonce, and the guard on the swap delegation);
    ``unguarded`` the shape from before the guard (the stock pins only).
    """

    devnet: Devnet
    account: SmartAccount
    terms: GuardTerms
    guarded: PortfolioDelegations
    unguarded: PortfolioDelegations

    def mode(self, delegations: PortfolioDelegations | None = None) -> DelegationMode:
        return DelegationMode(
            manager=self.devnet.manager,
            router=self.devnet.router,
            delegations=delegations or self.guarded,
        )

    def token(self, symbol: str) -> str:
        return self.devnet.token(symbol).address


def devnet_terms(
    devnet: Devnet, symbols: Sequence[str] = ("WETH", "USDC", "WBTC"), **overrides: Any
) -> GuardTerms:
    fields: dict[str, Any] = {
        "tokens": tuple(
            GuardToken(
                devnet.token(symbol).address,
                devnet.feeds[symbol],
                devnet.token(symbol).decimals,
                FEED_DECIMALS,
            )
            for symbol in symbols
        ),
        "max_loss_bps": MAX_LOSS_BPS,
        "max_staleness": MAX_STALENESS,
        "period": PERIOD,
        "period_cap": PERIOD_CAP,
    }
    fields.update(overrides)
    return GuardTerms(**fields)


def signed(
    devnet: Devnet,
    account: SmartAccount,
    salt: int,
    *,
    guard: Caveat | None = None,
    expires_at: int | None = None,
    nonce: int | None = None,
    tokens: Sequence[str] = (),
    swap_methods: Sequence[bytes] = (),
) -> PortfolioDelegations:
    """The owner's signed delegations for the devnet's tokens and ``tokens`` (approve targets);
    ``swap_methods``, if given, replace the swap delegation's AllowedMethods."""
    built = build_portfolio_delegations(
        account=account.address,
        delegate=devnet.signer,
        router=devnet.router,
        tokens=[*(token.address for token in devnet.tokens), *tokens],
        enforcers=devnet.delegation_config(),
        salt=salt,
        guard=guard,
        expires_at=expires_at,
        nonce=nonce,
    )
    if swap_methods:
        methods = devnet.delegation_config().allowed_methods
        caveats = tuple(
            Caveat(methods, allowed_methods_terms(swap_methods))
            if caveat.enforcer == methods
            else caveat
            for caveat in built.swap.caveats
        )
        built = attrs.evolve(built, swap=attrs.evolve(built.swap, caveats=caveats))
    domain = DelegationDomain(chain_id=devnet.chain_id, manager=devnet.manager)
    return PortfolioDelegations(
        approve=sign_delegation(built.approve, domain, account.owner_key),
        swap=sign_delegation(built.swap, domain, account.owner_key),
    )


async def make_setup(
    chain: ChainClient,
    devnet: Devnet,
    terms: GuardTerms | None = None,
    salt: int = 7,
    *,
    guard: str | None = None,
    tokens: Sequence[str] = (),
    swap_methods: Sequence[bytes] = (),
) -> Setup:
    """``guard`` (default: the real one) enforces ``terms``; ``tokens`` are extra approve targets.

    Expiry and nonce as ``driftd delegation build`` sets them: ``guard.valid_days`` from now (the
    chain's clock, which tests move) and the account's current NonceEnforcer nonce.
    """
    account = devnet.accounts[0]
    terms = terms or devnet_terms(devnet)
    now = (await chain.latest_block()).timestamp
    nonce = await current_nonce(chain, devnet.delegation_config(), account.address)
    options: dict[str, Any] = {"tokens": tokens, "swap_methods": swap_methods}
    return Setup(
        devnet=devnet,
        account=account,
        terms=terms,
        guarded=signed(
            devnet,
            account,
            salt,
            guard=guard_caveat(guard or devnet.guard, terms),
            expires_at=now + GuardConfig().valid_days * 86_400,
            nonce=nonce,
            **options,
        ),
        unguarded=signed(devnet, account, salt, **options),
    )


@pytest.fixture
async def setup(chain: ChainClient, devnet: Devnet) -> Setup:
    """Feeds at the reference prices, updated now (other tests may have moved chain time)."""
    with trio.fail_after(10):
        await refresh_feeds(chain, devnet)
        return await make_setup(chain, devnet)


async def value(chain: ChainClient, setup: Setup, prices: Sequence[int] | None = None) -> int:
    """The account's listed tokens at oracle prices, computed here from the feeds and balances."""
    return await oracle_value(chain, setup.terms, setup.account.address, prices=prices)


async def reference_prices(chain: ChainClient, setup: Setup) -> list[int]:
    return await oracle_prices(chain, setup.terms, now=(await chain.latest_block()).timestamp)


async def redeem(
    chain: ChainClient, devnet: Devnet, redemptions: Sequence[tuple[Delegation, Execution]]
) -> Receipt:
    """Redeem with the daemon's key, for real (fixed gas, no estimate: a revert is mined)."""
    call = Call(to=devnet.manager, data=encode_redeem_delegations(redemptions))
    return await send_call(chain, devnet.signer_key, call, gas=REDEEM_GAS)


async def send_mode(
    chain: ChainClient,
    setup: Setup,
    legs: Sequence[SwapLeg],
    delegations: PortfolioDelegations | None = None,
) -> Receipt:
    """The daemon's real shape: one redeemDelegations with approve + swap per leg."""
    (call,) = setup.mode(delegations).calls(legs)
    return await send_call(chain, setup.devnet.signer_key, call, gas=REDEEM_GAS)


async def why(chain: ChainClient, receipt: Receipt) -> str:
    """The guard error's name, else the revert reason, of a reverted transaction.

    Read from the trace of the mined transaction itself (a replay with ``eth_call`` on the
    previous block can meet another state on anvil, whose block numbers repeat after a revert).
    """
    assert not receipt.succeeded
    trace = await chain.request(
        "debug_traceTransaction", [receipt.transaction_hash, {"tracer": "callTracer"}]
    )
    data = hex_bytes(trace.get("output") or "0x")
    return guard_error(data) or decode_revert_reason(data)


def swap_call(
    amount_in: int, path: Sequence[str], to: str, deadline: int, amount_out_min: int = 1
) -> bytes:
    return encode_call(SWAP, amount_in, amount_out_min, [to_address(t) for t in path], to, deadline)


async def deadline(chain: ChainClient) -> int:
    return deadline_from((await chain.latest_block()).timestamp, 600)


async def drain(
    chain: ChainClient,
    setup: Setup,
    delegations: PortfolioDelegations,
    token: str,
    path: Sequence[str],
) -> Receipt:
    """Approve + swap the account's whole balance of ``token`` along ``path`` at amountOutMin 1."""
    account = setup.account.address
    (balance,) = (await chain.balances(account, [token])).values()
    return await redeem(
        chain,
        setup.devnet,
        [
            (delegations.approve, Execution(token, encode_approve(setup.devnet.router, balance))),
            (
                delegations.swap,
                Execution(
                    setup.devnet.router, swap_call(balance, path, account, await deadline(chain))
                ),
            ),
        ],
    )


# --- a thief's tools --------------------------------------------------------------------------


async def from_deployer(chain: ChainClient, devnet: Devnet, to: str | None, data: bytes) -> str:
    """Send from anvil's unlocked deployer and wait; the created address for a deployment."""
    nonce = await chain.get_transaction_count(devnet.deployer)
    tx: dict[str, Any] = {"from": devnet.deployer, "data": "0x" + data.hex(), "gas": hex(8_000_000)}
    if to is not None:
        tx["to"] = to
    tx_hash = str(await chain.request("eth_sendTransaction", [tx]))
    receipt = await chain.wait_for_receipt(tx_hash, poll_interval=0.01)
    assert receipt.succeeded
    return create_address(devnet.deployer, nonce) if to is None else to


async def deploy_token(chain: ChainClient, devnet: Devnet, symbol: str) -> str:
    """A fresh DevnetToken (18 decimals, open mint): the thief's worthless token."""
    code = load_artifacts().devnet_token + abi_encode(
        ["string", "string", "uint8"], [symbol, symbol, 18]
    )
    return await from_deployer(chain, devnet, None, code)


async def mint(chain: ChainClient, devnet: Devnet, token: str, to: str, amount: int) -> None:
    await from_deployer(chain, devnet, token, encode_call("mint(address,uint256)", to, amount))


async def add_liquidity(
    chain: ChainClient, devnet: Devnet, token_a: str, amount_a: int, token_b: str, amount_b: int
) -> None:
    """The thief's own pool on the real factory (created by the router if it does not exist)."""
    for token, amount in ((token_a, amount_a), (token_b, amount_b)):
        await from_deployer(chain, devnet, token, encode_approve(devnet.router, amount))
    await from_deployer(
        chain,
        devnet,
        devnet.router,
        encode_call(
            "addLiquidity(address,address,uint256,uint256,uint256,uint256,address,uint256)",
            token_a,
            token_b,
            amount_a,
            amount_b,
            0,
            0,
            devnet.deployer,
            2**64,
        ),
    )


async def thief_trade(
    chain: ChainClient, devnet: Devnet, symbol_in: str, symbol_out: str, amount_in: int
) -> int:
    """The thief swaps on the real pool from their own wallet; what they received."""
    thief = THIEF_ADDRESS
    await set_eth_balance(chain, thief, 10**20)
    token_in, token_out = devnet.token(symbol_in), devnet.token(symbol_out)
    held = (await chain.balances(thief, [token_in.address]))[token_in.address]
    if held < amount_in:
        await fund(chain, devnet, thief, {symbol_in: amount_in - held})
    before = (await chain.balances(thief, [token_out.address]))[token_out.address]
    leg = SwapLeg(
        token_in=token_in.address,
        token_out=token_out.address,
        amount_in=amount_in,
        amount_out_min=1,
        path=(token_in.address, token_out.address),
        deadline=await deadline(chain),
    )
    for call in WalletMode(router=devnet.router, signer=thief).calls([leg]):
        assert (await send_call(chain, THIEF, call)).succeeded
    return (await chain.balances(thief, [token_out.address]))[token_out.address] - before


async def quoted_leg(
    chain: ChainClient,
    devnet: Devnet,
    symbol_in: str,
    symbol_out: str,
    amount_in: int,
    slippage: Decimal = Decimal("0.01"),
) -> SwapLeg:
    """A leg as the daemon builds it: fresh quote, route via USDC if needed, 1 % slippage."""
    uniswap = UniswapV2(chain, devnet.router, devnet.quote.address)
    token_in, token_out = devnet.token(symbol_in).address, devnet.token(symbol_out).address
    quote = await uniswap.quote(token_in, token_out, amount_in)
    return SwapLeg(
        token_in=token_in,
        token_out=token_out,
        amount_in=amount_in,
        amount_out_min=quote.amount_out_min(slippage),
        path=quote.path,
        deadline=await deadline(chain),
    )


async def recorded_loss(chain: ChainClient, setup: Setup) -> int:
    return await period_loss(
        chain,
        setup.devnet.guard,
        manager=setup.devnet.manager,
        delegator=setup.account.address,
        terms=setup.terms,
    )


# --- legitimate use ---------------------------------------------------------------------------


async def test_legitimate_rebalance_within_the_bound_succeeds(
    chain: ChainClient, setup: Setup
) -> None:
    with trio.fail_after(20):
        prices = await reference_prices(chain, setup)
        before = await value(chain, setup, prices)
        assert usd(149_000) < before < usd(151_000)
        on_chain = await chain.call(
            setup.devnet.guard,
            encode_call("value(bytes,address)", setup.terms.encode(), setup.account.address),
        )
        assert int.from_bytes(on_chain, "big") == before

        leg = await quoted_leg(chain, setup.devnet, "USDC", "WETH", 5_000 * 10**6)
        receipt = await send_mode(chain, setup, [leg])
        assert receipt.succeeded
        loss = before - await value(chain, setup, prices)
        # 0.3 % LP fee and a little impact on $5 000: about $16, far inside the $750 bound.
        assert usd(10) < loss < usd(30)
        assert await recorded_loss(chain, setup) == loss


async def test_two_legs_in_one_redemption_are_accounted_once(
    chain: ChainClient, setup: Setup
) -> None:
    with trio.fail_after(20):
        prices = await reference_prices(chain, setup)
        before = await value(chain, setup, prices)
        legs = [
            await quoted_leg(chain, setup.devnet, "USDC", "WETH", 5_000 * 10**6),
            await quoted_leg(chain, setup.devnet, "WBTC", "USDC", 5 * 10**6),
        ]
        receipt = await send_mode(chain, setup, legs)  # approve + swap + approve + swap
        assert receipt.succeeded
        loss = before - await value(chain, setup, prices)
        assert loss > 0
        # One window over both swaps: the recorded loss is the net loss, counted once.
        assert await recorded_loss(chain, setup) == loss
        slot = keccak(
            period_key(setup.devnet.manager, setup.account.address, setup.terms)
            + (0).to_bytes(32, "big")
        )
        word = int(
            await chain.request(
                "eth_getStorageAt", [setup.devnet.guard, "0x" + slot.hex(), "latest"]
            ),
            16,
        )
        block = await chain.get_block(receipt.block_number)
        assert word & (2**64 - 1) == block.timestamp // PERIOD
        assert word >> 64 == loss


HOOK_ARGUMENTS = "(bytes,bytes,bytes32,bytes,bytes32,address,address)"
HOOKS = {
    function_selector(f"{name}{HOOK_ARGUMENTS}"): name
    for name in ("beforeAllHook", "beforeHook", "afterHook", "afterAllHook")
}


async def test_manager_calls_the_hooks_in_the_order_the_guard_relies_on(
    chain: ChainClient, setup: Setup
) -> None:
    """On the real DelegationManager: every beforeAllHook, then per entry beforeHook → execution →
    afterHook, then every afterAllHook; so one window spans all executions of a redemption."""
    with trio.fail_after(20):
        legs = [
            await quoted_leg(chain, setup.devnet, "USDC", "WETH", 1_000 * 10**6),
            await quoted_leg(chain, setup.devnet, "USDC", "WBTC", 1_000 * 10**6),
        ]
        receipt = await send_mode(chain, setup, legs)
        assert receipt.succeeded
        trace = await chain.request(
            "debug_traceTransaction", [receipt.transaction_hash, {"tracer": "callTracer"}]
        )
        order = []
        for call in trace["calls"]:
            target = to_address(call["to"])
            if target == setup.devnet.guard:
                order.append(HOOKS[hex_bytes(call["input"])[:4]])
            elif target == setup.account.address and call["input"].startswith("0xd691c964"):
                order.append("execute")  # executeFromExecutor(bytes32,bytes)
        assert order == [
            "beforeAllHook",
            "beforeAllHook",
            "execute",  # approve (no guard on the approve delegation)
            "beforeHook",
            "execute",  # swap
            "afterHook",
            "execute",
            "beforeHook",
            "execute",
            "afterHook",
            "afterAllHook",
            "afterAllHook",
        ]


async def test_two_legs_each_within_the_bound_are_bounded_together(
    chain: ChainClient, setup: Setup
) -> None:
    with trio.fail_after(30):
        prices = await reference_prices(chain, setup)
        before = await value(chain, setup, prices)
        bound = setup.terms.max_loss(before)
        # Each leg alone loses ~$575 (fee + impact in a $9M pool): within the ~$750 bound.
        legs = [
            await quoted_leg(chain, setup.devnet, "USDC", "WETH", 60_000 * 10**6),
            await quoted_leg(chain, setup.devnet, "WBTC", "USDC", 10**8),
        ]
        for leg in legs:
            snapshot = await evm_snapshot(chain)
            assert (await send_mode(chain, setup, [leg])).succeeded
            assert 0 < before - await value(chain, setup, prices) <= bound
            await evm_revert(chain, snapshot)
        receipt = await send_mode(chain, setup, legs)
        assert await why(chain, receipt) == "LossAboveBound"
        assert await value(chain, setup, prices) == before


# --- attacks ----------------------------------------------------------------------------------


async def test_worthless_token_drain_reverts(chain: ChainClient, setup: Setup) -> None:
    with trio.fail_after(30):
        devnet, usdc = setup.devnet, setup.token("USDC")
        worthless = await deploy_token(chain, devnet, "X")
        await mint(chain, devnet, worthless, devnet.deployer, 10**30)
        await fund(chain, devnet, devnet.deployer, {"USDC": 1_000})  # 0.001 USDC of dust
        await add_liquidity(chain, devnet, usdc, 1_000, worthless, 10**30)
        prices = await reference_prices(chain, setup)
        before = await value(chain, setup, prices)

        receipt = await drain(chain, setup, setup.guarded, usdc, [usdc, worthless])
        assert await why(chain, receipt) == "TokenNotAllowed"
        assert await value(chain, setup, prices) == before

        # The same redemption under the unguarded delegations: all 60 000 USDC into the pool.
        receipt = await drain(chain, setup, setup.unguarded, usdc, [usdc, worthless])
        assert receipt.succeeded
        assert before - await value(chain, setup, prices) > usd(59_999)


async def test_drain_through_a_bad_pool_of_listed_tokens_reverts(
    chain: ChainClient, setup: Setup
) -> None:
    with trio.fail_after(30):
        devnet, weth, wbtc = setup.devnet, setup.token("WETH"), setup.token("WBTC")
        # The devnet has no WETH/WBTC pair: the thief creates one at 1 WETH : 1 000 sat ($0.60).
        await fund(chain, devnet, devnet.deployer, {"WETH": 10**18, "WBTC": 1_000})
        await add_liquidity(chain, devnet, weth, 10**18, wbtc, 1_000)
        prices = await reference_prices(chain, setup)
        before = await value(chain, setup, prices)
        receipt = await drain(chain, setup, setup.guarded, weth, [weth, wbtc])
        assert await why(chain, receipt) == "LossAboveBound"
        assert await value(chain, setup, prices) == before


async def test_sandwich_of_a_full_balance_swap_reverts(chain: ChainClient, setup: Setup) -> None:
    with trio.fail_after(30):
        devnet, usdc, weth = setup.devnet, setup.token("USDC"), setup.token("WETH")
        prices = await reference_prices(chain, setup)
        before = await value(chain, setup, prices)
        snapshot = await evm_snapshot(chain)
        for delegations in (setup.guarded, setup.unguarded):
            # Front-run: buy WETH for $2M, about +50 % on the pool's WETH price.
            bought = await thief_trade(chain, devnet, "USDC", "WETH", 2_000_000 * 10**6)
            receipt = await drain(chain, setup, delegations, usdc, [usdc, weth])
            await thief_trade(chain, devnet, "WETH", "USDC", bought)  # back-run
            loss = before - await value(chain, setup, prices)
            if delegations is setup.guarded:
                assert await why(chain, receipt) == "LossAboveBound"
                assert loss == 0
                await evm_revert(chain, snapshot)
            else:  # without the guard the account loses ~$20 000 (over 25 × the bound)
                assert receipt.succeeded
                assert loss > 25 * setup.terms.max_loss(before)


async def test_any_sandwich_loses_at_most_the_bound(chain: ChainClient, setup: Setup) -> None:
    with trio.fail_after(40):
        devnet, usdc, weth = setup.devnet, setup.token("USDC"), setup.token("WETH")
        prices = await reference_prices(chain, setup)
        before = await value(chain, setup, prices)
        bound = setup.terms.max_loss(before)
        outcomes = []
        for front_run in (0, 5_000, 20_000, 100_000, 1_000_000):
            snapshot = await evm_snapshot(chain)
            bought = (
                await thief_trade(chain, devnet, "USDC", "WETH", front_run * 10**6)
                if front_run
                else 0
            )
            receipt = await drain(chain, setup, setup.guarded, usdc, [usdc, weth])
            if bought:
                await thief_trade(chain, devnet, "WETH", "USDC", bought)
            loss = before - await value(chain, setup, prices)
            if receipt.succeeded:
                assert loss <= bound
            else:
                assert await why(chain, receipt) == "LossAboveBound"
                assert loss == 0
            outcomes.append(receipt.succeeded)
            await evm_revert(chain, snapshot)
        # Small sandwiches pass within the bound, larger ones revert.
        assert outcomes[0]
        assert not outcomes[-1]


async def test_token_outside_the_set_cannot_be_swapped(chain: ChainClient, devnet: Devnet) -> None:
    with trio.fail_after(20):
        await refresh_feeds(chain, devnet)
        setup = await make_setup(chain, devnet, devnet_terms(devnet, ("USDC", "WETH")))
        leg = await quoted_leg(chain, devnet, "USDC", "WBTC", 1_000 * 10**6)
        assert await why(chain, await send_mode(chain, setup, [leg])) == "TokenNotAllowed"
        leg = await quoted_leg(chain, devnet, "USDC", "WETH", 1_000 * 10**6)
        assert (await send_mode(chain, setup, [leg])).succeeded


async def test_standing_allowance_of_an_unlisted_token_is_not_swappable(
    chain: ChainClient, setup: Setup
) -> None:
    with trio.fail_after(30):
        devnet, usdc, account = setup.devnet, setup.token("USDC"), setup.account.address
        other = await deploy_token(chain, devnet, "Y")
        await mint(chain, devnet, other, account, 10**24)
        # The owner once approved the router for Y on their own (outside driftd).
        await chain.request("anvil_impersonateAccount", [account])
        await set_eth_balance(chain, account, 10**18)
        tx = {
            "from": account,
            "to": other,
            "data": "0x" + encode_approve(devnet.router, 2**256 - 1).hex(),
        }
        approved = await chain.wait_for_receipt(
            str(await chain.request("eth_sendTransaction", [tx])), poll_interval=0.01
        )
        assert approved.succeeded
        await chain.request("anvil_stopImpersonatingAccount", [account])
        await fund(chain, devnet, devnet.deployer, {"USDC": 1_000})
        await mint(chain, devnet, other, devnet.deployer, 10**24)
        await add_liquidity(chain, devnet, other, 10**24, usdc, 1_000)

        swap = swap_call(10**24, [other, usdc], account, await deadline(chain))
        receipt = await redeem(
            chain, devnet, [(setup.guarded.swap, Execution(devnet.router, swap))]
        )
        assert await why(chain, receipt) == "TokenNotAllowed"
        assert (await chain.balances(account, [other]))[other] == 10**24
        # Valuing only the listed tokens would not see this loss: unguarded, Y is gone.
        receipt = await redeem(
            chain, devnet, [(setup.unguarded.swap, Execution(devnet.router, swap))]
        )
        assert receipt.succeeded
        assert (await chain.balances(account, [other]))[other] == 0


async def test_multi_hop_through_an_unlisted_token_reverts(
    chain: ChainClient, setup: Setup
) -> None:
    with trio.fail_after(30):
        devnet, usdc, weth = setup.devnet, setup.token("USDC"), setup.token("WETH")
        hop = await deploy_token(chain, devnet, "H")
        await mint(chain, devnet, hop, devnet.deployer, 10**30)
        await fund(chain, devnet, devnet.deployer, {"USDC": 10**6, "WETH": 10**15})
        await add_liquidity(chain, devnet, usdc, 10**6, hop, 10**29)
        await add_liquidity(chain, devnet, hop, 10**29, weth, 10**15)
        prices = await reference_prices(chain, setup)
        before = await value(chain, setup, prices)
        receipt = await drain(chain, setup, setup.guarded, usdc, [usdc, hop, weth])
        assert await why(chain, receipt) == "TokenNotAllowed"
        assert await value(chain, setup, prices) == before


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ("recipient", "RecipientNotAllowed"),
        ("method", "MethodNotAllowed"),
        ("value", "NativeValueNotAllowed"),
        ("batch", "InvalidExecutionMode"),
    ],
)
async def test_guard_checks_the_execution_itself(
    chain: ChainClient, setup: Setup, change: str, error: str
) -> None:
    """The guard's own execution checks run in beforeAllHook, before any stock caveat's."""
    with trio.fail_after(20):
        devnet, usdc, weth = setup.devnet, setup.token("USDC"), setup.token("WETH")
        account = setup.account.address
        when = await deadline(chain)
        execution = Execution(devnet.router, swap_call(10**6, [usdc, weth], account, when))
        if change == "recipient":
            execution = Execution(
                devnet.router, swap_call(10**6, [usdc, weth], THIEF_ADDRESS, when)
            )
        elif change == "method":
            execution = Execution(
                devnet.router,
                encode_call(
                    "swapTokensForExactTokens(uint256,uint256,address[],address,uint256)",
                    1,
                    10**12,
                    [usdc, weth],
                    account,
                    when,
                ),
            )
        elif change == "value":
            execution = attrs.evolve(execution, value=1)
        redemptions = [(setup.guarded.swap, execution)]
        data = encode_redeem_delegations(redemptions)
        if change == "batch":  # the same call, but in ERC-7579 batch mode
            data = encode_call(
                "redeemDelegations(bytes[],bytes32[],bytes[])",
                *_with_mode(data, b"\x01" + b"\x00" * 31),
            )
        receipt = await send_call(
            chain, devnet.signer_key, Call(to=devnet.manager, data=data), gas=REDEEM_GAS
        )
        assert await why(chain, receipt) == error


def _with_mode(data: bytes, mode: bytes) -> list[Any]:
    contexts, modes, executions = abi_decode(["bytes[]", "bytes32[]", "bytes[]"], data[4:])
    return [list(contexts), [mode] * len(modes), list(executions)]


async def test_hooks_called_directly_cannot_close_the_managers_window(
    chain: ChainClient, setup: Setup
) -> None:
    with trio.fail_after(10):
        data = encode_call(
            "afterAllHook(bytes,bytes,bytes32,bytes,bytes32,address,address)",
            setup.terms.encode(),
            b"",
            b"\x00" * 32,
            b"",
            b"\x00" * 32,
            setup.account.address,
            THIEF_ADDRESS,
        )
        with pytest.raises(Reverted) as raised:
            await chain.call(setup.devnet.guard, data, sender=THIEF_ADDRESS)
        assert guard_error(raised.value.data) == "NoOpenWindow"


# --- hostile tokens ---------------------------------------------------------------------------

TEST_CONTRACTS = Path(__file__).resolve().parent / "contracts"
SWAP_FOT = (
    "swapExactTokensForTokensSupportingFeeOnTransferTokens"
    "(uint256,uint256,address[],address,uint256)"
)
REDEEM = "redeemDelegations(bytes[],bytes32[],bytes[])"
FOT_FEE_BPS = 500
REENTRIES: Final = ("nested redemption", "direct hook call")
GUARD_MUTANTS: Final = {
    # beforeAllHook snapshots on every call, so a nested redemption re-bases the open window.
    "GuardWithoutDepth": (
        "if (depth == 0) _snapshot(terms, count, base, delegator);",
        "_snapshot(terms, count, base, delegator);",
    ),
    # Windows keyed without the caller, so anyone's direct hook call deepens the manager's window.
    "GuardWithoutCallerKey": (
        "return keccak256(abi.encode(manager, delegator, keccak256(terms)));",
        "return keccak256(abi.encode(address(0), delegator, keccak256(terms)));",
    ),
}
"""Each of the guard's re-entrancy protections, removed from the real source (which must still
read as quoted): the re-entrant-token attacks must steal from these, or they test nothing."""


@pytest.fixture(scope="session")
def attack_code() -> dict[str, bytes]:
    """Creation code of tests/contracts/*.sol and of :data:`GUARD_MUTANTS`, compiled at test time
    by :mod:`daemon.solidity`'s solc-js runner (the pinned compiler, the guard's settings,
    imports from node_modules): no bytecode is committed."""
    daemon_sources = contract_sources()
    sources = {
        **contract_sources(TEST_CONTRACTS),
        "IAggregatorV3.sol": daemon_sources["IAggregatorV3.sol"],
    }
    for name, (protection, removed) in GUARD_MUTANTS.items():
        guard = daemon_sources["DriftGuardEnforcer.sol"]
        assert guard.count(protection) == 1, f"{name}: the guard no longer reads {protection!r}"
        sources[f"{name}.sol"] = guard.replace(protection, removed).replace(
            "contract DriftGuardEnforcer {", f"contract {name} {{"
        )
    compiled = _run_solc(project_root(), sources)
    assert str(compiled["solc"]).startswith(SOLC_VERSION)
    return {name: hex_bytes(code) for name, code in compiled["contracts"].items()}


async def deploy(
    chain: ChainClient, devnet: Devnet, code: bytes, types: Sequence[str], args: Sequence[Any]
) -> str:
    return await from_deployer(chain, devnet, None, code + abi_encode(list(types), list(args)))


async def listed(
    chain: ChainClient, devnet: Devnet, terms: GuardTerms, token: str, usd_price: int
) -> GuardTerms:
    """``terms`` with ``token`` (18 decimals) added, valued by a new mock feed at ``usd_price``."""
    feed = await deploy(
        chain,
        devnet,
        load_artifacts().devnet_aggregator,
        ["uint8", "int256", "string"],
        [FEED_DECIMALS, feed_answer(usd_price), "test token / USD"],
    )
    return attrs.evolve(terms, tokens=(*terms.tokens, GuardToken(token, feed, 18, FEED_DECIMALS)))


async def token_balance(chain: ChainClient, token: str, holder: str) -> int:
    return (await chain.balances(holder, [token]))[token]


def frames(call: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """A callTracer trace's frames in execution order."""
    yield call
    for inner in call.get("calls", ()):
        yield from frames(inner)


async def test_fee_on_transfer_token_fee_is_a_bounded_loss(
    chain: ChainClient, devnet: Devnet, attack_code: dict[str, bytes]
) -> None:
    """A listed token that takes 5 % of every transfer and pays it to the thief.

    The guard accounts by balances before and after, so the fee the account pays is a measured
    loss, whatever the router believes it swapped: a small sale through the fee-on-transfer
    router method passes with the fee counted (and recorded against the period), a full-balance
    sale whose fee alone is over the bound reverts. A guard that valued the swap's amounts
    instead (amountIn at the pool, the router's computed output) would not see the fee; the same
    sale under the unguarded delegations shows what it is worth to the thief.

    ``delegation build`` allows only ``swapExactTokensForTokens``, with which a fee-on-transfer
    token cannot be sold (its pair sees less than the router computed: ``UniswapV2: K``), only
    bought; the guard also accepts the fee-on-transfer variant, so the owner here signs a swap
    delegation allowing both (the widest the guard accepts). Buying the token through the
    daemon's own delegation is bounded the same way (the last part).
    """
    with trio.fail_after(60):
        await refresh_feeds(chain, devnet)
        router, usdc = devnet.router, devnet.token("USDC").address
        account = devnet.accounts[0].address
        fot = await deploy(
            chain,
            devnet,
            attack_code["FeeOnTransferToken"],
            ["string", "string", "uint256", "address"],
            ["Fee on transfer", "FOT", FOT_FEE_BPS, THIEF_ADDRESS],
        )
        terms = await listed(chain, devnet, devnet_terms(devnet), fot, 2)
        # A $4M FOT/USDC pool at the feed's $2 (its pair receives 95 % of the deposit).
        deposit = 10**24 * 10_000 // (10_000 - FOT_FEE_BPS) + 1
        await mint(chain, devnet, fot, devnet.deployer, deposit)
        await fund(chain, devnet, devnet.deployer, {"USDC": 2 * 10**12})
        await add_liquidity(chain, devnet, fot, deposit, usdc, 2 * 10**12)
        await mint(chain, devnet, fot, account, 10_000 * 10**18)  # $20 000 of FOT
        methods = [function_selector(SWAP), function_selector(SWAP_FOT)]
        setup = await make_setup(chain, devnet, terms, tokens=[fot], swap_methods=methods)
        prices = await reference_prices(chain, setup)
        before = await value(chain, setup, prices)
        bound = terms.max_loss(before)
        fot_price = prices[-1] * 10**18 // 10**FEED_DECIMALS  # USD (18 decimals) per whole FOT

        async def sell(delegations: PortfolioDelegations, amount: int, out_min: int) -> Receipt:
            swap = encode_call(
                SWAP_FOT, amount, out_min, [fot, usdc], account, await deadline(chain)
            )
            return await redeem(
                chain,
                devnet,
                [
                    (delegations.approve, Execution(fot, encode_approve(router, amount))),
                    (delegations.swap, Execution(router, swap)),
                ],
            )

        # (ii) first, from the same state under both delegations: the thief sells all 10 000 FOT.
        fee = 10_000 * 10**18 * FOT_FEE_BPS // 10_000
        assert fee * fot_price // 10**18 > bound  # 500 FOT = $1 000 of fee alone, bound ~$850
        thief_before = await token_balance(chain, fot, THIEF_ADDRESS)
        snapshot = await evm_snapshot(chain)
        receipt = await sell(setup.guarded, 10_000 * 10**18, 1)
        assert await why(chain, receipt) == "LossAboveBound"
        assert await value(chain, setup, prices) == before
        assert await token_balance(chain, fot, THIEF_ADDRESS) == thief_before
        assert (await sell(setup.unguarded, 10_000 * 10**18, 1)).succeeded
        assert await token_balance(chain, fot, THIEF_ADDRESS) - thief_before == fee
        assert before - await value(chain, setup, prices) > fee * fot_price // 10**18 > bound
        await evm_revert(chain, snapshot)

        # (i) The legitimate small sale, 1 000 FOT at 1 % slippage: the 50 FOT fee ($100) plus
        # the pool's 0.3 % and impact (~$8), inside the bound and counted against the period.
        amount = 1_000 * 10**18
        received = amount * (10_000 - FOT_FEE_BPS) // 10_000
        quoted = await chain.call(
            router, encode_call("getAmountsOut(uint256,address[])", received, [fot, usdc])
        )
        out_min = abi_decode(["uint256[]"], quoted)[0][-1] * 99 // 100
        assert (await sell(setup.guarded, amount, out_min)).succeeded
        loss = before - await value(chain, setup, prices)
        fee_value = (amount - received) * fot_price // 10**18
        assert await token_balance(chain, fot, THIEF_ADDRESS) - thief_before == amount - received
        assert fee_value == usd(100)
        assert fee_value < loss < fee_value + usd(10)
        assert loss <= bound
        assert await recorded_loss(chain, setup) == loss

        # Buying FOT through the daemon's own swap delegation (swapExactTokensForTokens only):
        # the account receives 95 % of what the pool pays out, so a full-balance purchase (~$62 000
        # of USDC) pays the thief ~$3 000 of fee, over the bound by itself.
        setup = await make_setup(chain, devnet, terms, tokens=[fot], salt=8)
        before = await value(chain, setup, prices)
        bound = terms.max_loss(before)
        thief_before = await token_balance(chain, fot, THIEF_ADDRESS)
        receipt = await drain(chain, setup, setup.guarded, usdc, [usdc, fot])
        assert await why(chain, receipt) == "LossAboveBound"
        assert await value(chain, setup, prices) == before
        assert (await drain(chain, setup, setup.unguarded, usdc, [usdc, fot])).succeeded
        fee_value = (await token_balance(chain, fot, THIEF_ADDRESS) - thief_before) * fot_price
        assert before - await value(chain, setup, prices) > fee_value // 10**18 > bound


@pytest.mark.parametrize(("reentry", "mutant"), list(zip(REENTRIES, GUARD_MUTANTS, strict=True)))
async def test_reentrant_token_cannot_escape_the_bound(
    chain: ChainClient, devnet: Devnet, attack_code: dict[str, bytes], reentry: str, mutant: str
) -> None:
    """A listed token that calls back mid-swap, against the guard's one-window-per-redemption.

    The thief drains the account's 10 WETH (~$30 000) into their own WETH/RTK pool, where they
    buy less than 1 RTK ($1); RTK is listed (the owner holds some) and its transfer out of the
    pool, inside the swap, after the account's WETH has left, calls back:

    - ``nested redemption``: into the DelegationManager's ``redeemDelegations``, redeeming the same
      swap delegation again (the stolen key re-delegates it to the token, which then may redeem)
      for a harmless 1 USDC swap. It tries to re-base the guard: a nested redemption that took a
      fresh snapshot would value the account after the WETH left, and the outer redemption's
      check would then see no loss. The guard only deepens the open window (``depth``), so the
      nested redemption passes and the outer one's close sees the whole $30 000: it reverts.
    - ``direct hook call``: into the guard's ``beforeAllHook`` itself, for the account and the
      same terms, to deepen the manager's window so that its ``afterAllHook`` no longer closes it
      (and never checks). The guard keys windows by the caller, so the token only opens a window
      of its own: the manager's window still closes, and reverts.

    Each attack is also run against the guard with that one protection removed
    (:data:`GUARD_MUTANTS`), and with the unguarded delegations: both steal the $30 000, so the
    revert is the protection's doing, not the attack failing.
    """
    with trio.fail_after(60):
        await refresh_feeds(chain, devnet)
        router, manager = devnet.router, devnet.manager
        weth, usdc = devnet.token("WETH").address, devnet.token("USDC").address
        account = devnet.accounts[0].address
        rtk = await deploy(
            chain,
            devnet,
            attack_code["ReentrantToken"],
            ["string", "string"],
            ["Re-entrant", "RTK"],
        )
        terms = await listed(chain, devnet, devnet_terms(devnet), rtk, 1)
        await mint(chain, devnet, rtk, account, 1_000 * 10**18)
        # The thief's pool: 0.001 WETH : 1 RTK, where 10 WETH buy less than 1 RTK.
        await fund(chain, devnet, devnet.deployer, {"WETH": 10**15})
        await mint(chain, devnet, rtk, devnet.deployer, 10**18)
        await add_liquidity(chain, devnet, weth, 10**15, rtk, 10**18)
        mutant_guard = await deploy(chain, devnet, attack_code[mutant], [], [])
        guarded = await make_setup(chain, devnet, terms)
        weakened = await make_setup(chain, devnet, terms, guard=mutant_guard)
        prices = await reference_prices(chain, guarded)
        before = await value(chain, guarded, prices)
        bound = terms.max_loss(before)
        domain = DelegationDomain(chain_id=devnet.chain_id, manager=manager)
        weth_balance = await token_balance(chain, weth, account)

        async def attack(delegations: PortfolioDelegations, guard: str) -> tuple[Receipt, str]:
            """Arm RTK's callback, then redeem: approve WETH and 1 USDC, swap all WETH to RTK."""
            when = await deadline(chain)
            nested = Execution(router, swap_call(10**6, [usdc, weth], account, when))
            if reentry == "nested redemption":
                leaf = Delegation(
                    delegate=rtk,
                    delegator=devnet.signer,
                    authority=delegations.swap.struct_hash(),
                    caveats=(),
                    salt=1,
                )
                leaf = sign_delegation(leaf, domain, devnet.signer_key)
                target = manager
                callback = encode_call(
                    REDEEM,
                    [permission_context([leaf, delegations.swap])],
                    [SINGLE_DEFAULT_MODE],
                    [nested.encode_single()],
                )
            else:
                target = guard
                callback = encode_call(
                    f"beforeAllHook{HOOK_ARGUMENTS}",
                    terms.encode(),
                    b"",
                    SINGLE_DEFAULT_MODE,
                    nested.encode_single(),
                    b"\x00" * 32,
                    account,
                    THIEF_ADDRESS,
                )
            await from_deployer(
                chain, devnet, rtk, encode_call("arm(address,bytes)", target, callback)
            )
            swap = swap_call(weth_balance, [weth, rtk], account, when)
            receipt = await redeem(
                chain,
                devnet,
                [
                    (delegations.approve, Execution(weth, encode_approve(router, weth_balance))),
                    (delegations.approve, Execution(usdc, encode_approve(router, 10**6))),
                    (delegations.swap, Execution(router, swap)),
                ],
            )
            return receipt, target

        snapshot = await evm_snapshot(chain)
        receipt, target = await attack(guarded.guarded, devnet.guard)
        assert await why(chain, receipt) == "LossAboveBound"
        assert await value(chain, guarded, prices) == before
        # The re-entry did run, and succeeded: it is the outer redemption's close that reverts.
        trace = await chain.request(
            "debug_traceTransaction", [receipt.transaction_hash, {"tracer": "callTracer"}]
        )
        calls = list(frames(trace))
        (callback,) = [
            frame
            for frame in calls
            if to_address(frame["from"]) == rtk and to_address(frame["to"]) == target
        ]
        assert "error" not in callback
        hooks = [
            (HOOKS[hex_bytes(frame["input"])[:4]], to_address(frame["from"]), "error" in frame)
            for frame in calls
            if to_address(frame["to"]) == devnet.guard
        ]
        inner = (
            [
                ("beforeAllHook", manager, False),
                ("beforeHook", manager, False),
                ("afterHook", manager, False),
                ("afterAllHook", manager, False),
            ]
            if reentry == "nested redemption"
            else [("beforeAllHook", rtk, False)]
        )
        assert hooks == [
            ("beforeAllHook", manager, False),
            ("beforeHook", manager, False),
            *inner,
            ("afterHook", manager, False),
            ("afterAllHook", manager, True),
        ]
        await evm_revert(chain, snapshot)

        for delegations, guard in (
            (weakened.guarded, mutant_guard),
            (guarded.unguarded, devnet.guard),
        ):
            snapshot = await evm_snapshot(chain)
            receipt, _ = await attack(delegations, guard)
            assert receipt.succeeded
            assert before - await value(chain, guarded, prices) > 25 * bound
            await evm_revert(chain, snapshot)


# --- oracles ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("symbol", "usd_price", "age", "error"),
    [
        ("WBTC", 60_000, MAX_STALENESS + 60, "StalePrice"),  # a feed the swap does not touch
        ("USDC", 1, -3_600, "StalePrice"),  # updatedAt in the future
        ("WETH", 0, None, "InvalidPrice"),
        ("USDC", -1, None, "InvalidPrice"),
    ],
)
async def test_bad_oracle_answers_revert(
    chain: ChainClient, setup: Setup, symbol: str, usd_price: int, age: int | None, error: str
) -> None:
    with trio.fail_after(20):
        devnet = setup.devnet
        now = (await chain.latest_block()).timestamp
        updated_at = None if age is None else now - age
        await set_feed_price(chain, devnet, symbol, usd_price, updated_at=updated_at)
        leg = await quoted_leg(chain, devnet, "USDC", "WETH", 1_000 * 10**6)
        before = await chain.balances(setup.account.address, setup.terms.token_addresses)
        assert await why(chain, await send_mode(chain, setup, [leg])) == error
        assert await chain.balances(setup.account.address, setup.terms.token_addresses) == before
        with pytest.raises(OracleError, match=error):
            await reference_prices(chain, setup)


async def test_many_small_redemptions_stop_at_the_period_cap(
    chain: ChainClient, devnet: Devnet
) -> None:
    with trio.fail_after(40):
        period = 600
        terms = devnet_terms(devnet, period=period, period_cap=usd(300))
        setup = await make_setup(chain, devnet, terms)
        # Start at the beginning of a period, so that the redemptions below share one.
        now = (await chain.latest_block()).timestamp
        await evm_increase_time(chain, period - now % period + 1)
        await evm_mine(chain)
        await refresh_feeds(chain, devnet)
        prices = await reference_prices(chain, setup)

        losses = []
        for _ in range(10):
            before = await value(chain, setup, prices)
            leg = await quoted_leg(chain, devnet, "USDC", "WETH", 20_000 * 10**6)
            receipt = await send_mode(chain, setup, [leg])
            if not receipt.succeeded:
                assert await why(chain, receipt) == "PeriodCapExceeded"
                assert await value(chain, setup, prices) == before
                break
            loss = before - await value(chain, setup, prices)
            assert 0 < loss <= terms.max_loss(before)  # each one within the per-redemption bound
            losses.append(loss)
        assert len(losses) >= 2
        assert sum(losses) <= terms.period_cap
        assert await recorded_loss(chain, setup) == sum(losses)

        # The next period has its whole cap again.
        await evm_increase_time(chain, period)
        await evm_mine(chain)
        await refresh_feeds(chain, devnet)
        assert await recorded_loss(chain, setup) == 0
        leg = await quoted_leg(chain, devnet, "USDC", "WETH", 20_000 * 10**6)
        assert (await send_mode(chain, setup, [leg])).succeeded


# --- gas --------------------------------------------------------------------------------------


async def test_gas_of_guarded_and_unguarded_rebalances(
    chain: ChainClient, setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    """1-, 2- and 3-leg rebalances in the daemon's shape (approve + swap per leg, one tx).

    Each figure is the second of two rebalances from the same state, in later blocks, with pools
    already traded in (as on mainnet: the pairs' price accumulators are not written for the first
    time). ``unguarded``: approve + swap per leg under the delegations from before the guard (the
    stock pins only: no guard, expiry, ValueLte(0) or nonce), the baseline. ``guarded``: approve +
    swap per leg under the delegations ``driftd delegation build`` makes (the pins, expiry,
    ValueLte(0) and nonce on both, the guard on the swap); ``first``: the same, the first guarded
    redemption ever for the delegation, measured alone (its period-loss slot goes from zero to
    non-zero, once); ``standing``: the guarded swaps alone, after a one-time unlimited approve of
    the router (the daemon's shape: standing router allowances).
    """
    with trio.fail_after(40):
        devnet = setup.devnet
        await evm_increase_time(chain, 12)
        await thief_trade(chain, devnet, "USDC", "WETH", 10**6)
        await thief_trade(chain, devnet, "USDC", "WBTC", 10**6)
        plans = [
            ("USDC", "WETH", 2_000 * 10**6),
            ("USDC", "WBTC", 2_000 * 10**6),
            ("WETH", "WBTC", 5 * 10**17),  # routed WETH → USDC → WBTC
        ]

        async def measure(count: int, shape: str) -> int:
            snapshot = await evm_snapshot(chain)
            if shape == "standing":
                for symbol in ("USDC", "WETH"):
                    approve = encode_approve(devnet.router, 2**256 - 1)
                    execution = Execution(setup.token(symbol), approve)
                    assert (
                        await redeem(chain, devnet, [(setup.guarded.approve, execution)])
                    ).succeeded
            for _ in range(1 if shape == "first" else 2):
                await evm_increase_time(chain, 12)
                legs = [await quoted_leg(chain, devnet, a, b, n) for a, b, n in plans[:count]]
                if shape == "standing":
                    account, when = setup.account.address, await deadline(chain)
                    swaps = [
                        (
                            setup.guarded.swap,
                            Execution(
                                devnet.router,
                                swap_call(
                                    leg.amount_in, leg.path, account, when, leg.amount_out_min
                                ),
                            ),
                        )
                        for leg in legs
                    ]
                    receipt = await redeem(chain, devnet, swaps)
                else:
                    delegations = setup.unguarded if shape == "unguarded" else setup.guarded
                    receipt = await send_mode(chain, setup, legs, delegations)
                assert receipt.succeeded
            await evm_revert(chain, snapshot)
            return receipt.gas_used

        shapes = ("unguarded", "guarded", "first", "standing")
        figures = {
            count: {shape: await measure(count, shape) for shape in shapes} for count in (1, 2, 3)
        }
        for count, row in figures.items():
            # The guard's cost: ~90 000 gas for the first guarded swap (snapshot and check of
            # three tokens and feeds), ~25 000 per further guarded swap (hooks, terms in calldata
            # and in the manager's events); the expiry and nonce caveats, ~22 000 per caveat per
            # entry, on both entries of a leg, and ValueLte(0) on the approve entry. The swap
            # entry leaves out the method, recipient and ValueLte pins the guard checks itself.
            guard_cost = 100_000 + 25_000 * (count - 1) + 125_000 * count
            assert row["guarded"] - row["unguarded"] < guard_cost, row
            # A standing router allowance drops the approve entry, caveats and all (~160 000 per
            # leg): the daemon's guarded rebalance costs less than the unguarded baseline.
            assert row["guarded"] - row["standing"] > 150_000 * count, row
            assert row["standing"] < row["unguarded"], row
        # The backtester's gas model (fitted to the daemon's shape, standing allowances)
        # predicts these rebalances within 5 %; the third leg is routed through USDC.
        model = GasModel()
        errors = {
            count: model.rebalance(count) / row["standing"] - 1 for count, row in figures.items()
        }
        assert all(abs(error) < 0.05 for error in errors.values()), errors
        with capsys.disabled():
            sys.stdout.write("\nredeemDelegations gas, " + ", ".join(shapes) + ":\n")
            for count, row in figures.items():
                cells = "  ".join(f"{shape} {row[shape]:>7,}" for shape in shapes)
                model_cell = f"model {model.rebalance(count):>7,} ({errors[count]:+.1%})"
                sys.stdout.write(f"  {count} leg(s): {cells}  {model_cell}\n")

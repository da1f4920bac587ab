"""Execution modes: the calls each mode builds, and both executed on the devnet."""

from __future__ import annotations

from decimal import Decimal

import attrs
import pytest
import trio
from eth_abi.abi import decode as abi_decode
from fixtures_chain import send_call

from daemon.abi import function_selector
from daemon.amm import deadline_from
from daemon.chain import ChainClient
from daemon.config import DelegationConfig
from daemon.delegation import (
    Delegation,
    DelegationDomain,
    build_portfolio_delegations,
    sign_delegation,
)
from daemon.devtools.devnet_deploy import fund
from daemon.devtools.devnet_records import Devnet
from daemon.txbuild import (
    MAX_ALLOWANCE,
    DelegationMode,
    ExecutionMode,
    SwapLeg,
    WalletMode,
    approvals,
)
from daemon.uniswap import APPROVE_SELECTOR, UniswapV2

ACCOUNT = "0x1111111111111111111111111111111111111111"
ROUTER = "0x3333333333333333333333333333333333333333"
USDC = "0x4444444444444444444444444444444444444444"
WETH = "0x5555555555555555555555555555555555555555"
ENFORCERS = DelegationConfig()


def leg(amount_in: int = 100, amount_out_min: int = 1) -> SwapLeg:
    return SwapLeg(
        token_in=USDC,
        token_out=WETH,
        amount_in=amount_in,
        amount_out_min=amount_out_min,
        path=(USDC, WETH),
        deadline=1_700_000_000,
    )


def signed_unit_delegations() -> list[Delegation]:
    built = build_portfolio_delegations(
        account=ACCOUNT,
        delegate="0x" + "22" * 20,
        router=ROUTER,
        tokens=[USDC, WETH],
        enforcers=ENFORCERS,
        salt=3,
    )
    return [attrs.evolve(d, signature=b"\x01" * 65) for d in built.as_list()]


def test_unbounded_legs_are_refused() -> None:
    with pytest.raises(ValueError, match="unbounded"):
        leg(amount_out_min=0)
    with pytest.raises(ValueError, match="path"):
        SwapLeg(USDC, WETH, 1, 1, (WETH, USDC), 1)


def test_delegation_mode_builds_one_redeem_with_approve_and_swap_per_leg() -> None:
    mode = DelegationMode.from_signed(
        list(reversed(signed_unit_delegations())), router=ROUTER, enforcers=ENFORCERS
    )
    assert mode.holder == ACCOUNT
    (call,) = mode.calls([leg(100), leg(200)])
    assert call.to == ENFORCERS.manager
    assert call.data[:4] == function_selector("redeemDelegations(bytes[],bytes32[],bytes[])")
    contexts, modes, executions = abi_decode(["bytes[]", "bytes32[]", "bytes[]"], call.data[4:])
    assert len(contexts) == len(modes) == len(executions) == 4
    assert set(modes) == {bytes(32)}
    targets = [execution[:20].hex() for execution in executions]
    assert targets == [USDC[2:], ROUTER[2:], USDC[2:], ROUTER[2:]]
    assert executions[0][52:56] == APPROVE_SELECTOR
    assert int.from_bytes(executions[0][20:52], "big") == 0  # no ETH value
    # the swap pays the smart account
    assert executions[1][52 + 100 : 52 + 132] == bytes(12) + bytes.fromhex(ACCOUNT[2:])


def test_a_standing_allowance_skips_the_approve_and_a_short_one_is_raised_to_the_maximum() -> None:
    # Unknown allowances: each leg approves exactly its amount (the safe default).
    assert approvals([leg(100), leg(200)], None) == [100, 200]
    # 250 covers the first leg, not the second: one standing approve before the second.
    assert approvals([leg(100), leg(200)], {USDC: 250}) == [None, MAX_ALLOWANCE]
    # After a standing approve, later legs of the token need none.
    assert approvals([leg(100), leg(200)], {}) == [MAX_ALLOWANCE, None]
    mode = DelegationMode.from_signed(signed_unit_delegations(), router=ROUTER, enforcers=ENFORCERS)
    (call,) = mode.calls([leg(100), leg(200)], {USDC.lower(): MAX_ALLOWANCE})
    _, _, executions = abi_decode(["bytes[]", "bytes32[]", "bytes[]"], call.data[4:])
    assert [execution[:20].hex() for execution in executions] == [ROUTER[2:], ROUTER[2:]]
    wallet = WalletMode(router=ROUTER, signer="0x" + "66" * 20)
    assert [c.approve for c in wallet.calls([leg(100)], {USDC: 0})] == [True, False]
    assert wallet.calls([leg(100)], {USDC: 0})[0].data[36:68] == MAX_ALLOWANCE.to_bytes(32, "big")


def test_delegation_mode_needs_both_delegations() -> None:
    with pytest.raises(ValueError, match="no swap delegation"):
        DelegationMode.from_signed(
            signed_unit_delegations()[:1], router=ROUTER, enforcers=ENFORCERS
        )


def test_wallet_mode_builds_approve_then_swap_per_leg() -> None:
    signer = "0x" + "66" * 20
    mode: ExecutionMode = WalletMode(router=ROUTER, signer=signer)
    calls = mode.calls([leg(100), leg(200)])
    assert [call.to for call in calls] == [USDC, ROUTER, USDC, ROUTER]
    assert calls[2].data[:4] == APPROVE_SELECTOR
    assert int.from_bytes(calls[2].data[36:68], "big") == 200  # exactly amount_in
    assert calls[3].data[100:132] == bytes(12) + bytes.fromhex(signer[2:])


pytestmark_chain = pytest.mark.chain


async def bounded_legs(chain: ChainClient, devnet: Devnet) -> list[SwapLeg]:
    uniswap = UniswapV2(chain, devnet.router, devnet.quote.address)
    block = await chain.latest_block()
    legs = []
    for token_in, token_out, amount in (("USDC", "WETH", 5_000 * 10**6), ("WBTC", "WETH", 10**7)):
        quote = await uniswap.quote(
            devnet.token(token_in).address, devnet.token(token_out).address, amount
        )
        legs.append(
            SwapLeg(
                token_in=quote.path[0],
                token_out=quote.path[-1],
                amount_in=amount,
                amount_out_min=quote.amount_out_min(Decimal("0.005")),
                path=quote.path,
                deadline=deadline_from(block.timestamp, 300),
            )
        )
    return legs


@pytestmark_chain
@pytest.mark.parametrize("mode_name", ["delegation", "wallet"])
async def test_both_modes_execute_two_legs(
    chain: ChainClient, devnet: Devnet, mode_name: str
) -> None:
    with trio.fail_after(20):
        mode: ExecutionMode
        if mode_name == "wallet":
            mode = WalletMode(router=devnet.router, signer=devnet.signer)
            await fund(chain, devnet, devnet.signer, {"USDC": 5_000 * 10**6, "WBTC": 10**7})
        else:
            account = devnet.accounts[1]
            domain = DelegationDomain(chain_id=devnet.chain_id, manager=devnet.manager)
            built = build_portfolio_delegations(
                account=account.address,
                delegate=devnet.signer,
                router=devnet.router,
                tokens=[token.address for token in devnet.tokens],
                enforcers=devnet.delegation_config(),
                salt=9,
            )
            mode = DelegationMode.from_signed(
                [sign_delegation(d, domain, account.owner_key) for d in built.as_list()],
                router=devnet.router,
                enforcers=devnet.delegation_config(),
            )
        legs = await bounded_legs(chain, devnet)
        tokens = [token.address for token in devnet.tokens]
        before = await chain.balances(mode.holder, tokens)
        calls = mode.calls(legs)
        assert len(calls) == (1 if mode_name == "delegation" else 4)
        for call in calls:
            assert (await send_call(chain, devnet.signer_key, call)).succeeded
        after = await chain.balances(mode.holder, tokens)
        for spent in legs:
            assert before[spent.token_in] - after[spent.token_in] == spent.amount_in
        gained = after[devnet.weth] - before[devnet.weth]
        assert gained >= sum(spent.amount_out_min for spent in legs)

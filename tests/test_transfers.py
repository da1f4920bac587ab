"""The Transfer-log balance follower on the real devnet: it always agrees with balanceOf."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
import trio
from eth_abi.abi import encode as abi_encode
from eth_account import Account
from eth_utils.crypto import keccak

from daemon.balances import BalanceBatcher
from daemon.chain import ChainClient
from daemon.chain_errors import Json, RpcTransportError
from daemon.devtools.devnet_anvil import evm_mine, evm_revert, evm_snapshot
from daemon.devtools.devnet_deploy import fund
from daemon.devtools.devnet_records import Devnet
from daemon.held_balances import HeldBalances
from daemon.latest import Latest
from daemon.transfers import TransferFollower

pytestmark = pytest.mark.chain


def follower(chain: ChainClient, devnet: Devnet, *accounts: str, **kw: object) -> TransferFollower:
    tokens = [token.address for token in devnet.tokens]
    return TransferFollower(chain, tokens, [devnet.deployer, *accounts], **kw)  # type: ignore[arg-type]


async def agrees(chain: ChainClient, tracked: TransferFollower) -> None:
    for account in tracked.accounts:
        assert tracked.balances_of(account) == await chain.balances(account, tracked.tokens)


async def test_transfers_in_and_out_over_missed_blocks(chain: ChainClient, devnet: Devnet) -> None:
    with trio.fail_after(30):
        recipient = Account.create().address
        tracked = follower(chain, devnet, recipient, max_range=2)
        await tracked.advance()  # the first advance reads everything
        assert tracked.reconciles == 1
        for amount in (5, 7, 11):  # deployer → recipient: out of one tracked account, into another
            await fund(chain, devnet, recipient, {"USDC": amount * 10**6, "WBTC": amount})
            await evm_mine(chain, 2)  # blocks without transfers, and several per advance
        await tracked.advance()
        assert tracked.reconciles == 1  # from logs alone
        assert tracked.balances_of(recipient)[devnet.token("USDC").address] == 23 * 10**6
        await agrees(chain, tracked)


async def test_a_reorg_is_noticed_and_read_afresh(chain: ChainClient, devnet: Devnet) -> None:
    with trio.fail_after(30):
        recipient = Account.create().address
        tracked = follower(chain, devnet, recipient)
        await tracked.advance()
        snapshot = await evm_snapshot(chain)
        await fund(chain, devnet, recipient, {"USDC": 100 * 10**6})
        await tracked.advance()
        await evm_revert(chain, snapshot)  # that block is gone: another one takes its height
        await fund(chain, devnet, recipient, {"USDC": 3 * 10**6})
        await tracked.advance()
        assert tracked.reconciles == 2
        assert tracked.balances_of(recipient)[devnet.token("USDC").address] == 3 * 10**6
        await agrees(chain, tracked)


async def test_a_node_behind_changes_nothing_until_the_chain_passes_it(
    chain: ChainClient, devnet: Devnet
) -> None:
    with trio.fail_after(30):
        recipient = Account.create().address
        snapshot = await evm_snapshot(chain)
        tracked = follower(chain, devnet, recipient)
        await fund(chain, devnet, recipient, {"WBTC": 9})
        await evm_mine(chain, 3)
        await tracked.advance()
        before = dict(tracked.balances)
        await evm_revert(chain, snapshot)  # a shorter chain, as a lagging node would serve
        await tracked.advance()
        assert tracked.balances == before
        await evm_mine(chain, 6)  # the chain grows past the block applied last, on another branch
        await tracked.advance()
        assert tracked.reconciles == 2
        await agrees(chain, tracked)


async def test_a_declared_rebasing_token_is_read_not_computed(
    chain: ChainClient, devnet: Devnet
) -> None:
    """A balance that changes without a Transfer event (a rebase, written here straight into
    OpenZeppelin's ``_balances`` slot): a follower that trusts the logs misses it."""
    with trio.fail_after(30):
        recipient = Account.create().address
        usdc = devnet.token("USDC").address
        trusting = follower(chain, devnet, recipient)
        declared = follower(chain, devnet, recipient, rebasing=[usdc])
        await trusting.advance()
        await declared.advance()
        slot = keccak(abi_encode(["address", "uint256"], [recipient, 0]))
        value = "0x" + (42 * 10**6).to_bytes(32, "big").hex()
        await chain.request("anvil_setStorageAt", [usdc, "0x" + slot.hex(), value])
        await evm_mine(chain)
        await trusting.advance()
        await declared.advance()
        assert trusting.balances_of(recipient)[usdc] == 0  # what logs alone say: wrong
        assert declared.balances_of(recipient)[usdc] == 42 * 10**6
        await agrees(chain, declared)
        # The periodic check catches what nobody declared, and reads that token from then on.
        assert await trusting.verify() == [usdc]
        assert usdc in trusting.rebasing
        await agrees(chain, trusting)
        await chain.request("anvil_setStorageAt", [usdc, "0x" + slot.hex(), "0x" + "00" * 32])
        await evm_mine(chain)
        await trusting.advance()
        await agrees(chain, trusting)
        assert await trusting.verify() == []


async def test_an_advance_that_fails_midway_changes_nothing(
    chain: ChainClient, devnet: Devnet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Logs are applied only once all of them are in: a node that fails on the second range
    leaves the follower where it was, and the next advance counts each transfer once."""
    with trio.fail_after(30):
        recipient = Account.create().address
        tracked = follower(chain, devnet, recipient, max_range=1)
        await tracked.advance()
        for amount in (2, 3):
            await fund(chain, devnet, recipient, {"USDC": amount * 10**6})
        before = (dict(tracked.balances), tracked.block)
        original = TransferFollower._logs
        calls = 0

        async def flaky(self: TransferFollower, start: int, end: int) -> list[Json]:
            nonlocal calls
            calls += 1
            if calls == 2:
                raise RpcTransportError("connection reset")
            return await original(self, start, end)

        monkeypatch.setattr(TransferFollower, "_logs", flaky)
        with pytest.raises(RpcTransportError):
            await tracked.advance()
        assert (tracked.balances, tracked.block) == before
        await tracked.advance()
        await agrees(chain, tracked)


async def test_held_balances_answer_a_tick_of_reads_with_one_advance(
    chain: ChainClient, devnet: Devnet
) -> None:
    """The actors' reader: an unknown account is read through the fallback and followed from
    the next rebuild; then a whole tick of reads costs one advance (3 requests), each answer
    with the block it is as of, equal to balanceOf at that block."""
    tokens = [token.address for token in devnet.tokens]
    accounts = [Account.create().address for _ in range(50)]
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            batcher = BalanceBatcher(chain)
            await nursery.start(batcher.run)
            ticks: Latest[int] = Latest()
            held = HeldBalances(chain, batcher, ticks)
            await nursery.start(held.run)
            for account in accounts:  # first sight: read through the batcher
                _, block = await held.read_with_block(account, tokens)
                assert block is not None
            while held.follower is None or len(held.follower.accounts) < len(accounts):
                await trio.sleep(0.05)
            await fund(chain, devnet, accounts[7], {"USDC": 5 * 10**6})
            ticks.publish(1)  # a new tick: its first read advances
            sent = chain.requests_sent
            answers: dict[str, tuple[Mapping[str, int], int | None]] = {}

            async def read(account: str) -> None:
                answers[account] = await held.read_with_block(account, tokens)

            async with trio.open_nursery() as reads:
                for account in accounts:
                    reads.start_soon(read, account)
            assert chain.requests_sent - sent <= 3
            (block,) = {block for _, block in answers.values()}
            assert block is not None
            assert answers[accounts[7]][0][devnet.token("USDC").address] == 5 * 10**6
            for account in (accounts[0], accounts[7]):
                assert answers[account][0] == await chain.balances(account, tokens)
            nursery.cancel_scope.cancel()

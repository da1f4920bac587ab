"""The balance batcher against the real devnet: same answers as ``ChainClient.balances``, a few
HTTP requests for many concurrent reads, and one caller's trouble stays that caller's."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence

import httpx
import pytest
import trio
from eth_account import Account

from daemon.balances import BalanceBatcher, BalanceReadError, BatcherStopped, BatchFailed
from daemon.chain import ChainClient, RetryPolicy
from daemon.chain_errors import ChainError, Json, Reverted, RpcTransportError
from daemon.devtools.devnet_records import Devnet

pytestmark = pytest.mark.chain


@contextlib.asynccontextmanager
async def running(batcher: BalanceBatcher) -> AsyncIterator[BalanceBatcher]:
    async with trio.open_nursery() as nursery:
        await nursery.start(batcher.run)
        yield batcher
        nursery.cancel_scope.cancel()


def token_addresses(devnet: Devnet) -> list[str]:
    return [token.address for token in devnet.tokens]


def some_accounts(devnet: Devnet, extra: int) -> list[str]:
    """The funded accounts (smart accounts, signer, deployer) and ``extra`` fresh addresses."""
    known = [account.address for account in devnet.accounts] + [devnet.signer, devnet.deployer]
    return known + [Account.create().address for _ in range(extra)]


async def test_results_equal_chain_balances(chain: ChainClient, devnet: Devnet) -> None:
    tokens = token_addresses(devnet)
    accounts = some_accounts(devnet, extra=2)
    with trio.fail_after(10):
        expected = {account: await chain.balances(account, tokens) for account in accounts}
        async with running(BalanceBatcher(chain)) as batcher:
            got: dict[str, dict[str, int]] = {}

            async def read(account: str) -> None:
                got[account] = await batcher.read(account, tokens)

            async with trio.open_nursery() as nursery:
                for account in accounts:
                    nursery.start_soon(read, account)
            # Lower-case input is accepted; the keys are checksummed, as chain.balances does.
            single = await batcher.read(accounts[0].lower(), [t.lower() for t in tokens[:2]])
            assert await batcher.read(accounts[0], []) == {}
            for bad in ("0x1234", accounts[0][:-1] + "g"):
                with pytest.raises(ValueError, match="not an address"):
                    await batcher.read(bad, tokens)
    assert got == expected
    assert any(value > 0 for balances in got.values() for value in balances.values())
    assert single == {token: expected[accounts[0]][token] for token in tokens[:2]}


async def test_many_concurrent_reads_cost_a_few_requests(
    chain: ChainClient, devnet: Devnet
) -> None:
    tokens = token_addresses(devnet)
    accounts = some_accounts(devnet, extra=200 - 4)
    with trio.fail_after(20):
        expected = await chain.balances(devnet.accounts[0].address, tokens)
        async with running(BalanceBatcher(chain)) as batcher:
            results: dict[str, dict[str, int]] = {}

            async def read(account: str) -> None:
                results[account] = await batcher.read(account, tokens)

            sent = chain.requests_sent
            async with trio.open_nursery() as nursery:
                for account in accounts:
                    nursery.start_soon(read, account)
            requests = chain.requests_sent - sent
    assert len(results) == 200
    # Per batch: the head's number, then every balance at that block.
    assert requests <= 10, requests
    assert requests == 2 * batcher.batches
    assert batcher.calls == 600
    assert results[devnet.accounts[0].address] == expected
    assert all(results[address] == dict.fromkeys(tokens, 0) for address in accounts[4:])


class GatedChain(ChainClient):
    """The real client, with each batch held until the test opens the gate."""

    gate: trio.Event
    in_flight: trio.Event

    async def batch_outcomes(self, calls: Sequence[tuple[str, Sequence[Json]]]) -> list[Json]:
        self.in_flight.set()
        await self.gate.wait()
        return await super().batch_outcomes(calls)


async def test_cancelled_callers_do_not_disturb_the_others(devnet: Devnet) -> None:
    tokens = token_addresses(devnet)
    accounts = some_accounts(devnet, extra=16)
    async with GatedChain(devnet.chain_config(), retry=RetryPolicy(max_retries=0)) as chain:
        chain.gate, chain.in_flight = trio.Event(), trio.Event()
        with trio.fail_after(10):
            chain.gate.set()
            expected = {account: await chain.balances(account, tokens) for account in accounts}
            chain.gate, chain.in_flight = trio.Event(), trio.Event()
            batcher = BalanceBatcher(chain, window=0.05)
            async with running(batcher):
                results: dict[str, dict[str, int]] = {}
                cancelled: list[str] = []

                async def read(account: str, scope: trio.CancelScope) -> None:
                    with scope:
                        results[account] = await batcher.read(account, tokens)
                    if scope.cancelled_caught:
                        cancelled.append(account)

                # Half of the callers give up while their batch is on the wire…
                async with trio.open_nursery() as nursery:
                    scopes = [trio.CancelScope() for _ in accounts]
                    for account, scope in zip(accounts, scopes, strict=True):
                        nursery.start_soon(read, account, scope)
                    await chain.in_flight.wait()
                    for scope in scopes[::2]:
                        scope.cancel()
                    chain.gate.set()
                assert sorted(cancelled) == sorted(accounts[::2])
                assert results == {account: expected[account] for account in accounts[1::2]}

                # …some before it is sent: they are left out of it…
                chain.in_flight = trio.Event()
                batches = batcher.batches
                async with trio.open_nursery() as nursery:
                    scopes = [trio.CancelScope() for _ in accounts]
                    for account, scope in zip(accounts, scopes, strict=True):
                        nursery.start_soon(read, account, scope)
                    await trio.sleep(0.01)  # all queued, the 50 ms window still open
                    for scope in scopes[:4]:
                        scope.cancel()
                assert batcher.batches == batches + 1
                assert batcher.abandoned == 4
                assert batcher.calls == len(accounts) * 3 + (len(accounts) - 4) * 3

                # …and the batcher still serves everyone.
                assert await batcher.read(accounts[0], tokens) == expected[accounts[0]]


async def test_a_bad_token_fails_only_its_caller(chain: ChainClient, devnet: Devnet) -> None:
    tokens = token_addresses(devnet)
    account = devnet.accounts[0].address
    not_a_contract = Account.create().address
    reverts = devnet.router  # no balanceOf and no fallback: the call reverts
    with trio.fail_after(10):
        expected = await chain.balances(account, tokens)
        # The plain client reads an address without code as a balance of 0; the batcher refuses.
        assert (await chain.balances(account, [not_a_contract]))[not_a_contract] == 0
        async with running(BalanceBatcher(chain)) as batcher:
            outcomes: dict[str, dict[str, int] | ChainError] = {}

            async def read(name: str, token_list: list[str]) -> None:
                try:
                    outcomes[name] = await batcher.read(account, token_list)
                except ChainError as error:
                    outcomes[name] = error

            sent = chain.requests_sent
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read, "good", tokens)
                nursery.start_soon(read, "reverts", [tokens[0], reverts, tokens[1]])
                nursery.start_soon(read, "no code", [not_a_contract, *tokens])
                nursery.start_soon(read, "good too", tokens[1:])
            assert chain.requests_sent == sent + 2  # the head, then one batch
    assert outcomes["good"] == expected
    assert outcomes["good too"] == {token: expected[token] for token in tokens[1:]}
    reverted = outcomes["reverts"]
    assert isinstance(reverted, BalanceReadError)
    assert (reverted.account, reverted.token) == (account.lower(), reverts)
    assert isinstance(reverted.cause, Reverted)
    no_code = outcomes["no code"]
    assert isinstance(no_code, BalanceReadError)
    assert no_code.token == not_a_contract
    assert no_code.cause is None
    assert "returned 0 bytes" in str(no_code)


async def test_batch_size_limit_splits_large_groups(chain: ChainClient, devnet: Devnet) -> None:
    tokens = token_addresses(devnet)
    accounts = some_accounts(devnet, extra=8)  # 12 reads of 3 calls
    with trio.fail_after(10):
        expected = {account: await chain.balances(account, tokens) for account in accounts}
        async with running(BalanceBatcher(chain, max_calls=10, window=0.05)) as batcher:
            results: dict[str, dict[str, int]] = {}

            async def read(account: str) -> None:
                results[account] = await batcher.read(account, tokens)

            sent = chain.requests_sent
            async with trio.open_nursery() as nursery:
                for account in accounts:
                    nursery.start_soon(read, account)
            # 3 reads (9 calls) fit in 10; a read is never split across batches.
            assert chain.requests_sent - sent == 2 * batcher.batches == 8
            assert batcher.calls == 36
            assert results == expected

            # A single read larger than the limit goes alone, whole.
            narrow = BalanceBatcher(chain, max_calls=2)
            async with running(narrow):
                assert await narrow.read(accounts[0], tokens) == expected[accounts[0]]
            assert narrow.batches == 1


class FailingTransport(httpx.AsyncBaseTransport):
    """The real HTTP transport, refusing to connect while ``failing`` is set."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.failing = False
        self.broken = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.failing:
            raise httpx.ConnectError("connection refused (test)", request=request)
        if self.broken:
            raise RuntimeError("a bug below the client (test)")
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_a_failed_batch_reaches_every_caller_and_the_batcher_goes_on(
    devnet: Devnet,
) -> None:
    tokens = token_addresses(devnet)
    accounts = some_accounts(devnet, extra=6)
    transport = FailingTransport()
    retry = RetryPolicy(max_retries=1, initial_backoff=0.01, max_backoff=0.01)
    async with ChainClient(devnet.chain_config(), retry=retry, transport=transport) as chain:
        with trio.fail_after(10):
            expected = {account: await chain.balances(account, tokens) for account in accounts}
            async with running(BalanceBatcher(chain, window=0.02)) as batcher:
                errors: dict[str, BaseException] = {}

                async def read(account: str) -> None:
                    try:
                        await batcher.read(account, tokens)
                    except ChainError as error:
                        errors[account] = error

                transport.failing = True
                sent = chain.requests_sent
                async with trio.open_nursery() as nursery:
                    for account in accounts:
                        nursery.start_soon(read, account)
                # The head's number fails first (tried twice); no balance is read.
                assert chain.requests_sent == sent + 2
                assert set(errors) == set(accounts)
                assert all(type(error) is RpcTransportError for error in errors.values())
                assert len({id(error) for error in errors.values()}) == len(accounts)
                assert len({str(error) for error in errors.values()}) == 1
                assert all(isinstance(e.__cause__, RpcTransportError) for e in errors.values())

                transport.failing = False
                assert await batcher.read(accounts[0], tokens) == expected[accounts[0]]

                # Something unexpected (not a ChainError) fails the batch, not the batcher.
                transport.broken = True
                errors.clear()
                async with trio.open_nursery() as nursery:
                    for account in accounts:
                        nursery.start_soon(read, account)
                assert set(errors) == set(accounts)
                assert all(type(error) is BatchFailed for error in errors.values())
                assert all("RuntimeError" in str(error) for error in errors.values())
                assert batcher.failed_batches == 2

                transport.broken = False
                assert await batcher.read(accounts[1], tokens) == expected[accounts[1]]


async def test_reads_after_the_batcher_stopped_fail_typed(devnet: Devnet) -> None:
    tokens = token_addresses(devnet)
    account = devnet.accounts[0].address
    async with GatedChain(devnet.chain_config(), retry=RetryPolicy(max_retries=0)) as chain:
        chain.gate, chain.in_flight = trio.Event(), trio.Event()
        batcher = BalanceBatcher(chain)
        with trio.fail_after(10):
            async with trio.open_nursery() as outer:
                batcher_scope = trio.CancelScope()

                async def run_batcher() -> None:
                    with batcher_scope:
                        await batcher.run()

                outer.start_soon(run_batcher)
                failures: list[BaseException] = []

                async def read() -> None:
                    with pytest.raises(BatcherStopped) as raised:
                        await batcher.read(account, tokens)
                    failures.append(raised.value)

                outer.start_soon(read)  # in flight when the batcher stops
                await chain.in_flight.wait()
                batcher_scope.cancel()
            assert len(failures) == 1
            with pytest.raises(BatcherStopped):
                await batcher.read(account, tokens)

"""The fault-injecting JSON-RPC proxy, against anvil: each fault as ``ChainClient`` sees it."""

from __future__ import annotations

import socket
from typing import Any

import attrs
import httpx
import pytest
import trio
from rpc_proxy import (
    DropConnection,
    Garbage,
    GarbageAfterForward,
    HangAfterForward,
    Latency,
    LoseReply,
    RateLimited,
    RpcErrorReply,
    RpcProxy,
    ServerError,
    StaleHead,
    WrongChainId,
    rpc_proxy,
)

from daemon.abi import hex_int, hex_of
from daemon.chain import ChainClient, RetryPolicy
from daemon.chain_errors import ChainIdMismatch, RpcError, RpcTimeout, RpcTransportError
from daemon.config import ChainConfig, Secret
from daemon.devtools.devnet_anvil import evm_mine, evm_set_automine, set_eth_balance
from daemon.devtools.devnet_records import Devnet, devnet_key
from daemon.signer import SignedTx, TxRequest, TxSigner

SENDER = devnet_key("rpc proxy sender")


def through(
    proxy: RpcProxy,
    devnet: Devnet,
    *,
    retries: int = 0,
    timeout: float = 5.0,
    check_chain_id: bool = True,
) -> ChainClient:
    """A client on the devnet that goes through ``proxy``."""
    config = attrs.evolve(devnet.chain_config(), rpc_url=proxy.url, request_timeout=timeout)
    retry = RetryPolicy(max_retries=retries, initial_backoff=0.01, max_backoff=0.02)
    return ChainClient(config, retry=retry, check_chain_id=check_chain_id)


async def transfer(
    chain: ChainClient, devnet: Devnet, *, key: Secret = SENDER, fund: bool = True, **tx: Any
) -> SignedTx:
    """A signed 1-wei transfer from ``key`` (funded with 1 ETH first unless ``fund`` is false)."""
    signer = TxSigner(key=key)
    if fund:
        await set_eth_balance(chain, signer.address, 10**18)
    fees = await chain.fee_data()
    fields: dict[str, Any] = {
        "to": devnet.deployer,
        "data": b"",
        "nonce": await chain.get_transaction_count(signer.address),
        "gas": 21_000,
        "max_fee_per_gas": fees.max_fee(),
        "max_priority_fee_per_gas": fees.priority_fee,
        "chain_id": chain.chain_id,
        "value": 1,
    }
    return signer.sign(TxRequest(**(fields | tx)))


async def node_has(chain: ChainClient, tx_hash: str) -> bool:
    return await chain.request("eth_getTransactionByHash", [tx_hash]) is not None


# --- no node needed ---------------------------------------------------------------------------


async def test_unreachable_upstream_is_bad_gateway() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with trio.fail_after(5):
        async with rpc_proxy(f"http://127.0.0.1:{port}", upstream_timeout=1) as proxy:
            config = ChainConfig(rpc_url=proxy.url, chain_id=31337)
            retry = RetryPolicy(max_retries=0)
            async with ChainClient(config, retry=retry, check_chain_id=False) as client:
                with pytest.raises(RpcTransportError) as raised:
                    await client.get_chain_id()
    assert raised.value.status == 502
    (event,) = proxy.log
    assert event.forwarded
    assert event.status == 502
    assert event.upstream_error is not None


# --- against anvil ----------------------------------------------------------------------------


@pytest.mark.chain
async def test_forwards_single_and_batch_requests_untouched(
    chain: ChainClient, devnet: Devnet
) -> None:
    with trio.fail_after(10):
        async with rpc_proxy(devnet.rpc_url) as proxy, through(proxy, devnet) as client:
            assert await client.get_chain_id() == devnet.chain_id
            fees = await client.fee_data()  # a batch of two calls
            assert fees.base_fee == (await chain.latest_block()).base_fee
            assert await client.latest_block() == await chain.latest_block()
    assert proxy.count() == 4  # the entry's chain id check, then three
    assert proxy.count("eth_chainId") == 2
    assert proxy.count("eth_getBlockByNumber") == 2
    assert proxy.count("eth_maxPriorityFeePerGas") == 1
    assert [event.batch for event in proxy.log] == [False, False, True, False]
    assert all(event.forwarded and event.status == 200 for event in proxy.log)
    assert all(event.faults == () for event in proxy.log)


@pytest.mark.chain
async def test_rate_limited_is_retried_after_retry_after(
    chain: ChainClient, devnet: Devnet
) -> None:
    with trio.fail_after(10):
        async with rpc_proxy(devnet.rpc_url) as proxy, through(proxy, devnet, retries=3) as client:
            rule = proxy.inject("eth_blockNumber", RateLimited(0.2), times=2)
            started = trio.current_time()
            number = hex_int(await client.request("eth_blockNumber"))
            assert trio.current_time() - started >= 0.4
    assert number == (await chain.latest_block()).number
    assert proxy.count("eth_blockNumber") == 3
    assert [(e.status, e.forwarded) for e in proxy.log[1:]] == [
        (429, False),
        (429, False),
        (200, True),
    ]
    assert rule.applied == 2
    assert rule.exhausted
    assert proxy.rules == []


@pytest.mark.chain
async def test_server_error_every_second_request_until_cleared(
    chain: ChainClient, devnet: Devnet
) -> None:
    outcomes: list[int | None] = []
    with trio.fail_after(10):
        async with rpc_proxy(devnet.rpc_url) as proxy, through(proxy, devnet) as client:
            proxy.inject(None, ServerError(503), times=None, every=2)
            for _ in range(4):
                try:
                    await client.request("eth_blockNumber")
                    outcomes.append(None)
                except RpcTransportError as error:
                    outcomes.append(error.status)
            proxy.clear()
            await client.request("eth_blockNumber")
            await client.request("eth_blockNumber")
    assert outcomes == [None, 503, None, 503]
    assert proxy.count("eth_blockNumber") == 6


@pytest.mark.chain
async def test_drop_connection_is_a_transport_error_then_retried(
    chain: ChainClient, devnet: Devnet
) -> None:
    with trio.fail_after(10):
        async with rpc_proxy(devnet.rpc_url) as proxy, through(proxy, devnet, retries=1) as client:
            proxy.inject("eth_getBalance", DropConnection(), times=2)
            with pytest.raises(RpcTransportError):
                await client.get_balance(devnet.signer)
            proxy.inject("eth_getBalance", DropConnection())
            assert await client.get_balance(devnet.signer) == await chain.get_balance(devnet.signer)
    assert proxy.count("eth_getBalance") == 4
    assert [(e.status, e.forwarded) for e in proxy.log[1:]] == [
        (None, False),
        (None, False),
        (None, False),
        (200, True),
    ]


@pytest.mark.chain
async def test_garbage_is_a_transport_error(chain: ChainClient, devnet: Devnet) -> None:
    with trio.fail_after(10):
        async with rpc_proxy(devnet.rpc_url) as proxy, through(proxy, devnet) as client:
            proxy.inject(None, Garbage())
            with pytest.raises(RpcTransportError, match="not JSON"):
                await client.latest_block()
    assert not proxy.log[-1].forwarded


@pytest.mark.chain
async def test_latency_delays_or_times_out(chain: ChainClient, devnet: Devnet) -> None:
    with trio.fail_after(10):
        async with rpc_proxy(devnet.rpc_url) as proxy:
            async with through(proxy, devnet, timeout=0.1) as impatient:
                proxy.inject("eth_blockNumber", Latency(0.3))
                with pytest.raises(RpcTimeout):
                    await impatient.request("eth_blockNumber")
            async with through(proxy, devnet) as patient:
                proxy.inject("eth_blockNumber", Latency(0.1))
                started = trio.current_time()
                await patient.request("eth_blockNumber")
                assert trio.current_time() - started >= 0.1


@pytest.mark.chain
async def test_lose_reply_leaves_the_transaction_with_the_node(
    chain: ChainClient, devnet: Devnet
) -> None:
    with trio.fail_after(10):
        signed = await transfer(chain, devnet)
        async with rpc_proxy(devnet.rpc_url) as proxy, through(proxy, devnet) as client:
            proxy.inject("eth_sendRawTransaction", LoseReply())
            with pytest.raises(RpcTransportError):
                await client.send_raw_transaction(signed)
            assert await node_has(chain, signed.hash)
            receipt = await chain.wait_for_receipt(signed.hash, poll_interval=0.01)
            assert receipt.succeeded
            # Sending the same bytes again is not "already known" once mined: anvil says the
            # nonce is spent.
            with pytest.raises(RpcError, match="nonce too low"):
                await client.send_raw_transaction(signed)
    event = proxy.log[1]
    assert (event.forwarded, event.status) == (True, None)


@pytest.mark.chain
async def test_garbage_after_forward_on_send(chain: ChainClient, devnet: Devnet) -> None:
    with trio.fail_after(10):
        signed = await transfer(chain, devnet)
        async with rpc_proxy(devnet.rpc_url) as proxy, through(proxy, devnet) as client:
            proxy.inject("eth_sendRawTransaction", GarbageAfterForward())
            with pytest.raises(RpcTransportError, match="not JSON"):
                await client.send_raw_transaction(signed)
        assert await node_has(chain, signed.hash)
        await chain.wait_for_receipt(signed.hash, poll_interval=0.01)


@pytest.mark.chain
async def test_hang_after_forward_times_out_and_exit_is_prompt(
    chain: ChainClient, devnet: Devnet
) -> None:
    with trio.fail_after(10):
        signed = await transfer(chain, devnet)
        async with rpc_proxy(devnet.rpc_url) as proxy:
            rule = proxy.inject("eth_sendRawTransaction", HangAfterForward(60))
            async with through(proxy, devnet, timeout=0.3) as client:
                with pytest.raises(RpcTimeout):
                    await client.send_raw_transaction(signed)
            assert rule.applied == 1
            assert await node_has(chain, signed.hash)
            leaving = trio.current_time()
        assert trio.current_time() - leaving < 1  # the 60 s hold was cancelled
        await chain.wait_for_receipt(signed.hash, poll_interval=0.01)


@pytest.mark.chain
async def test_hold_is_cancelled_when_the_proxy_exits(devnet: Devnet) -> None:
    failures: list[Exception] = []

    async def post(url: str) -> None:
        body = {"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber", "params": []}
        async with httpx.AsyncClient(timeout=30) as http:
            try:
                await http.post(url, json=body)
            except httpx.TransportError as error:
                failures.append(error)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery, rpc_proxy(devnet.rpc_url) as proxy:
            rule = proxy.inject(None, HangAfterForward(60))
            nursery.start_soon(post, proxy.url)
            await rule.wait_applied()
    assert len(failures) == 1  # the client saw the connection close, not a 60 s wait


@pytest.mark.chain
async def test_wrong_chain_id_fails_the_client_entry(chain: ChainClient, devnet: Devnet) -> None:
    with trio.fail_after(10):
        async with rpc_proxy(devnet.rpc_url) as proxy:
            proxy.inject(None, WrongChainId(1), times=None)
            with pytest.raises(ChainIdMismatch) as raised:
                async with through(proxy, devnet):
                    pass
            assert (raised.value.expected, raised.value.actual) == (devnet.chain_id, 1)
            async with through(proxy, devnet, check_chain_id=False) as client:
                assert await client.request("net_version") == "1"
                assert await client.batch([("eth_chainId", []), ("eth_blockNumber", [])]) == [
                    "0x1",
                    hex((await chain.latest_block()).number),
                ]
                await client.request("eth_blockNumber")
    assert proxy.log[-1].faults == ()  # not a chain id question: untouched


@pytest.mark.chain
async def test_rpc_error_reply_replaces_only_its_batch_entry(
    chain: ChainClient, devnet: Devnet
) -> None:
    insufficient = RpcErrorReply(-32003, "Insufficient funds for gas * price + value")
    with trio.fail_after(10):
        signed = await transfer(chain, devnet)
        async with rpc_proxy(devnet.rpc_url) as proxy, through(proxy, devnet) as client:
            proxy.inject("eth_maxPriorityFeePerGas", RpcErrorReply(-32000, "boom"))
            block, priority, chain_id = await client.batch_outcomes(
                [
                    ("eth_getBlockByNumber", ["latest", False]),
                    ("eth_maxPriorityFeePerGas", []),
                    ("eth_chainId", []),
                ]
            )
            assert isinstance(block, dict)
            assert block["hash"] == (await chain.latest_block()).hash
            assert isinstance(priority, RpcError)
            assert (priority.code, priority.message) == (-32000, "boom")
            assert chain_id == hex(devnet.chain_id)

            proxy.inject("eth_sendRawTransaction", insufficient)
            with pytest.raises(RpcError) as raised:
                await client.send_raw_transaction(signed)
            assert (raised.value.code, raised.value.message) == (
                insufficient.code,
                insufficient.message,
            )
            assert not await node_has(chain, signed.hash)  # the node never saw it
    assert proxy.log[-1].forwarded is False


@pytest.mark.chain
async def test_stale_head_freezes_what_the_client_sees(chain: ChainClient, devnet: Devnet) -> None:
    with trio.fail_after(10):
        signed = await transfer(chain, devnet)
        async with rpc_proxy(devnet.rpc_url) as proxy, through(proxy, devnet) as client:
            rule = proxy.inject(None, StaleHead(), times=None)
            head = await client.latest_block()
            assert rule.frozen_head == head.number
            await chain.send_raw_transaction(signed)  # anvil mines it at once
            mined = await chain.wait_for_receipt(signed.hash, poll_interval=0.01)
            await evm_mine(chain, 2)
            assert (await chain.latest_block()).number == head.number + 3

            assert await client.latest_block() == head
            assert hex_int(await client.request("eth_blockNumber")) == head.number
            assert await client.get_transaction_receipt(signed.hash) is None
            sender = signed.sender
            assert await client.get_transaction_count(sender, "latest") == signed.nonce
            assert await chain.get_transaction_count(sender, "latest") == signed.nonce + 1
            assert (await chain.fee_data()).base_fee != head.base_fee  # empty blocks lower it
            assert (await client.fee_data()).base_fee == head.base_fee  # in a batch too

            proxy.remove(rule)
            assert await client.get_transaction_receipt(signed.hash) == mined
            assert (await client.latest_block()).number == head.number + 3


@pytest.mark.chain
async def test_anvil_answers_to_doomed_sends(chain: ChainClient, devnet: Devnet) -> None:
    """What anvil (the pinned version) answers; the reliability suite's faults imitate these."""

    async def send(client: ChainClient, signed: SignedTx) -> Any:
        return await client.request("eth_sendRawTransaction", [hex_of(signed.raw)])

    with trio.fail_after(10):
        async with rpc_proxy(devnet.rpc_url) as proxy, through(proxy, devnet) as client:
            signed = await transfer(chain, devnet)
            await evm_set_automine(chain, False)
            try:
                assert await send(client, signed) == signed.hash
                with pytest.raises(RpcError) as duplicate:
                    await send(client, signed)
                await evm_mine(chain)
            finally:
                await evm_set_automine(chain, True)
            with pytest.raises(RpcError) as spent:
                await send(client, signed)

            broke = await transfer(chain, devnet, key=devnet_key("rpc proxy broke"), fund=False)
            with pytest.raises(RpcError) as insufficient:
                await send(client, broke)

            cheap = await transfer(chain, devnet, max_fee_per_gas=1, max_priority_fee_per_gas=1)
            with pytest.raises(RpcError) as underpaid:
                await send(client, cheap)

    answers = [(e.value.code, e.value.message) for e in (duplicate, spent, insufficient, underpaid)]
    assert answers == [
        (-32003, "transaction already imported"),  # not geth's "already known"
        (-32003, "nonce too low"),
        (-32003, "Insufficient funds for gas * price + value"),
        (-32003, "max fee per gas less than block base fee"),
    ]

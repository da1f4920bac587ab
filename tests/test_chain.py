"""The chain client: typed errors, retries against a loopback HTTP server, real anvil calls."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import attrs
import pytest
import trio
from eth_abi.abi import encode as abi_encode
from eth_account import Account
from fixtures_chain import send_call

from daemon.abi import function_selector
from daemon.chain import ChainClient, RetryPolicy, parse_retry_after
from daemon.chain_errors import (
    ChainIdMismatch,
    Reverted,
    RpcError,
    RpcTimeout,
    RpcTransportError,
    decode_revert_reason,
    error_from_response,
)
from daemon.config import ChainConfig
from daemon.devtools.devnet_anvil import evm_increase_time, evm_mine
from daemon.devtools.devnet_records import Devnet
from daemon.txbuild import Call
from daemon.uniswap import encode_approve

FAST_RETRY = RetryPolicy(max_retries=3, initial_backoff=0.01, max_backoff=0.05)

# --- pure -------------------------------------------------------------------------------------


def test_decode_error_string() -> None:
    data = function_selector("Error(string)") + abi_encode(["string"], ["nope"])
    assert decode_revert_reason(data) == "nope"


def test_decode_panic_and_custom_errors() -> None:
    panic = function_selector("Panic(uint256)") + (0x11).to_bytes(32, "big")
    assert decode_revert_reason(panic) == "Panic(0x11)"
    assert decode_revert_reason(function_selector("InvalidDelegate()")) == "InvalidDelegate()"
    assert decode_revert_reason(bytes.fromhex("deadbeef")) == "custom error 0xdeadbeef"
    assert decode_revert_reason(b"") == ""


def test_error_from_response_types() -> None:
    data = "0x" + (function_selector("Error(string)") + abi_encode(["string"], ["x"])).hex()
    reverted = error_from_response({"code": 3, "message": "execution reverted: x", "data": data})
    assert isinstance(reverted, Reverted)
    assert reverted.reason == "x"
    geth_style = error_from_response({"code": -32000, "message": "execution reverted: y"})
    assert isinstance(geth_style, Reverted)
    assert geth_style.reason == "y"
    other = error_from_response({"code": -32601, "message": "method not found"})
    assert isinstance(other, RpcError)
    assert other.code == -32601


def test_parse_retry_after() -> None:
    assert parse_retry_after("2", now=0) == 2.0
    assert parse_retry_after(None, now=0) is None
    assert parse_retry_after("garbage", now=0) is None
    assert parse_retry_after("Thu, 01 Jan 1970 00:00:10 GMT", now=4.0) == 6.0


def test_backoff_grows_and_is_capped() -> None:
    import random

    policy = RetryPolicy(initial_backoff=0.1, max_backoff=1.0)
    rng = random.Random(1)
    delays = [policy.backoff(attempt, rng) for attempt in range(8)]
    assert 0.05 <= delays[0] <= 0.1
    assert all(0.5 <= delay <= 1.0 for delay in delays[4:])


# --- a scripted JSON-RPC server on loopback ---------------------------------------------------

Reply = tuple[int, dict[str, str], Any]
"""HTTP status, headers, JSON body (None: sleep past the client's timeout)."""


@attrs.define
class ScriptedServer:
    """Answers each request with the next scripted reply (the last one repeats)."""

    url: str
    replies: list[Reply]
    requests: list[Any] = attrs.Factory(list)
    lock: threading.Lock = attrs.Factory(threading.Lock)

    def next_reply(self, body: Any) -> Reply:
        with self.lock:
            self.requests.append(body)
            return self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]


def ok(result: Any) -> Reply:
    return (200, {}, {"jsonrpc": "2.0", "id": 1, "result": result})


@pytest.fixture
def scripted() -> Iterator[Callable[[list[Reply]], ScriptedServer]]:
    servers: list[ThreadingHTTPServer] = []
    threads: list[threading.Thread] = []

    def start(replies: list[Reply]) -> ScriptedServer:
        state: ScriptedServer

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                status, headers, payload = state.next_reply(body)
                if payload is None:
                    time.sleep(0.5)
                    payload = {"jsonrpc": "2.0", "id": 1, "result": "0x1"}
                elif isinstance(payload, dict) and "id" in payload and isinstance(body, dict):
                    payload = {**payload, "id": body["id"]}
                data = json.dumps(payload).encode()
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        state = ScriptedServer(url=f"http://127.0.0.1:{server.server_address[1]}", replies=replies)
        thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
        thread.start()
        servers.append(server)
        threads.append(thread)
        return state

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()
    for thread in threads:
        thread.join(timeout=5)


def client_for(url: str, *, timeout: float = 5.0, retry: RetryPolicy = FAST_RETRY) -> ChainClient:
    config = ChainConfig(rpc_url=url, chain_id=31337, request_timeout=timeout)
    return ChainClient(config, retry=retry, check_chain_id=False)


async def test_429_with_retry_after_is_honoured_then_succeeds(
    scripted: Callable[[list[Reply]], ScriptedServer],
) -> None:
    server = scripted([(429, {"Retry-After": "1"}, {"error": "slow down"}), ok("0x7a69")])
    with trio.fail_after(10):
        async with client_for(server.url) as client:
            started = trio.current_time()
            assert await client.get_chain_id() == 31337
            assert trio.current_time() - started >= 1.0
    assert len(server.requests) == 2


async def test_5xx_is_retried_then_reported_typed(
    scripted: Callable[[list[Reply]], ScriptedServer],
) -> None:
    server = scripted([(503, {}, {"error": "down"})])
    with trio.fail_after(10):
        async with client_for(server.url) as client:
            with pytest.raises(RpcTransportError) as raised:
                await client.get_chain_id()
    assert raised.value.status == 503
    assert len(server.requests) == FAST_RETRY.max_retries + 1


async def test_5xx_then_success(scripted: Callable[[list[Reply]], ScriptedServer]) -> None:
    server = scripted([(502, {}, {}), (500, {}, {}), ok("0x10")])
    with trio.fail_after(10):
        async with client_for(server.url) as client:
            assert await client.get_transaction_count("0x" + "11" * 20) == 16
    assert len(server.requests) == 3


async def test_connection_refused_is_retried_then_reported_typed() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with trio.fail_after(10):
        async with client_for(f"http://127.0.0.1:{port}/secret-api-key") as client:
            with pytest.raises(RpcTransportError) as raised:
                await client.get_chain_id()
            assert client.requests_sent == FAST_RETRY.max_retries + 1
    assert "secret-api-key" not in str(raised.value)


async def test_timeout_is_reported_typed(scripted: Callable[[list[Reply]], ScriptedServer]) -> None:
    server = scripted([(200, {}, None)])
    retry = RetryPolicy(max_retries=1, initial_backoff=0.01)
    with trio.fail_after(10):
        async with client_for(server.url, timeout=0.1, retry=retry) as client:
            with pytest.raises(RpcTimeout):
                await client.get_chain_id()
    assert len(server.requests) == 2


async def test_revert_is_never_retried(scripted: Callable[[list[Reply]], ScriptedServer]) -> None:
    data = "0x" + (function_selector("Error(string)") + abi_encode(["string"], ["no"])).hex()
    error = {"code": 3, "message": "execution reverted: no", "data": data}
    server = scripted([(200, {}, {"jsonrpc": "2.0", "id": 1, "error": error})])
    with trio.fail_after(10):
        async with client_for(server.url) as client:
            with pytest.raises(Reverted) as raised:
                await client.call("0x" + "11" * 20, b"")
    assert raised.value.reason == "no"
    assert len(server.requests) == 1


async def test_rpc_error_is_not_retried(scripted: Callable[[list[Reply]], ScriptedServer]) -> None:
    error = {"code": -32601, "message": "the method foo does not exist"}
    server = scripted([(200, {}, {"jsonrpc": "2.0", "id": 1, "error": error})])
    with trio.fail_after(10):
        async with client_for(server.url) as client:
            with pytest.raises(RpcError) as raised:
                await client.request("foo")
    assert raised.value.code == -32601
    assert len(server.requests) == 1


async def test_batch_is_retried_and_results_follow_request_ids(
    scripted: Callable[[list[Reply]], ScriptedServer],
) -> None:
    reversed_answers = [
        {"jsonrpc": "2.0", "id": 2, "result": "0x2"},
        {"jsonrpc": "2.0", "id": 1, "result": "0x1"},
    ]
    server = scripted([(429, {"Retry-After": "0"}, {}), (200, {}, reversed_answers)])
    with trio.fail_after(10):
        async with client_for(server.url) as client:
            results = await client.batch([("eth_chainId", []), ("eth_blockNumber", [])])
    assert results == ["0x1", "0x2"]
    assert len(server.requests) == 2


# --- against anvil ----------------------------------------------------------------------------

pytestmark_chain = pytest.mark.chain


@pytestmark_chain
async def test_chain_id_is_checked(devnet: Devnet) -> None:
    config = attrs.evolve(devnet.chain_config(), chain_id=1)
    with trio.fail_after(10), pytest.raises(ChainIdMismatch):
        async with ChainClient(config):
            pass


@pytestmark_chain
async def test_balances_in_one_round_trip(chain: ChainClient, devnet: Devnet) -> None:
    with trio.fail_after(10):
        account = devnet.accounts[0].address
        tokens = [token.address for token in devnet.tokens]
        sent = chain.requests_sent
        balances = await chain.balances(account, tokens)
        assert chain.requests_sent == sent + 1
        assert balances == {
            devnet.weth: 10 * 10**18,
            devnet.token("USDC").address: 60_000 * 10**6,
            devnet.token("WBTC").address: 10**8,
        }


@pytestmark_chain
async def test_send_raw_transaction_receipt_and_nonce(chain: ChainClient, devnet: Devnet) -> None:
    with trio.fail_after(10):
        nonce = await chain.get_transaction_count(devnet.signer)
        call = Call(to=devnet.token("USDC").address, data=encode_approve(devnet.router, 5))
        receipt = await send_call(chain, devnet.signer_key, call)
        assert receipt.succeeded
        assert receipt.gas_used > 0
        assert len(receipt.logs) == 1  # Approval
        assert await chain.get_transaction_count(devnet.signer) == nonce + 1
        fees = await chain.fee_data()
        assert fees.base_fee > 0
        assert fees.max_fee() > fees.base_fee


@pytestmark_chain
async def test_revert_from_anvil_is_typed_and_not_retried(
    chain: ChainClient, devnet: Devnet
) -> None:
    with trio.fail_after(10):
        thief = Account.create().address
        transfer = function_selector("transferFrom(address,address,uint256)") + abi_encode(
            ["address", "address", "uint256"], [devnet.accounts[0].address, thief, 1]
        )
        sent = chain.requests_sent
        with pytest.raises(Reverted) as raised:
            await chain.estimate_gas(devnet.token("USDC").address, transfer, sender=thief)
        assert chain.requests_sent == sent + 1
        assert raised.value.reason == "ERC20InsufficientAllowance(address,uint256,uint256)"


@pytestmark_chain
async def test_chain_time_helpers(chain: ChainClient) -> None:
    with trio.fail_after(10):
        before = await chain.latest_block()
        await evm_increase_time(chain, 3600)
        await evm_mine(chain)
        after = await chain.latest_block()
        assert after.number == before.number + 1
        assert after.timestamp >= before.timestamp + 3600


@attrs.define
class Observed:
    calls: list[tuple[str, bool]] = attrs.Factory(list)

    def rpc_request(self, method: str, ok: bool) -> None:
        self.calls.append((method, ok))


async def test_every_json_rpc_call_is_observed_with_its_outcome(
    scripted: Callable[[list[Reply]], ScriptedServer],
) -> None:
    """What ``driftd_rpc_requests_total`` counts: one per call (not per HTTP request: a batch is
    one per call in it, a retried call is one), ok or error."""
    error = {"code": -32601, "message": "no such method"}
    server = scripted(
        [
            ok("0x7a69"),
            (200, {}, {"jsonrpc": "2.0", "id": 1, "error": error}),
            (503, {}, {}),
            ok("0x7a69"),
            (
                200,
                {},
                [
                    {"jsonrpc": "2.0", "id": 4, "result": "0x1"},
                    {"jsonrpc": "2.0", "id": 5, "error": error},
                ],
            ),
            (503, {}, {}),
        ]
    )
    observed = Observed()
    config = ChainConfig(rpc_url=server.url, chain_id=31337, request_timeout=5)
    retry = RetryPolicy(max_retries=1, initial_backoff=0.01)
    with trio.fail_after(10):
        async with ChainClient(config, retry=retry, check_chain_id=False, observer=observed) as c:
            assert await c.get_chain_id() == 31337
            with pytest.raises(RpcError):
                await c.request("foo")
            assert await c.get_chain_id() == 31337  # after one 503, retried
            outcomes = await c.batch_outcomes([("eth_blockNumber", []), ("bar", [])])
            assert isinstance(outcomes[1], RpcError)
            with pytest.raises(RpcTransportError):
                await c.batch([("eth_blockNumber", []), ("eth_chainId", [])])
    assert observed.calls == [
        ("eth_chainId", True),
        ("foo", False),
        ("eth_chainId", True),
        ("eth_blockNumber", True),
        ("bar", False),
        ("eth_blockNumber", False),
        ("eth_chainId", False),
    ]

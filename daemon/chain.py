"""A Trio-native JSON-RPC client for the EVM chain driftd trades on.

Why our own client instead of web3's providers: web3's synchronous provider blocks the event
loop and its asyncio provider does not run on Trio; ``contract.functions.x().call()`` also costs
~14× a raw ``eth_call`` on a local node. The executor, the price feed and the portfolio actors
each make a few calls per tick, so the client is a thin layer over one keep-alive
``httpx.AsyncClient`` (httpx runs on Trio) that adds only what the daemon relies on:

* **Batching**: ``balances(account, tokens)`` reads every token of a portfolio in one round trip.
* **Typed failures**: :class:`RpcError` (the node answered with a JSON-RPC error),
  :class:`Reverted` (the EVM reverted; ``reason`` holds the decoded ``Error(string)``,
  ``Panic(uint256)`` or custom error), :class:`RpcTimeout` and :class:`RpcTransportError`
  (the node could not be reached or answered garbage). Callers decide on these types, never on
  message text.
* **Retries**: transient failures (connection refused or reset, timeouts, HTTP 429 honouring
  ``Retry-After``, HTTP 5xx, JSON-RPC "limit exceeded") are retried with exponential backoff and
  jitter up to ``max_retries`` times, then reported typed. A revert is an answer, not a failure:
  it is never retried. Every request is idempotent: ``eth_sendRawTransaction`` carries the same
  signed bytes each time, and a node's "already known" answer to a retry is success.

Calls are encoded by :mod:`daemon.abi` (eth-abi), transactions are signed by
:mod:`daemon.signer` (eth-account) and the typed failures live in :mod:`daemon.chain_errors`;
this module re-exports their public names, so ``from daemon.chain import …`` keeps working for
all of them. Error messages never contain the RPC URL's path or query (hosted nodes put API
keys there) nor any key material.
"""

from __future__ import annotations

import email.utils
import itertools
import json
import math
import random
import time
from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType
from typing import Final, Protocol, Self

import attrs
import httpx
import trio
from eth_abi.abi import encode as abi_encode

from daemon.abi import function_selector, hex_bytes, hex_int, hex_of
from daemon.address import to_address
from daemon.backoff import Backoff
from daemon.chain_errors import (
    ChainError,
    ChainIdMismatch,
    Json,
    Reverted,
    RpcError,
    RpcTimeout,
    RpcTransportError,
    error_from_response,
)
from daemon.config import ChainConfig
from daemon.signer import SignedTx

# --- value types ----------------------------------------------------------------------------


@attrs.frozen
class Block:
    """The parts of a block header the daemon uses."""

    number: int
    timestamp: int
    """Seconds since the epoch, as the chain sees it (deadlines are derived from this)."""
    base_fee: int
    """``baseFeePerGas`` in wei (0 before London)."""
    hash: str


@attrs.frozen
class FeeData:
    """What an EIP-1559 transaction should bid now."""

    base_fee: int
    """The latest block's ``baseFeePerGas`` in wei."""
    priority_fee: int
    """The node's suggested ``maxPriorityFeePerGas`` in wei."""

    def max_fee(self, base_fee_multiplier: int = 2) -> int:
        """``maxFeePerGas`` that survives ``base_fee_multiplier``× base-fee growth."""
        return self.base_fee * base_fee_multiplier + self.priority_fee


@attrs.frozen
class Log:
    """One event log of a receipt."""

    address: str
    topics: tuple[bytes, ...]
    data: bytes


@attrs.frozen
class Receipt:
    """A mined transaction's outcome."""

    transaction_hash: str
    block_number: int
    status: int
    """1: success, 0: reverted."""
    gas_used: int
    effective_gas_price: int
    logs: tuple[Log, ...]

    @property
    def succeeded(self) -> bool:
        return self.status == 1

    @classmethod
    def from_json(cls, raw: Mapping[str, Json]) -> Receipt:
        return cls(
            transaction_hash=str(raw["transactionHash"]),
            block_number=hex_int(raw["blockNumber"]),
            status=hex_int(raw.get("status", "0x1")),
            gas_used=hex_int(raw["gasUsed"]),
            effective_gas_price=hex_int(raw.get("effectiveGasPrice", "0x0")),
            logs=tuple(
                Log(
                    address=to_address(item["address"]),
                    topics=tuple(hex_bytes(topic) for topic in item["topics"]),
                    data=hex_bytes(item["data"]),
                )
                for item in raw.get("logs", ())
            ),
        )


# --- retries --------------------------------------------------------------------------------

TRANSIENT_HTTP_STATUSES: Final = frozenset({429, 500, 502, 503, 504})
"""HTTP statuses worth retrying: rate limiting and the node or its proxy being unwell."""
TRANSIENT_RPC_CODES: Final = frozenset({-32005})
"""JSON-RPC codes worth retrying (-32005: "limit exceeded", a rate limit inside JSON-RPC)."""


@attrs.frozen
class RetryPolicy:
    """How transient failures are retried: exponential backoff with "equal jitter"."""

    max_retries: int = 4
    """Retries after the first attempt (so at most ``max_retries + 1`` attempts)."""
    initial_backoff: float = 0.1
    """Seconds before the first retry (before jitter)."""
    max_backoff: float = 5.0
    """Ceiling of one backoff (before jitter)."""
    max_retry_after: float = 60.0
    """A server's ``Retry-After`` is honoured up to this many seconds."""

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """Delay before retry number ``attempt`` (0-based): half fixed, half random."""
        schedule = Backoff(initial=self.initial_backoff, maximum=self.max_backoff, jitter=0.5)
        return schedule.delay(attempt, rng)


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = float(when.timestamp()) - now
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


class _Transient(Exception):
    """Internal: one attempt failed in a way worth retrying."""

    def __init__(self, error: ChainError, retry_after: float | None = None) -> None:
        super().__init__(str(error))
        self.error = error
        self.retry_after = retry_after


# --- the client -----------------------------------------------------------------------------

RpcCall = tuple[str, Sequence[Json]]
"""A JSON-RPC method and its parameters."""

_BALANCE_OF: Final = function_selector("balanceOf(address)")


class RpcObserver(Protocol):
    """Hears the outcome of every JSON-RPC call (:class:`daemon.metrics.Metrics`)."""

    def rpc_request(self, method: str, ok: bool) -> None: ...


class ChainClient:
    """JSON-RPC over one keep-alive HTTP connection pool. Create with ``async with``.

    ``async with ChainClient(config) as client`` checks the node's chain id against
    ``config.chain_id`` (:class:`ChainIdMismatch`) unless ``check_chain_id=False``. Every public
    method may raise :class:`RpcTimeout`, :class:`RpcTransportError` or :class:`RpcError` after
    the retries; contract reads and gas estimates raise :class:`Reverted`.
    """

    def __init__(
        self,
        config: ChainConfig,
        *,
        retry: RetryPolicy | None = None,
        check_chain_id: bool = True,
        transport: httpx.AsyncBaseTransport | None = None,
        observer: RpcObserver | None = None,
    ) -> None:
        self.rpc_url = config.rpc_url
        self._observer = observer
        self.chain_id = config.chain_id
        self.retry = retry or RetryPolicy(max_retries=config.max_retries)
        self._check_chain_id = check_chain_id
        self._where = _redacted_endpoint(config.rpc_url)
        self._ids = itertools.count(1)
        self._rng = random.Random()  # noqa: S311 - jitter, not cryptography
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(config.request_timeout),
            headers={"content-type": "application/json", "accept": "application/json"},
            limits=httpx.Limits(max_connections=16, max_keepalive_connections=16),
            transport=transport,
        )
        self.requests_sent = 0
        """HTTP requests sent, retries included (tests and metrics read it)."""

    async def __aenter__(self) -> Self:
        try:
            if self._check_chain_id:
                actual = await self.get_chain_id()
                if actual != self.chain_id:
                    raise ChainIdMismatch(self.chain_id, actual)
        except BaseException:
            await self._http.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # --- raw JSON-RPC ---

    async def request(self, method: str, params: Sequence[Json] = ()) -> Json:
        """One JSON-RPC call; its ``result``, or the typed error."""
        body = {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": list(params)}
        try:
            reply = await self._post_with_retries(json.dumps(body).encode())
            if not isinstance(reply, Mapping):
                raise RpcTransportError(f"{self._where}: {method}: reply is not a JSON-RPC object")
            result = self._result_of(reply, method)
        except ChainError:
            self._observed(method, ok=False)
            raise
        self._observed(method, ok=True)
        return result

    def _observed(self, method: str, *, ok: bool) -> None:
        if self._observer is not None:
            self._observer.rpc_request(method, ok)

    async def batch(self, calls: Sequence[RpcCall]) -> list[Json]:
        """Several JSON-RPC calls in one HTTP round trip; results in the order of ``calls``.

        Raises the typed error of the first call that failed (in ``calls`` order).
        """
        outcomes = await self.batch_outcomes(calls)
        results: list[Json] = []
        for outcome in outcomes:
            if isinstance(outcome, ChainError):
                raise outcome
            results.append(outcome)
        return results

    async def batch_outcomes(self, calls: Sequence[RpcCall]) -> list[Json | ChainError]:
        """Like :meth:`batch`, but each call's error is returned in its place, not raised."""
        try:
            outcomes = await self._batch_outcomes(calls)
        except ChainError:
            for method, _ in calls:
                self._observed(method, ok=False)
            raise
        for (method, _), outcome in zip(calls, outcomes, strict=True):
            self._observed(method, ok=not isinstance(outcome, ChainError))
        return outcomes

    async def _batch_outcomes(self, calls: Sequence[RpcCall]) -> list[Json | ChainError]:
        if not calls:
            return []
        first_id = next(self._ids)
        ids = [first_id, *(next(self._ids) for _ in calls[1:])]
        body = [
            {"jsonrpc": "2.0", "id": request_id, "method": method, "params": list(params)}
            for request_id, (method, params) in zip(ids, calls, strict=True)
        ]
        reply = await self._post_with_retries(json.dumps(body).encode())
        if isinstance(reply, Mapping) and "error" in reply:  # the whole batch was refused
            raise error_from_response(reply["error"])
        if not isinstance(reply, list):
            raise RpcTransportError(f"{self._where}: batch reply is not a JSON array")
        by_id = {item.get("id"): item for item in reply if isinstance(item, Mapping)}
        outcomes: list[Json | ChainError] = []
        for request_id, (method, _) in zip(ids, calls, strict=True):
            item = by_id.get(request_id)
            if item is None:
                outcomes.append(RpcTransportError(f"{self._where}: no reply to {method} in batch"))
                continue
            try:
                outcomes.append(self._result_of(item, method))
            except ChainError as error:
                outcomes.append(error)
        return outcomes

    def _result_of(self, reply: Mapping[str, Json], method: str) -> Json:
        if "error" in reply and reply["error"] is not None:
            error = reply["error"]
            if not isinstance(error, Mapping):
                raise RpcTransportError(f"{self._where}: {method}: malformed error object")
            raise error_from_response(error)
        if "result" not in reply:
            raise RpcTransportError(f"{self._where}: {method}: reply has neither result nor error")
        return reply["result"]

    async def _post_with_retries(self, body: bytes) -> Json:
        attempt = 0
        while True:
            try:
                return await self._post_once(body)
            except _Transient as transient:
                if attempt >= self.retry.max_retries:
                    raise transient.error from None
                delay = self.retry.backoff(attempt, self._rng)
                if transient.retry_after is not None:
                    delay = min(transient.retry_after, self.retry.max_retry_after)
                attempt += 1
                await trio.sleep(delay)

    async def _post_once(self, body: bytes) -> Json:
        self.requests_sent += 1
        try:
            response = await self._http.post(self.rpc_url, content=body)
        except httpx.TimeoutException:
            raise _Transient(RpcTimeout(f"{self._where}: no answer in time")) from None
        except httpx.TransportError as exc:
            # Connection refused/reset, a keep-alive connection closed under us, DNS failure.
            raise _Transient(
                RpcTransportError(f"{self._where}: {type(exc).__name__}: {exc}")
            ) from None
        status = response.status_code
        if status in TRANSIENT_HTTP_STATUSES:
            error = RpcTransportError(f"{self._where}: HTTP {status}", status=status)
            retry_after = parse_retry_after(response.headers.get("retry-after"), time.time())
            raise _Transient(error, retry_after)
        if status != 200:
            raise RpcTransportError(f"{self._where}: HTTP {status}", status=status)
        try:
            reply = response.json()
        except ValueError:
            raise RpcTransportError(f"{self._where}: reply is not JSON") from None
        if isinstance(reply, Mapping) and isinstance(reply.get("error"), Mapping):
            code = reply["error"].get("code")
            if code in TRANSIENT_RPC_CODES:
                raise _Transient(error_from_response(reply["error"]))
        return reply

    # --- chain state ---

    async def get_chain_id(self) -> int:
        return hex_int(await self.request("eth_chainId"))

    async def call(
        self, to: str, data: bytes, *, block: str | int = "latest", sender: str | None = None
    ) -> bytes:
        """``eth_call``: the return data, or :class:`Reverted`."""
        result = await self.request("eth_call", [_call_object(to, data, sender), _block_tag(block)])
        return hex_bytes(result)

    async def call_many(
        self, calls: Sequence[tuple[str, bytes]], *, block: str | int = "latest"
    ) -> list[bytes]:
        """Several ``eth_call`` in one round trip (raises the first call's error)."""
        tag = _block_tag(block)
        results = await self.batch(
            [("eth_call", [_call_object(to, data, None), tag]) for to, data in calls]
        )
        return [hex_bytes(result) for result in results]

    async def balances(self, account: str, tokens: Iterable[str]) -> dict[str, int]:
        """ERC20 balances of ``account`` (base units) for each token address, one round trip."""
        token_list = [to_address(token) for token in tokens]
        data = _BALANCE_OF + abi_encode(["address"], [account])
        results = await self.call_many([(token, data) for token in token_list])
        return {
            token: int.from_bytes(result[:32], "big")
            for token, result in zip(token_list, results, strict=True)
        }

    async def get_balance(self, address: str, block: str | int = "latest") -> int:
        """Native balance in wei."""
        return hex_int(await self.request("eth_getBalance", [address, _block_tag(block)]))

    async def get_code(self, address: str) -> bytes:
        return hex_bytes(await self.request("eth_getCode", [address, "latest"]))

    async def get_transaction_count(self, address: str, block: str | int = "pending") -> int:
        """The next nonce of ``address`` (``pending`` counts transactions in the mempool)."""
        return hex_int(await self.request("eth_getTransactionCount", [address, _block_tag(block)]))

    async def latest_block(self) -> Block:
        return await self.get_block("latest")

    async def get_block(self, block: str | int) -> Block:
        raw = await self.request("eth_getBlockByNumber", [_block_tag(block), False])
        if raw is None:
            raise RpcError(-32000, f"block {block} not found")
        return Block(
            number=hex_int(raw["number"]),
            timestamp=hex_int(raw["timestamp"]),
            base_fee=hex_int(raw.get("baseFeePerGas") or "0x0"),
            hash=str(raw["hash"]),
        )

    async def fee_data(self) -> FeeData:
        """Latest base fee and suggested priority fee, in one round trip."""
        block, priority = await self.batch(
            [("eth_getBlockByNumber", ["latest", False]), ("eth_maxPriorityFeePerGas", [])]
        )
        return FeeData(
            base_fee=hex_int(block.get("baseFeePerGas") or "0x0"), priority_fee=hex_int(priority)
        )

    async def estimate_gas(
        self, to: str, data: bytes, *, sender: str | None = None, value: int = 0
    ) -> int:
        """``eth_estimateGas``; a call that would revert raises :class:`Reverted`."""
        call = _call_object(to, data, sender)
        if value:
            call["value"] = hex(value)
        return hex_int(await self.request("eth_estimateGas", [call]))

    # --- transactions ---

    async def send_raw_transaction(self, signed: SignedTx) -> str:
        """Broadcast signed bytes; their hash. A node that already has them is success."""
        try:
            result = await self.request("eth_sendRawTransaction", [hex_of(signed.raw)])
        except RpcError as error:
            if "already known" in error.message.lower():
                return signed.hash
            raise
        return str(result)

    async def get_transaction_receipt(self, tx_hash: str) -> Receipt | None:
        """The receipt, or None while the transaction is not mined."""
        raw = await self.request("eth_getTransactionReceipt", [tx_hash])
        return None if raw is None else Receipt.from_json(raw)

    async def wait_for_receipt(self, tx_hash: str, *, poll_interval: float = 0.5) -> Receipt:
        """Poll until mined. Bound it with the caller's cancel scope (``trio.fail_after``)."""
        while True:
            receipt = await self.get_transaction_receipt(tx_hash)
            if receipt is not None:
                return receipt
            await trio.sleep(poll_interval)

    async def revert_reason_of(self, tx_hash: str) -> Reverted | None:
        """Why a mined transaction reverted, by replaying it with ``eth_call``.

        The replay runs on the state *before* its block, so a transaction that depended on an
        earlier one in the same block may replay differently; None if the replay succeeds.
        """
        tx = await self.request("eth_getTransactionByHash", [tx_hash])
        if tx is None or tx.get("blockNumber") is None:
            return None
        call = _call_object(str(tx["to"]), hex_bytes(tx["input"]), str(tx["from"]))
        call["value"] = tx.get("value", "0x0")
        try:
            await self.request("eth_call", [call, hex(hex_int(tx["blockNumber"]) - 1)])
        except Reverted as reverted:
            return reverted
        return None


def _call_object(to: str, data: bytes, sender: str | None) -> dict[str, str]:
    call = {"to": to, "data": hex_of(data)}
    if sender is not None:
        call["from"] = sender
    return call


def _block_tag(block: str | int) -> str:
    return hex(block) if isinstance(block, int) else block


def _redacted_endpoint(url: str) -> str:
    """``scheme://host:port`` only: hosted RPC URLs carry API keys in the path or query."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return "RPC endpoint"
    port = f":{parsed.port}" if parsed.port else ""
    return f"{parsed.scheme}://{parsed.host}{port}"


async def erc20_decimals(client: ChainClient, token: str) -> int:
    """``decimals()`` of an ERC20 token."""
    return int.from_bytes(await client.call(token, function_selector("decimals()")), "big")

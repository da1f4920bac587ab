"""Balance reads for many portfolios, coalesced into a few JSON-RPC batches.

Every price snapshot wakes every portfolio actor at once, and each needs its account's token
balances. One ``ChainClient.balances`` per actor would cost N HTTP round trips per tick — with
thousands of portfolios against a hosted RPC, a flood. The :class:`BalanceBatcher` is one actor
that collects the reads arriving within a short ``window`` (or until ``max_calls`` ``eth_call``
are gathered) and sends them as one JSON-RPC batch of ``balanceOf`` calls, all at one explicit
block (the head's number, asked just before: two round trips per batch); each caller gets its own
balances, that block number, or its own typed error.

Protocol (the DESIGN.md pattern): :meth:`BalanceBatcher.read` puts a :class:`BalanceRead` carrying
a reply channel of capacity 1 on the batcher's memory channel and waits on the reply. The batcher
replies with ``send_nowait`` and treats a closed reply channel as "caller gone", so a cancelled
caller never disturbs the batcher or the other callers; a caller that is already gone when its
batch is about to be sent is left out of it.

Errors — decided per caller, never shared out:

* The whole batch failed (transport error or timeout after the client's retries, or the node
  refused the batch): every caller in it gets that error, each its own copy of the same type
  (:class:`~daemon.chain.RpcTimeout`, :class:`~daemon.chain.RpcTransportError` or
  :class:`~daemon.chain.RpcError`) with the original as ``__cause__``. The batcher keeps running.
* One of a caller's tokens failed (the call reverted, the node answered that call with an error,
  or the address is not a contract — ``eth_call`` to an address without code returns no data,
  which ``ChainClient.balances`` would read as a balance of 0): that caller gets
  :class:`BalanceReadError` naming the account and the token (the first failing token in the
  caller's order), with the call's own error, if any, in ``cause``. Other callers in the same
  batch are unaffected. A balance of 0 is never made up: trading on it would break "no trade on
  bad data".
* The batch failed with something unexpected (not a :class:`~daemon.chain.ChainError`: a
  client bug, an unmapped httpx error): every caller in it gets :class:`BatchFailed` with that
  exception as ``__cause__``, the batcher logs it and keeps running — the same blast radius as
  before batching (one supervised crash per portfolio actor), not a dead process.
* The batcher stopped (its nursery was cancelled): pending and later callers get
  :class:`BatcherStopped`. ``run`` is meant to run once, for the life of its creator.

A single read is never split across batches, so one read with more tokens than ``max_calls``
is sent alone in a batch of its own size (portfolios hold a handful of tokens).

Up to ``max_in_flight`` batches are in flight at once (the client's connection pool has 16
connections); while all are busy, new reads queue and go out together in the next batch, so the
batch size grows with the load.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable
from typing import Final, NoReturn

import attrs
import trio

from daemon.abi import function_selector
from daemon.address import to_address
from daemon.chain import ChainClient, RpcCall
from daemon.chain_errors import ChainError, Json, RpcTransportError
from daemon.logs import get_logger

_BALANCE_OF_HEX: Final = "0x" + function_selector("balanceOf(address)").hex()
_ADDRESS_PAD: Final = "0" * 24
_TOKEN_CACHE_LIMIT: Final = 4096
_HEX_DIGITS: Final = "0123456789abcdefABCDEF"


class BalanceReadError(ChainError):
    """One token's ``balanceOf`` for one account gave no usable balance."""

    def __init__(
        self, account: str, token: str, problem: str, cause: ChainError | None = None
    ) -> None:
        super().__init__(f"balanceOf({account}) on {token}: {problem}")
        self.account = account
        self.token = token
        self.problem = problem
        self.cause = cause
        """The call's own error (e.g. :class:`~daemon.chain.Reverted`), if the node sent one."""


class BatchFailed(ChainError):
    """A batch failed as a whole with an unexpected (non-chain) error; it is the ``__cause__``."""


class BatcherStopped(ChainError):
    """The balance batcher is not running any more; the read was not answered."""


@attrs.frozen(eq=False)
class _Failed:
    """A reply carrying an error. ``shared``: the same instance went to every caller in a
    batch, so each caller raises its own copy."""

    error: ChainError
    shared: bool


BalanceReply = tuple[dict[str, int], int] | _Failed
"""Balances by token and the block number read at the start of their batch, or an error."""


@attrs.frozen(eq=False)
class BalanceRead:
    """One caller's request: balances of ``account`` for ``tokens`` (checksummed addresses)."""

    account: str
    """``0x`` and 40 lower-case hex digits."""
    tokens: tuple[str, ...]
    reply: trio.MemorySendChannel[BalanceReply]


class BalanceBatcher:
    """Coalesces concurrent balance reads into JSON-RPC batches. See the module docstring.

    Create it, start :meth:`run` in a nursery that outlives every caller
    (``await nursery.start(batcher.run)``), then call :meth:`read` from any task.
    """

    def __init__(
        self,
        chain: ChainClient,
        *,
        window: float = 0.005,
        max_calls: int = 500,
        max_in_flight: int = 4,
        queue_size: int = 10_000,
    ) -> None:
        if window < 0 or not math.isfinite(window):
            raise ValueError("window must be a finite number of seconds >= 0")
        if max_calls < 1 or max_in_flight < 1 or queue_size < 0:
            raise ValueError("max_calls and max_in_flight must be >= 1, queue_size >= 0")
        self.chain = chain
        self.window = window
        """Seconds a batch waits for more reads after its first one arrived."""
        self.max_calls = max_calls
        """``eth_call`` per batch at most (a single larger read is sent alone)."""
        self.max_in_flight = max_in_flight
        # Each caller has at most one read outstanding, so the queue holds at most one entry per
        # portfolio actor; past queue_size callers wait (backpressure) instead of piling up.
        self._send, self._receive = trio.open_memory_channel[BalanceRead](queue_size)
        self._slots = trio.Semaphore(max_in_flight)
        self._tokens: dict[str, str] = {}
        self.batches = 0
        """JSON-RPC batches sent."""
        self.calls = 0
        """``eth_call`` sent in those batches."""
        self.abandoned = 0
        """Reads left out of a batch because their caller was gone."""
        self.failed_batches = 0
        """Batches that failed as a whole (every caller in them got the error)."""
        self._log = get_logger(actor="balances")

    # --- the callers' side ---

    async def read(self, account: str, tokens: Iterable[str]) -> dict[str, int]:
        """Balances of ``account`` (base units) by checksummed token address.

        Raises :class:`BalanceReadError` if a token gave no balance, the batch's
        :class:`~daemon.chain.ChainError` if the whole batch failed, :class:`BatcherStopped` if
        the batcher is gone, ``ValueError`` for a malformed address.
        """
        balances, _block = await self.read_with_block(account, tokens)
        return balances

    def traded(self) -> None:
        """Nothing to do: every read asks the node afresh."""

    async def read_with_block(
        self, account: str, tokens: Iterable[str]
    ) -> tuple[dict[str, int], int | None]:
        """Like :meth:`read`, with the block the balances were read at (the head when their
        batch left; None when no token was asked). The executor refuses a plan whose balances
        predate a trade of the portfolio."""
        account_hex = _account_hex(account)
        token_addresses = tuple(self._token_address(token) for token in tokens)
        if not token_addresses:
            return {}, None
        reply_send, reply_receive = trio.open_memory_channel[BalanceReply](1)
        request = BalanceRead(account=account_hex, tokens=token_addresses, reply=reply_send)
        with reply_receive:
            try:
                await self._send.send(request)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                raise BatcherStopped("the balance batcher is not running") from None
            try:
                reply = await reply_receive.receive()
            except trio.EndOfChannel:
                raise BatcherStopped("the balance batcher stopped before answering") from None
        if isinstance(reply, _Failed):
            if reply.shared:
                raise _own_copy(reply.error) from reply.error
            raise reply.error
        return reply

    def _token_address(self, token: str) -> str:
        # Checksumming costs a keccak; portfolios share a handful of tokens, so remember them.
        address = self._tokens.get(token)
        if address is None:
            address = to_address(token)
            if len(self._tokens) < _TOKEN_CACHE_LIMIT:
                self._tokens[token] = address
        return address

    # --- the actor ---

    async def run(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> NoReturn:
        """Collect and send batches until cancelled. Batches in flight are this task's children."""
        carry: BalanceRead | None = None
        try:
            async with trio.open_nursery() as nursery:
                task_status.started()
                while True:
                    # Take a slot first: while every slot is busy, reads queue up and leave
                    # together in the next batch.
                    await self._slots.acquire()
                    try:
                        group, carry = await self._collect(carry)
                    except BaseException:
                        self._slots.release()
                        raise
                    nursery.start_soon(self._send_batch, group)
        finally:
            # Stopped (shutdown): nothing will answer the reads still queued; closing their reply
            # channels tells their callers (BatcherStopped), and later reads fail at once.
            if carry is not None:
                carry.reply.close()
            while True:
                try:
                    self._receive.receive_nowait().reply.close()
                except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                    break
            self._receive.close()

    async def _collect(
        self, carry: BalanceRead | None
    ) -> tuple[list[BalanceRead], BalanceRead | None]:
        """One batch's reads, and the read that did not fit (the next batch's first)."""
        first = carry if carry is not None else await self._receive.receive()
        group = [first]
        try:
            return await self._fill(group)
        except BaseException:
            for request in group:  # cancelled while collecting: nobody will answer these
                request.reply.close()
            raise

    async def _fill(self, group: list[BalanceRead]) -> tuple[list[BalanceRead], BalanceRead | None]:
        calls = sum(len(request.tokens) for request in group)
        deadline = trio.current_time() + self.window
        while calls < self.max_calls:
            try:
                request = self._receive.receive_nowait()
            except trio.WouldBlock:
                waited: BalanceRead | None = None
                with trio.move_on_at(deadline):
                    waited = await self._receive.receive()
                if waited is None:
                    break
                request = waited
            if calls + len(request.tokens) > self.max_calls:
                return group, request
            group.append(request)
            calls += len(request.tokens)
        return group, None

    def _fail_all(self, requests: list[BalanceRead], error: ChainError) -> None:
        self.failed_batches += 1
        for request in requests:
            _answer(request, _Failed(error, shared=True))

    async def _send_batch(self, group: list[BalanceRead]) -> None:
        try:
            live = [r for r in group if r.reply.statistics().open_receive_channels > 0]
            self.abandoned += len(group) - len(live)
            if not live:
                return
            self.batches += 1
            try:
                # Every balance is read at one explicit block, the head when the batch left:
                # a plan then knows exactly which trades its balances include, even behind a
                # load balancer whose backends lag ("latest" could be an older state).
                block = _block_number(await self.chain.request("eth_blockNumber"))
                tag = hex(block)
                calls: list[RpcCall] = []
                for request in live:
                    data = _BALANCE_OF_HEX + _ADDRESS_PAD + request.account[2:]
                    calls.extend(
                        ("eth_call", [{"to": token, "data": data}, tag]) for token in request.tokens
                    )
                self.calls += len(calls)
                outcomes = await self.chain.batch_outcomes(calls)
            except ChainError as error:
                self._fail_all(live, error)
                return
            except Exception as exc:  # noqa: BLE001 - not the batcher's to crash the process on
                # An unexpected failure (a client bug, an unmapped httpx error) would otherwise
                # take the batcher and the process down; delivered, it costs each portfolio
                # actor one supervised crash, as a direct chain.balances call would.
                self._log.error("balance_batch_failed", error=f"{type(exc).__name__}: {exc}")
                failed = BatchFailed(f"balance batch failed: {type(exc).__name__}: {exc}")
                failed.__cause__ = exc
                self._fail_all(live, failed)
                return
            start = 0
            for request in live:
                end = start + len(request.tokens)
                _answer(request, _balances_of(request, outcomes[start:end], block))
                start = end
        finally:
            for request in group:
                request.reply.close()
            self._slots.release()


def _account_hex(account: str) -> str:
    """``0x`` + 40 lower-case hex digits (raises ``ValueError``). Checksumming every account
    costs a keccak per read (~20 µs); the calldata only needs the bytes."""
    digits = account[2:] if account[:2] in ("0x", "0X") else account
    if len(digits) != 40 or digits.strip(_HEX_DIGITS):
        raise ValueError(f"not an address: {account!r}")
    return "0x" + digits.lower()


def _answer(request: BalanceRead, reply: BalanceReply) -> None:
    # A closed reply channel means the caller is gone (cancelled): nobody to tell.
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, trio.WouldBlock):
        request.reply.send_nowait(reply)


def _block_number(outcome: Json) -> int:
    try:
        return int(outcome, 16)
    except (TypeError, ValueError):
        raise RpcTransportError(f"eth_blockNumber: not a hex number: {outcome!r:.40}") from None


def _balances_of(
    request: BalanceRead, outcomes: list[Json | ChainError], block: int
) -> BalanceReply:
    """One caller's balances from its slice of the batch, or the first token's problem."""
    balances: dict[str, int] = {}
    for token, outcome in zip(request.tokens, outcomes, strict=True):
        if isinstance(outcome, ChainError):
            problem = f"{type(outcome).__name__}: {outcome}"
            return _Failed(BalanceReadError(request.account, token, problem, outcome), False)
        try:
            data = bytes.fromhex(outcome[2:]) if outcome.startswith("0x") else b""
        except (AttributeError, TypeError, ValueError):
            data = b""
            problem = "the reply is not hex data"
        else:
            problem = f"returned {len(data)} bytes, not a uint256 (not an ERC20 contract?)"
        if len(data) < 32:
            return _Failed(BalanceReadError(request.account, token, problem), False)
        balances[token] = int.from_bytes(data[:32], "big")
    return balances, block


def _own_copy(error: ChainError) -> ChainError:
    """A new exception of the same type, message and attributes as ``error``.

    A batch-wide error goes to every caller in the batch; raising one instance in many tasks
    would make them share (and keep growing) one traceback.
    """
    copy = type(error).__new__(type(error))
    copy.args = error.args
    copy.__dict__.update(error.__dict__)
    return copy

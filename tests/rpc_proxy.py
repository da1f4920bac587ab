"""A fault-injecting JSON-RPC proxy between the code under test and anvil.

A real HTTP/1.1 server on 127.0.0.1 (h11 on Trio) forwards every JSON-RPC request, single or
batch, to the upstream node with httpx, and answers with what the node said — unless a rule
injected with :meth:`RpcProxy.inject` says otherwise::

    async with rpc_proxy(devnet.rpc_url) as proxy:
        config = attrs.evolve(devnet.chain_config(), rpc_url=proxy.url)
        proxy.inject("eth_sendRawTransaction", LoseReply())
        ...                                    # the node accepts the tx, the client sees a reset
        assert proxy.count("eth_sendRawTransaction") == 1

Which rules apply to a request
    A rule matches a request when its method is None or any call of the request (a batch's
    calls included) has that method, *and* its fault is relevant to the request
    (:class:`WrongChainId` only to ``eth_chainId``/``net_version``, :class:`StaleHead` only to the
    head-dependent methods; every other fault to anything). ``every=N`` picks every Nth matching
    request; ``times`` bounds how many requests the rule applies to (None: until cleared).
    Rules are checked in the order they were injected. Every applicable *modifier*
    (:class:`Latency`, :class:`WrongChainId`, :class:`StaleHead`, :class:`RpcErrorReply`) applies;
    of the *reply faults* (all the others) only the first applicable one does, and only it is
    counted.

Batches
    Reply faults affect the whole HTTP reply. :class:`RpcErrorReply` replaces the entries of the
    calls with the rule's method (every call if the method is None) and forwards the rest; the
    forwarded entries keep the order anvil returns them in, the replaced ones take their calls'
    places.

Bounds
    Every wait is bounded: upstream requests by ``upstream_timeout`` (an upstream failure is
    answered with HTTP 502), idle client connections by ``idle_timeout``, held replies by the
    fault's seconds; leaving the ``async with`` cancels everything still in flight. An internal
    error of the proxy drops that connection and is raised as :class:`ProxyError` when the
    ``async with`` block ends, so a bug in the proxy cannot pass as an injected fault.
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final

import attrs
import h11
import httpx
import trio

Json = Any

# --- faults ---------------------------------------------------------------------------------


@attrs.frozen
class Latency:
    """Forward after ``seconds``. The request is forwarded even if the client gave up."""

    seconds: float


@attrs.frozen
class RateLimited:
    """HTTP 429 with ``Retry-After: retry_after``; not forwarded."""

    retry_after: float = 1.0


@attrs.frozen
class ServerError:
    """An HTTP error status (5xx) with a text body; not forwarded."""

    status: int = 503


@attrs.frozen
class DropConnection:
    """Close the connection without any HTTP response; not forwarded."""


@attrs.frozen
class Garbage:
    """HTTP 200 whose body is not JSON; not forwarded."""

    body: bytes = b"<html><body>502 Bad Gateway</body></html>"


@attrs.frozen
class GarbageAfterForward:
    """Forward (the node acts on it), then answer HTTP 200 with a body that is not JSON."""

    body: bytes = b"<html><body>502 Bad Gateway</body></html>"


@attrs.frozen
class LoseReply:
    """Forward (the node acts on it), then close the connection without answering."""


@attrs.frozen
class HangAfterForward:
    """Forward, hold the node's reply for ``seconds``, then close without answering."""

    seconds: float


@attrs.frozen
class WrongChainId:
    """Answer ``eth_chainId`` and ``net_version`` with ``chain_id`` (the node is asked anyway)."""

    chain_id: int


@attrs.frozen
class StaleHead:
    """A node stuck at the block that was the head when the rule first applied.

    ``eth_blockNumber`` answers the frozen number; ``eth_getBlockByNumber``, ``eth_getBalance``,
    ``eth_getCode``, ``eth_getStorageAt``, ``eth_call`` and ``eth_getTransactionCount`` with
    ``latest`` (or no block) are asked at the frozen block; a block above it is null; a receipt
    mined above it is null and such a transaction is reported pending. ``pending`` is forwarded
    unchanged (the pool is the node's).
    """


@attrs.frozen
class RpcErrorReply:
    """A JSON-RPC error object in place of the call's answer; that call is not forwarded."""

    code: int
    message: str
    data: Json = None


Fault = (
    Latency
    | RateLimited
    | ServerError
    | DropConnection
    | Garbage
    | GarbageAfterForward
    | LoseReply
    | HangAfterForward
    | WrongChainId
    | StaleHead
    | RpcErrorReply
)
_MODIFIERS: Final = (Latency, WrongChainId, StaleHead, RpcErrorReply)

_CHAIN_ID_METHODS: Final = frozenset({"eth_chainId", "net_version"})
_BLOCK_PARAM_INDEX: Final = {
    "eth_getBlockByNumber": 0,
    "eth_getBalance": 1,
    "eth_getCode": 1,
    "eth_getTransactionCount": 1,
    "eth_call": 1,
    "eth_getStorageAt": 2,
}
"""Methods whose block parameter a frozen head rewrites, and where that parameter is."""
_STALE_HEAD_METHODS: Final = frozenset(
    {
        "eth_blockNumber",
        "eth_getTransactionReceipt",
        "eth_getTransactionByHash",
        *_BLOCK_PARAM_INDEX,
    }
)


def _relevant(fault: Fault, methods: Iterable[str]) -> bool:
    if isinstance(fault, WrongChainId):
        return any(method in _CHAIN_ID_METHODS for method in methods)
    if isinstance(fault, StaleHead):
        return any(method in _STALE_HEAD_METHODS for method in methods)
    return True


# --- rules and the log ------------------------------------------------------------------------


@attrs.define(eq=False)
class Rule:
    """One injected fault. ``seen``: matching requests so far; ``applied``: requests it hit."""

    method: str | None
    fault: Fault
    times: int | None = 1
    every: int | None = None
    seen: int = 0
    applied: int = 0
    removed: bool = False
    frozen_head: int | None = None
    """The block number a :class:`StaleHead` froze (None until it first applied)."""
    _changed: trio.Event = attrs.field(factory=trio.Event, init=False, repr=False)

    @property
    def exhausted(self) -> bool:
        return self.removed or (self.times is not None and self.applied >= self.times)

    def matches(self, methods: Sequence[str]) -> bool:
        if self.exhausted:
            return False
        if self.method is not None and self.method not in methods:
            return False
        return _relevant(self.fault, methods)

    def due(self) -> bool:
        """After ``seen`` counted this request: whether the rule picks it."""
        return self.every is None or self.seen % self.every == 0

    def mark_applied(self) -> None:
        self.applied += 1
        self._changed.set()
        self._changed = trio.Event()

    async def wait_applied(self, count: int = 1) -> None:
        """Until the rule applied ``count`` times. Bound it with ``trio.fail_after``."""
        while self.applied < count:
            await self._changed.wait()


@attrs.frozen
class ProxyEvent:
    """One HTTP request the proxy handled."""

    methods: tuple[str, ...]
    """The JSON-RPC methods of the request, in order (a batch has several)."""
    batch: bool
    faults: tuple[Fault, ...]
    """The faults that applied to it."""
    forwarded: bool
    """Whether (some of) it reached the upstream node."""
    status: int | None
    """The HTTP status answered; None when the connection was closed without an answer."""
    upstream_error: str | None = None
    """Why the upstream node could not be asked (answered with HTTP 502)."""


class ProxyError(Exception):
    """The proxy itself failed while handling a request (a bug in the proxy, not a fault)."""


class _UpstreamFailed(Exception):
    """Internal: the upstream node could not answer a question of the proxy's own."""


# --- the proxy --------------------------------------------------------------------------------


@attrs.frozen
class _Reply:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


_DROP: Final = None
"""A handler result meaning: close the connection without answering."""


@attrs.frozen
class _Call:
    """One JSON-RPC call of a request, with what the rules decided for it."""

    index: int
    body: Json
    method: str
    error: RpcErrorReply | None = None
    freeze: int | None = None
    chain_id: int | None = None


@attrs.define(eq=False)
class RpcProxy:
    """The running proxy. Create it with :func:`rpc_proxy`."""

    url: str
    upstream_url: str
    _upstream: httpx.AsyncClient = attrs.field(repr=False, alias="upstream")
    rules: list[Rule] = attrs.Factory(list)
    log: list[ProxyEvent] = attrs.Factory(list)
    errors: list[BaseException] = attrs.Factory(list)
    _calls: Counter[str] = attrs.field(factory=Counter, repr=False)
    _http_requests: int = attrs.field(default=0, repr=False)

    # --- scripting ---

    def inject(
        self,
        method: str | None,
        fault: Fault,
        *,
        times: int | None = 1,
        every: int | None = None,
    ) -> Rule:
        """Apply ``fault`` to requests calling ``method`` (None: any request); see the module."""
        if times is not None and times < 1:
            raise ValueError("times must be at least 1 (or None: until cleared)")
        if every is not None and every < 1:
            raise ValueError("every must be at least 1")
        rule = Rule(method=method, fault=fault, times=times, every=every)
        self.rules.append(rule)
        return rule

    def remove(self, rule: Rule) -> None:
        """Stop ``rule`` (a frozen head thaws)."""
        rule.removed = True
        with contextlib.suppress(ValueError):
            self.rules.remove(rule)

    def clear(self) -> None:
        """Remove every rule: from now on everything is forwarded untouched."""
        for rule in self.rules:
            rule.removed = True
        self.rules.clear()

    def count(self, method: str | None = None) -> int:
        """Calls of ``method`` received (each call of a batch counts); None: HTTP requests."""
        return self._http_requests if method is None else self._calls[method]

    # --- handling one request ---

    async def handle(self, body: bytes) -> _Reply | None:
        """The reply to one HTTP request body, or None to close the connection unanswered."""
        self._http_requests += 1
        try:
            parsed: Json = json.loads(body)
        except ValueError:
            parsed = None
        batch = isinstance(parsed, list)
        items: list[Json] = parsed if batch else [parsed]
        methods = tuple(
            str(item["method"])
            for item in items
            if isinstance(item, dict) and isinstance(item.get("method"), str)
        )
        self._calls.update(methods)

        modifiers, reply_fault = self._select(methods)
        applied: list[Fault] = [rule.fault for rule in modifiers]
        if reply_fault is not None:
            applied.append(reply_fault)

        def record(forwarded: bool, status: int | None, upstream_error: str | None = None) -> None:
            self.log.append(
                ProxyEvent(methods, batch, tuple(applied), forwarded, status, upstream_error)
            )

        delay = sum(rule.fault.seconds for rule in modifiers if isinstance(rule.fault, Latency))
        if delay:
            await trio.sleep(delay)

        early = _reply_without_forwarding(reply_fault)
        if early is not _FORWARD:
            record(False, None if early is None else early.status)
            return early

        if parsed is None or not all(isinstance(item, dict) for item in items) or not items:
            # Not JSON-RPC we understand: the node shall answer it.
            return await self._forward_raw(body, record, reply_fault)

        try:
            calls = [await self._plan(index, item, modifiers) for index, item in enumerate(items)]
        except _UpstreamFailed as failed:
            record(False, 502, str(failed))
            return _bad_gateway(str(failed))
        to_forward = [call for call in calls if call.error is None]
        upstream_reply: Json = None
        if to_forward:
            bodies = [_rewritten(call) for call in to_forward]
            payload = bodies if batch else bodies[0]
            outcome = await self._post(json.dumps(payload).encode())
            if isinstance(outcome, str):
                record(True, 502, outcome)
                return _bad_gateway(outcome)
            status, upstream_body = outcome
            if status != 200:
                record(True, status)
                return _Reply(status, upstream_body)
            try:
                upstream_reply = json.loads(upstream_body)
            except ValueError:
                record(True, 200)
                return _Reply(200, upstream_body)

        after = _reply_after_forwarding(reply_fault)
        if after is not _FORWARD:
            record(bool(to_forward), None if after is None else after.status)
            if isinstance(reply_fault, HangAfterForward):
                await trio.sleep(reply_fault.seconds)
            return after

        reply = _assemble(calls, to_forward, upstream_reply, batch)
        record(bool(to_forward), 200)
        return _Reply(200, json.dumps(reply).encode())

    def _select(self, methods: Sequence[str]) -> tuple[list[Rule], Fault | None]:
        modifiers: list[Rule] = []
        reply_fault: Fault | None = None
        for rule in list(self.rules):
            if not rule.matches(methods):
                continue
            rule.seen += 1
            if not rule.due():
                continue
            if isinstance(rule.fault, _MODIFIERS):
                modifiers.append(rule)
            elif reply_fault is None:
                reply_fault = rule.fault
            else:
                continue
            rule.mark_applied()
            if rule.exhausted:
                self.rules.remove(rule)
        return modifiers, reply_fault

    async def _plan(self, index: int, item: dict[str, Json], modifiers: list[Rule]) -> _Call:
        method = str(item.get("method", ""))
        error: RpcErrorReply | None = None
        freeze: int | None = None
        chain_id: int | None = None
        for rule in modifiers:
            fault = rule.fault
            if rule.method is not None and rule.method != method:
                continue
            if isinstance(fault, RpcErrorReply) and error is None:
                error = fault
            elif isinstance(fault, WrongChainId) and method in _CHAIN_ID_METHODS:
                chain_id = fault.chain_id
            elif isinstance(fault, StaleHead) and method in _STALE_HEAD_METHODS:
                if rule.frozen_head is None:
                    head = await self._head()
                    if rule.frozen_head is None:  # a concurrent request may have frozen it
                        rule.frozen_head = head
                freeze = rule.frozen_head if freeze is None else min(freeze, rule.frozen_head)
        return _Call(index, item, method, error, freeze, chain_id)

    async def _head(self) -> int:
        request = {"jsonrpc": "2.0", "id": "rpc-proxy-head", "method": "eth_blockNumber"}
        outcome = await self._post(json.dumps(request).encode())
        if isinstance(outcome, str):
            raise _UpstreamFailed(f"cannot freeze the head: {outcome}")
        status, body = outcome
        try:
            return int(json.loads(body)["result"], 16)
        except (ValueError, KeyError, TypeError):
            raise _UpstreamFailed(
                f"cannot freeze the head: HTTP {status}: {body[:200]!r}"
            ) from None

    async def _post(self, body: bytes) -> tuple[int, bytes] | str:
        """The upstream's status and body, or why it could not be asked."""
        try:
            response = await self._upstream.post(self.upstream_url, content=body)
        except httpx.HTTPError as error:
            return f"{type(error).__name__}: {error}"
        return response.status_code, response.content

    async def _forward_raw(
        self,
        body: bytes,
        record: Callable[[bool, int | None, str | None], None],
        reply_fault: Fault | None,
    ) -> _Reply | None:
        outcome = await self._post(body)
        if isinstance(outcome, str):
            record(True, 502, outcome)
            return _bad_gateway(outcome)
        after = _reply_after_forwarding(reply_fault)
        if after is not _FORWARD:
            record(True, None if after is None else after.status, None)
            if isinstance(reply_fault, HangAfterForward):
                await trio.sleep(reply_fault.seconds)
            return after
        status, upstream_body = outcome
        record(True, status, None)
        return _Reply(status, upstream_body)


_FORWARD: Final = _Reply(0, b"")
"""Sentinel: no reply fault decides this reply; forward and answer what the node says."""


def _reply_without_forwarding(fault: Fault | None) -> _Reply | None:
    if isinstance(fault, RateLimited):
        seconds = fault.retry_after
        value = str(int(seconds)) if seconds == int(seconds) else repr(seconds)
        return _Reply(429, b"Too Many Requests", "text/plain", (("retry-after", value),))
    if isinstance(fault, ServerError):
        return _Reply(fault.status, b"Service Unavailable", "text/plain")
    if isinstance(fault, DropConnection):
        return _DROP
    if isinstance(fault, Garbage):
        return _Reply(200, fault.body, "text/html")
    return _FORWARD


def _reply_after_forwarding(fault: Fault | None) -> _Reply | None:
    if isinstance(fault, GarbageAfterForward):
        return _Reply(200, fault.body, "text/html")
    if isinstance(fault, LoseReply | HangAfterForward):
        return _DROP
    return _FORWARD


def _bad_gateway(reason: str) -> _Reply:
    return _Reply(502, f"rpc proxy: upstream failed: {reason}".encode(), "text/plain")


def _rewritten(call: _Call) -> Json:
    """The call as the node is asked it (a frozen head pins ``latest`` to its block)."""
    if call.freeze is None or call.method not in _BLOCK_PARAM_INDEX:
        return call.body
    position = _BLOCK_PARAM_INDEX[call.method]
    params = list(call.body.get("params") or [])
    if len(params) <= position:
        if call.method == "eth_getBlockByNumber":
            return call.body
        params.extend([None] * (position + 1 - len(params)))
        params[position] = "latest"
    if params[position] in ("latest", "safe", "finalized"):
        params[position] = hex(call.freeze)
    return {**call.body, "params": params}


def _answer(call: _Call, entry: Json) -> Json:
    """The node's entry for ``call`` as the faults want it seen."""
    if not isinstance(entry, dict) or "result" not in entry:
        return entry
    result = entry["result"]
    if call.chain_id is not None:
        value = hex(call.chain_id) if call.method == "eth_chainId" else str(call.chain_id)
        return {**entry, "result": value}
    if call.freeze is None:
        return entry
    if call.method == "eth_blockNumber":
        return {**entry, "result": hex(call.freeze)}
    if not isinstance(result, dict) or not isinstance(result.get("blockNumber"), str):
        if (
            call.method == "eth_getBlockByNumber"
            and isinstance(result, dict)
            and isinstance(result.get("number"), str)
            and int(result["number"], 16) > call.freeze
        ):
            return {**entry, "result": None}
        return entry
    if int(result["blockNumber"], 16) <= call.freeze:
        return entry
    if call.method == "eth_getTransactionReceipt":
        return {**entry, "result": None}
    if call.method == "eth_getTransactionByHash":
        pending = {**result, "blockNumber": None, "blockHash": None, "transactionIndex": None}
        return {**entry, "result": pending}
    return entry


def _error_entry(call: _Call, error: RpcErrorReply) -> Json:
    body: dict[str, Json] = {"code": error.code, "message": error.message}
    if error.data is not None:
        body["data"] = error.data
    return {"jsonrpc": "2.0", "id": call.body.get("id"), "error": body}


def _assemble(calls: list[_Call], forwarded: list[_Call], upstream: Json, batch: bool) -> Json:
    if not batch:
        (call,) = calls
        return _error_entry(call, call.error) if call.error else _answer(call, upstream)
    if forwarded and not (isinstance(upstream, list) and len(upstream) == len(forwarded)):
        return upstream  # the node refused the batch as a whole: its answer stands
    entries = iter(upstream or [])
    by_id = {call.body.get("id"): call for call in forwarded}
    reply: list[Json] = []
    for call in calls:
        if call.error is not None:
            reply.append(_error_entry(call, call.error))
            continue
        entry = next(entries)
        owner = by_id.get(entry.get("id")) if isinstance(entry, dict) else None
        reply.append(_answer(owner or call, entry))
    return reply


# --- the HTTP server --------------------------------------------------------------------------


async def _serve_connection(
    stream: trio.SocketStream, proxy: RpcProxy, idle_timeout: float
) -> None:
    connection = h11.Connection(h11.SERVER, max_incomplete_event_size=1 << 24)
    async with stream:
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                with trio.move_on_after(idle_timeout) as idle:
                    data = await stream.receive_some(65536)
                if idle.cancelled_caught or not data:
                    return
                connection.receive_data(data)
                continue
            if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return
            if not isinstance(event, h11.Request):
                continue
            chunks: list[bytes] = []
            while True:
                part = connection.next_event()
                if part is h11.NEED_DATA:
                    with trio.move_on_after(idle_timeout) as idle:
                        data = await stream.receive_some(65536)
                    if idle.cancelled_caught:
                        return
                    connection.receive_data(data)
                elif isinstance(part, h11.Data):
                    chunks.append(bytes(part.data))
                elif isinstance(part, h11.EndOfMessage):
                    break
                elif isinstance(part, h11.ConnectionClosed):
                    return
            reply = await proxy.handle(b"".join(chunks))
            if reply is None:
                return  # closing the stream without a word: the fault is the silence
            headers = [
                ("content-type", reply.content_type),
                ("content-length", str(len(reply.body))),
                *reply.headers,
            ]
            response = h11.Response(status_code=reply.status, headers=headers)
            await stream.send_all(connection.send(response) or b"")
            await stream.send_all(connection.send(h11.Data(data=reply.body)) or b"")
            await stream.send_all(connection.send(h11.EndOfMessage()) or b"")
            if connection.our_state is h11.MUST_CLOSE:
                return
            connection.start_next_cycle()


@asynccontextmanager
async def rpc_proxy(
    upstream_url: str, *, upstream_timeout: float = 10.0, idle_timeout: float = 60.0
) -> AsyncIterator[RpcProxy]:
    """A proxy to ``upstream_url`` on 127.0.0.1 (a free port) for the duration of the block."""
    async with httpx.AsyncClient(
        timeout=httpx.Timeout(upstream_timeout),
        headers={"content-type": "application/json"},
        trust_env=False,  # no HTTP(S)_PROXY: the upstream is a loopback node
    ) as upstream:
        proxy: RpcProxy | None = None

        async def on_connection(stream: trio.SocketStream) -> None:
            assert proxy is not None
            try:
                await _serve_connection(stream, proxy, idle_timeout)
            except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
                pass  # a client that goes away mid-request is its own business
            except Exception as error:  # noqa: BLE001 - reported when the block ends
                proxy.errors.append(error)

        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                functools.partial(trio.serve_tcp, on_connection, 0, host="127.0.0.1")
            )
            port = listeners[0].socket.getsockname()[1]
            proxy = RpcProxy(
                url=f"http://127.0.0.1:{port}", upstream_url=upstream_url, upstream=upstream
            )
            try:
                yield proxy
            finally:
                nursery.cancel_scope.cancel()
        if proxy.errors:
            raise ProxyError(f"the proxy failed {len(proxy.errors)}×") from proxy.errors[0]

"""The health and control server: a Unix stream socket speaking newline-delimited JSON.

Why a Unix socket and not HTTP: the socket's file mode and the peer's kernel-verified uid
(``SO_PEERCRED``) are the access control, with nothing to configure or leak; ``driftd status``,
``nc -U`` and monitoring agents on the host all reach it, nothing off the host can.

Protocol — one JSON object per line in each direction; a connection may carry many requests::

    {"cmd": "health"}                          → {"ok": true, "health": {…document below…}}
    {"cmd": "metrics"}                         → {"ok": true, "metrics": "…Prometheus text…"}
    {"cmd": "rebalance", "portfolio": "main"}  → {"ok": …, "status": …, "message": …, …}
    {"cmd": "pause", "portfolio": "main"}      → {"ok": …, "status": …, "message": …}
    {"cmd": "resume", "portfolio": "main"}     → {"ok": …, "status": …, "message": …}

Every error is ``{"ok": false, "code": CODE, "error": "what is wrong"}`` with ``CODE`` one of
``bad_request`` (not UTF-8, not JSON, not an object, a duplicate key, a field missing or of the
wrong type), ``bad_number`` (a number over 32 characters, NaN, Infinity, a float that
overflows), ``too_deep`` (``[``/``{`` nested over 32 levels), ``too_large`` (a line over 64 KiB,
or over 1 KiB from a peer that may only read; the connection is then closed),
``unknown_command``, ``permission_denied``, ``timeout`` (no complete request in time; the
connection is then closed), ``busy`` (every slot is held by root or the daemon's uid) or
``internal`` (a bug behind the command; logged, the daemon carries on). Replies never echo more
than 40 characters of what the client sent.

Nothing a client sends can stop the server or the daemon. Each request's cost is bounded before
it is parsed (:func:`check_bounds`: line length, nesting depth, number length, all without
recursion), every error in a request becomes an error line, and a connection's task catches
everything, so one connection never cancels the server's nursery. A slow or dead client never
blocks the daemon either: from its connection or its last reply, a client has ``read_timeout``
(10 s) to send one whole request (blank lines do not count), and the same to take a reply.

Mutating commands (``rebalance``, ``pause``, ``resume``) are accepted only from the daemon's own
uid or root; anyone else who can open the socket (mode 0660: the ``driftd`` group) may read
``health`` and ``metrics``. The peer's uid (``SO_PEERCRED``) is read when it connects, before a
byte is read: other peers' lines are limited to 1 KiB, a mutating command from them is refused
on its ``cmd`` alone — its other fields are neither checked nor logged — and they share one
health document and one metrics text per second (an answer may be up to 1 s old), so however
many requests they pipeline the daemon builds at most one of each per second for them.

Connection slots: at most 32 at once, of which 8 are kept for root and the daemon's uid. A
newcomer who finds no slot takes the one of the other peers' connections that has waited
longest for its next request (that connection is closed), so ``driftd status`` always gets an
answer; only when root and the daemon's uid hold every slot is a newcomer answered ``busy``.

Replies to mutating commands come from :class:`Controls` and always carry ``ok`` (bool),
``status`` and ``message``. ``status`` values the CLI maps to exit codes: ``triggered`` /
``evaluated`` / ``paused`` / ``resumed`` (ok), ``cooldown`` (plus ``cooldown_minutes``; the
message is the seed's ``Cooldown active. Next rebalance available in N minutes``), ``busy``
(a rebalance is already in flight), ``not_running`` (paused or parked), ``not_found``.

The health document itself is built by :mod:`daemon.health_document`.
"""

from __future__ import annotations

import errno
import itertools
import json
import math
import os
import re
import socket
import stat
import struct
import unicodedata
from collections.abc import Callable, Mapping
from typing import Any, Final, NoReturn, Protocol

import attrs
import trio

from daemon.logs import get_logger

MAX_LINE: Final = 64 * 1024
"""Longest request line from the daemon's own uid or root, in bytes (the newline excluded)."""
MAX_READ_ONLY_LINE: Final = 1024
"""Longest request line from any other peer (it may only ask for ``health`` and ``metrics``)."""
MAX_DEPTH: Final = 32
"""Deepest nesting of ``[`` and ``{`` in a request; checked before the line is parsed."""
MAX_NUMBER: Final = 32
"""Longest number in a request, in characters; checked before the line is parsed."""
READ_TIMEOUT: Final = 10.0
"""Seconds a client has, after connecting or after its last reply, to send one whole request
line (blank lines do not count), and to take one reply."""
MAX_CONNECTIONS: Final = 32
RESERVED_CONNECTIONS: Final = 8
"""Of :data:`MAX_CONNECTIONS`, slots other peers never get: kept for the daemon's uid and root."""
LINGER_BYTES: Final = 1 << 20
"""At most this much is read and discarded from a client being turned away."""
FAREWELL_SECONDS: Final = 1.0
"""At most this long is spent on a last error line to a client being dropped or turned away."""
REFUSALS_LOGGED: Final = 3
"""Refused mutating commands logged per connection; later ones are answered, not logged."""
SHARED_READ_SECONDS: Final = 1.0
"""Peers that may only read share one health document and one metrics text per this long."""
MAX_NAME: Final = 200
"""Longest portfolio name accepted in a request (names end up in logs)."""
DEFAULT_MODE: Final = 0o660
MUTATING: Final = frozenset({"rebalance", "pause", "resume"})
COMMANDS: Final = ("health", "metrics", "rebalance", "pause", "resume")
ACCEPT_CAPACITY_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
ACCEPT_RETRY_SECONDS: Final = 0.100
_PEERCRED: Final = struct.Struct("3i")


class Controls(Protocol):
    """What the server needs from the running daemon (implemented in :mod:`daemon.app`)."""

    def health(self) -> dict[str, Any]:
        """The whole health document (see the module docstring)."""

    def metrics(self) -> str:
        """Prometheus exposition text."""

    async def rebalance(self, portfolio: str) -> dict[str, Any]:
        """Evaluate ``portfolio`` now. ``{"ok", "status", "message", "cooldown_minutes"?}``."""

    async def pause(self, portfolio: str) -> dict[str, Any]:
        """Stop trading ``portfolio`` until resumed (durable). ``{"ok", "status", "message"}``."""

    async def resume(self, portfolio: str) -> dict[str, Any]:
        """Undo pause, unpark a parked actor. ``{"ok", "status", "message"}``."""


class HealthSocketInUse(Exception):
    """Another process answers on the socket path (a second daemon): refuse to start."""


@attrs.frozen
class PeerCredentials:
    """The connecting process, as the kernel vouches for it (``SO_PEERCRED``)."""

    pid: int
    uid: int
    gid: int


def peer_credentials(sock: trio.socket.SocketType | socket.socket) -> PeerCredentials:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    pid, uid, gid = _PEERCRED.unpack(raw)
    return PeerCredentials(pid=pid, uid=uid, gid=gid)


def may_control(peer: PeerCredentials, own_uid: int) -> bool:
    """Mutating commands: the daemon's own user or root."""
    return peer.uid in (own_uid, 0)


def error_reply(code: str, message: str) -> dict[str, Any]:
    return {"ok": False, "code": code, "error": message}


class RequestError(Exception):
    """A request refused before it reached a command: becomes :func:`error_reply`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# Outside its strings a JSON text is brackets, punctuation, literals and numbers. A string runs
# from a quote to the next unescaped quote (or the end of a broken line); stripping the strings
# first makes the bracket and number scans blind to what a string contains.
_JSON_STRING: Final = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)', re.DOTALL)
_LONG_NUMBER: Final = re.compile(f"[-+.0-9eE]{{{MAX_NUMBER + 1},}}")
_NOT_BRACKET: Final = re.compile(r"[^\[\]{}]+")
_DEPTH_STEP: Final = {"[": 1, "{": 1, "]": -1, "}": -1}


def check_bounds(text: str) -> None:
    """Raise :class:`RequestError` for a request too costly to parse: a number longer than
    :data:`MAX_NUMBER` characters (``int()`` of thousands of digits raises, and costs quadratic
    time below that) or nesting deeper than :data:`MAX_DEPTH` (the C JSON decoder recurses once
    per level, up to ``sys.getrecursionlimit()``, which py_ecc raises to 100 000: far past the
    C stack). Linear in the length of the line; no recursion."""
    bare = _JSON_STRING.sub('""', text)
    if _LONG_NUMBER.search(bare):
        raise RequestError("bad_number", f"a number longer than {MAX_NUMBER} characters")
    if bare.count("[") + bare.count("{") <= MAX_DEPTH:
        return
    # The decoder stops at the first unmatched closing bracket, so the running sum's maximum
    # (not clamped at 0) bounds the depth it can reach.
    steps = map(_DEPTH_STEP.__getitem__, _NOT_BRACKET.sub("", bare))
    if max(itertools.accumulate(steps)) > MAX_DEPTH:
        raise RequestError("too_deep", f"nested deeper than {MAX_DEPTH} levels")


def _prefix(text: str) -> str:
    """What an error may repeat of a client's string: its start, quoted, at most 50 characters."""
    shown = repr(text[:40])
    return shown if len(shown) <= 50 else shown[:49] + "…"


def _no_constant(name: str) -> NoReturn:
    raise RequestError("bad_number", f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise RequestError("bad_number", "a number too large for a float")
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise RequestError("bad_request", f"duplicate key {_prefix(key)}")
        result[key] = value
    return result


def parse_request(line: bytes) -> dict[str, Any]:
    """One request line → its JSON object, or :class:`RequestError`. The work is bounded
    (:func:`check_bounds` runs before the decoder); NaN, Infinity, numbers that overflow a
    float and duplicate keys are refused: JSON has none of them and they could make two readers
    of one line disagree."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError("bad_request", f"request is not UTF-8 (byte {exc.start})") from None
    check_bounds(text)
    try:
        request = json.loads(
            text,
            parse_constant=_no_constant,
            parse_float=_finite_float,
            object_pairs_hook=_unique_keys,
        )
    except json.JSONDecodeError as exc:
        raise RequestError(
            "bad_request", f"request is not JSON: {exc.msg} at column {exc.colno}"
        ) from None
    except (ValueError, RecursionError) as exc:  # bounded above; this is belt and braces
        raise RequestError("bad_request", f"request not parsed ({type(exc).__name__})") from None
    if not isinstance(request, dict):
        raise RequestError("bad_request", 'request must be a JSON object like {"cmd": "health"}')
    return request


def _portfolio_name(cmd: str, value: object) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_NAME:
        raise RequestError(
            "bad_request", f'{cmd} needs "portfolio" (a name of 1 to {MAX_NAME} characters)'
        )
    # Control characters would forge log lines; lone surrogates cannot be encoded anywhere.
    if any(unicodedata.category(char) in ("Cc", "Cs") for char in value):
        raise RequestError("bad_request", f'{cmd}: "portfolio" contains control characters')
    return value


async def handle_request(
    line: bytes,
    controls: Controls,
    peer: PeerCredentials,
    own_uid: int,
    *,
    log_refusal: bool = True,
) -> dict[str, Any]:
    """One request line → its reply. Never raises (for anything the client sent or anything a
    command does): every failure is an error reply.

    Order matters: the line is bounded and parsed, then a mutating command from a peer that may
    not control is refused on its ``cmd`` alone — nothing else in it is looked at or logged."""
    log = get_logger(actor="health")
    cmd = "?"
    try:
        request = parse_request(line)
        named = request.get("cmd")
        if not isinstance(named, str):
            raise RequestError("bad_request", 'missing "cmd" (a string)')
        cmd = named
        if cmd not in COMMANDS:
            raise RequestError(
                "unknown_command", f"unknown cmd {_prefix(cmd)}; known: {', '.join(COMMANDS)}"
            )
        if cmd in MUTATING and not may_control(peer, own_uid):
            if log_refusal:
                log.warning("control_refused", cmd=cmd, uid=peer.uid, pid=peer.pid)
            raise RequestError(
                "permission_denied",
                f"{cmd} is only accepted from the daemon's user (uid {own_uid}) or root; "
                f"you are uid {peer.uid}",
            )
        match cmd:
            case "health":
                return {"ok": True, "health": controls.health()}
            case "metrics":
                return {"ok": True, "metrics": controls.metrics()}
        portfolio = _portfolio_name(cmd, request.get("portfolio"))
        log.info("control_command", cmd=cmd, portfolio=portfolio, uid=peer.uid, pid=peer.pid)
        match cmd:
            case "rebalance":
                reply = await controls.rebalance(portfolio)
            case "pause":
                reply = await controls.pause(portfolio)
            case _:
                reply = await controls.resume(portfolio)
    except RequestError as exc:
        return error_reply(exc.code, exc.message)
    except Exception as exc:  # a bug behind one command must not end the daemon
        log.error("control_failed", cmd=cmd, error=f"{type(exc).__name__}: {exc}", exc_info=exc)
        return error_reply("internal", f"{cmd} failed inside the daemon ({type(exc).__name__})")
    if not isinstance(reply.get("ok"), bool):
        log.error("control_bad_reply", cmd=cmd, reply_keys=sorted(reply))
        return error_reply("internal", f"{cmd}: the daemon gave no ok/not-ok answer")
    return reply


def encode_reply(reply: Mapping[str, Any]) -> bytes:
    """One reply line. ``default=str`` covers Decimals and datetimes a Controls may return; a
    lone surrogate in a string becomes its JSON escape; a reply that cannot be encoded at all
    becomes an ``internal`` error line."""
    try:
        text = json.dumps(reply, default=str, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        get_logger(actor="health").error("control_bad_reply", error=type(exc).__name__)
        text = json.dumps(error_reply("internal", "the daemon's reply could not be encoded"))
    return text.encode("utf-8", "backslashreplace") + b"\n"


class _LineTooLong(Exception):
    pass


@attrs.define(eq=False)
class _LineReader:
    """Splits a byte stream into request lines of at most ``limit`` bytes."""

    stream: trio.SocketStream
    limit: int = MAX_LINE
    buffer: bytearray = attrs.Factory(bytearray)
    eof: bool = False

    async def next_line(self) -> bytes | None:
        """The next line without its newline; None at the end of the stream."""
        while True:
            end = self.buffer.find(b"\n", 0, self.limit + 1)
            if end >= 0:
                line = bytes(self.buffer[:end])
                del self.buffer[: end + 1]
                return line
            if len(self.buffer) > self.limit:
                raise _LineTooLong
            if self.eof:
                # A last request without its newline (printf '...' | nc -U) still counts.
                line, self.buffer = bytes(self.buffer), bytearray()
                return line or None
            data = await self.stream.receive_some(MAX_LINE + 1)
            if data:
                self.buffer += data
            else:
                self.eof = True


@attrs.define(eq=False)
class _SharedReads:
    """:class:`Controls` for peers that may only read: ``health`` and ``metrics`` are built at
    most once per ``max_age`` seconds however many of them ask, so pipelined requests cannot
    keep the daemon building documents. (A failure is not kept: the next request retries.)"""

    controls: Controls
    max_age: float = SHARED_READ_SECONDS
    built: dict[str, tuple[float, Any]] = attrs.Factory(dict)

    def health(self) -> dict[str, Any]:
        document: dict[str, Any] = self._shared("health", self.controls.health)
        return document

    def metrics(self) -> str:
        text: str = self._shared("metrics", self.controls.metrics)
        return text

    def _shared(self, key: str, build: Callable[[], Any]) -> Any:
        now = trio.current_time()
        kept = self.built.get(key)
        if kept is None or now - kept[0] >= self.max_age:
            kept = self.built[key] = (now, build())
        return kept[1]

    async def rebalance(self, portfolio: str) -> dict[str, Any]:
        raise AssertionError("refused before it gets here")  # pragma: no cover

    async def pause(self, portfolio: str) -> dict[str, Any]:
        raise AssertionError("refused before it gets here")  # pragma: no cover

    async def resume(self, portfolio: str) -> dict[str, Any]:
        raise AssertionError("refused before it gets here")  # pragma: no cover


@attrs.define(eq=False)
class _Slot:
    """One admitted connection."""

    peer: PeerCredentials
    privileged: bool
    idle_since: float
    """trio time of the connection or of its last reply: who has waited longest is evicted."""
    scope: trio.CancelScope = attrs.Factory(trio.CancelScope)
    evicted: bool = False


@attrs.define(eq=False)
class _Server:
    """Connection slots and one conversation per connection.

    Slots: at most ``max_connections`` at once, of which peers other than root and the daemon's
    uid get at most ``max_connections - reserved``. When a newcomer finds no slot, the
    unprivileged connection that has waited longest for its next request is dropped to make
    room, so ``driftd status`` always gets in; only when every slot is held by root or the
    daemon's uid is a newcomer turned away (``busy``)."""

    controls: Controls
    own_uid: int
    read_timeout: float
    max_connections: int
    reserved: int = RESERVED_CONNECTIONS
    slots: set[_Slot] = attrs.Factory(set)
    turning_away: int = 0
    shared: _SharedReads = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.shared = _SharedReads(self.controls)

    @property
    def active(self) -> int:
        return len(self.slots)

    async def connection(self, stream: trio.SocketStream) -> None:
        """A connection's whole life. Never raises: one client must not end the server."""
        log = get_logger(actor="health")
        try:
            async with stream:
                await self._serve_one(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError) as exc:
            log.debug("health_client_gone", error=type(exc).__name__)
        except Exception as exc:  # a bug here must not cancel the server
            log.error(
                "health_connection_failed", error=f"{type(exc).__name__}: {exc}", exc_info=exc
            )

    async def _serve_one(self, stream: trio.SocketStream) -> None:
        log = get_logger(actor="health")
        peer = peer_credentials(stream.socket)
        slot = self._admit(peer)
        if slot is None:
            await self._turn_away(stream)
            return
        try:
            with slot.scope:
                await self._converse(stream, slot)
        finally:
            self.slots.discard(slot)
        if slot.evicted:
            log.info("health_client_evicted", uid=peer.uid, pid=peer.pid)

    def _admit(self, peer: PeerCredentials) -> _Slot | None:
        privileged = may_control(peer, self.own_uid)
        others = [slot for slot in self.slots if not slot.privileged]
        full = len(self.slots) >= self.max_connections or (
            not privileged and len(others) >= max(1, self.max_connections - self.reserved)
        )
        if full:
            if not others:
                return None
            victim = min(others, key=lambda slot: slot.idle_since)
            victim.evicted = True
            victim.scope.cancel()
            self.slots.discard(victim)
        slot = _Slot(peer=peer, privileged=privileged, idle_since=trio.current_time())
        self.slots.add(slot)
        return slot

    async def _turn_away(self, stream: trio.SocketStream) -> None:
        if self.turning_away >= self.max_connections:
            return  # a flood: close without a word rather than hold more descriptors
        self.turning_away += 1
        try:
            reply = error_reply(
                "busy",
                f"too many connections: all {self.max_connections} are in use by the daemon's "
                "user or root",
            )
            with trio.move_on_after(min(self.read_timeout, FAREWELL_SECONDS)):
                await stream.send_all(encode_reply(reply))
                await self._linger(stream)
        finally:
            self.turning_away -= 1

    async def _converse(self, stream: trio.SocketStream, slot: _Slot) -> None:
        peer = slot.peer
        limit = MAX_LINE if slot.privileged else MAX_READ_ONLY_LINE
        reader = _LineReader(stream, limit)
        refusals = 0
        while True:
            slot.idle_since = trio.current_time()
            # One deadline from the last reply to the next whole request: an idle client, one
            # that trickles a line byte by byte or sends only blank lines is dropped after
            # read_timeout; a client that keeps asking keeps its connection.
            line: bytes | None = None
            too_large = False
            with trio.move_on_after(self.read_timeout) as scope:
                try:
                    while (line := await reader.next_line()) is not None and not line.strip():
                        pass
                except _LineTooLong:
                    too_large = True
            if too_large:
                whose = (
                    ""
                    if slot.privileged
                    else f" (the limit for uid {peer.uid}, which may only read)"
                )
                reply = error_reply("too_large", f"request line over {limit} bytes{whose}")
                if await self._send(stream, reply):
                    await self._linger(stream)
                return
            if scope.cancelled_caught:
                reply = error_reply(
                    "timeout", f"no complete request within {self.read_timeout:g} s; closing"
                )
                with trio.move_on_after(min(self.read_timeout, FAREWELL_SECONDS)):
                    await stream.send_all(encode_reply(reply))
                return
            if line is None:
                return
            reply = await handle_request(
                line,
                self.controls if slot.privileged else self.shared,
                peer,
                self.own_uid,
                log_refusal=refusals < REFUSALS_LOGGED,
            )
            if reply.get("code") == "permission_denied":
                refusals += 1
            if not await self._send(stream, reply):
                return

    async def _linger(self, stream: trio.SocketStream) -> None:
        """Close gracefully a connection we stop reading: closing a Unix socket with unread
        data resets it, and the client would lose the error reply it has not read yet. So:
        end our side, then discard what the client still sends, within bounds."""
        with trio.move_on_after(self.read_timeout):
            await stream.send_eof()
            drained = 0
            while drained < LINGER_BYTES and (chunk := await stream.receive_some(MAX_LINE)):
                drained += len(chunk)

    async def _send(self, stream: trio.SocketStream, reply: Mapping[str, Any]) -> bool:
        """False when the client did not take the reply in time (the connection is dropped)."""
        with trio.move_on_after(self.read_timeout):
            await stream.send_all(encode_reply(reply))
            return True
        return False


async def _clear_stale_socket(path: str) -> None:
    """A socket file left by a crashed daemon is removed; a live daemon's is not."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise HealthSocketInUse(f"{path} exists and is not a socket; not touching it")
    probe = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with probe:
        try:
            with trio.fail_after(2):
                await probe.connect(path)
        except ConnectionRefusedError:
            get_logger(actor="health").info("stale_health_socket_removed", path=path)
            os.unlink(path)
            return
        except FileNotFoundError:
            return
        except trio.TooSlowError:
            pass  # a listener with a full backlog is still a listener
    raise HealthSocketInUse(f"another process is serving {path}; is driftd already running?")


async def serve_health(
    path: str,
    controls: Controls,
    *,
    mode: int = DEFAULT_MODE,
    own_uid: int | None = None,
    read_timeout: float = READ_TIMEOUT,
    max_connections: int = MAX_CONNECTIONS,
    reserved_connections: int = RESERVED_CONNECTIONS,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Serve the socket at ``path`` until cancelled; the file is removed on the way out.

    ``mode`` is the socket file's permission bits (0660: the daemon's user and group);
    ``own_uid`` is who may send mutating commands besides root (default: this process's
    effective uid); ``read_timeout``, ``max_connections`` and ``reserved_connections`` are
    the limits described in the module docstring (tests shorten them). Nothing a client sends
    ends this function. Raises :class:`HealthSocketInUse` if another daemon serves ``path``."""
    log = get_logger(actor="health")
    owner = os.geteuid() if own_uid is None else own_uid
    await _clear_stale_socket(path)
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    inode: int | None = None
    try:
        await sock.bind(path)
        inode = os.stat(path).st_ino
        os.chmod(path, mode)
        sock.listen(max_connections)
        server = _Server(
            controls=controls,
            own_uid=owner,
            read_timeout=read_timeout,
            max_connections=max_connections,
            reserved=reserved_connections,
        )
        listener = trio.SocketListener(sock)
        async with listener, trio.open_nursery() as nursery:
            log.info("health_socket_listening", path=path, mode=oct(mode))
            task_status.started()
            while True:
                try:
                    stream = await listener.accept()
                except OSError as exc:
                    if exc.errno not in ACCEPT_CAPACITY_ERRNOS:
                        raise
                    log.error("health_accept_failed", error=errno.errorcode[exc.errno])
                    await trio.sleep(ACCEPT_RETRY_SECONDS)
                    continue
                nursery.start_soon(server.connection, stream)
    finally:
        sock.close()
        _remove_own_socket(path, inode)
    raise AssertionError("unreachable")


def _remove_own_socket(path: str, inode: int | None) -> None:
    """Unlink ``path`` only if it is still the socket we bound (not a successor's)."""
    if inode is None:
        return
    try:
        if os.lstat(path).st_ino == inode:
            os.unlink(path)
    except FileNotFoundError:
        pass

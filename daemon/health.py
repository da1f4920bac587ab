"""The health and control server: a Unix stream socket speaking newline-delimited JSON.

Why a Unix socket and not HTTP: the socket's file mode and the peer's kernel-verified uid
(``SO_PEERCRED``) are the access control, with nothing to configure or leak; ``driftd status``,
``nc -U`` and monitoring agents on the host all reach it, nothing off the host can.

The request protocol (commands, replies, error codes, the bounds on a request) is
:mod:`daemon.control_protocol`; this module is the socket, who is connected, and the
connection slots.

Nothing a client sends can stop the server or the daemon. Each request's cost is bounded before
it is parsed (:func:`daemon.control_protocol.check_bounds`: line length, nesting depth, number
length, all without recursion), every error in a request becomes an error line, and a
connection's task catches everything, so one connection never cancels the server's nursery. A
slow or dead client never blocks the daemon either: from its connection or its last reply, a
client has ``read_timeout`` (10 s) to send one whole request (blank lines do not count), and the
same to take a reply.

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

The health document itself is built by :mod:`daemon.health_document`.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import struct
from collections.abc import Callable, Mapping
from typing import Any, Final, NoReturn

import attrs
import trio

from daemon.control_protocol import (
    MAX_LINE,
    MAX_READ_ONLY_LINE,
    Controls,
    PeerCredentials,
    encode_reply,
    error_reply,
    handle_request,
    may_control,
)
from daemon.logs import get_logger

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
DEFAULT_MODE: Final = 0o660
ACCEPT_CAPACITY_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
ACCEPT_RETRY_SECONDS: Final = 0.100
_PEERCRED: Final = struct.Struct("3i")


class HealthSocketInUse(Exception):
    """Another process answers on the socket path (a second daemon): refuse to start."""


def peer_credentials(sock: trio.socket.SocketType | socket.socket) -> PeerCredentials:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    pid, uid, gid = _PEERCRED.unpack(raw)
    return PeerCredentials(pid=pid, uid=uid, gid=gid)


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

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
``bad_request`` (not JSON, not an object, a field missing or of the wrong type),
``unknown_command``, ``too_large`` (a line over 64 KiB; the connection is then closed),
``permission_denied``, ``busy`` (too many connections) or ``internal`` (a bug behind the command;
logged, the daemon carries on). A malformed request never takes the server down, and a slow or
dead client never blocks the daemon: each connection is its own task in the server's nursery, a
request must arrive whole within ``read_timeout`` and a reply must be taken within the same time.

Mutating commands (``rebalance``, ``pause``, ``resume``) are accepted only from the daemon's own
uid or root; anyone else who can open the socket (mode 0660: the ``driftd`` group) may read
``health`` and ``metrics``.

Replies to mutating commands come from :class:`Controls` and always carry ``ok`` (bool),
``status`` and ``message``. ``status`` values the CLI maps to exit codes: ``triggered`` /
``evaluated`` / ``paused`` / ``resumed`` (ok), ``cooldown`` (plus ``cooldown_minutes``; the
message is the seed's ``Cooldown active. Next rebalance available in N minutes``), ``busy``
(a rebalance is already in flight), ``not_running`` (paused or parked), ``not_found``.

Health document (``"schema": 1``; built by :func:`build_health_document`)::

    {
      "schema": 1,
      "status": "ok" | "degraded" | "failing",
      "problems": ["price feed: last tick 312 s ago (max 120 s)", …],   # why not ok
      "version": "0.1.0", "pid": 1234,
      "started_at": ISO-8601, "now": ISO-8601, "uptime_seconds": 3600.0,
      "config": {"generation": 3, "last_reload_error": null | "rebalance.drift_threshold: …"},
      "price_feed": {"source": "oracle", "last_tick_at": ISO | null,
                     "last_tick_age_seconds": 12.3 | null, "max_age_seconds": 120.0,
                     "problems": ["…"]},
      "executor": {"signer": "0x…", "next_nonce": 12 | null, "pending": 0, "handled": 5,
                   "last_loop_age_seconds": 1.5 | null,
                   "unsettled": 0,             # nonces signed, not yet provably consumed
                   "recovering": 0,            # attempts of a previous run being settled
                   "blocked": null | "nonce 7 cannot be sent: …",   # trading paused
                   "stuck_seconds": null | 960.0},  # oldest unsettled, past stuck_after
      "database": {"ok": true, "error": null},
      "chain": {"ok": true, "chain_id": 1, "head_block": 19000000 | null,
                "head_block_at": ISO | null, "head_block_age_seconds": 11.0 | null,
                "error": null},
      "portfolios": {
        "main": {
          "state": "running" | "cooling_down" | "paused" | "parked" | "restarting"
                   | "starting" | "invalid",
          "actor_status": "running",               # the supervisor's word for the actor
          "paused": false, "in_flight": false,
          "last_max_drift": "0.0312" | null,       # a decimal fraction, as a string
          "last_decision": "All tokens within drift tolerance" | null,
          "last_evaluated_at": ISO | null,
          "cooldown_remaining_seconds": 0, "cooldown_remaining_minutes": 0,
          "last_success_at": ISO | null,
          "last_rebalance": {"rebalance_id": 7, "status": "SUCCESS",
                             "tx_hash": "0x…" | null, "error": null} | null,
          "restart_count": 0, "last_error": null
        }
      }
    }

``status``: *failing* when the database or chain is unreachable or prices are stale (no trade
can happen); *degraded* when something needs an operator but trading goes on (a reload error, a
portfolio parked, restarting or invalid, price problems for some tokens, an old chain head, no
price tick yet during start-up); otherwise *ok*. Every reason is listed in ``problems``.
Error texts pass through :func:`~daemon.config.mask_url`: no password reaches the socket.
"""

from __future__ import annotations

import errno
import json
import math
import os
import socket
import stat
import struct
from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final, NoReturn, Protocol

import attrs
import trio

from daemon.config import mask_url
from daemon.cooldown import cooldown_remaining
from daemon.logs import get_logger

if TYPE_CHECKING:
    # Only read here; importing them for real would pull asyncpg into `driftd status`.
    from daemon.executor import ExecutorStatus
    from daemon.portfolio import PortfolioState
    from daemon.supervise import Supervised

SCHEMA_VERSION: Final = 1
MAX_LINE: Final = 64 * 1024
"""Longest request line, in bytes (the newline excluded)."""
READ_TIMEOUT: Final = 10.0
"""Seconds a client has to send one whole request line (and to take one reply)."""
MAX_CONNECTIONS: Final = 32
LINGER_BYTES: Final = 1 << 20
"""At most this much is read and discarded from a client being turned away."""
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


async def handle_request(
    line: bytes, controls: Controls, peer: PeerCredentials, own_uid: int
) -> dict[str, Any]:
    """One request line → its reply. Never raises for anything the client sent."""
    log = get_logger(actor="health")
    try:
        request = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError:
        return error_reply("bad_request", "request is not UTF-8")
    except json.JSONDecodeError as exc:
        return error_reply("bad_request", f"request is not JSON: {exc.msg} at column {exc.colno}")
    if not isinstance(request, dict):
        return error_reply("bad_request", 'request must be a JSON object like {"cmd": "health"}')
    cmd = request.get("cmd")
    if not isinstance(cmd, str):
        return error_reply("bad_request", 'missing "cmd" (a string)')
    if cmd not in COMMANDS:
        return error_reply(
            "unknown_command", f"unknown cmd {cmd[:40]!r}; known: {', '.join(COMMANDS)}"
        )
    portfolio = request.get("portfolio")
    if cmd in MUTATING:
        if not isinstance(portfolio, str) or not 0 < len(portfolio) <= MAX_NAME:
            return error_reply(
                "bad_request", f'{cmd} needs "portfolio" (a name of 1 to {MAX_NAME} characters)'
            )
        if not may_control(peer, own_uid):
            log.warning("control_refused", cmd=cmd, portfolio=portfolio, uid=peer.uid, pid=peer.pid)
            return error_reply(
                "permission_denied",
                f"{cmd} is only accepted from the daemon's user (uid {own_uid}) or root; "
                f"you are uid {peer.uid}",
            )
        log.info("control_command", cmd=cmd, portfolio=portfolio, uid=peer.uid, pid=peer.pid)
    try:
        match cmd:
            case "health":
                return {"ok": True, "health": controls.health()}
            case "metrics":
                return {"ok": True, "metrics": controls.metrics()}
            case "rebalance":
                reply = await controls.rebalance(str(portfolio))
            case "pause":
                reply = await controls.pause(str(portfolio))
            case _:
                reply = await controls.resume(str(portfolio))
    except Exception as exc:  # a bug behind one command must not end the daemon
        log.error("control_failed", cmd=cmd, error=f"{type(exc).__name__}: {exc}", exc_info=exc)
        return error_reply("internal", f"{cmd} failed inside the daemon ({type(exc).__name__})")
    if not isinstance(reply.get("ok"), bool):
        log.error("control_bad_reply", cmd=cmd, reply_keys=sorted(reply))
        return error_reply("internal", f"{cmd}: the daemon gave no ok/not-ok answer")
    return reply


def encode_reply(reply: Mapping[str, Any]) -> bytes:
    """One reply line. ``default=str`` covers Decimals and datetimes a Controls may return."""
    return json.dumps(reply, default=str, ensure_ascii=False).encode() + b"\n"


class _LineTooLong(Exception):
    pass


@attrs.define(eq=False)
class _LineReader:
    """Splits a byte stream into request lines of at most :data:`MAX_LINE` bytes."""

    stream: trio.SocketStream
    buffer: bytearray = attrs.Factory(bytearray)
    eof: bool = False

    async def next_line(self) -> bytes | None:
        """The next line without its newline; None at the end of the stream."""
        while True:
            end = self.buffer.find(b"\n")
            if end >= 0:
                line = bytes(self.buffer[:end])
                del self.buffer[: end + 1]
                if len(line) > MAX_LINE:
                    raise _LineTooLong
                return line
            if len(self.buffer) > MAX_LINE:
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
class _Server:
    controls: Controls
    own_uid: int
    read_timeout: float
    max_connections: int
    active: int = 0

    async def connection(self, stream: trio.SocketStream) -> None:
        log = get_logger(actor="health")
        self.active += 1
        try:
            async with stream:
                if self.active > self.max_connections:
                    await self._send(stream, error_reply("busy", "too many connections"))
                    await self._linger(stream)
                    return
                peer = peer_credentials(stream.socket)
                await self._converse(stream, peer)
        except (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError) as exc:
            log.debug("health_client_gone", error=type(exc).__name__)
        finally:
            self.active -= 1

    async def _converse(self, stream: trio.SocketStream, peer: PeerCredentials) -> None:
        reader = _LineReader(stream)
        while True:
            line: bytes | None = None
            too_large = False
            # The deadline is per request: an idle or trickling client is dropped, a busy one
            # may keep its connection.
            with trio.move_on_after(self.read_timeout) as scope:
                try:
                    line = await reader.next_line()
                except _LineTooLong:
                    too_large = True
            if too_large:
                reply = error_reply("too_large", f"request line over {MAX_LINE} bytes")
                if await self._send(stream, reply):
                    await self._linger(stream)
                return
            if scope.cancelled_caught or line is None:
                return
            if line.strip():
                reply = await handle_request(line, self.controls, peer, self.own_uid)
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
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Serve the socket at ``path`` until cancelled; the file is removed on the way out.

    ``mode`` is the socket file's permission bits (0660: the daemon's user and group);
    ``own_uid`` is who may send mutating commands besides root (default: this process's
    effective uid). Raises :class:`HealthSocketInUse` if another daemon serves ``path``."""
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


# ============================================================================ health document


def _span(seconds: float) -> str:
    hours = seconds / 3600
    return f"{hours / 24:.1f} days" if hours >= 48 else f"{hours:.1f} h"


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat(timespec="seconds")


def _age(now: datetime, moment: datetime | None) -> float | None:
    return None if moment is None else round((now - moment).total_seconds(), 3)


def _masked(text: str | None) -> str | None:
    return None if text is None else mask_url(text)


def portfolio_health(
    supervised: Supervised[PortfolioState], now: datetime, cooldown_minutes: Decimal
) -> dict[str, Any]:
    """One portfolio's entry in the health document."""
    state = supervised.state
    remaining = cooldown_remaining(state.last_success_at, now, cooldown_minutes).total_seconds()
    if supervised.status == "parked":
        summary = "parked"
    elif state.paused:
        summary = "paused"
    elif supervised.status == "backoff":
        summary = "restarting"
    elif supervised.status == "starting":
        summary = "starting"
    elif remaining > 0:
        summary = "cooling_down"
    else:
        summary = "running"
    outcome = state.last_outcome
    return {
        "state": summary,
        "actor_status": supervised.status,
        "paused": state.paused,
        "in_flight": state.in_flight,
        "last_max_drift": None if state.last_max_drift is None else str(state.last_max_drift),
        "last_decision": _masked(state.last_decision),
        "last_evaluated_at": _iso(state.last_evaluated_at),
        "cooldown_remaining_seconds": math.ceil(remaining),
        "cooldown_remaining_minutes": math.ceil(remaining / 60),
        "last_success_at": _iso(state.last_success_at),
        "last_rebalance": None
        if outcome is None
        else {
            "rebalance_id": outcome.rebalance_id,
            "status": outcome.status,
            "tx_hash": outcome.tx_hash,
            "error": _masked(outcome.error),
        },
        "restart_count": supervised.restart_count,
        "last_error": _masked(supervised.last_error),
    }


def build_health_document(
    *,
    now: datetime,
    version: str,
    started_at: datetime,
    config_generation: int,
    last_reload_error: str | None,
    price_source: str,
    last_tick_at: datetime | None,
    max_price_age: float,
    executor: ExecutorStatus,
    database_ok: bool,
    chain_ok: bool,
    head_block: int | None,
    head_block_at: datetime | None,
    actors: Mapping[str, Supervised[PortfolioState]],
    cooldown_minutes: Decimal,
    invalid: Mapping[str, str] | None = None,
    expiring: Mapping[str, float] | None = None,
    price_problems: Sequence[str] = (),
    database_error: str | None = None,
    chain_error: str | None = None,
    chain_id: int | None = None,
    max_head_age: float | None = None,
    trio_now: float | None = None,
    pid: int | None = None,
) -> dict[str, Any]:
    """The health document (schema in the module docstring) from the daemon's plain state.

    Pure: everything it looks at is passed in, so every rule is unit-tested without a daemon.
    ``actors`` is ``Supervisor.actors``; ``invalid`` the portfolios that cannot run, with the
    reason; ``expiring`` the portfolios whose delegations expire soon, with the seconds left;
    ``trio_now`` is ``trio.current_time()`` (the executor's loop clock); ``max_head_age``
    judges the chain head's age (None: not judged — an idle devnet mines no blocks)."""
    failing: list[str] = []
    degraded: list[str] = []
    uptime = (now - started_at).total_seconds()

    if last_reload_error:
        degraded.append(f"config: last reload failed: {mask_url(last_reload_error)}")

    tick_age = _age(now, last_tick_at)
    if tick_age is None:
        (failing if uptime > max_price_age else degraded).append("price feed: no tick yet")
    elif tick_age > max_price_age:
        failing.append(f"price feed: last tick {tick_age:.0f} s ago (max {max_price_age:.0f} s)")
    if price_problems:
        degraded.append(f"price feed: {len(price_problems)} problem(s): {price_problems[0]}")

    if not database_ok:
        failing.append(f"database: unreachable ({mask_url(database_error or 'no answer')})")
    head_age = _age(now, head_block_at)
    if not chain_ok:
        failing.append(f"chain: unreachable ({mask_url(chain_error or 'no answer')})")
    elif max_head_age is not None and head_age is not None and head_age > max_head_age:
        degraded.append(f"chain: head block {head_age:.0f} s old (max {max_head_age:.0f} s)")

    portfolios: dict[str, dict[str, Any]] = {}
    for name, supervised in sorted(actors.items()):
        entry = portfolio_health(supervised, now, cooldown_minutes)
        portfolios[name] = entry
        if entry["state"] in ("parked", "restarting"):
            degraded.append(f"portfolio {name}: {entry['state']} ({entry['last_error']})")
    for name, left in sorted((expiring or {}).items()):
        if name in portfolios:
            portfolios[name]["delegations_expire_in_seconds"] = round(left)
        degraded.append(
            f"portfolio {name}: delegations expired {_span(-left)} ago"
            if left <= 0
            else f"portfolio {name}: delegations expire in {_span(left)}"
        )
    for name, reason in sorted((invalid or {}).items()):
        portfolios[name] = {
            "state": "invalid",
            "actor_status": "not_started",
            "error": mask_url(reason),
        }
        degraded.append(f"portfolio {name}: invalid ({mask_url(reason)})")

    loop_age = (
        None
        if trio_now is None or executor.last_loop_at is None
        else round(trio_now - executor.last_loop_at, 3)
    )
    if executor.degraded is not None:
        degraded.append(f"executor: {mask_url(executor.degraded)}")
    return {
        "schema": SCHEMA_VERSION,
        "status": "failing" if failing else "degraded" if degraded else "ok",
        "problems": failing + degraded,
        "version": version,
        "pid": os.getpid() if pid is None else pid,
        "started_at": _iso(started_at),
        "now": _iso(now),
        "uptime_seconds": round(uptime, 3),
        "config": {
            "generation": config_generation,
            "last_reload_error": _masked(last_reload_error),
        },
        "price_feed": {
            "source": price_source,
            "last_tick_at": _iso(last_tick_at),
            "last_tick_age_seconds": tick_age,
            "max_age_seconds": max_price_age,
            "problems": [mask_url(p) for p in price_problems],
        },
        "executor": {
            "signer": executor.signer,
            "next_nonce": executor.next_nonce,
            "pending": executor.pending,
            "handled": executor.handled,
            "last_loop_age_seconds": loop_age,
            "unsettled": executor.unsettled,
            "recovering": executor.recovering,
            "blocked": _masked(executor.blocked),
            "stuck_seconds": None if executor.stuck_for is None else round(executor.stuck_for, 1),
        },
        "database": {"ok": database_ok, "error": _masked(database_error)},
        "chain": {
            "ok": chain_ok,
            "chain_id": chain_id,
            "head_block": head_block,
            "head_block_at": _iso(head_block_at),
            "head_block_age_seconds": head_age,
            "error": _masked(chain_error),
        },
        "portfolios": portfolios,
    }

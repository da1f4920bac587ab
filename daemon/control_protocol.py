"""The control socket's request protocol: what a request line may be and what comes back.

The server (:mod:`daemon.health`) owns the socket, the peer's credentials and the connection
slots; this module turns one request line into one reply line.

Protocol — one JSON object per line in each direction; a connection may carry many requests::

    {"cmd": "health"}                          → {"ok": true, "health": {…the health document…}}
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

Each request's cost is bounded before it is parsed (:func:`check_bounds`: nesting depth and
number length, without recursion; the server enforces the line lengths), and every error in a
request becomes an error reply: :func:`handle_request` never raises.

Replies to mutating commands come from :class:`Controls` and always carry ``ok`` (bool),
``status`` and ``message``. ``status`` values the CLI maps to exit codes: ``triggered`` /
``evaluated`` / ``paused`` / ``resumed`` (ok), ``cooldown`` (plus ``cooldown_minutes``; the
message is the seed's ``Cooldown active. Next rebalance available in N minutes``), ``busy``
(a rebalance is already in flight), ``not_running`` (paused or parked), ``not_found``.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import unicodedata
from collections.abc import Mapping
from typing import Any, Final, NoReturn, Protocol

import attrs

from daemon.logs import get_logger

MAX_LINE: Final = 64 * 1024
"""Longest request line from the daemon's own uid or root, in bytes (the newline excluded)."""
MAX_READ_ONLY_LINE: Final = 1024
"""Longest request line from any other peer (it may only ask for ``health`` and ``metrics``)."""
MAX_DEPTH: Final = 32
"""Deepest nesting of ``[`` and ``{`` in a request; checked before the line is parsed."""
MAX_NUMBER: Final = 32
"""Longest number in a request, in characters; checked before the line is parsed."""
MAX_NAME: Final = 200
"""Longest portfolio name accepted in a request (names end up in logs)."""
MUTATING: Final = frozenset({"rebalance", "pause", "resume"})
COMMANDS: Final = ("health", "metrics", "rebalance", "pause", "resume")


class Controls(Protocol):
    """What the server needs from the running daemon (implemented in :mod:`daemon.app`)."""

    def health(self) -> dict[str, Any]:
        """The whole health document (built by :mod:`daemon.health_document`)."""

    def metrics(self) -> str:
        """Prometheus exposition text."""

    async def rebalance(self, portfolio: str) -> dict[str, Any]:
        """Evaluate ``portfolio`` now. ``{"ok", "status", "message", "cooldown_minutes"?}``."""

    async def pause(self, portfolio: str) -> dict[str, Any]:
        """Stop trading ``portfolio`` until resumed (durable). ``{"ok", "status", "message"}``."""

    async def resume(self, portfolio: str) -> dict[str, Any]:
        """Undo pause, unpark a parked actor. ``{"ok", "status", "message"}``."""


@attrs.frozen
class PeerCredentials:
    """The connecting process, as the kernel vouches for it (``SO_PEERCRED``)."""

    pid: int
    uid: int
    gid: int


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

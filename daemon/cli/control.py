"""``driftd status``, ``driftd rebalance``, ``driftd pause`` and ``driftd resume``: talking to the
running daemon over its health socket (``health.socket``, see :mod:`daemon.health`).

These run outside Trio, as ordinary blocking programs: one connection, one request line, one
reply line, bounded by ``--timeout``. They import nothing heavy, so monitoring can call
``driftd status`` often.

Exit codes. ``status`` follows the monitoring-plugin convention, because that is who calls it:
0 ok, 1 degraded or failing, 2 the daemon cannot be reached (or gave no health document).
The control commands use sysexits like the rest of the CLI: 0 done; 75 try later (cooldown —
the daemon's message is the seed's ``Cooldown active. Next rebalance available in N minutes`` —,
a rebalance already in flight, the portfolio paused or parked, every connection slot taken);
65 no such portfolio, or a name the daemon refuses (too long, control characters); 77 not
allowed (only the daemon's user or root may control it); 69 the daemon cannot be reached or
refused the request; 70 the command failed inside the daemon.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, Final

from daemon import exitcodes
from daemon.config import Config

if TYPE_CHECKING:
    from daemon.cli.main import Subparsers

STATUS_OK: Final = 0
STATUS_PROBLEM: Final = 1
STATUS_UNREACHABLE: Final = 2
SOFTWARE_ERROR: Final = 70
"""sysexits EX_SOFTWARE: the command failed inside the daemon."""
NO_PERMISSION: Final = 77
"""sysexits EX_NOPERM: mutating commands need the daemon's user or root."""
MAX_REPLY: Final = 64 * 1024 * 1024
STATUS_TIMEOUT: Final = 10.0
CONTROL_TIMEOUT: Final = 10.0
REBALANCE_TIMEOUT: Final = 300.0
"""A rebalance reply may wait for the evaluation and, when it trades, for the receipt."""

# Control reply status → exit code; any other not-ok status is a temporary failure.
_STATUS_EXIT: Final = {"not_found": exitcodes.DATA_ERROR}
_ERROR_EXIT: Final = {
    "permission_denied": NO_PERMISSION,
    "internal": SOFTWARE_ERROR,
    "bad_request": exitcodes.DATA_ERROR,
    "busy": exitcodes.TEMPORARY_FAILURE,
}


class DaemonUnreachable(Exception):
    """No usable answer from the daemon's socket; the message says why and what to check."""


def register(subparsers: Subparsers) -> None:
    """Add ``status``, ``rebalance``, ``pause`` and ``resume`` to the ``driftd`` command line."""
    status = subparsers.add_parser(
        "status",
        help="show the running daemon's health (exit 0 ok, 1 degraded/failing, 2 unreachable)",
    )
    status.add_argument("--json", action="store_true", help="print the health document as JSON")
    status.add_argument(
        "--timeout", type=float, default=STATUS_TIMEOUT, metavar="SECONDS", help="wait this long"
    )
    status.set_defaults(func=cmd_status)

    commands = (
        ("rebalance", "evaluate a portfolio now and rebalance it if it drifted", REBALANCE_TIMEOUT),
        ("pause", "stop evaluating a portfolio until it is resumed", CONTROL_TIMEOUT),
        ("resume", "resume a paused portfolio (also restarts a parked one)", CONTROL_TIMEOUT),
    )
    for name, help_text, timeout in commands:
        parser = subparsers.add_parser(name, help=help_text)
        parser.add_argument("portfolio", metavar="PORTFOLIO", help="portfolio name")
        parser.add_argument("--json", action="store_true", help="print the reply as JSON")
        parser.add_argument(
            "--timeout", type=float, default=timeout, metavar="SECONDS", help="wait this long"
        )
        parser.set_defaults(func=cmd_control, control=name)


# ============================================================================ the client


def request(path: str, message: Mapping[str, Any], timeout: float) -> dict[str, Any]:
    """Send one request line to the daemon at ``path`` and return its reply object."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(path)
            sock.sendall(json.dumps(message).encode() + b"\n")
            data = bytearray()
            while b"\n" not in data and len(data) < MAX_REPLY:
                chunk = sock.recv(1 << 16)
                if not chunk:
                    break
                data += chunk
    except FileNotFoundError:
        raise DaemonUnreachable(f"{path} does not exist: is driftd running?") from None
    except ConnectionRefusedError:
        raise DaemonUnreachable(f"nothing listens on {path}: is driftd running?") from None
    except PermissionError:
        raise DaemonUnreachable(
            f"permission denied on {path}: run as the driftd user, root, or a member of its group"
        ) from None
    except TimeoutError:
        raise DaemonUnreachable(f"no answer from {path} within {timeout:g} s") from None
    except OSError as exc:
        raise DaemonUnreachable(f"{path}: {exc.strerror or exc}") from None
    line = bytes(data).split(b"\n", 1)[0]
    try:
        reply = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError):
        reply = None
    if not isinstance(reply, dict):
        shown = "nothing" if not line else "something that is not a JSON object"
        raise DaemonUnreachable(f"{path} answered {shown}; is it driftd's socket?")
    return reply


# ============================================================================ handlers


def cmd_status(args: argparse.Namespace, config: Config) -> int:
    try:
        reply = request(config.health.socket, {"cmd": "health"}, args.timeout)
    except DaemonUnreachable as exc:
        print(f"driftd: {exc}", file=sys.stderr)
        return STATUS_UNREACHABLE
    document = reply.get("health")
    if reply.get("ok") is not True or not isinstance(document, dict):
        print(f"driftd: the daemon gave no health document: {reply.get('error')}", file=sys.stderr)
        return STATUS_UNREACHABLE
    if args.json:
        print(json.dumps(document, indent=2))
    else:
        print(format_status(document), end="")
    return STATUS_OK if document.get("status") == "ok" else STATUS_PROBLEM


def cmd_control(args: argparse.Namespace, config: Config) -> int:
    message = {"cmd": args.control, "portfolio": args.portfolio}
    try:
        reply = request(config.health.socket, message, args.timeout)
    except DaemonUnreachable as exc:
        print(f"driftd: {exc}", file=sys.stderr)
        return exitcodes.UNAVAILABLE
    if args.json:
        print(json.dumps(reply, indent=2))
    if "error" in reply and reply.get("ok") is not True:
        if not args.json:
            print(f"driftd: {reply['error']}", file=sys.stderr)
        return _ERROR_EXIT.get(str(reply.get("code")), exitcodes.UNAVAILABLE)
    if not args.json:
        print(reply.get("message") or reply.get("status") or "done")
    if reply.get("ok") is True:
        return exitcodes.OK
    return _STATUS_EXIT.get(str(reply.get("status")), exitcodes.TEMPORARY_FAILURE)


# ============================================================================ the status table


def format_status(doc: Mapping[str, Any]) -> str:
    """The health document as a few readable lines and a table of portfolios."""
    lines: list[str] = []
    overall = str(doc.get("status", "unknown")).upper()
    lines.append(
        f"driftd {doc.get('version', '?')}  {overall}  "
        f"(pid {doc.get('pid', '?')}, up {_duration(doc.get('uptime_seconds'))})"
    )
    for problem in doc.get("problems") or []:
        lines.append(f"  ! {problem}")
    lines.extend(f"{label:<12}{text}" for label, text in _component_rows(doc))
    portfolios = doc.get("portfolios") or {}
    if portfolios:
        lines.append("")
        lines.extend(_portfolio_table(portfolios))
    else:
        lines.append("no portfolios")
    return "\n".join(lines) + "\n"


def _component_rows(doc: Mapping[str, Any]) -> list[tuple[str, str]]:
    """One (label, text) line per part of the daemon: config, price feed, executor, database,
    chain."""
    config = _section(doc, "config")
    return [
        (
            "config",
            f"generation {config.get('generation', '?')}, last reload error: "
            f"{config.get('last_reload_error') or 'none'}",
        ),
        ("price feed", _price_feed(_section(doc, "price_feed"))),
        ("executor", _executor(_section(doc, "executor"))),
        ("database", _reachability(_section(doc, "database"))),
        ("chain", _chain(_section(doc, "chain"))),
    ]


def _price_feed(prices: Mapping[str, Any]) -> str:
    return (
        f"{prices.get('source', '?')}, last tick "
        + (
            "never"
            if prices.get("last_tick_age_seconds") is None
            else f"{_duration(prices['last_tick_age_seconds'])} ago"
        )
        + f" (max {_duration(prices.get('max_age_seconds'))})"
    )


def _executor(executor: Mapping[str, Any]) -> str:
    return (
        f"signer {executor.get('signer', '?')}, next nonce "
        f"{_or_dash(executor.get('next_nonce'))}, {executor.get('pending', 0)} pending, "
        f"{executor.get('unsettled', 0)} unsettled tx"
        + (f", blocked: {executor['blocked']}" if executor.get("blocked") else "")
        + (
            f", oldest unsettled {_duration(executor['stuck_seconds'])}"
            if executor.get("stuck_seconds") is not None
            else ""
        )
    )


def _portfolio_table(portfolios: Mapping[str, Any]) -> list[str]:
    table: list[tuple[str, ...]] = [
        ("PORTFOLIO", "STATE", "MAX DRIFT", "COOLDOWN", "LAST REBALANCE", "RESTARTS")
    ]
    table.extend(_portfolio_row(name, entry) for name, entry in portfolios.items())
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in table
    ]


def _section(doc: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = doc.get(key)
    return value if isinstance(value, dict) else {}


def _portfolio_row(name: str, entry: Mapping[str, Any]) -> tuple[str, ...]:
    state = str(entry.get("state", "?")).replace("_", " ")
    if entry.get("state") == "invalid":
        return (name, state, "-", "-", str(entry.get("error", "")), "-")
    remaining = entry.get("cooldown_remaining_minutes") or 0
    last = entry.get("last_rebalance")
    if isinstance(last, dict):
        last_text = f"{last.get('status')} #{last.get('rebalance_id')}"
        if last.get("error"):
            last_text += f": {_shorten(str(last['error']), 40)}"
    else:
        last_text = "-"
    return (
        name,
        state + (" (in flight)" if entry.get("in_flight") else ""),
        _percent(entry.get("last_max_drift")),
        f"{remaining} min" if remaining else "-",
        last_text,
        str(entry.get("restart_count", 0)),
    )


def _reachability(section: Mapping[str, Any]) -> str:
    if section.get("ok"):
        return "ok"
    return f"UNREACHABLE: {section.get('error') or 'no answer'}"


def _chain(section: Mapping[str, Any]) -> str:
    text = _reachability(section)
    if section.get("chain_id") is not None:
        text += f", chain id {section['chain_id']}"
    if section.get("head_block") is not None:
        text += f", head block {section['head_block']}"
        if section.get("head_block_age_seconds") is not None:
            text += f" ({_duration(section['head_block_age_seconds'])} old)"
    return text


def _percent(fraction: object) -> str:
    if fraction is None:
        return "-"
    try:
        return f"{Decimal(str(fraction)) * 100:.2f}%"
    except InvalidOperation:
        return str(fraction)


def _duration(seconds: object) -> str:
    if not isinstance(seconds, int | float):
        return "?"
    whole = round(seconds)
    if whole < 120:
        return f"{whole} s"
    minutes, hours, days = whole // 60, whole // 3600, whole // 86400
    if whole < 7200:
        return f"{minutes} min"
    if whole < 172800:
        return f"{hours} h {minutes % 60:02d} min"
    return f"{days} d {hours % 24} h"


def _or_dash(value: object) -> str:
    return "-" if value is None else str(value)


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"

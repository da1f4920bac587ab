"""Hostile clients on the health/control socket: nothing a client sends can stop the daemon.

Three levels, all against the real server (:func:`daemon.health.serve_health`):

- a corpus of hostile lines (:data:`HOSTILE_LINES`, :data:`UNPRIVILEGED_LINES`) and a
  hypothesis fuzz, with a fake :class:`~daemon.control_protocol.Controls` behind the server;
- connection slots and timeouts: idle, blank-line and trickling clients of another uid can
  neither lock root out nor keep their slots;
- the same corpus sent to a real ``driftd run`` process, which must still answer ``health``.

"Another uid" is a forked child that drops to ``nobody`` with the socket's group as its only
group (what a member of the ``driftd`` group is), connects, and hands its connected sockets back
over ``SCM_RIGHTS``: the kernel keeps the credentials of the ``connect()`` call, so the server's
``SO_PEERCRED`` sees ``nobody`` however the test then uses the socket. That needs root.
"""

from __future__ import annotations

import functools
import json
import math
import os
import pwd
import signal
import socket
import threading
import warnings
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Final

import attrs
import pytest
import trio
import trio.testing
from daemon_harness import daemon_document, driftd_process, write_toml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reliability import BadInput
from structlog.testing import capture_logs
from test_health import FakeControls, Running, serving

import daemon.cli.main as cli
from daemon.config import DatabaseConfig
from daemon.control_protocol import (
    COMMANDS,
    MAX_DEPTH,
    MAX_LINE,
    MAX_NUMBER,
    MAX_READ_ONLY_LINE,
)
from daemon.devtools.devnet_records import Devnet
from daemon.health import (
    MAX_CONNECTIONS,
    RESERVED_CONNECTIONS,
    SHARED_READ_SECONDS,
    serve_health,
)

HEALTH: Final = b'{"cmd": "health"}\n'
HUGE_INT: Final = b'{"cmd": "health", "n": ' + b"1" * 5000 + b"}\n"

# (name, bytes sent on one connection, the code every reply must carry — None: every reply ok).
# Sent by root (the daemon's user or root may control), each on a fresh connection that is
# then closed for writing; afterwards the server must still answer health.
HOSTILE_LINES: Final[tuple[tuple[str, bytes, str | None], ...]] = (
    ("int of 5000 digits", HUGE_INT, "bad_number"),
    (
        "negative int of 5000 digits",
        b'{"cmd": "health", "n": -' + b"9" * 5000 + b"}\n",
        "bad_number",
    ),
    ("float of 5000 digits", b'{"cmd": "health", "n": 0.' + b"1" * 5000 + b"}\n", "bad_number"),
    (
        f"int of {MAX_NUMBER + 1} digits",
        b'{"cmd": "health", "n": ' + b"7" * (MAX_NUMBER + 1) + b"}\n",
        "bad_number",
    ),
    (
        f"int of {MAX_NUMBER} digits (the limit)",
        b'{"cmd": "health", "n": ' + b"7" * MAX_NUMBER + b"}\n",
        None,
    ),
    ("float overflowing to infinity", b'{"cmd": "health", "n": 1e999}\n', "bad_number"),
    ("NaN literal", b'{"cmd": "health", "n": NaN}\n', "bad_number"),
    ("Infinity literal", b'{"cmd": "health", "n": Infinity}\n', "bad_number"),
    ("-Infinity literal", b'{"cmd": "health", "n": -Infinity}\n', "bad_number"),
    (f"{MAX_LINE} '[' (exactly MAX_LINE bytes)", b"[" * MAX_LINE + b"\n", "too_deep"),
    ("objects nested 10 000 deep", b'{"a": ' * 10_000 + b"\n", "too_deep"),
    (
        f"nesting at the limit ({MAX_DEPTH})",
        b'{"cmd": "health", "x": ' + b"[" * (MAX_DEPTH - 1) + b"]" * (MAX_DEPTH - 1) + b"}\n",
        None,
    ),
    (
        f"nesting one over the limit ({MAX_DEPTH + 1})",
        b'{"cmd": "health", "x": ' + b"[" * MAX_DEPTH + b"]" * MAX_DEPTH + b"}\n",
        "too_deep",
    ),
    (
        "brackets inside a string are not nesting",
        b'{"cmd": "health", "x": "' + b"[{" * 30_000 + b'"}\n',
        None,
    ),
    ("request of exactly MAX_LINE bytes", HEALTH[:-1].ljust(MAX_LINE) + b"\n", None),
    ("line of MAX_LINE + 1 bytes", HEALTH[:-1].ljust(MAX_LINE + 1) + b"\n", "too_large"),
    ("3 x MAX_LINE bytes without a newline", b"x" * (3 * MAX_LINE), "too_large"),
    ("invalid UTF-8", b"\xff\xfe\n", "bad_request"),
    ("UTF-8-encoded surrogate", b'{"cmd": "\xed\xa0\x80"}\n', "bad_request"),
    ("overlong UTF-8", b'{"cmd": "\xc0\xaf"}\n', "bad_request"),
    ("UTF-8 byte-order mark", b"\xef\xbb\xbf" + HEALTH, "bad_request"),
    ("NUL after the object", b'{"cmd": "health"}\x00\n', "bad_request"),
    ("NUL inside a string", b'{"cmd": "heal\x00th"}\n', "bad_request"),
    ("NUL bytes only", b"\x00" * 100 + b"\n", "bad_request"),
    ("escaped NUL in cmd", b'{"cmd": "health\\u0000"}\n', "unknown_command"),
    ("lone surrogate as portfolio", b'{"cmd": "pause", "portfolio": "\\ud800"}\n', "bad_request"),
    (
        "log-forging portfolio name",
        b'{"cmd": "pause", "portfolio": "main\\n{\\"event\\": \\"forged\\"}"}\n',
        "bad_request",
    ),
    (
        "portfolio name of 201 characters",
        b'{"cmd": "pause", "portfolio": "' + b"p" * 201 + b'"}\n',
        "bad_request",
    ),
    ("a JSON array", b'["health"]\n', "bad_request"),
    ("a JSON string", b'"health"\n', "bad_request"),
    ("a JSON number", b"42\n", "bad_request"),
    ("JSON null", b"null\n", "bad_request"),
    ("JSON true", b"true\n", "bad_request"),
    ("empty object", b"{}\n", "bad_request"),
    ("cmd is not a string", b'{"cmd": ["health"]}\n', "bad_request"),
    (
        "duplicate cmd key",
        b'{"cmd": "health", "cmd": "pause", "portfolio": "main"}\n',
        "bad_request",
    ),
    ("unknown command", b'{"cmd": "shutdown"}\n', "unknown_command"),
    (
        "unknown command of 60 000 characters",
        b'{"cmd": "' + b"A" * 60_000 + b'"}\n',
        "unknown_command",
    ),
    ("half a line, then EOF", b'{"cmd": "pause", "portf', "bad_request"),
    ("an HTTP request", b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", "bad_request"),
    ("50 int-of-5000-digits lines in one write", HUGE_INT * 50, "bad_number"),
    ("1000 health requests in one write", HEALTH * 1000, None),
    ("CRLF line ending", b'{"cmd": "health"}\r\n', None),
)

# Sent by another uid (a member of the socket's group): it may read, never control.
UNPRIVILEGED_LINES: Final[tuple[tuple[str, bytes, str | None], ...]] = (
    ("pause", b'{"cmd": "pause", "portfolio": "main"}\n', "permission_denied"),
    ("pause without a portfolio", b'{"cmd": "pause"}\n', "permission_denied"),
    (
        "rebalance with a list as portfolio",
        b'{"cmd": "rebalance", "portfolio": ["main"]}\n',
        "permission_denied",
    ),
    (
        f"resume padded past {MAX_READ_ONLY_LINE} bytes",
        b'{"cmd": "resume", "portfolio": "main", "pad": "' + b"x" * MAX_READ_ONLY_LINE + b'"}\n',
        "too_large",
    ),
    ("int of 5000 digits", HUGE_INT, "too_large"),
    ("int of 100 digits", b'{"cmd": "health", "n": ' + b"1" * 100 + b"}\n", "bad_number"),
    ("1000 '['", b"[" * 1000 + b"\n", "too_deep"),
    (
        "pause pipelined 20 times",
        b'{"cmd": "pause", "portfolio": "main"}\n' * 20,
        "permission_denied",
    ),
    ("health", HEALTH, None),
    ("metrics", b'{"cmd": "metrics"}\n', None),
)

ERROR_CODES: Final = frozenset(
    {
        "bad_request",
        "bad_number",
        "too_deep",
        "too_large",
        "unknown_command",
        "permission_denied",
        "timeout",
        "busy",
        "internal",
    }
)
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="another uid needs root (setuid)")


# ------------------------------------------------------------------ helpers


@pytest.fixture
async def server(socket_dir: Path) -> AsyncIterator[Running]:
    async with serving(socket_dir, read_timeout=2.0) as running:
        yield running


def strict_json(line: bytes) -> Any:
    """A reply line must be real JSON (no NaN or Infinity)."""

    def refuse(name: str) -> None:
        raise AssertionError(f"{name} in a reply")

    return json.loads(line, parse_constant=refuse)


async def exchange(stream: trio.SocketStream, payload: bytes) -> list[dict[str, Any]]:
    """Send ``payload``, end our side, read every reply until the server closes."""
    async with stream:
        await stream.send_all(payload)
        with suppress(trio.BrokenResourceError):  # the server already hung up (too large)
            await stream.send_eof()
        data = b""
        try:
            while chunk := await stream.receive_some(1 << 20):
                data += chunk
        except trio.BrokenResourceError:
            pass  # reset after the server's last line
    return [strict_json(line) for line in data.splitlines()]


async def converse(path: str, payload: bytes) -> list[dict[str, Any]]:
    return await exchange(await trio.open_unix_socket(path), payload)


async def answers_health(path: str) -> bool:
    (reply,) = await converse(path, HEALTH)
    return reply["ok"] is True and isinstance(reply["health"], dict)


def assert_replies(name: str, replies: list[dict[str, Any]], expected: str | None) -> None:
    assert replies, f"{name}: no reply at all"
    for reply in replies:
        assert isinstance(reply, dict), name
        if expected is None:
            assert reply["ok"] is True, (name, reply)
        else:
            assert reply == {"ok": False, "code": expected, "error": reply["error"]}, name
            # What is wrong, without the client's bytes (at most a 40-character prefix).
            assert 0 < len(reply["error"]) <= 200, (name, reply["error"][:300])


def _connect_as_nobody(path: str, count: int) -> list[socket.socket]:
    """``count`` connections to ``path`` made by ``nobody`` in the socket file's group (fork,
    drop privileges, connect, pass the sockets back). Blocking: run it in a thread."""
    nobody = pwd.getpwnam("nobody")
    group = os.stat(path).st_gid
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            ours.close()
            os.setgroups([group])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            connections = []
            for _ in range(count):
                connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                connection.settimeout(10)
                connection.connect(path)
                connections.append(connection)
            socket.send_fds(theirs, [b"x"], [c.fileno() for c in connections])
            code = 0
        finally:
            os._exit(code)
    theirs.close()
    with ours:
        ours.settimeout(20)
        _, fds, _, _ = socket.recv_fds(ours, 16, count)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert len(fds) == count
    return [socket.socket(fileno=fd) for fd in fds]


async def connect_as_nobody(path: str, count: int = 1) -> list[trio.SocketStream]:
    plain = await trio.to_thread.run_sync(_connect_as_nobody, path, count)
    return [trio.SocketStream(trio.socket.from_stdlib_socket(s)) for s in plain]


# ------------------------------------------------------------------ the corpus, the fake daemon


@pytest.mark.parametrize(
    ("name", "payload", "expected"), HOSTILE_LINES, ids=[case[0] for case in HOSTILE_LINES]
)
@pytest.mark.bad_input
async def test_hostile_line_gets_an_error_and_the_server_carries_on(
    server: Running, name: str, payload: bytes, expected: str | None, bad_input: BadInput
) -> None:
    _describe(bad_input, "socket", name, payload, expected)
    with trio.fail_after(10):
        replies = await converse(server.path, payload)
        bad_input.observed = _observed(replies)
        assert_replies(name, replies, expected)
        assert await answers_health(server.path)
    assert server.controls.calls == []
    bad_input.unharmed = "health still answered; no control action taken"


def _describe(record: BadInput, area: str, name: str, payload: bytes, expected: str | None) -> None:
    record.area = area
    shown = payload[:40].decode("utf-8", "backslashreplace").replace("\n", "⏎")
    record.given = f"{name}: {len(payload)} bytes, `{shown}`{'…' if len(payload) > 40 else ''}"
    record.expected = f"error `{expected}`" if expected else "every reply ok"


def _observed(replies: list[dict[str, Any]]) -> str:
    codes = [str(reply.get("code") or ("ok" if reply.get("ok") else "?")) for reply in replies]
    shown = ", ".join(codes[:4]) + (f", … ({len(codes)} replies)" if len(codes) > 4 else "")
    return shown or "no reply (connection closed)"


async def test_every_line_of_a_pipelined_mix_is_answered_in_order(server: Running) -> None:
    # Every case made of whole non-blank lines, all in one write on one connection: one reply
    # per line, in order, each with its case's code.
    cases = [
        (payload, code)
        for _, payload, code in HOSTILE_LINES
        if payload.endswith(b"\n") and code != "too_large" and b"\r\n\r\n" not in payload
    ]
    expected = [code for payload, code in cases for _ in range(payload.count(b"\n"))]
    with trio.fail_after(20):
        replies = await converse(server.path, b"".join(payload for payload, _ in cases))
        assert await answers_health(server.path)
    assert [reply.get("code") for reply in replies] == expected
    assert server.controls.calls == []


@needs_root
@pytest.mark.parametrize(
    ("name", "payload", "expected"),
    UNPRIVILEGED_LINES,
    ids=[case[0] for case in UNPRIVILEGED_LINES],
)
@pytest.mark.bad_input
async def test_another_uid_may_only_read_and_is_refused_before_anything_else(
    server: Running, name: str, payload: bytes, expected: str | None, bad_input: BadInput
) -> None:
    _describe(bad_input, "socket (another uid)", name, payload, expected)
    with trio.fail_after(10), capture_logs() as logs:
        (stream,) = await connect_as_nobody(server.path)
        replies = await exchange(stream, payload)
        bad_input.observed = _observed(replies)
        assert_replies(name, replies, expected)
        assert await answers_health(server.path)
    assert server.controls.calls == []
    bad_input.unharmed = "health still answered; no control action taken"
    # A refusal is logged with who asked, never with what else the line carried; a flood of
    # refusals on one connection is answered but logged only a few times.
    refusals = [e for e in logs if e["event"] == "control_refused"]
    assert all(set(e) >= {"cmd", "uid", "pid"} and "portfolio" not in e for e in refusals)
    assert len(refusals) <= 3


@needs_root
async def test_pipelined_reads_from_another_uid_build_one_document_per_second(
    socket_dir: Path,
) -> None:
    @attrs.define
    class Counting(FakeControls):
        built: int = 0

        def health(self) -> dict[str, Any]:
            self.built += 1
            return super().health()

    controls = Counting()
    path = str(socket_dir / "driftd.sock")
    with trio.fail_after(10), capture_logs():
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_health, path, controls)
            streams = await connect_as_nobody(path, 4)
            started = trio.current_time()
            async with trio.open_nursery() as clients:
                for stream in streams:
                    clients.start_soon(exchange, stream, HEALTH * 500)
            elapsed = trio.current_time() - started
            # 2000 requests, at most one document per started second.
            assert controls.built <= math.floor(elapsed / SHARED_READ_SECONDS) + 1
            # Root and the daemon's uid always get a fresh document.
            before = controls.built
            assert await answers_health(path)
            assert controls.built == before + 1
            nursery.cancel_scope.cancel()


async def test_a_reply_that_cannot_be_encoded_is_an_internal_error(socket_dir: Path) -> None:
    @attrs.define
    class Circular(FakeControls):
        def health(self) -> dict[str, Any]:
            loop: dict[str, Any] = {}
            loop["self"] = loop
            return loop

    path = str(socket_dir / "driftd.sock")
    with trio.fail_after(5), capture_logs():
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_health, path, Circular())
            (reply,) = await converse(path, HEALTH)
            assert reply["code"] == "internal"
            (metrics,) = await converse(path, b'{"cmd": "metrics"}\n')
            assert metrics["ok"] is True
            nursery.cancel_scope.cancel()


# ------------------------------------------------------------------ slots and timeouts


async def read_to_end(stream: trio.SocketStream) -> list[dict[str, Any]]:
    """Everything the server still sends on ``stream`` until it hangs up."""
    data = b""
    async with stream:
        with suppress(trio.BrokenResourceError):
            while chunk := await stream.receive_some(1 << 16):
                data += chunk
    return [strict_json(line) for line in data.splitlines()]


@needs_root
async def test_idle_clients_of_another_uid_cannot_lock_root_out(socket_dir: Path) -> None:
    controls = FakeControls()
    path = str(socket_dir / "driftd.sock")
    timeout = 1.5
    with trio.fail_after(30), capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            await nursery.start(
                functools.partial(serve_health, path, controls, read_timeout=timeout)
            )
            # Every slot asked for by idle clients of another uid (the driftd group)...
            idle = await connect_as_nobody(path, MAX_CONNECTIONS)
            await trio.testing.wait_all_tasks_blocked()
            # ... and root can still pause, root and the group can still read health.
            (paused,) = await converse(path, b'{"cmd": "pause", "portfolio": "main"}\n')
            assert paused == {"ok": True, "status": "paused", "message": "main paused"}
            assert await answers_health(path)
            (newcomer,) = await connect_as_nobody(path)
            (reply,) = await exchange(newcomer, HEALTH)
            assert reply["ok"] is True
            # The idle clients are all closed within the read timeout.
            started = trio.current_time()
            farewells: list[list[dict[str, Any]]] = []

            async def drain(stream: trio.SocketStream) -> None:
                farewells.append(await read_to_end(stream))

            async with trio.open_nursery() as readers:
                for stream in idle:
                    readers.start_soon(drain, stream)
            assert trio.current_time() - started < timeout + 1.0
            nursery.cancel_scope.cancel()
    assert controls.calls == [("pause", "main")]
    # RESERVED_CONNECTIONS slots are never given to another uid: the 8 newest of the 32 took
    # the 8 oldest clients' slots, and the newcomer took one more. The rest timed out.
    timed_out = [f for f in farewells if f]
    assert len(timed_out) == MAX_CONNECTIONS - RESERVED_CONNECTIONS - 1
    assert all(
        f
        == [
            {
                "ok": False,
                "code": "timeout",
                "error": f"no complete request within {timeout:g} s; closing",
            }
        ]
        for f in timed_out
    )
    evicted = [e for e in logs if e["event"] == "health_client_evicted"]
    assert len(evicted) == RESERVED_CONNECTIONS + 1
    assert {e["uid"] for e in evicted} == {pwd.getpwnam("nobody").pw_uid}


async def test_blank_lines_and_trickled_lines_do_not_keep_a_slot(server: Running) -> None:
    # The server fixture's read timeout is 2 s: a client must send a whole request within it.
    async def blank_lines(stream: trio.SocketStream) -> None:
        with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while True:
                await stream.send_all(b"\n")
                await trio.sleep(0.1)

    async def trickle(stream: trio.SocketStream) -> None:
        with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            for byte in HEALTH:  # a whole line would take 4.5 s
                await stream.send_all(bytes([byte]))
                await trio.sleep(0.25)

    results: dict[str, tuple[float, list[dict[str, Any]]]] = {}
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for name, behaviour in (("blank lines", blank_lines), ("trickle", trickle)):
                stream = await trio.open_unix_socket(server.path)
                started = trio.current_time()

                async def watch(name: str, stream: trio.SocketStream, started: float) -> None:
                    replies = await read_to_end(stream)
                    results[name] = (trio.current_time() - started, replies)

                nursery.start_soon(behaviour, stream)
                nursery.start_soon(watch, name, stream, started)
        assert await answers_health(server.path)
    for name, (held, replies) in results.items():
        assert held < 2.0 + 1.0, name
        assert [r["code"] for r in replies] == ["timeout"], name


async def test_the_cli_maps_refusals_to_exit_codes(
    socket_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(socket_dir / "driftd.sock")
    monkeypatch.setenv("DRIFTD_HEALTH_SOCKET", path)
    monkeypatch.delenv("DRIFTD_CONFIG", raising=False)
    with trio.fail_after(20), capture_logs():
        async with trio.open_nursery() as nursery:
            await nursery.start(
                functools.partial(serve_health, path, FakeControls(), max_connections=1)
            )
            # A name the daemon refuses: 65, and the message says why.
            code = await trio.to_thread.run_sync(cli.main, ["pause", "p" * 201])
            assert code == 65
            assert "a name of 1 to 200 characters" in capsys.readouterr().err
            # Every slot held by root: busy, try later (75).
            async with await trio.open_unix_socket(path):
                await trio.testing.wait_all_tasks_blocked()
                code = await trio.to_thread.run_sync(cli.main, ["pause", "main"])
            assert code == 75
            assert "too many connections" in capsys.readouterr().err
            nursery.cancel_scope.cancel()


# ------------------------------------------------------------------ a real driftd run


def tail(log_file: Path) -> str:
    """The daemon's last output, for an assertion's message."""
    return log_file.read_text()[-3000:]


async def wait_until_answering(path: str, process: trio.Process, log_file: Path) -> None:
    with trio.move_on_after(60):
        while True:
            assert process.returncode is None, tail(log_file)
            try:
                if await answers_health(path):
                    return
            except OSError:
                pass
            await trio.sleep(0.1)
    raise AssertionError(f"driftd never answered on {path}:\n{tail(log_file)}")


@pytest.mark.usefixtures("chain")
async def test_hostile_lines_do_not_stop_a_real_driftd_run(
    devnet: Devnet, db_config: DatabaseConfig, tmp_path: Path, socket_dir: Path
) -> None:
    path = str(socket_dir / "driftd.sock")
    document = daemon_document(devnet, db_config, health={"socket": path}, log={"format": "json"})
    config_path = write_toml(tmp_path / "driftd.toml", document)
    env = {**os.environ, "DRIFTD_SIGNER_KEY": devnet.signer_key.reveal()}
    log_file = tmp_path / "driftd.log"
    with trio.fail_after(120):
        async with driftd_process(config_path, env, log_file) as process:
            await wait_until_answering(path, process, log_file)
            for name, payload, expected in HOSTILE_LINES:
                replies = await converse(path, payload)
                assert process.returncode is None, (name, tail(log_file))
                assert_replies(name, replies, expected)
                assert await answers_health(path), name
            if os.geteuid() == 0:
                for name, payload, expected in UNPRIVILEGED_LINES:
                    (stream,) = await connect_as_nobody(path)
                    assert_replies(name, await exchange(stream, payload), expected)
                    assert process.returncode is None, (name, tail(log_file))
                    assert await answers_health(path), name
            # The slots: the group's idle clients cannot lock root out of the real daemon.
            idle = await connect_as_nobody(path, MAX_CONNECTIONS) if os.geteuid() == 0 else []
            (reply,) = await converse(path, b'{"cmd": "pause", "portfolio": "no-such"}\n')
            assert reply["status"] == "not_found"
            assert await answers_health(path)
            for stream in idle:
                await stream.aclose()
            process.send_signal(signal.SIGTERM)
            assert await process.wait() == 0, tail(log_file)
    events = [
        json.loads(line) for line in log_file.read_text().splitlines() if line.startswith("{")
    ]
    assert not [
        e for e in events if e.get("event") in ("health_connection_failed", "control_failed")
    ]


# ------------------------------------------------------------------ fuzz


@attrs.define
class ServerThread:
    """The real server in its own thread and Trio loop, for hypothesis (whose examples each run
    their own ``trio.run``): one server lives through every example, so leaked slots or state
    would show."""

    path: str
    controls: FakeControls
    error: BaseException | None = None
    token: trio.lowlevel.TrioToken | None = None
    cancel_scope: trio.CancelScope | None = None

    def run(self, ready: threading.Event) -> None:
        async def main() -> None:
            async with trio.open_nursery() as nursery:
                self.token = trio.lowlevel.current_trio_token()
                self.cancel_scope = nursery.cancel_scope
                await nursery.start(
                    functools.partial(serve_health, self.path, self.controls, read_timeout=2.0)
                )
                ready.set()

        try:
            trio.run(main)
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            self.error = exc
        finally:
            ready.set()

    def stop(self) -> None:
        if self.token is not None and self.cancel_scope is not None and self.error is None:
            with suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(self.cancel_scope.cancel, trio_token=self.token)


@contextmanager
def server_in_a_thread(path: str) -> Iterator[ServerThread]:
    running = ServerThread(path, FakeControls())
    ready = threading.Event()
    thread = threading.Thread(target=running.run, args=(ready,), daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield running
    finally:
        running.stop()
        thread.join(10)
    if running.error is not None:
        raise running.error


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()  # NaN and Infinity included: json.dumps writes them as bare words
    | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=40,
)
REQUESTS = st.fixed_dictionaries(
    {"cmd": st.sampled_from([*COMMANDS, "", "shutdown", "HEALTH"]) | st.text(max_size=10)},
    optional={"portfolio": JSON_VALUES, "extra": JSON_VALUES},
).map(lambda request: json.dumps(request).encode())
TOKENS = st.sampled_from(
    [b"[", b"]", b"{", b"}", b'"', b"\\", b":", b",", b"1", b"9" * 40, b"e", b"-", b"NaN",
     b"Infinity", b'"cmd"', b'"health"', b'"pause"', b'"portfolio"', b"\x00", b"\xff", b" ",
     b"\n", b"\r", b"\\u0000", b"\\ud800", b"true", b"null"]
)  # fmt: skip
LINES = st.one_of(
    REQUESTS,
    JSON_VALUES.map(lambda value: json.dumps(value).encode()),
    st.lists(TOKENS, max_size=400).map(b"".join),
    st.binary(max_size=3000),
    st.integers(1, 2 * MAX_DEPTH).map(lambda depth: b"[" * depth + b"]" * depth),
    st.integers(1, 70_000).map(lambda depth: b"[" * depth),
    st.integers(1, 6000).map(lambda digits: b'{"cmd": "health", "n": ' + b"8" * digits + b"}"),
    st.integers(MAX_LINE - 2, MAX_LINE + 2).map(lambda size: HEALTH[:-1].ljust(size)),
)
PAYLOADS = st.lists(LINES, min_size=1, max_size=8).map(lambda lines: b"\n".join(lines)) | st.tuples(
    st.lists(LINES, min_size=1, max_size=8), st.booleans()
).map(lambda pair: b"\n".join(pair[0]) + (b"\n" if pair[1] else b""))


def expected_replies(payload: bytes) -> int:
    """How many replies the protocol promises: one per non-blank line, the last one even
    without its newline, until a line over the limit (answered, then the connection ends)."""
    count = 0
    for line in payload.split(b"\n"):
        if len(line) > MAX_LINE:
            return count + 1
        if line.strip():
            count += 1
    return count


@pytest.fixture
def fuzz_server(socket_dir: Path) -> Iterator[ServerThread]:
    with server_in_a_thread(str(socket_dir / "fuzz.sock")) as running:
        yield running


@settings(
    max_examples=200,
    deadline=None,
    # One server for every example, on purpose: leaked slots or state would show.
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(payload=PAYLOADS)
def test_fuzz_the_real_server(fuzz_server: ServerThread, payload: bytes) -> None:
    async def example() -> None:
        with trio.fail_after(20):
            replies = await converse(fuzz_server.path, payload)
            assert len(replies) == expected_replies(payload)
            for reply in replies:
                assert isinstance(reply["ok"], bool)
                if not reply["ok"] and "code" in reply:
                    assert reply["code"] in ERROR_CODES, reply
                    assert len(reply["error"]) <= 200
            assert await answers_health(fuzz_server.path)

    trio.run(example)
    assert fuzz_server.error is None

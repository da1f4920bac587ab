"""The health and control socket over a real Unix socket, and the health document's rules.

The daemon side is a fake :class:`Controls` (our own interface, recording what it was asked);
everything between it and the client — framing, validation, SO_PEERCRED, timeouts, the socket
file's life cycle — is the real server.
"""

from __future__ import annotations

import functools
import json
import os
import pwd
import socket
import stat
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from structlog.testing import capture_logs

from daemon.control_protocol import MAX_LINE
from daemon.executor_status import ExecutorStatus
from daemon.health import HealthSocketInUse, serve_health
from daemon.health_document import HealthInputs, build_health_document
from daemon.messages import RebalanceOutcome
from daemon.portfolio import PortfolioState
from daemon.supervise import Supervised

SIGNER = "0x1111111111111111111111111111111111111111"


@attrs.define
class FakeControls:
    """Answers like the daemon would; records mutating calls."""

    calls: list[tuple[str, str]] = attrs.Factory(list)
    cooling: dict[str, int] = attrs.Factory(dict)
    broken: bool = False

    def health(self) -> dict[str, Any]:
        if self.broken:
            raise RuntimeError("bug in health")
        return {"status": "ok", "portfolios": {"main": {"state": "running"}}}

    def metrics(self) -> str:
        return "# TYPE driftd_up gauge\ndriftd_up 1.0\n"

    async def rebalance(self, portfolio: str) -> dict[str, Any]:
        await trio.lowlevel.checkpoint()
        self.calls.append(("rebalance", portfolio))
        if portfolio in self.cooling:
            minutes = self.cooling[portfolio]
            return {
                "ok": False,
                "status": "cooldown",
                "message": f"Cooldown active. Next rebalance available in {minutes} minutes",
                "cooldown_minutes": minutes,
            }
        return {"ok": True, "status": "triggered", "message": f"{portfolio}: evaluating now"}

    async def pause(self, portfolio: str) -> dict[str, Any]:
        self.calls.append(("pause", portfolio))
        return {"ok": True, "status": "paused", "message": f"{portfolio} paused"}

    async def resume(self, portfolio: str) -> dict[str, Any]:
        self.calls.append(("resume", portfolio))
        return {"ok": True, "status": "resumed", "message": f"{portfolio} resumed"}


@attrs.define
class Running:
    path: str
    controls: FakeControls


@asynccontextmanager
async def serving(socket_dir: Path, *, read_timeout: float) -> AsyncIterator[Running]:
    """The real server on ``socket_dir/driftd.sock`` with fake controls, until the block ends."""
    controls = FakeControls()
    path = str(socket_dir / "driftd.sock")
    async with trio.open_nursery() as nursery:
        await nursery.start(
            functools.partial(serve_health, path, controls, read_timeout=read_timeout)
        )
        yield Running(path, controls)
        nursery.cancel_scope.cancel()


@pytest.fixture
async def server(socket_dir: Path) -> AsyncIterator[Running]:
    async with serving(socket_dir, read_timeout=0.5) as running:
        yield running


async def converse(path: str, *lines: bytes, close_write: bool = True) -> list[dict[str, Any]]:
    """Send raw lines on one connection, read every reply until the server closes or EOF."""
    stream = await trio.open_unix_socket(path)
    async with stream:
        await stream.send_all(b"".join(lines))
        if close_write:
            await stream.send_eof()
        data = b""
        while chunk := await stream.receive_some(1 << 20):
            data += chunk
    return [json.loads(line) for line in data.splitlines()]


async def test_health_and_metrics_on_one_connection(server: Running) -> None:
    with trio.fail_after(5):
        health, metrics = await converse(
            server.path, b'{"cmd": "health"}\n', b'{"cmd": "metrics"}\n'
        )
    assert health == {"ok": True, "health": FakeControls().health()}
    assert metrics["ok"] is True
    assert "driftd_up 1.0" in metrics["metrics"]


async def test_last_request_without_newline_is_answered(server: Running) -> None:
    # printf '{"cmd": "health"}' | nc -U /run/driftd/driftd.sock
    with trio.fail_after(5):
        (reply,) = await converse(server.path, b'{"cmd": "health"}')
    assert reply["ok"] is True


async def test_socket_file_mode_and_removal_on_exit(socket_dir: Path) -> None:
    path = socket_dir / "driftd.sock"
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_health, str(path), FakeControls())
            info = path.lstat()
            assert stat.S_ISSOCK(info.st_mode)
            assert stat.S_IMODE(info.st_mode) == 0o660
            nursery.cancel_scope.cancel()
    assert not path.exists()


async def test_malformed_requests_get_errors_and_the_server_carries_on(server: Running) -> None:
    with trio.fail_after(5):
        replies = await converse(
            server.path,
            b"not json\n",
            b"[1, 2]\n",
            b'{"command": "health"}\n',
            b'{"cmd": 7}\n',
            b'{"cmd": "shutdown"}\n',
            b'{"cmd": "rebalance"}\n',
            b'{"cmd": "pause", "portfolio": ""}\n',
            b'{"cmd": "resume", "portfolio": ["main"]}\n',
            b'{"cmd": "rebalance", "portfolio": "' + b"p" * 201 + b'"}\n',
            b"\xff\xfe\n",
            b"\n",  # a blank line is no request: no reply
            b'{"cmd": "health"}\n',
        )
    codes = [r.get("code") for r in replies]
    assert codes == [
        "bad_request",
        "bad_request",
        "bad_request",
        "bad_request",
        "unknown_command",
        "bad_request",
        "bad_request",
        "bad_request",
        "bad_request",
        "bad_request",
        None,
    ]
    assert all(r["ok"] is False and r["error"] for r in replies[:-1])
    assert "not JSON" in replies[0]["error"]
    assert "known: health, metrics, rebalance, pause, resume" in replies[4]["error"]
    assert replies[-1]["ok"] is True
    assert server.controls.calls == []


async def test_huge_line_is_refused_and_the_connection_closed(server: Running) -> None:
    huge = b'{"cmd": "health", "pad": "' + b"x" * MAX_LINE + b'"}\n'
    with trio.fail_after(5):
        replies = await converse(server.path, huge, b'{"cmd": "health"}\n')
        assert replies == [
            {"ok": False, "code": "too_large", "error": f"request line over {MAX_LINE} bytes"}
        ]
        # Also without any newline at all (the server must not buffer forever).
        replies = await converse(server.path, b"x" * (3 * MAX_LINE), close_write=False)
        assert replies[0]["code"] == "too_large"
        (ok,) = await converse(server.path, b'{"cmd": "health"}\n')
    assert ok["ok"] is True


async def test_control_commands_reach_the_daemon(server: Running) -> None:
    server.controls.cooling["slow"] = 7
    with trio.fail_after(5), capture_logs() as logs:
        replies = await converse(
            server.path,
            b'{"cmd": "rebalance", "portfolio": "main"}\n',
            b'{"cmd": "rebalance", "portfolio": "slow"}\n',
            b'{"cmd": "pause", "portfolio": "main"}\n',
            b'{"cmd": "resume", "portfolio": "main"}\n',
        )
    assert [r["status"] for r in replies] == ["triggered", "cooldown", "paused", "resumed"]
    assert replies[1] == {
        "ok": False,
        "status": "cooldown",
        "message": "Cooldown active. Next rebalance available in 7 minutes",
        "cooldown_minutes": 7,
    }
    assert server.controls.calls == [
        ("rebalance", "main"),
        ("rebalance", "slow"),
        ("pause", "main"),
        ("resume", "main"),
    ]
    commands = [e for e in logs if e["event"] == "control_command"]
    assert [(e["cmd"], e["uid"]) for e in commands] == [
        ("rebalance", os.geteuid()),
        ("rebalance", os.geteuid()),
        ("pause", os.geteuid()),
        ("resume", os.geteuid()),
    ]


async def test_a_failing_command_is_an_internal_error_not_a_crash(server: Running) -> None:
    server.controls.broken = True
    with trio.fail_after(5), capture_logs() as logs:
        (reply,) = await converse(server.path, b'{"cmd": "health"}\n')
        server.controls.broken = False
        (again,) = await converse(server.path, b'{"cmd": "health"}\n')
    assert reply == {
        "ok": False,
        "code": "internal",
        "error": "health failed inside the daemon (RuntimeError)",
    }
    assert again["ok"] is True
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["control_failed"]


async def test_a_stalled_client_blocks_nobody_and_is_dropped(server: Running) -> None:
    with trio.fail_after(5):
        stalled = await trio.open_unix_socket(server.path)
        async with stalled:
            await stalled.send_all(b'{"cmd": "hea')  # and then nothing
            # Others are served meanwhile.
            (reply,) = await converse(server.path, b'{"cmd": "health"}\n')
            assert reply["ok"] is True
            # After the read timeout (0.5 s here) the server says so and hangs up.
            farewell = await stalled.receive_some(1000)
            assert json.loads(farewell) == {
                "ok": False,
                "code": "timeout",
                "error": "no complete request within 0.5 s; closing",
            }
            assert await stalled.receive_some(100) == b""


async def test_too_many_connections_are_turned_away(socket_dir: Path) -> None:
    path = str(socket_dir / "driftd.sock")
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(
                functools.partial(serve_health, path, FakeControls(), max_connections=2)
            )
            idle = [await trio.open_unix_socket(path) for _ in range(2)]
            await trio.testing.wait_all_tasks_blocked()
            (reply,) = await converse(path, b'{"cmd": "health"}\n')
            # Every slot is held by root (the test runs as root or as the daemon's uid), so
            # there is no other peer's idle connection to drop for the newcomer.
            assert reply == {
                "ok": False,
                "code": "busy",
                "error": "too many connections: all 2 are in use by the daemon's user or root",
            }
            await idle[0].aclose()
            await trio.testing.wait_all_tasks_blocked()
            (reply,) = await converse(path, b'{"cmd": "health"}\n')
            assert reply["ok"] is True
            await idle[1].aclose()
            nursery.cancel_scope.cancel()


async def test_stale_socket_from_a_crash_is_replaced(socket_dir: Path) -> None:
    path = socket_dir / "driftd.sock"
    # What a killed daemon leaves behind: a socket file nobody listens on.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(path))
    assert path.exists()
    with trio.fail_after(5), capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_health, str(path), FakeControls())
            (reply,) = await converse(str(path), b'{"cmd": "health"}\n')
            assert reply["ok"] is True
            nursery.cancel_scope.cancel()
    assert "stale_health_socket_removed" in [e["event"] for e in logs]


async def test_refuses_to_start_when_another_daemon_answers(server: Running) -> None:
    with trio.fail_after(5):
        with pytest.raises(HealthSocketInUse, match="already running"):
            await serve_health(server.path, FakeControls())
        # The first daemon's socket is untouched.
        (reply,) = await converse(server.path, b'{"cmd": "health"}\n')
    assert reply["ok"] is True


async def test_refuses_to_replace_something_that_is_not_a_socket(socket_dir: Path) -> None:
    path = socket_dir / "driftd.sock"
    path.write_text("operator's file")
    with trio.fail_after(5), pytest.raises(HealthSocketInUse, match="not a socket"):
        await serve_health(str(path), FakeControls())
    assert path.read_text() == "operator's file"


# ------------------------------------------------------------------ SO_PEERCRED, another uid


def _converse_as(uid: int, gid: int, path: str, payload: bytes) -> bytes:
    """Fork; the child drops to ``uid``/``gid``, sends ``payload`` and returns the replies.

    Blocking (the parent reads the child's pipe): run it in a thread. A forked child, not a
    subprocess, because the interpreter under /root is not executable by ``nobody``. The child
    only makes system calls and leaves with ``os._exit``, so forking a threaded process is safe
    here; Python ≥ 3.12 warns about it regardless, hence the filter."""
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(5)
                sock.connect(path)
                sock.sendall(payload)
                sock.shutdown(socket.SHUT_WR)
                while chunk := sock.recv(65536):
                    os.write(write_end, chunk)
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as replies:
        data = replies.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return data


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="dropping to nobody needs root")


@needs_root
async def test_another_uid_may_read_health_but_not_control(socket_dir: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    controls = FakeControls()
    path = str(socket_dir / "driftd.sock")
    payload = (
        b'{"cmd": "pause", "portfolio": "main"}\n'
        b'{"cmd": "rebalance", "portfolio": "main"}\n'
        b'{"cmd": "health"}\n'
        b'{"cmd": "metrics"}\n'
    )
    with trio.fail_after(10), capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            # The daemon is root here, so the socket is opened to everyone for this test.
            await nursery.start(functools.partial(serve_health, path, controls, mode=0o666))
            data = await trio.to_thread.run_sync(
                _converse_as, nobody.pw_uid, nobody.pw_gid, path, payload
            )
            nursery.cancel_scope.cancel()
    pause, rebalance, health, metrics = (json.loads(line) for line in data.splitlines())
    for refused in (pause, rebalance):
        assert refused["ok"] is False
        assert refused["code"] == "permission_denied"
        assert f"you are uid {nobody.pw_uid}" in refused["error"]
    assert health["ok"] is True
    assert metrics["ok"] is True
    assert controls.calls == []
    refusals = [e for e in logs if e["event"] == "control_refused"]
    assert [(e["cmd"], e["uid"]) for e in refusals] == [
        ("pause", nobody.pw_uid),
        ("rebalance", nobody.pw_uid),
    ]


@needs_root
async def test_the_daemons_own_uid_may_control(socket_dir: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    controls = FakeControls()
    path = str(socket_dir / "driftd.sock")
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            # As if the daemon ran as nobody: its own uid may control.
            await nursery.start(
                functools.partial(serve_health, path, controls, mode=0o666, own_uid=nobody.pw_uid)
            )
            data = await trio.to_thread.run_sync(
                _converse_as,
                nobody.pw_uid,
                nobody.pw_gid,
                path,
                b'{"cmd": "pause", "portfolio": "main"}\n',
            )
            # Root always may, whoever the daemon runs as.
            (resumed,) = await converse(path, b'{"cmd": "resume", "portfolio": "main"}\n')
            nursery.cancel_scope.cancel()
    assert json.loads(data)["status"] == "paused"
    assert resumed["status"] == "resumed"
    assert controls.calls == [("pause", "main"), ("resume", "main")]


# ------------------------------------------------------------------ the health document

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def actor(
    status: str = "running", last_error: str | None = None, **state: Any
) -> Supervised[PortfolioState]:
    async def never(_: PortfolioState) -> None:
        raise AssertionError("not run")

    return Supervised(
        key="x",
        state=PortfolioState(**state),
        actor=never,
        status=status,
        last_error=last_error,
    )


def document(**overrides: Any) -> dict[str, Any]:
    arguments: dict[str, Any] = {
        "now": NOW,
        "version": "0.1.0",
        "started_at": NOW - timedelta(hours=1),
        "config_generation": 2,
        "last_reload_error": None,
        "price_source": "oracle",
        "last_tick_at": NOW - timedelta(seconds=20),
        "max_price_age": 120.0,
        "executor": ExecutorStatus(
            signer=SIGNER, next_nonce=12, pending=1, handled=5, last_loop_at=100.0
        ),
        "database_ok": True,
        "chain_ok": True,
        "chain_id": 1,
        "head_block": 19_000_000,
        "head_block_at": NOW - timedelta(seconds=11),
        "actors": {"main": actor(last_max_drift=Decimal("0.0312"))},
        "cooldown_minutes": Decimal(15),
        "trio_now": 101.5,
        "pid": 4242,
    }
    arguments.update(overrides)
    return build_health_document(HealthInputs(**arguments))


def test_healthy_document_has_every_field() -> None:
    doc = document()
    assert doc == {
        "schema": 1,
        "status": "ok",
        "problems": [],
        "version": "0.1.0",
        "pid": 4242,
        "started_at": "2026-05-01T11:00:00+00:00",
        "now": "2026-05-01T12:00:00+00:00",
        "uptime_seconds": 3600.0,
        "config": {"generation": 2, "last_reload_error": None},
        "price_feed": {
            "source": "oracle",
            "last_tick_at": "2026-05-01T11:59:40+00:00",
            "last_tick_age_seconds": 20.0,
            "max_age_seconds": 120.0,
            "problems": [],
        },
        "executor": {
            "signer": SIGNER,
            "next_nonce": 12,
            "pending": 1,
            "handled": 5,
            "last_loop_age_seconds": 1.5,
            "unsettled": 0,
            "recovering": 0,
            "blocked": None,
            "stuck_seconds": None,
        },
        "database": {"ok": True, "error": None},
        "chain": {
            "ok": True,
            "chain_id": 1,
            "head_block": 19_000_000,
            "head_block_at": "2026-05-01T11:59:49+00:00",
            "head_block_age_seconds": 11.0,
            "error": None,
        },
        "portfolios": {
            "main": {
                "state": "running",
                "actor_status": "running",
                "paused": False,
                "in_flight": False,
                "last_max_drift": "0.0312",
                "last_decision": None,
                "last_evaluated_at": None,
                "cooldown_remaining_seconds": 0,
                "cooldown_remaining_minutes": 0,
                "last_success_at": None,
                "last_rebalance": None,
                "restart_count": 0,
                "last_error": None,
            }
        },
    }
    json.dumps(doc)  # plain JSON, nothing that needs a default=


def test_portfolio_states() -> None:
    outcome = RebalanceOutcome(rebalance_id=7, status="SUCCESS", tx_hash="0xabc")
    doc = document(
        actors={
            "cooling": actor(last_success_at=NOW - timedelta(minutes=10), last_outcome=outcome),
            "paused": actor(paused=True, last_success_at=NOW - timedelta(minutes=10)),
            "parked": actor("parked", paused=True, last_error="RuntimeError: boom"),
            "restarting": actor("backoff", last_error="ValueError: bad"),
            "starting": actor("starting"),
        },
        invalid={"broken": "delegation[0]: bad signature"},
    )
    portfolios = doc["portfolios"]
    assert {name: p["state"] for name, p in portfolios.items()} == {
        "cooling": "cooling_down",
        "paused": "paused",
        "parked": "parked",
        "restarting": "restarting",
        "starting": "starting",
        "broken": "invalid",
    }
    cooling = portfolios["cooling"]
    assert cooling["cooldown_remaining_seconds"] == 300
    assert cooling["cooldown_remaining_minutes"] == 5
    assert cooling["last_success_at"] == "2026-05-01T11:50:00+00:00"
    assert cooling["last_rebalance"] == {
        "rebalance_id": 7,
        "status": "SUCCESS",
        "tx_hash": "0xabc",
        "error": None,
    }
    assert portfolios["broken"]["error"] == "delegation[0]: bad signature"
    assert doc["status"] == "degraded"
    assert doc["problems"] == [
        "portfolio parked: parked (RuntimeError: boom)",
        "portfolio restarting: restarting (ValueError: bad)",
        "portfolio broken: invalid (delegation[0]: bad signature)",
    ]


def test_degraded_reasons() -> None:
    doc = document(
        last_reload_error="rebalance.drift_threshold: must be in (0, 1), got 2",
        price_problems=["price for LINK is missing"],
        head_block_at=NOW - timedelta(minutes=10),
        max_head_age=120.0,
    )
    assert doc["status"] == "degraded"
    assert doc["config"]["last_reload_error"] == (
        "rebalance.drift_threshold: must be in (0, 1), got 2"
    )
    assert doc["problems"] == [
        "config: last reload failed: rebalance.drift_threshold: must be in (0, 1), got 2",
        "price feed: 1 problem(s): price for LINK is missing",
        "chain: head block 600 s old (max 120 s)",
    ]
    # Without max_head_age (an idle devnet) an old head is not judged.
    assert document(head_block_at=NOW - timedelta(days=1))["status"] == "ok"


def test_a_blocked_signer_or_a_stuck_transaction_degrades_health() -> None:
    blocked = ExecutorStatus(
        signer=SIGNER,
        unsettled=1,
        blocked="nonce 7 cannot be sent: Insufficient funds for gas * price + value",
    )
    doc = document(executor=blocked)
    assert doc["status"] == "degraded"
    assert doc["problems"] == [
        "executor: signer blocked: nonce 7 cannot be sent: Insufficient funds for gas * price"
        " + value"
    ]
    assert doc["executor"]["blocked"] == blocked.blocked
    assert doc["executor"]["unsettled"] == 1
    stuck = document(executor=ExecutorStatus(signer=SIGNER, unsettled=2, stuck_for=960.04))
    assert stuck["status"] == "degraded"
    assert stuck["problems"] == ["executor: a transaction has been unsettled for 960 s"]
    assert stuck["executor"]["stuck_seconds"] == 960.0


def test_delegations_expiring_soon_or_expired_degrade_health() -> None:
    doc = document(expiring={"main": 2.5 * 86400})
    assert doc["status"] == "degraded"
    assert doc["problems"] == ["portfolio main: delegations expire in 2.5 days"]
    assert doc["portfolios"]["main"]["delegations_expire_in_seconds"] == 216000
    expired = document(expiring={"main": -7200.0})
    assert expired["problems"] == ["portfolio main: delegations expired 2.0 h ago"]


def test_no_tick_yet_is_degraded_during_startup_then_failing() -> None:
    starting = document(last_tick_at=None, started_at=NOW - timedelta(seconds=5))
    assert starting["status"] == "degraded"
    assert starting["problems"] == ["price feed: no tick yet"]
    assert document(last_tick_at=None)["status"] == "failing"


def test_failing_reasons_and_secrets_masked() -> None:
    doc = document(
        last_tick_at=NOW - timedelta(seconds=300),
        database_ok=False,
        database_error="connection to postgresql://driftd:hunter2@db/driftd refused",
        chain_ok=False,
        chain_error="timeout",
        head_block=None,
        head_block_at=None,
        last_reload_error="problem in postgresql://u:pw@db/x",
    )
    assert doc["status"] == "failing"
    assert doc["problems"][:3] == [
        "price feed: last tick 300 s ago (max 120 s)",
        "database: unreachable (connection to postgresql://driftd:***@db/driftd refused)",
        "chain: unreachable (timeout)",
    ]
    text = json.dumps(doc)
    assert "hunter2" not in text
    assert ":pw@" not in text
    assert doc["chain"]["head_block_age_seconds"] is None

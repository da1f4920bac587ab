"""``driftd status|rebalance|pause|resume`` against a real health server with a fake daemon behind.

The CLI runs in a worker thread (it is a blocking program) while the server runs in the test's
Trio loop. Until ``daemon.cli`` registers these commands, the test adds them to the real parser
itself; afterwards it goes through ``daemon.cli.main`` unchanged.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import attrs
import pytest
import trio
from structlog.testing import capture_logs

import daemon.cli.main as cli
from daemon.cli import control as cli_control
from daemon.config import load_config
from daemon.executor_status import ExecutorStatus
from daemon.health import serve_health
from daemon.health_document import HealthInputs, build_health_document
from daemon.messages import RebalanceOutcome
from daemon.portfolio import PortfolioState
from daemon.supervise import Supervised

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
SIGNER = "0x1111111111111111111111111111111111111111"


def supervised(
    status: str = "running", restarts: int = 0, **state: Any
) -> Supervised[PortfolioState]:
    async def never(_: PortfolioState) -> None:
        raise AssertionError("not run")

    entry: Supervised[PortfolioState] = Supervised(
        key="x", state=PortfolioState(**state), actor=never, status=status
    )
    entry.restart_count = restarts
    return entry


def health_document(**overrides: Any) -> dict[str, Any]:
    arguments: dict[str, Any] = {
        "now": NOW,
        "version": "0.1.0",
        "started_at": NOW - timedelta(hours=3, minutes=5),
        "config_generation": 4,
        "last_reload_error": None,
        "price_source": "oracle",
        "last_tick_at": NOW - timedelta(seconds=12),
        "max_price_age": 120.0,
        "executor": ExecutorStatus(signer=SIGNER, next_nonce=12, pending=1),
        "database_ok": True,
        "chain_ok": True,
        "chain_id": 31337,
        "head_block": 1234,
        "head_block_at": NOW - timedelta(seconds=7),
        "actors": {
            "main": supervised(
                last_max_drift=Decimal("0.0312"),
                last_success_at=NOW - timedelta(minutes=11),
                last_outcome=RebalanceOutcome(rebalance_id=7, status="SUCCESS", tx_hash="0xab"),
            ),
            "alt": supervised(paused=True, last_max_drift=Decimal("0.2"), restarts=2),
        },
        "cooldown_minutes": Decimal(15),
        "pid": 4242,
    }
    arguments.update(overrides)
    return build_health_document(HealthInputs(**arguments))


@attrs.define
class FakeDaemon:
    """Controls as the daemon implements them, with canned state."""

    document: dict[str, Any] = attrs.Factory(health_document)
    calls: list[tuple[str, str]] = attrs.Factory(list)

    def health(self) -> dict[str, Any]:
        return self.document

    def metrics(self) -> str:
        return ""

    async def rebalance(self, portfolio: str) -> dict[str, Any]:
        await trio.lowlevel.checkpoint()
        self.calls.append(("rebalance", portfolio))
        if portfolio == "main":
            return {
                "ok": False,
                "status": "cooldown",
                "message": "Cooldown active. Next rebalance available in 4 minutes",
                "cooldown_minutes": 4,
            }
        if portfolio == "crash":
            raise RuntimeError("bug")
        return self._known(portfolio, "triggered", f"{portfolio}: rebalanced (SUCCESS)")

    async def pause(self, portfolio: str) -> dict[str, Any]:
        self.calls.append(("pause", portfolio))
        return self._known(portfolio, "paused", f"{portfolio} paused")

    async def resume(self, portfolio: str) -> dict[str, Any]:
        self.calls.append(("resume", portfolio))
        return self._known(portfolio, "resumed", f"{portfolio} resumed")

    def _known(self, portfolio: str, status: str, message: str) -> dict[str, Any]:
        if portfolio == "ghost":
            return {"ok": False, "status": "not_found", "message": "no portfolio named ghost"}
        return {"ok": True, "status": status, "message": message}


@pytest.fixture
def socket_path(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    directory = tempfile.mkdtemp(prefix="driftd-cli-", dir="/tmp")
    path = f"{directory}/driftd.sock"
    monkeypatch.setenv("DRIFTD_HEALTH_SOCKET", path)
    monkeypatch.delenv("DRIFTD_CONFIG", raising=False)
    yield path
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
async def daemon(socket_path: str) -> AsyncIterator[FakeDaemon]:
    fake = FakeDaemon()
    # The server logs to stdout by default; keep stdout for what the CLI prints.
    with capture_logs():
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_health, socket_path, fake)
            yield fake
            nursery.cancel_scope.cancel()


def _registered(parser: argparse.ArgumentParser) -> argparse._SubParsersAction[Any]:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def run_cli(argv: list[str]) -> int:
    """``driftd ARGV`` as an operator would run it (blocking; call in a thread)."""
    if "status" in _registered(cli.build_parser()).choices:
        return cli.main(argv)
    parser = argparse.ArgumentParser(prog="driftd")
    cli_control.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    handler: cli.Handler = args.func
    return handler(args, load_config(None, dict(os.environ)))


async def driftd(*argv: str) -> int:
    with trio.fail_after(20):
        return await trio.to_thread.run_sync(run_cli, list(argv))


async def test_status_prints_every_field(
    daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await driftd("status") == 0
    out = capsys.readouterr().out
    assert out == (
        "driftd 0.1.0  OK  (pid 4242, up 3 h 05 min)\n"
        "config      generation 4, last reload error: none\n"
        "price feed  oracle, last tick 12 s ago (max 2 min)\n"
        f"executor    signer {SIGNER}, next nonce 12, 1 pending, 0 unsettled tx\n"
        "database    ok\n"
        "chain       ok, chain id 31337, head block 1234 (7 s old)\n"
        "\n"
        "PORTFOLIO  STATE         MAX DRIFT  COOLDOWN  LAST REBALANCE  RESTARTS\n"
        "alt        paused        20.00%     -         -               2\n"
        "main       cooling down  3.12%      4 min     SUCCESS #7      0\n"
    )


async def test_status_json_is_the_health_document(
    daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await driftd("status", "--json") == 0
    assert json.loads(capsys.readouterr().out) == daemon.document


async def test_status_exit_codes_for_degraded_and_failing(
    daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    daemon.document = health_document(
        last_reload_error="rebalance.drift_threshold: must be in (0, 1), got 2",
        actors={"main": supervised("parked", restarts=6)},
    )
    assert await driftd("status") == 1
    out = capsys.readouterr().out
    assert out.startswith("driftd 0.1.0  DEGRADED")
    assert "  ! config: last reload failed: rebalance.drift_threshold" in out
    assert "last reload error: rebalance.drift_threshold: must be in (0, 1), got 2" in out
    assert "main       parked" in out

    daemon.document = health_document(database_ok=False, database_error="refused")
    assert await driftd("status") == 1
    out = capsys.readouterr().out
    assert out.startswith("driftd 0.1.0  FAILING")
    assert "database    UNREACHABLE: refused" in out


async def test_status_when_the_daemon_is_not_running(
    socket_path: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await driftd("status") == 2
    assert "does not exist: is driftd running?" in capsys.readouterr().err
    # A stale socket file from a crash: nothing listens.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(socket_path)
    assert await driftd("status") == 2
    assert "nothing listens on" in capsys.readouterr().err


async def test_rebalance_in_cooldown_prints_the_seed_message_and_exits_75(
    daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await driftd("rebalance", "main") == 75
    assert capsys.readouterr().out == "Cooldown active. Next rebalance available in 4 minutes\n"
    assert daemon.calls == [("rebalance", "main")]


async def test_control_commands(daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    assert await driftd("rebalance", "alt") == 0
    assert await driftd("pause", "alt") == 0
    assert await driftd("resume", "alt") == 0
    assert capsys.readouterr().out == "alt: rebalanced (SUCCESS)\nalt paused\nalt resumed\n"
    assert await driftd("pause", "ghost") == 65
    assert capsys.readouterr().out == "no portfolio named ghost\n"
    assert await driftd("rebalance", "crash") == 70
    assert "rebalance failed inside the daemon" in capsys.readouterr().err
    assert await driftd("resume", "alt", "--json") == 0
    assert json.loads(capsys.readouterr().out) == {
        "ok": True,
        "status": "resumed",
        "message": "alt resumed",
    }
    assert daemon.calls == [
        ("rebalance", "alt"),
        ("pause", "alt"),
        ("resume", "alt"),
        ("pause", "ghost"),
        ("rebalance", "crash"),
        ("resume", "alt"),
    ]


async def test_control_when_the_daemon_is_not_running(
    socket_path: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await driftd("pause", "main") == 69
    assert "is driftd running?" in capsys.readouterr().err


# A scripted "daemon" for replies the real server only gives to other users or other programs.


async def scripted_server(
    path: str,
    reply: bytes | None,
    *,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept connections; read a request; answer ``reply`` (None: never answer)."""
    listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await listener.bind(path)
    listener.listen(8)

    async def answer(stream: trio.SocketStream) -> None:
        async with stream:
            await stream.receive_some(65536)
            if reply is None:
                await trio.sleep_forever()
            await stream.send_all(reply)

    await trio.serve_listeners(answer, [trio.SocketListener(listener)], task_status=task_status)


@pytest.mark.parametrize(
    ("reply", "code", "message"),
    [
        (
            b'{"ok": false, "code": "permission_denied", "error": "pause is only accepted '
            b"from the daemon's user (uid 998) or root; you are uid 1000\"}\n",
            77,
            "you are uid 1000",
        ),
        (b'{"ok": false, "code": "unknown_command", "error": "unknown cmd"}\n', 69, "unknown"),
        (b"HTTP/1.1 400 Bad Request\r\n\r\n", 69, "is it driftd's socket?"),
        (b"", 69, "answered nothing"),
        (None, 69, "no answer from"),
    ],
)
async def test_control_error_replies(
    socket_path: str,
    capsys: pytest.CaptureFixture[str],
    reply: bytes | None,
    code: int,
    message: str,
) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(scripted_server, socket_path, reply))
        assert await driftd("pause", "main", "--timeout", "0.3") == code
        nursery.cancel_scope.cancel()
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("reply", [b"garbage\n", b'{"ok": false, "error": "x"}\n', None])
async def test_status_without_a_health_document_is_unreachable(
    socket_path: str, capsys: pytest.CaptureFixture[str], reply: bytes | None
) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(scripted_server, socket_path, reply))
        assert await driftd("status", "--timeout", "0.3") == 2
        nursery.cancel_scope.cancel()
    assert capsys.readouterr().err.startswith("driftd: ")


def test_status_table_of_an_invalid_portfolio_and_unknown_fields() -> None:
    document = health_document(actors={}, invalid={"broken": "delegation[0]: bad signature"})
    text = cli_control.format_status(document)
    assert "broken     invalid  -          -         delegation[0]: bad signature  -" in text
    # A document from another driftd version with fields missing still prints.
    assert cli_control.format_status({"status": "ok"}).startswith("driftd ?  OK  (pid ?, up ?)")

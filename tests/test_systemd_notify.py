"""sd_notify over a real datagram socket, as systemd would receive it, and the watchdog task.

The harness plays systemd: it binds a ``SOCK_DGRAM`` Unix socket (a path, or a name in the
abstract namespace) and reads what :class:`Notifier` sends.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing
from structlog.testing import capture_logs

from daemon.systemd import Notifier, notify_address, run_watchdog, watchdog_interval


class FakeSystemd:
    """The receiving end of ``$NOTIFY_SOCKET``."""

    def __init__(self, sock: socket.socket, env_value: str) -> None:
        self.sock = sock
        self.env_value = env_value

    def messages(self) -> list[dict[str, str]]:
        """Every datagram received so far, parsed into its assignments."""
        out: list[dict[str, str]] = []
        while True:
            try:
                data = self.sock.recv(4096, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return out
            out.append(dict(line.split("=", 1) for line in data.decode().split("\n")))


@pytest.fixture
def fake_systemd(tmp_path: Path) -> Iterator[FakeSystemd]:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        yield FakeSystemd(sock, str(path))


@pytest.fixture
def abstract_systemd() -> Iterator[FakeSystemd]:
    name = f"driftd-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        yield FakeSystemd(sock, "@" + name)


def test_every_message_reaches_the_socket(fake_systemd: FakeSystemd) -> None:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": fake_systemd.env_value})
    assert notifier.enabled
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert notifier.ready(status="3 portfolios, prices from oracle")
    assert notifier.status("reloading\nconfiguration")
    assert notifier.watchdog()
    assert notifier.reloading()
    assert notifier.extend_timeout(2.5)
    assert notifier.stopping()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    ready, status, watchdog, reloading, extend, stopping = fake_systemd.messages()
    assert ready == {"READY": "1", "STATUS": "3 portfolios, prices from oracle"}
    # STATUS= must stay one line: a newline would start a new assignment.
    assert status == {"STATUS": "reloading configuration"}
    assert watchdog == {"WATCHDOG": "1"}
    assert reloading.keys() == {"RELOADING", "MONOTONIC_USEC"}
    assert before <= int(reloading["MONOTONIC_USEC"]) <= after
    assert extend == {"EXTEND_TIMEOUT_USEC": "2500000"}
    assert stopping == {"STOPPING": "1"}


def test_abstract_namespace_socket(abstract_systemd: FakeSystemd) -> None:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": abstract_systemd.env_value})
    assert notifier.ready()
    assert abstract_systemd.messages() == [{"READY": "1"}]


def test_without_notify_socket_everything_is_a_noop() -> None:
    notifier = Notifier.from_env({})
    assert not notifier.enabled
    assert not notifier.ready()
    assert not notifier.watchdog()
    assert not notifier.stopping()


def test_unusable_addresses() -> None:
    assert notify_address("/run/systemd/notify") == "/run/systemd/notify"
    assert notify_address("@x") == "\0x"
    assert notify_address("@") is None
    assert notify_address("vsock:2:1234") is None
    with capture_logs() as logs:
        notifier = Notifier.from_env({"NOTIFY_SOCKET": "relative/path"})
    assert not notifier.enabled
    assert [e["event"] for e in logs] == ["notify_socket_unsupported"]


def test_send_failure_is_logged_not_raised(tmp_path: Path) -> None:
    notifier = Notifier(str(tmp_path / "nobody-listens"))
    with capture_logs() as logs:
        assert not notifier.ready()
    assert logs[0]["event"] == "sd_notify_failed"
    assert logs[0]["error"] == "ENOENT"


def test_watchdog_interval_from_environment() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 30.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "42"}, pid=42) == 30.0
    # Meant for another process (we are a child that inherited the environment).
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "41"}, pid=42) is None
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())})
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None


async def test_watchdog_pings_at_half_the_interval_only_while_alive(
    fake_systemd: FakeSystemd, autojump_clock: trio.testing.MockClock
) -> None:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": fake_systemd.env_value})
    alive = True
    with trio.fail_after(1000), capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            await nursery.start(run_watchdog, notifier, lambda: alive, 10.0)
            # Pings at t = 0, 5, 10, 15, 20 (+ a hair so the 20 s ping has been sent).
            await trio.sleep(20.001)
            assert fake_systemd.messages() == [{"WATCHDOG": "1"}] * 5
            alive = False
            await trio.sleep(60)
            assert fake_systemd.messages() == []
            alive = True
            await trio.sleep(5)
            assert fake_systemd.messages() == [{"WATCHDOG": "1"}]
            nursery.cancel_scope.cancel()
    events = [e["event"] for e in logs]
    # Withholding is logged once, not on every skipped ping.
    assert events == ["watchdog_withheld", "watchdog_resumed"]


async def test_watchdog_rejects_a_nonpositive_interval() -> None:
    with trio.fail_after(5), pytest.raises(ValueError, match="must be > 0"):
        await run_watchdog(Notifier(None), lambda: True, 0)

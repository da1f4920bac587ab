"""sd_notify and the watchdog: how driftd tells systemd it is ready, alive, reloading or stopping.

Why our own ~100 lines instead of libsystemd bindings: the protocol is one datagram of
``KEY=VALUE`` lines to the Unix socket named in ``$NOTIFY_SOCKET`` (a path, or ``@name`` for the
abstract namespace), and a C dependency for that would be a liability on every install.

Why the watchdog ping is conditional: systemd restarts a ``Type=notify`` service whose
``WATCHDOG=1`` pings stop for ``WatchdogSec=``. A timer that pings unconditionally proves only
that the event loop turns, so :func:`run_watchdog` pings only while ``alive()`` says the actors
are actually working (the price feed ticked recently, the executor loop answers). A wedged
daemon then stops pinging and systemd restarts it.

Sends never block: each notification is one ``send`` with ``MSG_DONTWAIT`` on a fresh socket
(as libsystemd does), so calling these methods from Trio code is fine. Without
``$NOTIFY_SOCKET`` (not under systemd, or in tests) every method is a no-op.
"""

from __future__ import annotations

import errno
import os
import socket
import time
from collections.abc import Callable, Mapping
from typing import Final, NoReturn

import trio

from daemon.logs import get_logger

NOTIFY_SOCKET_ENV: Final = "NOTIFY_SOCKET"
WATCHDOG_USEC_ENV: Final = "WATCHDOG_USEC"
WATCHDOG_PID_ENV: Final = "WATCHDOG_PID"
MAX_STATUS_CHARS: Final = 200
"""A STATUS= line is meant for ``systemctl status``: one short line."""


def notify_address(value: str) -> str | None:
    """``$NOTIFY_SOCKET`` → a socket address: a filesystem path, or ``\\0name`` for ``@name``.

    None for anything else (systemd ≥ 254's ``vsock:`` addresses are not used by Debian 12's 252).
    """
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    return None


class Notifier:
    """Sends sd_notify messages to one socket. Created by its owner (``from_env`` in the daemon's
    start-up), passed to whoever notifies; it holds no open resources."""

    def __init__(self, address: str | None) -> None:
        self.address = address
        """Socket address, or None: every method is a no-op."""
        self._log = get_logger(actor="systemd")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Notifier:
        """A notifier for ``$NOTIFY_SOCKET`` (a no-op one when it is unset or unusable)."""
        raw = env.get(NOTIFY_SOCKET_ENV, "")
        address = notify_address(raw) if raw else None
        notifier = cls(address)
        if raw and address is None:
            notifier._log.warning("notify_socket_unsupported", notify_socket=raw)
        return notifier

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` assignments in one datagram. True if it was sent.

        A failure is logged, never raised: systemd being unreachable must not stop trading (if
        READY=1 is lost, systemd's start timeout reports it)."""
        if self.address is None:
            return False
        payload = "\n".join(assignments).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(payload, socket.MSG_DONTWAIT, self.address)
        except OSError as exc:
            reason = errno.errorcode.get(exc.errno or 0, str(exc))
            self._log.warning("sd_notify_failed", message=assignments[0], error=reason)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """READY=1: start-up (or a reload) is complete."""
        return self.notify("READY=1", *([f"STATUS={_one_line(status)}"] if status else []))

    def status(self, text: str) -> bool:
        """STATUS=: a one-line summary shown by ``systemctl status``."""
        return self.notify(f"STATUS={_one_line(text)}")

    def watchdog(self) -> bool:
        """WATCHDOG=1: the daemon is alive (see :func:`run_watchdog`)."""
        return self.notify("WATCHDOG=1")

    def reloading(self) -> bool:
        """RELOADING=1 with MONOTONIC_USEC= (systemd ≥ 253 requires the timestamp to accept
        it; 252 ignores it). Follow with :meth:`ready` when the reload is done."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> bool:
        """STOPPING=1: shutdown has begun."""
        return self.notify("STOPPING=1")

    def extend_timeout(self, seconds: float) -> bool:
        """EXTEND_TIMEOUT_USEC=: a start-up or stop step legitimately takes longer (waiting for
        the signer lease, draining in-flight transactions); systemd waits this much more."""
        return self.notify(f"EXTEND_TIMEOUT_USEC={max(1, round(seconds * 1_000_000))}")


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= MAX_STATUS_CHARS else line[: MAX_STATUS_CHARS - 1] + "…"


def watchdog_interval(env: Mapping[str, str], pid: int | None = None) -> float | None:
    """systemd's watchdog timeout in seconds, or None when it is off or meant for another process.

    ``$WATCHDOG_PID``, when set, names the process systemd expects pings from; a child that
    inherited the environment must not take over the watchdog."""
    raw_pid = env.get(WATCHDOG_PID_ENV, "")
    if raw_pid:
        own = os.getpid() if pid is None else pid
        if not raw_pid.isdigit() or int(raw_pid) != own:
            return None
    raw = env.get(WATCHDOG_USEC_ENV, "")
    if not raw.isdigit() or int(raw) == 0:
        return None
    return int(raw) / 1_000_000


async def run_watchdog(
    notifier: Notifier,
    alive: Callable[[], bool],
    interval: float,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Send WATCHDOG=1 every ``interval / 2`` seconds while ``alive()`` is true, forever.

    ``interval`` is :func:`watchdog_interval`'s value; pinging at half of it leaves a whole
    half-interval of slack for scheduling delays. When ``alive()`` turns false the pings stop
    (and that is logged once), so systemd restarts the process after ``WatchdogSec=``."""
    if interval <= 0:
        raise ValueError(f"watchdog interval must be > 0, got {interval}")
    log = get_logger(actor="watchdog")
    task_status.started()
    withheld = False
    while True:
        if alive():
            if withheld:
                log.info("watchdog_resumed")
                withheld = False
            notifier.watchdog()
        elif not withheld:
            log.error("watchdog_withheld", interval_seconds=interval)
            withheld = True
        await trio.sleep(interval / 2)

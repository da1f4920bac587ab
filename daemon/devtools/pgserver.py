"""A throwaway PostgreSQL server started from the installed binaries.

Why: the tests, the demo and the benchmarks need a real PostgreSQL, and none may be running or
configured on the machine. This module runs ``initdb`` into a fresh temporary directory and then
the ``postgres`` server itself (not ``pg_ctl``, so we own its process id) on a free loopback port,
with durability switched off (``fsync=off``): the data is thrown away afterwards anyway.

How it stays safe to run anywhere:

- **Root.** PostgreSQL refuses to run as root. When we are root the server runs as the
  ``postgres`` system user (or ``nobody``), the temporary directory is handed to that user and
  nothing outside it changes owner.
- **No orphans.** The server is started with ``PR_SET_PDEATHSIG`` = SIGTERM, so it shuts down if
  the process that started it dies without cleaning up (even ``kill -9``); ``stop()`` and the
  context manager stop it (fast shutdown, then SIGKILL after a grace period) and delete the
  directory on every exit path, Ctrl-C included. The death signal is tied to the *thread* that
  started the server: start it from a thread that outlives it (the main thread, usually).
- **Readiness** is read from ``postmaster.pid`` (its status line says ``ready``), the same way
  ``pg_ctl`` does it, so no client library is needed here and the API stays synchronous.

Authentication is ``trust`` on loopback and on a Unix socket inside the temporary directory: the
URL carries no password.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Final

import attrs

SUPERUSER: Final = "postgres"
"""Name of the bootstrap superuser role created by initdb."""
START_TIMEOUT: Final = 30.0
STOP_TIMEOUT: Final = 10.0
POLL_INTERVAL: Final = 0.02
_PR_SET_PDEATHSIG: Final = 1
_SERVER_SETTINGS: Final = {
    # Throwaway data: trade durability for speed.
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
    "shared_buffers": "32MB",
    "log_min_messages": "warning",
    "log_line_prefix": "%m [%p] ",
}


class PostgresServerError(RuntimeError):
    """The server could not be found, initialised, started or stopped."""


def find_bindir() -> Path:
    """Directory holding ``initdb`` and ``postgres``.

    Looked up in order: ``pg_config --bindir``, ``$PATH``, ``/usr/lib/postgresql/*/bin`` (the
    newest major version first).
    """
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, check=True, timeout=10
            )
            candidates.append(Path(out.stdout.strip()))
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).parent)
    debian = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    candidates.extend(debian)
    for bindir in candidates:
        if (bindir / "initdb").is_file() and (bindir / "postgres").is_file():
            return bindir
    raise PostgresServerError(
        "no PostgreSQL server binaries found (looked at pg_config --bindir, $PATH and "
        "/usr/lib/postgresql/*/bin); install the 'postgresql' package or set TEST_DATABASE_URL"
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the server retries if it was taken meanwhile)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _run_as() -> pwd.struct_passwd | None:
    """The unprivileged account to run the server as, or None to run as ourselves."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise PostgresServerError("running as root and neither 'postgres' nor 'nobody' user exists")


def _set_parent_death_signal() -> None:
    """In the child before exec: get SIGTERM when the parent thread dies (Linux only)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


@attrs.define(eq=False)
class PostgresServer:
    """One throwaway PostgreSQL cluster and (while started) its server process.

    Create with :func:`start_server` or use :func:`running_server` as a context manager.
    """

    bindir: Path
    """Where ``initdb`` and ``postgres`` live."""
    root: Path
    """Temporary directory holding ``data/``, ``socket/`` and ``server.log``; deleted by stop()."""
    host: str = "127.0.0.1"
    """Loopback address the server listens on."""
    port: int = 0
    """TCP port; chosen at start and kept across restarts."""
    _process: subprocess.Popen[bytes] | None = None
    _account: pwd.struct_passwd | None = None

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "socket"

    @property
    def log_file(self) -> Path:
        return self.root / "server.log"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def url(self, database: str = "postgres") -> str:
        """libpq URL of ``database`` as the superuser (trust auth: no password)."""
        return f"postgresql://{SUPERUSER}@{self.host}:{self.port}/{database}"

    # --- lifecycle ---

    def init(self) -> None:
        """Create the cluster (``initdb``) in ``data_dir``."""
        self._account = _run_as()
        for path in (self.root, self.socket_dir):
            path.mkdir(mode=0o700, exist_ok=True)
            if self._account is not None:
                os.chown(path, self._account.pw_uid, self._account.pw_gid)
        self._run_tool(
            "initdb",
            "--pgdata",
            str(self.data_dir),
            "--username",
            SUPERUSER,
            "--auth",
            "trust",
            "--encoding",
            "UTF8",
            "--locale",
            "C",
            "--no-sync",
        )

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        if self.running:
            return
        attempts = 1 if self.port else 3
        for attempt in range(attempts):
            if not self.port or attempt:
                self.port = free_port(self.host)
            try:
                self._spawn()
                return
            except PostgresServerError:
                self._kill()
                if attempt == attempts - 1:
                    raise

    def stop(self, *, timeout: float = STOP_TIMEOUT) -> None:
        """Fast shutdown (SIGINT: abort sessions, no checkpoint wait), SIGKILL if it hangs."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._kill()
        self._process = None

    def restart(self) -> None:
        """Stop and start again on the same port (clients see their connections drop)."""
        self.stop()
        self.start()

    def remove(self) -> None:
        """Stop the server and delete the temporary directory."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.remove()

    # --- internals ---

    def _spawn(self) -> None:
        (self.data_dir / "postmaster.pid").unlink(missing_ok=True)
        args = [str(self.bindir / "postgres"), "-D", str(self.data_dir), "-p", str(self.port)]
        settings = {
            **_SERVER_SETTINGS,
            "listen_addresses": self.host,
            "unix_socket_directories": str(self.socket_dir),
        }
        for key, value in settings.items():
            args += ["-c", f"{key}={value}"]
        user, group, extra_groups = self._identity()
        log = self.log_file.open("ab")
        try:
            self._process = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_set_parent_death_signal,  # runs after the setuid
                # Its own process group: a terminal's Ctrl-C must reach us, not the server,
                # so we can still read the database while shutting down in order.
                process_group=0,
                user=user,
                group=group,
                extra_groups=extra_groups,
            )
        except OSError as exc:
            raise PostgresServerError(f"cannot start postgres: {exc}") from exc
        finally:
            log.close()
        self._wait_ready()

    def _wait_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + START_TIMEOUT
        pid_file = self.data_dir / "postmaster.pid"
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise PostgresServerError(
                    f"postgres exited with code {self._process.returncode}: {self._log_tail()}"
                )
            with contextlib.suppress(OSError):
                lines = pid_file.read_text().splitlines()
                # Line 1 is the pid, line 8 the status ("ready" once it accepts connections).
                ours = len(lines) >= 8 and lines[0].strip() == str(self._process.pid)
                if ours and lines[7].strip() == "ready":
                    return
            time.sleep(POLL_INTERVAL)
        raise PostgresServerError(f"postgres not ready after {START_TIMEOUT}s: {self._log_tail()}")

    def _kill(self) -> None:
        if self._process is not None and self._process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()
            self._process.wait()
        self._process = None

    def _identity(self) -> tuple[int | None, int | None, list[int] | None]:
        """(user, group, extra_groups) for subprocess: the unprivileged account, or unchanged."""
        if self._account is None:
            return None, None, None
        return self._account.pw_uid, self._account.pw_gid, []

    def _run_tool(self, tool: str, *args: str) -> None:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "TZ": "UTC"}
        user, group, extra_groups = self._identity()
        try:
            result = subprocess.run(
                [str(self.bindir / tool), *args],
                capture_output=True,
                text=True,
                env=env,
                cwd=self.root,
                timeout=120,
                check=False,
                user=user,
                group=group,
                extra_groups=extra_groups,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise PostgresServerError(f"{tool} failed: {exc}") from exc
        if result.returncode != 0:
            raise PostgresServerError(
                f"{tool} failed ({result.returncode}): {result.stderr[-2000:]}"
            )

    def _log_tail(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no server log)"


def start_server(bindir: Path | None = None, *, host: str = "127.0.0.1") -> PostgresServer:
    """initdb into a new temporary directory and start a server; the caller must ``remove()``."""
    server = PostgresServer(
        bindir=bindir or find_bindir(), root=Path(tempfile.mkdtemp(prefix="driftd-pg-")), host=host
    )
    try:
        server.init()
        server.start()
    except BaseException:
        server.remove()
        raise
    return server


@contextlib.contextmanager
def running_server(bindir: Path | None = None) -> Iterator[PostgresServer]:
    """A started throwaway server, stopped and deleted when the block exits however it exits."""
    server = start_server(bindir)
    try:
        yield server
    finally:
        server.remove()

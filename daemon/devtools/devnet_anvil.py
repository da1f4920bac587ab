"""The anvil process: started from its npm package on a free loopback port, in its own process
group, and stopped on every exit path; and the anvil JSON-RPC methods tests use (snapshots, mining,
time, balances).

Lifetime: anvil runs in its own session (process group) and, on Linux, with a parent-death signal,
and :meth:`Anvil.stop` kills the group. :mod:`daemon.devtools.devnet` re-exports the public names.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import attrs
import trio

from daemon.chain import ChainClient
from daemon.devtools.devnet_artifacts import DevnetError, anvil_executable, project_root

DEVNET_CHAIN_ID: Final = 31337

_LISTENING_RE: Final = re.compile(rb"Listening on 127\.0\.0\.1:(\d+)")


# --- anvil ----------------------------------------------------------------------------------


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    if sys.platform == "linux":
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)


@attrs.define(eq=False)
class Anvil:
    """A running anvil process (own process group) and where it listens."""

    process: subprocess.Popen[bytes]
    log_path: Path
    port: int | None = None

    @property
    def rpc_url(self) -> str:
        if self.port is None:
            raise DevnetError("anvil is not listening yet")
        return f"http://127.0.0.1:{self.port}"

    def poll_port(self) -> int | None:
        """The port once anvil printed it; raises if anvil died."""
        if self.port is None:
            match = _LISTENING_RE.search(self.log_path.read_bytes())
            if match:
                self.port = int(match.group(1))
            elif self.process.poll() is not None:
                raise DevnetError(
                    f"anvil exited with status {self.process.returncode}; see {self.log_path}"
                )
        return self.port

    def wait_ready(self, timeout: float = 10.0) -> int:
        """Block until anvil listens (for sync callers such as pytest session fixtures)."""
        deadline = time.monotonic() + timeout
        while (port := self.poll_port()) is None:
            if time.monotonic() > deadline:
                raise DevnetError(f"anvil did not start within {timeout} s; see {self.log_path}")
            time.sleep(0.005)
        return port

    async def wait_ready_async(self) -> int:
        """Wait until anvil listens; bound it with the caller's cancel scope."""
        # anvil announces its port only in its log, so this polls the file.
        while (port := self.poll_port()) is None:  # noqa: ASYNC110
            await trio.sleep(0.005)
        return port

    def stop(self) -> None:
        """Kill anvil's whole process group and reap it. Idempotent."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                if sys.platform == "win32":  # pragma: no cover
                    self.process.kill()
                else:
                    os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
        with contextlib.suppress(OSError):
            self.log_path.unlink()


def launch_anvil(
    root: Path | None = None, *, chain_id: int = DEVNET_CHAIN_ID, extra_args: Sequence[str] = ()
) -> Anvil:
    """Start anvil on a free loopback port; call :meth:`Anvil.wait_ready` next."""
    executable = anvil_executable(root or project_root())
    log_fd, log_name = tempfile.mkstemp(prefix="driftd-anvil-", suffix=".log")
    try:
        process = subprocess.Popen(
            [
                str(executable),
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--chain-id",
                str(chain_id),
                "--accounts",
                "1",
                "--balance",
                "1000000",
                *extra_args,
            ],
            stdin=subprocess.DEVNULL,
            stdout=log_fd,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
    finally:
        os.close(log_fd)
    return Anvil(process=process, log_path=Path(log_name))


# --- anvil test helpers ---------------------------------------------------------------------


async def evm_snapshot(client: ChainClient) -> str:
    """Snapshot the chain state; :func:`evm_revert` returns to it (once)."""
    return str(await client.request("evm_snapshot"))


async def evm_revert(client: ChainClient, snapshot_id: str) -> None:
    """Return to ``snapshot_id``'s state.

    Wait for the receipts of transactions sent before: one anvil has not mined yet is mined
    after the revert, on top of the restored state.
    """
    if not await client.request("evm_revert", [snapshot_id]):
        raise DevnetError(f"evm_revert to snapshot {snapshot_id} failed")


async def evm_mine(client: ChainClient, blocks: int = 1) -> None:
    for _ in range(blocks):
        await client.request("evm_mine")


async def evm_set_automine(client: ChainClient, enabled: bool) -> None:
    await client.request("evm_setAutomine", [enabled])


async def evm_increase_time(client: ChainClient, seconds: int) -> None:
    """Move chain time forward (takes effect in the next mined block)."""
    await client.request("evm_increaseTime", [seconds])


async def set_eth_balance(client: ChainClient, address: str, wei: int) -> None:
    await client.request("anvil_setBalance", [address, hex(wei)])

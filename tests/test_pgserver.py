"""Tests of the throwaway PostgreSQL server used by tests, the demo and benchmarks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio

from daemon.config import DatabaseConfig
from daemon.db import open_database
from daemon.devtools.pgserver import (
    PostgresServer,
    PostgresServerError,
    find_bindir,
    running_server,
    start_server,
)


def _uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError("no Uid line")  # pragma: no cover


def _alive(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "zombie" not in status.read_text()


def test_find_bindir() -> None:
    bindir = find_bindir()
    assert (bindir / "initdb").is_file()
    assert (bindir / "postgres").is_file()


async def test_server_lifecycle_leaves_nothing_behind() -> None:
    with trio.fail_after(30):
        server = await trio.to_thread.run_sync(start_server)
        try:
            pid = server.pid
            assert pid is not None
            assert server.running
            if os.geteuid() == 0:
                assert _uid_of(pid) != 0  # PostgreSQL never runs as root
            async with open_database(DatabaseConfig(url=server.url())) as db:
                assert await db.fetchval("SHOW fsync") == "off"
                assert await db.fetchval("SELECT inet_server_addr()::text") == "127.0.0.1/32"
            port = server.port
            await trio.to_thread.run_sync(server.restart)
            assert server.port == port
            assert server.pid != pid
        finally:
            await trio.to_thread.run_sync(server.remove)
        assert not server.root.exists()
        assert not server.running
        assert not _alive(pid)


def test_context_manager_cleans_up_on_error() -> None:
    servers: list[PostgresServer] = []

    def fail() -> None:
        with running_server() as server:
            servers.append(server)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fail()
    [server] = servers
    assert not server.root.exists()
    assert not server.running


def test_missing_binaries_are_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(PostgresServerError, match="initdb failed"):
        start_server(tmp_path)

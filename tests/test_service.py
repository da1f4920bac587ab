"""The real daemon as systemd and an operator see it: a process under a harness that plays
systemd (``NOTIFY_SOCKET``, ``WATCHDOG_USEC``), driven with signals, inspected with
``driftd status`` and controlled with ``driftd rebalance``."""

from __future__ import annotations

import json
import os
import signal
import socket
from decimal import Decimal
from pathlib import Path

import trio
from daemon_harness import daemon_document, driftd_process, move_price, write_toml
from test_daemon import finished_rows, setup_portfolio, wait_for

from daemon import db as dbm
from daemon.chain import ChainClient
from daemon.config import DatabaseConfig
from daemon.devtools.devnet_records import Devnet


class SystemdHarness:
    """Receives sd_notify datagrams like systemd does."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[dict[str, str]] = []

    def drain(self) -> list[dict[str, str]]:
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return self.messages
            self.messages.append(dict(line.split("=", 1) for line in data.decode().splitlines()))

    def seen(self, key: str, value: str | None = None) -> int:
        return sum(1 for m in self.drain() if key in m and (value is None or m[key] == value))


async def test_daemon_under_systemd_harness_status_control_reload_and_stop(
    chain: ChainClient,
    devnet: Devnet,
    db_config: DatabaseConfig,
    db: dbm.Database,
    tmp_path: Path,
) -> None:
    socket_path = tmp_path / "run" / "driftd.sock"
    overrides = {"health": {"socket": str(socket_path)}, "rebalance": {"cooldown_minutes": 15}}
    config_path = write_toml(tmp_path / "d.toml", daemon_document(devnet, db_config, **overrides))
    systemd = SystemdHarness(tmp_path / "notify")
    env = {
        **os.environ,
        "DRIFTD_SIGNER_KEY": devnet.signer_key.reveal(),
        "NOTIFY_SOCKET": str(tmp_path / "notify"),
        "WATCHDOG_USEC": "1000000",  # ping every 0.5 s
    }
    cli_env = {"DRIFTD_SIGNER_KEY": devnet.signer_key.reveal()}
    log_file = tmp_path / "daemon.log"
    with systemd.sock, trio.fail_after(90):
        await setup_portfolio(chain, devnet, db_config, tmp_path, **overrides)
        async with driftd_process(config_path, env, log_file) as process:

            async def seen(key: str, value: str | None = None, count: int = 1) -> bool:
                return systemd.seen(key, value) >= count

            await wait_for(lambda: seen("READY", "1"), "READY=1")
            ready = next(m for m in systemd.drain() if m.get("READY") == "1")
            assert "portfolios" in ready.get("STATUS", "")
            await wait_for(lambda: seen("WATCHDOG", "1", 3), "watchdog pings")

            # status: every field, exit 0 when all is well.
            status_file = tmp_path / "status.json"
            code = await _cli_to_file(["status", "--json"], config_path, cli_env, status_file)
            document = json.loads(status_file.read_text())
            assert code == 0, document
            assert document["status"] == "ok"
            for key in ("version", "uptime_seconds", "config", "price_feed", "executor"):
                assert key in document
            assert document["executor"]["signer"] == devnet.signer
            assert document["database"]["ok"] is True
            assert document["chain"]["head_block"] > 0
            assert document["portfolios"]["main"]["state"] == "running"
            assert await _cli_to_file(["status"], config_path, cli_env, tmp_path / "t") == 0
            assert "main" in (tmp_path / "t").read_text()

            # A market move is rebalanced; a manual rebalance inside the cooldown gets the
            # seed's answer and exit 75.
            await move_price(chain, devnet, "WETH", Decimal("1.3"))
            await wait_for(lambda: finished_rows(db, "main"), "a rebalance")
            manual = tmp_path / "manual.txt"
            code = await _cli_to_file(["rebalance", "main"], config_path, cli_env, manual)
            assert code == 75
            assert "Cooldown active. Next rebalance available in 15 minutes" in (manual.read_text())

            # SIGHUP: RELOADING=1 then READY=1 again, new generation in health.
            write_toml(
                config_path,
                daemon_document(devnet, db_config, **overrides, prices={"max_age": 120}),
            )
            process.send_signal(signal.SIGHUP)
            await wait_for(lambda: seen("RELOADING", "1"), "RELOADING=1")
            await wait_for(lambda: seen("READY", "1", 2), "READY=1 after the reload")
            reloading = next(m for m in systemd.drain() if "RELOADING" in m)
            assert int(reloading["MONOTONIC_USEC"]) > 0
            code = await _cli_to_file(["status", "--json"], config_path, cli_env, status_file)
            assert json.loads(status_file.read_text())["config"]["generation"] == 2

            # SIGTERM: STOPPING=1, exit 0, socket removed.
            process.send_signal(signal.SIGTERM)
            assert await process.wait() == 0, log_file.read_text()
        assert systemd.seen("STOPPING", "1") == 1
        assert not socket_path.exists()
        assert await _cli_to_file(["status"], config_path, cli_env, tmp_path / "gone") == 2


async def _cli_to_file(argv: list[str], config: Path, env: dict[str, str], out: Path) -> int:
    """Run the CLI with its stdout captured into ``out`` (the CLI prints; tests read)."""

    def call() -> int:
        import contextlib
        import io

        from daemon.cli.main import main

        buffer = io.StringIO()
        saved = dict(os.environ)
        os.environ.update(env)
        try:
            with contextlib.redirect_stdout(buffer):
                return main(["--config", str(config), *argv])
        finally:
            os.environ.clear()
            os.environ.update(saved)
            out.write_text(buffer.getvalue())

    return await trio.to_thread.run_sync(call)

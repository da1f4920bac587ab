"""A PostgreSQL outage while the daemon runs (issue 10, finding 8).

The real daemon runs in process on the real devnet; the session's throwaway PostgreSQL server is
stopped mid-run and started again. The daemon must stay up, trade nothing, report the database
as failing in its health document, keep publishing price snapshots, and resume by itself once
the server is back: health ok again, the portfolio watcher following the database again, and a
market move rebalanced (the executor's durable intent needs the database).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import structlog
import trio
import trio.testing
from daemon_harness import daemon_document, move_price, run_cli, write_toml
from test_daemon import finished_rows, running_daemon, setup_portfolio, wait_for

from daemon import db as dbm
from daemon import probes
from daemon.app import Daemon
from daemon.chain import ChainClient
from daemon.config import DatabaseConfig
from daemon.control import DaemonControls
from daemon.devtools.devnet_records import Devnet
from daemon.devtools.pgserver import PostgresServer
from daemon.retry import retry_database

OUTAGE_SECONDS = 5.0
"""Longer than a probe round and many price ticks: enough to prove the daemon waits."""


@pytest.fixture
def server(pg_server: PostgresServer | None) -> Iterator[PostgresServer]:
    """The session's server, running again when the test ends however it ends.

    Started from this (the main) thread: the server's parent-death signal is tied to the thread
    that starts it, and a worker thread may exit while the session still needs the server."""
    if pg_server is None:
        pytest.skip("needs the throwaway server (TEST_DATABASE_URL is set)")
    try:
        yield pg_server
    finally:
        pg_server.start()


@pytest.fixture
def fast_probes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Probe every half second instead of every five, so the test need not wait long."""
    monkeypatch.setattr(probes, "PROBE_SECONDS", 0.5)


def health(daemon: Daemon) -> dict[str, Any]:
    return DaemonControls(daemon).health()


async def rows_once_reachable(db: dbm.Database) -> list[dbm.RebalanceLogEntry] | None:
    """The finished rebalances of "main"; None while the test's own pool still reconnects."""
    try:
        return await finished_rows(db, "main")
    except dbm.DatabaseUnavailable:
        return None


async def ride_out_outage(daemon: Daemon, server: PostgresServer) -> None:
    """Stop the server for :data:`OUTAGE_SECONDS` and check the daemon waits it out: running,
    the database failing in health, price snapshots still published. Starts it again."""
    server.stop()  # in this thread: blocks the loop for the fast shutdown only
    try:
        outage_started = trio.current_time()
        tick_before = daemon.feed.last_tick_at

        async def database_failing() -> bool:
            return not health(daemon)["database"]["ok"]

        await wait_for(database_failing, "health to see the outage", within=10)
        document = health(daemon)
        assert document["status"] in ("failing", "degraded")
        assert any(p.startswith("database: ") for p in document["problems"])
        # Stay down for the rest of the outage; the daemon must still be running
        # (if it died, running_daemon's nursery cancels us and re-raises its error).
        await trio.sleep(OUTAGE_SECONDS - (trio.current_time() - outage_started))
        assert not health(daemon)["database"]["ok"]
        # The price feed kept publishing snapshots without storing them.
        assert daemon.feed.last_tick_at is not None
        assert tick_before is not None
        assert daemon.feed.last_tick_at > tick_before
        assert daemon.supervisor.actors["main"].status == "running"
    finally:
        server.start()


@pytest.mark.usefixtures("fast_probes")
async def test_daemon_rides_out_a_database_outage_and_resumes_by_itself(
    chain: ChainClient,
    devnet: Devnet,
    db_config: DatabaseConfig,
    db: dbm.Database,
    server: PostgresServer,
    tmp_path: Path,
) -> None:
    path = write_toml(tmp_path / "config.toml", daemon_document(devnet, db_config))
    env = {"DRIFTD_SIGNER_KEY": devnet.signer_key.reveal()}
    with trio.fail_after(90):
        await setup_portfolio(chain, devnet, db_config, tmp_path)
        nonce = await chain.get_transaction_count(devnet.signer)
        with structlog.testing.capture_logs() as logs:
            async with running_daemon(devnet, db_config) as daemon:

                async def healthy() -> bool:
                    return health(daemon)["status"] == "ok"

                await wait_for(healthy, "a healthy daemon")
                assert set(daemon.supervisor.actors) == {"main"}

                await ride_out_outage(daemon, server)

                async def database_ok() -> bool:
                    return health(daemon)["database"]["ok"] is True

                await wait_for(database_ok, "health to see the database again", within=20)
                await wait_for(healthy, "health ok again", within=20)
                assert await chain.get_transaction_count(devnet.signer) == nonce  # no trade
                # Trading resumes: the intent is recorded before the broadcast, as always.
                await move_price(chain, devnet, "WETH", Decimal("1.3"))
                (row,) = await wait_for(lambda: rows_once_reachable(db), "a rebalance")
                assert row.status == "SUCCESS", row.error
                # The portfolio watcher listens again and reconciles: a change made now is seen.
                assert await run_cli(["portfolio", "deactivate", "main"], path, env) == 0

                async def stopped() -> bool:
                    return "main" not in daemon.supervisor.actors

                await wait_for(stopped, "the watcher to follow the database again")
        (intent,) = await db.intents_for_rebalance(row.id)
        assert intent.status == "CONFIRMED"
    events = [e["event"] for e in logs]
    # Once per outage, not once per tick; and said when it is over.
    assert events.count("tokens_not_refreshed") == 1
    assert events.count("prices_not_stored") == 1
    # Valuations are written in batches: whether one fell in the outage depends on timing.
    assert events.count("valuations_not_stored") <= 1
    failed = {e for e in events if e.endswith(("_not_refreshed", "_not_stored"))}
    resumed = [e["after"] for e in logs if e["event"] == "database_duty_resumed"]
    assert sorted(resumed) == sorted(failed)


async def test_database_work_is_retried_with_capped_backoff(
    autojump_clock: trio.testing.MockClock,
) -> None:
    calls: list[float] = []

    async def work() -> None:
        calls.append(trio.current_time())
        if len(calls) <= 7:
            raise dbm.DatabaseUnavailable("database unavailable at postgresql://x")

    with structlog.testing.capture_logs() as logs, trio.fail_after(600):
        started = trio.current_time()
        await retry_database(work, "portfolio_reconcile")
    waits = [round(b - a, 3) for a, b in itertools.pairwise([started, *calls])]
    assert waits == [0, 0.5, 1, 2, 4, 8, 16, 30]
    assert [e["event"] for e in logs] == ["portfolio_reconcile_failed"] * 7 + [
        "portfolio_reconcile_recovered"
    ]


async def test_listener_keeps_reconnecting_through_any_database_error(
    db: dbm.Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reconnect that times out (an unreachable host) is retried like a refused one."""
    opened = 0
    original = dbm.Database._open_listener

    async def flaky(self: dbm.Database, stream: dbm.NotificationStream) -> Any:
        nonlocal opened
        opened += 1
        if opened in (2, 3):
            raise dbm.QueryTimeout("query timed out on postgresql://x")
        return await original(self, stream)

    monkeypatch.setattr(dbm.Database, "_open_listener", flaky)
    with trio.fail_after(15):
        async with db.listen(dbm.SYSTEM_CONFIG_CHANNEL) as stream:
            # Drop the listener's connection from the server side.
            await db.fetch(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = 'driftd-listen' AND datname = current_database()"
            )
            assert await stream.receive() == dbm.Notification(
                dbm.SYSTEM_CONFIG_CHANNEL, "", resync=True
            )
            assert opened == 4
            await db.set_system_config("X", 1)
            assert await stream.receive() == dbm.Notification(dbm.SYSTEM_CONFIG_CHANNEL, "X")

"""Operations end to end: SIGHUP reload, runtime parameters from the database, alerts reaching
a webhook, and SIGTERM with a transaction in flight. Real PostgreSQL, anvil and contracts."""

from __future__ import annotations

import json
import os
import signal
from decimal import Decimal
from pathlib import Path
from typing import Any

import trio
import trio.testing
from daemon_harness import daemon_document, driftd_process, move_price, portfolio_drift, write_toml
from http_server import Request, Response, loopback_http
from test_daemon import (
    TARGETS,
    _register_extra,
    evaluated,
    finished_rows,
    run_driftd,
    running_daemon,
    setup_portfolio,
    wait_for,
)

from daemon import db as dbm
from daemon.app import Daemon, serve
from daemon.chain import ChainClient
from daemon.config import DatabaseConfig, load_config
from daemon.devtools.devnet_anvil import evm_mine, evm_set_automine
from daemon.devtools.devnet_deploy import create_smart_account
from daemon.devtools.devnet_records import Devnet, devnet_key


async def test_sighup_applies_a_new_threshold_and_survives_a_bad_file(
    chain: ChainClient,
    devnet: Devnet,
    db_config: DatabaseConfig,
    db: dbm.Database,
    tmp_path: Path,
) -> None:
    path = tmp_path / "live.toml"
    env = {"DRIFTD_SIGNER_KEY": devnet.signer_key.reveal()}
    with trio.fail_after(60):
        await setup_portfolio(chain, devnet, db_config, tmp_path)
        write_toml(path, daemon_document(devnet, db_config))
        config = load_config(path, env)
        async with trio.open_nursery() as nursery:
            daemon: Daemon = await nursery.start(
                lambda task_status: serve(
                    config, load=lambda: load_config(path, env), env={}, task_status=task_status
                )
            )
            await move_price(chain, devnet, "WETH", Decimal("1.12"))  # ~ +9 % drift
            seen = daemon.supervisor.actors["main"].state.evaluations
            await wait_for(lambda: evaluated(daemon, "main", seen + 2), "evaluations")
            assert await finished_rows(db, "main") == []

            # A broken file: the old configuration keeps running, the error is kept for health.
            path.write_text("[rebalance]\ndrift_threshold = 7\n")
            signal.raise_signal(signal.SIGHUP)
            await wait_for(_reload_error(daemon), "the reload to fail")
            assert daemon.config.current.rebalance.drift_threshold == Decimal("0.15")
            assert daemon.config.generation == 1

            # A good file with a lower threshold changes the next decision, no restart.
            write_toml(
                path, daemon_document(devnet, db_config, rebalance={"drift_threshold": 0.05})
            )
            signal.raise_signal(signal.SIGHUP)
            (row,) = await wait_for(lambda: finished_rows(db, "main"), "a rebalance")
            assert row.status == "SUCCESS"
            assert daemon.config.generation == 2
            assert daemon.config.last_reload_error is None
            assert daemon.supervisor.actors["main"].restart_count == 0
            nursery.cancel_scope.cancel()


def _reload_error(daemon: Daemon) -> Any:
    async def check() -> bool:
        error = daemon.config.last_reload_error
        return error is not None and "rebalance.drift_threshold: must be in (0, 1)" in error

    return check


async def test_runtime_params_from_the_database_apply_live(
    chain: ChainClient,
    devnet: Devnet,
    db_config: DatabaseConfig,
    db: dbm.Database,
    tmp_path: Path,
) -> None:
    with trio.fail_after(60):
        await setup_portfolio(chain, devnet, db_config, tmp_path)
        async with running_daemon(devnet, db_config) as daemon:
            await move_price(chain, devnet, "WETH", Decimal("1.12"))
            await db.set_system_config(dbm.REBALANCING_PARAMS, {"driftThreshold": "nope"})

            async def rejected() -> bool:
                return "REBALANCING_PARAMS" in (daemon.config.last_reload_error or "")

            await wait_for(rejected, "the bad parameters to be rejected")
            assert await finished_rows(db, "main") == []
            # The seed's spelling, applied through LISTEN/NOTIFY without a restart.
            await db.set_system_config(dbm.REBALANCING_PARAMS, {"driftThreshold": Decimal("0.05")})
            (row,) = await wait_for(lambda: finished_rows(db, "main"), "a rebalance")
            assert row.status == "SUCCESS"
            assert daemon.config.current.rebalance.drift_threshold == Decimal("0.05")


async def test_alerts_fire_once_each_and_reach_the_webhook(
    chain: ChainClient,
    devnet: Devnet,
    db_config: DatabaseConfig,
    db: dbm.Database,
    tmp_path: Path,
) -> None:
    received: list[dict[str, Any]] = []

    async def webhook(request: Request) -> Response:
        received.append(json.loads(request.body))
        return Response(body=b"ok", content_type="text/plain")

    with trio.fail_after(90):
        async with loopback_http(webhook) as server:
            overrides: dict[str, Any] = {
                "alerts": {"webhook_url": server.url, "expected_gas_cost_usd": "0.000001"},
                "supervisor": {"max_restarts": 2},
            }
            await setup_portfolio(chain, devnet, db_config, tmp_path, **overrides)
            third = await create_smart_account(chain, devnet, devnet_key("alert owner"), salt=91)
            await _register_extra(chain, devnet, db_config, tmp_path, third, **overrides)
            env = {"DRIFTD_TEST_FAULTS": "evaluate@crashy=raise"}
            async with running_daemon(devnet, db_config, env=env, **overrides) as daemon:
                await move_price(chain, devnet, "WETH", Decimal("1.5"))  # drift ~ +36 %
                (row,) = await wait_for(lambda: finished_rows(db, "main"), "a rebalance")
                assert row.status == "SUCCESS"
                seen = daemon.supervisor.actors["main"].state.evaluations
                await wait_for(lambda: evaluated(daemon, "main", seen + 3), "evaluations")

                async def delivered() -> bool:
                    kinds = {r["kind"] for r in received}
                    return {"HIGH_DRIFT", "HIGH_GAS_COST", "ACTOR_PARKED"} <= kinds

                await wait_for(delivered, "the alerts")
    kinds = sorted((r["kind"], r["portfolio"]) for r in received)
    assert kinds == [
        ("ACTOR_PARKED", "crashy"),
        ("HIGH_DRIFT", "main"),
        ("HIGH_GAS_COST", "main"),
    ]
    assert all(r["text"].startswith(f"driftd {r['kind']}") for r in received)


async def test_failed_rebalance_alerts_and_a_dead_webhook_never_blocks_trading(
    chain: ChainClient,
    devnet: Devnet,
    db_config: DatabaseConfig,
    db: dbm.Database,
    tmp_path: Path,
) -> None:
    overrides: dict[str, Any] = {
        # Nothing listens on port 9: every delivery fails.
        "alerts": {"webhook_url": "http://127.0.0.1:9/hook"},
        # A fee ceiling below the base fee: the executor refuses to send. No failure backoff,
        # so a second attempt comes at once.
        "execution": {"max_fee_gwei": "0.000000001", "failure_backoff": 0},
    }
    with trio.fail_after(60):
        await setup_portfolio(chain, devnet, db_config, tmp_path, **overrides)
        async with running_daemon(devnet, db_config, **overrides) as daemon:
            await move_price(chain, devnet, "WETH", Decimal("1.3"))
            rows = await wait_for(lambda: finished_rows(db, "main"), "a failed attempt")
            assert rows[0].status == "FAILED"
            assert "fee ceiling" in (rows[0].error or "")
            assert daemon.alerts is not None
            fired = [a.kind for a in daemon.alerts.fired]
            assert fired.count("REBALANCE_FAILED") == 1
            # Trading goes on: a later attempt is made and logged despite the dead webhook.
            await wait_for(
                lambda: _at_least_rows(db, 2), "another attempt while the webhook is down"
            )
            assert [a.kind for a in daemon.alerts.fired].count("REBALANCE_FAILED") == 1


async def _at_least_rows(db: dbm.Database, n: int) -> bool:
    return len(await finished_rows(db, "main")) >= n


async def test_sigterm_with_a_pending_transaction_exits_0_and_the_next_start_settles_it(
    chain: ChainClient,
    devnet: Devnet,
    db_config: DatabaseConfig,
    db: dbm.Database,
    tmp_path: Path,
) -> None:
    overrides = {"execution": {"shutdown_grace": 1.0, "receipt_timeout": 60}}
    with trio.fail_after(90):
        await setup_portfolio(chain, devnet, db_config, tmp_path, **overrides)
        path = write_toml(tmp_path / "d.toml", daemon_document(devnet, db_config, **overrides))
        env = {**os.environ, "DRIFTD_SIGNER_KEY": devnet.signer_key.reveal()}
        await move_price(chain, devnet, "WETH", Decimal("1.3"))
        nonce = await chain.get_transaction_count(devnet.signer, "latest")
        await evm_set_automine(chain, False)
        try:
            log_file = tmp_path / "first.log"
            async with driftd_process(path, env, log_file) as process:
                await wait_for(lambda: _has_intent(db, "BROADCAST"), "a broadcast transaction")
                process.send_signal(signal.SIGTERM)
                assert await process.wait() == 0, log_file.read_text()
            assert [r.status for r in await db.rebalance_history()] == ["PENDING"]
            await evm_mine(chain)  # the transaction lands while no daemon runs
        finally:
            await evm_set_automine(chain, True)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_driftd, path, env, tmp_path / "second.log")
            (row,) = await wait_for(lambda: finished_rows(db, "main"), "the bookkeeping")
            nursery.cancel_scope.cancel()
        assert row.status == "SUCCESS"
        assert await chain.get_transaction_count(devnet.signer, "latest") == nonce + 1
        assert len(await db.rebalance_history()) == 1
        assert await portfolio_drift(chain, devnet, devnet.accounts[0].address, TARGETS) < Decimal(
            "0.15"
        )


async def _has_intent(db: dbm.Database, status: str) -> bool:
    return bool(await db.intents_by_status(status))  # type: ignore[arg-type]

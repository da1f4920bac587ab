"""The daemon end to end: real PostgreSQL, real anvil, real Uniswap V2, real delegations.

Each test registers a 50/30/20 portfolio through the CLI, runs the real daemon in process and
moves the market with real swaps, then checks the chain and the rebalance log.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import structlog
import trio
from daemon_harness import (
    Clock,
    daemon_config,
    daemon_document,
    driftd_process,
    fund_to_targets,
    move_price,
    portfolio_drift,
    register_portfolio,
    register_tokens,
    run_cli,
    write_toml,
)
from http_server import Request, Response, loopback_http

from daemon import db as dbm
from daemon.app import Daemon, run_daemon
from daemon.chain import ChainClient
from daemon.config import DatabaseConfig
from daemon.devtools.devnet_anvil import evm_mine, evm_set_automine
from daemon.devtools.devnet_deploy import create_smart_account
from daemon.devtools.devnet_records import Devnet, SmartAccount, devnet_key
from daemon.signer import TxRequest, TxSigner
from daemon.uniswap import UniswapV2

TARGETS = {"USDC": "0.5", "WBTC": "0.3", "WETH": "0.2"}
TOTAL_USD = Decimal(200_000)
COINGECKO_IDS = {"usd-coin": "USDC", "weth": "WETH", "wrapped-bitcoin": "WBTC"}


@pytest.fixture
async def coingecko_from_pools(chain: ChainClient, devnet: Devnet) -> AsyncIterator[str]:
    """A CoinGecko-compatible /simple/price on loopback whose prices are the devnet pools'."""
    uniswap = UniswapV2(chain, devnet.router, devnet.quote.address)

    async def handler(request: Request) -> Response:
        ids = parse_qs(urlsplit(request.target).query)["ids"][0].split(",")
        body = {}
        for coin in ids:
            token = devnet.token(COINGECKO_IDS[coin])
            price = (
                Decimal(1)
                if token.symbol == devnet.quote_symbol
                else await uniswap.spot_price(
                    token.address, token.decimals, devnet.quote.address, devnet.quote.decimals
                )
            )
            body[coin] = {"usd": f"{price:.8f}", "last_updated_at": int(time.time())}
        text = json.dumps(body)
        for entry in body.values():  # numbers on the wire, as CoinGecko sends them
            text = text.replace(f'"{entry["usd"]}"', str(entry["usd"]))
        return Response(body=text.encode())

    async with loopback_http(handler) as server:
        yield server.url + "/api/v3"


@asynccontextmanager
async def running_daemon(
    devnet: Devnet,
    db_config: DatabaseConfig,
    clock: Clock | None = None,
    env: dict[str, str] | None = None,
    **overrides: Any,
) -> AsyncIterator[Daemon]:
    config = daemon_config(devnet, db_config, **overrides)
    async with trio.open_nursery() as nursery:
        daemon: Daemon = await nursery.start(
            lambda task_status: run_daemon(
                config, env=env or {}, now=clock or Clock(), task_status=task_status
            )
        )
        yield daemon
        nursery.cancel_scope.cancel()


async def setup_portfolio(
    chain: ChainClient,
    devnet: Devnet,
    db_config: DatabaseConfig,
    tmp_path: Path,
    name: str = "main",
    account_index: int = 0,
    register_tokens_too: bool = True,
    **overrides: Any,
) -> None:
    path = write_toml(tmp_path / "config.toml", daemon_document(devnet, db_config, **overrides))
    env = {"DRIFTD_SIGNER_KEY": devnet.signer_key.reveal()}
    if register_tokens_too:
        await register_tokens(devnet, path, env)
    account = devnet.accounts[account_index]
    await fund_to_targets(chain, devnet, account.address, TARGETS, TOTAL_USD)
    await register_portfolio(devnet, account, name, TARGETS, path, env, tmp_path)


async def wait_for(predicate: Callable[[], Any], what: str, within: float = 30) -> Any:
    with trio.move_on_after(within):
        while True:
            result = await predicate()
            if result:
                return result
            await trio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def finished_rows(db: dbm.Database, portfolio: str) -> list[dbm.RebalanceLogEntry]:
    portfolio_id = (await db.portfolio(portfolio)).id
    rows = await db.rebalance_history(portfolio_id)
    return [row for row in rows if row.status != "PENDING"]


async def followed(daemon: Daemon, account: str) -> bool:
    follower = daemon.held.follower if daemon.held is not None else None
    return follower is not None and account in follower.accounts


async def evaluated(daemon: Daemon, name: str, count: int) -> bool:
    actor = daemon.supervisor.actors.get(name)
    return actor is not None and actor.state.evaluations >= count


@pytest.mark.parametrize(
    ("source", "follow"), [("router", False), ("oracle", False), ("router", True)]
)
async def test_market_move_is_rebalanced_back_within_threshold(
    chain: ChainClient,
    devnet: Devnet,
    db_config: DatabaseConfig,
    db: dbm.Database,
    tmp_path: Path,
    source: str,
    follow: bool,
    coingecko_from_pools: str,
) -> None:
    overrides: dict[str, Any] = {"prices": {"source": source}}
    daemon_overrides = dict(overrides)
    if follow:  # balances from the Transfer-log follower (issue 15)
        daemon_overrides["chain"] = {"follow_transfers": True}
    if source == "oracle":
        overrides["prices"]["coingecko_base_url"] = coingecko_from_pools
    with trio.fail_after(90):
        await setup_portfolio(chain, devnet, db_config, tmp_path, **overrides)
        account = devnet.accounts[0].address
        assert await portfolio_drift(chain, devnet, account, TARGETS) < Decimal("0.01")
        async with running_daemon(devnet, db_config, **daemon_overrides) as daemon:
            await wait_for(lambda: evaluated(daemon, "main", 1), "a first evaluation")
            assert await finished_rows(db, "main") == []  # balanced: nothing to do
            await move_price(chain, devnet, "WETH", Decimal("1.3"))
            assert await portfolio_drift(chain, devnet, account, TARGETS) > Decimal("0.15")
            (row,) = await wait_for(lambda: finished_rows(db, "main"), "a rebalance")
            if follow:
                # The actor's balances now come from the follower, which saw the swap's
                # transfers: its next evaluation finds the portfolio back inside the threshold.
                assert daemon.held is not None
                assert await wait_for(lambda: followed(daemon, account), "the follower")
                seen = daemon.supervisor.actors["main"].state.evaluations
                await move_price(chain, devnet, "WETH", Decimal("1.01"))  # a new tick
                await wait_for(lambda: evaluated(daemon, "main", seen + 1), "an evaluation")
                drift = daemon.supervisor.actors["main"].state.last_max_drift
                assert drift is not None
                assert drift < Decimal("0.15")
                follower = daemon.held.follower
                assert follower is not None
                assert follower.balances_of(account) == await chain.balances(
                    account, follower.tokens
                )
        assert row.status == "SUCCESS", row.error
        receipt = await chain.get_transaction_receipt(row.transaction_hash or "")
        assert receipt is not None
        assert receipt.status == 1
        assert receipt.gas_used == row.gas_used
        assert row.gas_cost_usd is not None
        assert row.gas_cost_usd > 0
        assert Decimal("0.15") <= row.drift_percentage <= Decimal("0.3")  # type: ignore[operator]
        assert await portfolio_drift(chain, devnet, account, TARGETS) < Decimal("0.15")
        # The seed's fields: amounts, path, expected and actual outputs per leg, timing.
        assert {leg["sell"] for leg in row.token_amounts} == {"WETH"}
        assert len(row.swap_path) == len(row.token_amounts)
        for expected, actual in zip(row.expected_outputs, row.actual_outputs, strict=True):
            assert int(actual) >= int(expected["amount_out_min"])
            assert int(actual) == int(expected["actual_out"])
        assert row.execution_time_ms is not None
        # The signed transaction was recorded before broadcast and ended CONFIRMED.
        (intent,) = await db.intents_for_rebalance(row.id)
        assert (intent.status, intent.tx_hash) == ("CONFIRMED", row.transaction_hash)
        # A valuation snapshot was stored for reports.
        snapshot = await db.latest_snapshot((await db.portfolio("main")).id)
        assert snapshot is not None
        assert snapshot.total_usd > 0
        assert {h.token_id for h in snapshot.holdings} == {t.id for t in await db.tokens()}
        # The signer key never reaches the database (DESIGN.md §4.8).
        key = devnet.signer_key.reveal()[2:].lower()
        tables = await db.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        for table in tables:
            dump = await db.fetch(f'SELECT t::text AS row FROM "{table["tablename"]}" t')  # noqa: S608
            assert all(key not in r["row"].lower() for r in dump), table["tablename"]


async def test_cooldown_blocks_a_second_trade_until_it_passes(
    chain: ChainClient,
    devnet: Devnet,
    db_config: DatabaseConfig,
    db: dbm.Database,
    tmp_path: Path,
) -> None:
    clock = Clock()
    with trio.fail_after(90):
        await setup_portfolio(chain, devnet, db_config, tmp_path)
        account = devnet.accounts[0].address
        with structlog.testing.capture_logs() as logs:
            async with running_daemon(devnet, db_config, clock) as daemon:
                await move_price(chain, devnet, "WETH", Decimal("1.3"))
                await wait_for(lambda: finished_rows(db, "main"), "the first rebalance")
                state = daemon.supervisor.actors["main"].state

                async def cooling_down() -> bool:
                    return state.last_success_at is not None

                await wait_for(cooling_down, "the actor to see the outcome")
                seen = state.evaluations
                clock.offset += timedelta(minutes=5)
                await move_price(chain, devnet, "WETH", Decimal("0.7"))
                await wait_for(lambda: evaluated(daemon, "main", seen + 3), "evaluations")
                assert len(await finished_rows(db, "main")) == 1
                assert await portfolio_drift(chain, devnet, account, TARGETS) > Decimal("0.15")
                clock.offset += timedelta(minutes=11)
                rows = await wait_for(
                    lambda: _at_least(finished_rows(db, "main"), 2), "the second rebalance"
                )
        assert [row.status for row in rows] == ["SUCCESS", "SUCCESS"]
        skips = [e for e in logs if e.get("event") == "rebalance_skipped"]
        assert any(
            e["reason"] == "Cooldown active. Next rebalance available in 10 minutes" for e in skips
        )


async def _at_least(rows_coro: Any, n: int) -> list[dbm.RebalanceLogEntry] | None:
    rows: list[dbm.RebalanceLogEntry] = await rows_coro
    return rows if len(rows) >= n else None


async def test_leg_over_the_price_impact_cap_is_not_sent(
    chain: ChainClient,
    devnet: Devnet,
    db_config: DatabaseConfig,
    db: dbm.Database,
    tmp_path: Path,
) -> None:
    overrides = {"rebalance": {"price_impact_threshold": Decimal("0.003")}}
    with trio.fail_after(90):
        await setup_portfolio(chain, devnet, db_config, tmp_path, **overrides)
        signer_nonce = await chain.get_transaction_count(devnet.signer)
        async with running_daemon(devnet, db_config, **overrides):
            await move_price(chain, devnet, "WETH", Decimal("1.3"))
            (row,) = await wait_for(lambda: finished_rows(db, "main"), "an attempt")
        assert row.status == "SKIPPED"
        assert "price impact" in (row.skip_reason or "")
        assert "exceeds the cap 0.003" in (row.skip_reason or "")
        assert await chain.get_transaction_count(devnet.signer) == signer_nonce  # nothing sent


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ("stale", "No trade: price for WETH is stale"),
        ("zero", "No trade: price for WETH is missing"),
    ],
)
async def test_stale_or_non_positive_price_means_no_trade(
    chain: ChainClient,
    devnet: Devnet,
    db_config: DatabaseConfig,
    db: dbm.Database,
    tmp_path: Path,
    answer: str,
    reason: str,
) -> None:
    async def handler(request: Request) -> Response:
        # WETH reported 30 % up (a trade would follow) but stale, or as zero.
        updated = int(time.time()) - (3600 if answer == "stale" else 0)
        weth = "0" if answer == "zero" else "3900"
        text = (
            f'{{"usd-coin": {{"usd": 1.0, "last_updated_at": {int(time.time())}}},'
            f' "wrapped-bitcoin": {{"usd": 60000, "last_updated_at": {int(time.time())}}},'
            f' "weth": {{"usd": {weth}, "last_updated_at": {updated}}}}}'
        )
        return Response(body=text.encode())

    with trio.fail_after(60):
        async with loopback_http(handler) as server:
            overrides = {"prices": {"source": "oracle", "coingecko_base_url": server.url}}
            await setup_portfolio(chain, devnet, db_config, tmp_path, **overrides)
            with structlog.testing.capture_logs() as logs:
                async with running_daemon(devnet, db_config, **overrides) as daemon:
                    await wait_for(lambda: evaluated(daemon, "main", 3), "evaluations")
        assert await finished_rows(db, "main") == []
        skips = [e["reason"] for e in logs if e.get("event") == "rebalance_skipped"]
        assert skips
        assert all(skip.startswith(reason) for skip in skips)


@pytest.mark.parametrize("fault", ["after_intent", "after_broadcast"])
async def test_sigkill_around_broadcast_never_double_trades(
    chain: ChainClient,
    devnet: Devnet,
    db_config: DatabaseConfig,
    db: dbm.Database,
    tmp_path: Path,
    fault: str,
) -> None:
    """SIGKILL right after the intent is committed (before / after broadcast), then restart:
    exactly one swap on chain, one rebalance_log row, no nonce gap."""
    with trio.fail_after(90):
        await setup_portfolio(chain, devnet, db_config, tmp_path)
        config_path = write_toml(tmp_path / "daemon.toml", daemon_document(devnet, db_config))
        nonce_before = await chain.get_transaction_count(devnet.signer, "latest")
        await move_price(chain, devnet, "WETH", Decimal("1.3"))
        env = {**os.environ, "DRIFTD_SIGNER_KEY": devnet.signer_key.reveal()}

        log_file = tmp_path / "first.log"
        first = await run_driftd(
            config_path, {**env, "DRIFTD_TEST_FAULTS": f"{fault}=kill"}, log_file
        )
        assert first == -signal.SIGKILL, log_file.read_text()
        (intent,) = await db.intents_by_status()  # recorded, not settled
        # BROADCAST is written once the node is seen to have the hash; killed before that.
        assert intent.status == "SIGNED"
        on_chain = await chain.request("eth_getTransactionByHash", [intent.tx_hash])
        assert (on_chain is not None) == (fault == "after_broadcast")
        assert [r.status for r in await db.rebalance_history()] == ["PENDING"]

        async with trio.open_nursery() as nursery:
            second_log = tmp_path / "second.log"
            nursery.start_soon(run_driftd, config_path, env, second_log)
            rows = await wait_for(lambda: finished_rows(db, "main"), "recovery", within=30)
            await trio.sleep(1)  # a few more evaluations: they must not trade again
            nursery.cancel_scope.cancel()
        (row,) = await finished_rows(db, "main")
        assert row.status == "SUCCESS", row.error
        assert row.transaction_hash == intent.tx_hash  # the same signed bytes, not a new plan
        assert [r.id for r in rows] == [row.id]
        assert await chain.get_transaction_count(devnet.signer, "latest") == nonce_before + 1
        receipt = await chain.get_transaction_receipt(intent.tx_hash)
        assert receipt is not None
        assert receipt.succeeded
        assert await portfolio_drift(chain, devnet, devnet.accounts[0].address, TARGETS) < Decimal(
            "0.15"
        )


async def run_driftd(config_path: Path, env: dict[str, str], log_file: Path) -> int:
    """`driftd run` until it exits; its exit status (negative: killed by that signal)."""
    async with driftd_process(config_path, env, log_file) as process:
        return await process.wait()


async def test_stuck_transaction_is_replaced_with_higher_fees_and_mined_once(
    chain: ChainClient,
    devnet: Devnet,
    db_config: DatabaseConfig,
    db: dbm.Database,
    tmp_path: Path,
) -> None:
    overrides = {"execution": {"receipt_timeout": 0.5}}
    with trio.fail_after(90):
        await setup_portfolio(chain, devnet, db_config, tmp_path, **overrides)
        await move_price(chain, devnet, "WETH", Decimal("1.3"))
        nonce_before = await chain.get_transaction_count(devnet.signer, "latest")
        await evm_set_automine(chain, False)
        try:
            async with running_daemon(devnet, db_config, **overrides):

                async def replaced() -> list[dbm.TxIntent]:
                    intents = await db.intents_by_status("REPLACED")
                    return intents if len(intents) >= 2 else []

                await wait_for(replaced, "two fee bumps")
                await evm_mine(chain)
                (row,) = await wait_for(lambda: finished_rows(db, "main"), "the receipt")
        finally:
            await evm_set_automine(chain, True)
        assert row.status == "SUCCESS", row.error
        intents = await db.intents_for_rebalance(row.id)
        assert len({i.nonce for i in intents}) == 1  # one nonce, several signed versions
        confirmed = [i for i in intents if i.status == "CONFIRMED"]
        assert [i.tx_hash for i in confirmed] == [row.transaction_hash]
        assert confirmed[0].replaces_id is not None
        fees = [i.max_fee_per_gas or 0 for i in sorted(intents, key=lambda i: i.id)]
        for lower, higher in itertools.pairwise(fees):
            assert higher * 8 >= lower * 9  # each bump at least 12.5 %
        assert await chain.get_transaction_count(devnet.signer, "latest") == nonce_before + 1


async def test_a_crashing_portfolio_is_parked_while_the_others_keep_trading(
    chain: ChainClient,
    devnet: Devnet,
    db_config: DatabaseConfig,
    db: dbm.Database,
    tmp_path: Path,
) -> None:
    overrides = {"supervisor": {"max_restarts": 3, "restart_window": 600}}
    with trio.fail_after(90):
        await setup_portfolio(chain, devnet, db_config, tmp_path, "alpha", 0, **overrides)
        await setup_portfolio(chain, devnet, db_config, tmp_path, "beta", 1, False, **overrides)
        third = await create_smart_account(chain, devnet, devnet_key("third owner"), salt=77)
        await _register_extra(chain, devnet, db_config, tmp_path, third, **overrides)
        env = {"DRIFTD_TEST_FAULTS": "evaluate@crashy=raise"}
        async with running_daemon(devnet, db_config, env=env, **overrides) as daemon:

            async def parked() -> bool:
                return daemon.supervisor.actors["crashy"].status == "parked"

            await wait_for(parked, "crashy to be parked")
            await move_price(chain, devnet, "WETH", Decimal("1.3"))
            for name in ("alpha", "beta"):
                (row,) = await wait_for(lambda n=name: finished_rows(db, n), f"{name} rebalance")
                assert row.status == "SUCCESS", row.error
            crashy = daemon.supervisor.actors["crashy"]
            assert crashy.status == "parked"
            assert crashy.restart_count == 3
            assert crashy.last_error == "InjectedFault: injected fault at evaluate@crashy"
            assert daemon.supervisor.actors["alpha"].restart_count == 0
        assert await finished_rows(db, "crashy") == []


async def _register_extra(
    chain: ChainClient,
    devnet: Devnet,
    db_config: DatabaseConfig,
    tmp_path: Path,
    account: SmartAccount,
    **overrides: Any,
) -> None:
    path = write_toml(tmp_path / "config.toml", daemon_document(devnet, db_config, **overrides))
    env = {"DRIFTD_SIGNER_KEY": devnet.signer_key.reveal()}
    await fund_to_targets(chain, devnet, account.address, TARGETS, TOTAL_USD)
    await register_portfolio(devnet, account, "crashy", TARGETS, path, env, tmp_path)


async def test_dry_run_plans_and_quotes_but_sends_nothing(
    chain: ChainClient,
    devnet: Devnet,
    db_config: DatabaseConfig,
    db: dbm.Database,
    tmp_path: Path,
) -> None:
    overrides = {"execution": {"dry_run": True}}
    with trio.fail_after(60):
        await setup_portfolio(chain, devnet, db_config, tmp_path, **overrides)
        await move_price(chain, devnet, "WETH", Decimal("1.3"))
        nonce = await chain.get_transaction_count(devnet.signer)
        async with running_daemon(devnet, db_config, **overrides) as daemon:
            (row,) = await wait_for(lambda: finished_rows(db, "main"), "a dry run")
            seen = daemon.supervisor.actors["main"].state.evaluations
            await wait_for(lambda: evaluated(daemon, "main", seen + 3), "more evaluations")
        assert [r.status for r in await finished_rows(db, "main")] == ["DRY_RUN"]  # cooldown
        assert row.transaction_hash is None
        assert all(int(leg["amount_out_min"]) > 0 for leg in row.expected_outputs)
        assert await chain.get_transaction_count(devnet.signer) == nonce
        assert await db.intents_by_status() == []
        account = devnet.accounts[0].address
        assert await portfolio_drift(chain, devnet, account, TARGETS) > Decimal("0.15")


async def test_wallet_mode_trades_from_the_signer_through_the_same_executor(
    chain: ChainClient,
    devnet: Devnet,
    db_config: DatabaseConfig,
    db: dbm.Database,
    tmp_path: Path,
) -> None:
    overrides = {"execution": {"mode": "wallet"}}
    path = write_toml(tmp_path / "config.toml", daemon_document(devnet, db_config, **overrides))
    env = {"DRIFTD_SIGNER_KEY": devnet.signer_key.reveal()}
    with trio.fail_after(60):
        await register_tokens(devnet, path, env)
        await fund_to_targets(chain, devnet, devnet.signer, TARGETS, TOTAL_USD)
        argv = ["portfolio", "add", "own", "--account", devnet.signer]
        argv += ["--target", *[f"{s}={w}" for s, w in TARGETS.items()]]
        assert await run_cli(argv, path, env) == 0
        nonce = await chain.get_transaction_count(devnet.signer)
        async with running_daemon(devnet, db_config, **overrides):
            await move_price(chain, devnet, "WETH", Decimal("1.3"))
            (row,) = await wait_for(lambda: finished_rows(db, "own"), "a rebalance")
        assert row.status == "SUCCESS", row.error
        legs = len(row.token_amounts)
        sold = {leg["sell"] for leg in row.token_amounts}
        # An EOA cannot batch: one standing approve per token sold (none was approved yet),
        # then a swap per leg, each with its own nonce, in order.
        sent = legs + len(sold)
        assert await chain.get_transaction_count(devnet.signer) == nonce + sent
        intents = await db.intents_for_rebalance(row.id)
        assert [i.nonce for i in intents] == list(range(nonce, nonce + sent))
        assert [i.purpose for i in intents].count("approve") == len(sold)
        assert await portfolio_drift(chain, devnet, devnet.signer, TARGETS) < Decimal("0.15")


async def test_portfolios_follow_the_database_without_a_restart(
    chain: ChainClient,
    devnet: Devnet,
    db_config: DatabaseConfig,
    db: dbm.Database,
    tmp_path: Path,
) -> None:
    path = write_toml(tmp_path / "config.toml", daemon_document(devnet, db_config))
    env = {"DRIFTD_SIGNER_KEY": devnet.signer_key.reveal()}
    with trio.fail_after(60):
        await setup_portfolio(chain, devnet, db_config, tmp_path, "alpha", 0)
        async with running_daemon(devnet, db_config) as daemon:
            assert set(daemon.supervisor.actors) == {"alpha"}
            await setup_portfolio(chain, devnet, db_config, tmp_path, "beta", 1, False)

            async def has(names: set[str]) -> bool:
                return set(daemon.supervisor.actors) == names

            await wait_for(lambda: has({"alpha", "beta"}), "beta to start")
            assert await run_cli(["portfolio", "deactivate", "alpha"], path, env) == 0
            await wait_for(lambda: has({"beta"}), "alpha to stop")
            await move_price(chain, devnet, "WETH", Decimal("1.3"))
            (row,) = await wait_for(lambda: finished_rows(db, "beta"), "beta's rebalance")
            assert row.status == "SUCCESS"
        assert await finished_rows(db, "alpha") == []


async def test_sigint_stops_the_daemon_cleanly(
    chain: ChainClient, devnet: Devnet, db_config: DatabaseConfig, tmp_path: Path
) -> None:
    with trio.fail_after(60):
        await setup_portfolio(chain, devnet, db_config, tmp_path)
        config_path = write_toml(tmp_path / "daemon.toml", daemon_document(devnet, db_config))
        env = {**os.environ, "DRIFTD_SIGNER_KEY": devnet.signer_key.reveal()}
        log_file = tmp_path / "daemon.log"
        async with driftd_process(config_path, env, log_file) as process:

            async def started() -> bool:
                return "daemon_started" in log_file.read_text()

            await wait_for(started, "the daemon to start")
            process.send_signal(signal.SIGINT)
            assert await process.wait() == 0, log_file.read_text()
        text = log_file.read_text()
        assert '"event": "stopped"' in text
        assert devnet.signer_key.reveal()[2:] not in text  # the key never reaches a log line


async def test_a_nonce_taken_by_another_sender_fails_the_attempt_without_a_second_trade(
    chain: ChainClient,
    devnet: Devnet,
    db_config: DatabaseConfig,
    db: dbm.Database,
    tmp_path: Path,
) -> None:
    """Someone else signs with the daemon's key and their transaction takes our nonce: the
    attempt ends FAILED, our signed versions are DROPPED, and the executor re-reads its nonce."""
    overrides = {"execution": {"receipt_timeout": 60}}
    with trio.fail_after(90):
        await setup_portfolio(chain, devnet, db_config, tmp_path, **overrides)
        await move_price(chain, devnet, "WETH", Decimal("1.3"))
        await evm_set_automine(chain, False)
        try:
            async with running_daemon(devnet, db_config, **overrides) as daemon:

                async def broadcast() -> list[dbm.TxIntent]:
                    return await db.intents_by_status("BROADCAST")

                (ours,) = await wait_for(broadcast, "our transaction in the pool")
                # The intruder replaces it: same nonce, much higher fees, a harmless self-send.
                intruder = TxSigner(key=devnet.signer_key)
                fees = await chain.fee_data()
                theirs = intruder.sign(
                    TxRequest(
                        to=devnet.signer,
                        data=b"",
                        nonce=ours.nonce,
                        gas=21_000,
                        max_fee_per_gas=(ours.max_fee_per_gas or 0) * 3 + fees.max_fee(),
                        max_priority_fee_per_gas=(ours.max_priority_fee_per_gas or 0) * 3 + 1,
                        chain_id=devnet.chain_id,
                    )
                )
                await chain.send_raw_transaction(theirs)
                await evm_mine(chain)
                (row,) = await wait_for(lambda: finished_rows(db, "main"), "the verdict")
                assert daemon.executor.status.next_nonce == ours.nonce + 1
        finally:
            await evm_set_automine(chain, True)
        assert row.status == "FAILED"
        assert "not ours" in (row.error or "")
        statuses = {i.status for i in await db.intents_for_rebalance(row.id)}
        assert statuses == {"DROPPED"}
        receipt = await chain.get_transaction_receipt(theirs.hash)
        assert receipt is not None
        assert await chain.get_transaction_receipt(ours.tx_hash) is None

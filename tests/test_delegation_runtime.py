"""The running daemon re-checks a portfolio's delegations: weaker ones are not traded, expiry is
warned ahead and honoured (issue 11). Real PostgreSQL, anvil and Delegation Framework."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import trio
from daemon_harness import (
    GUARD_DOCUMENT,
    Clock,
    daemon_document,
    fund_to_targets,
    move_price,
    owner_increments_nonce,
    register_portfolio,
    register_tokens,
    write_toml,
)
from test_daemon import TARGETS, TOTAL_USD, evaluated, finished_rows, running_daemon, wait_for

from daemon import db as dbm
from daemon.chain import ChainClient
from daemon.config import DatabaseConfig, GuardConfig
from daemon.control import DaemonControls
from daemon.delegation import (
    DelegationDomain,
    build_portfolio_delegations,
    sign_delegation,
)
from daemon.devtools.devnet_deploy import set_feed_price
from daemon.devtools.devnet_records import Devnet


async def _setup(
    chain: ChainClient, devnet: Devnet, db_config: DatabaseConfig, tmp_path: Path
) -> tuple[Path, dict[str, str]]:
    path = write_toml(tmp_path / "config.toml", daemon_document(devnet, db_config))
    env = {"DRIFTD_SIGNER_KEY": devnet.signer_key.reveal()}
    await register_tokens(devnet, path, env)
    await fund_to_targets(chain, devnet, devnet.accounts[0].address, TARGETS, TOTAL_USD)
    return path, env


async def test_delegations_without_the_oracle_guard_are_never_traded(
    chain: ChainClient,
    devnet: Devnet,
    db_config: DatabaseConfig,
    db: dbm.Database,
    tmp_path: Path,
) -> None:
    """A portfolio row written behind the CLI's back (or registered before the guard existed)
    with unguarded delegations: the daemon refuses it as invalid, and trades nothing."""
    with trio.fail_after(60):
        await _setup(chain, devnet, db_config, tmp_path)
        account = devnet.accounts[0]
        unguarded = build_portfolio_delegations(
            account=account.address,
            delegate=devnet.signer,
            router=devnet.router,
            tokens=[devnet.token(symbol).address for symbol in TARGETS],
            enforcers=devnet.delegation_config(),
            salt=4242,
        )
        domain = DelegationDomain(chain_id=devnet.chain_id, manager=devnet.manager)
        signed = [sign_delegation(d, domain, account.owner_key) for d in unguarded.as_list()]
        await db.add_portfolio(
            "old",
            account.address,
            chain_id=devnet.chain_id,
            targets={symbol: Decimal(weight) for symbol, weight in TARGETS.items()},
            delegation=[d.to_json() for d in signed],
        )
        nonce = await chain.get_transaction_count(devnet.signer, "latest")
        async with running_daemon(devnet, db_config) as daemon:
            await move_price(chain, devnet, "WETH", Decimal("1.3"))
            await wait_for(
                lambda: _true(daemon.portfolios.invalid.get("old")), "the portfolio refused"
            )
            await trio.sleep(1.0)  # several price ticks: still nothing
            health = DaemonControls(daemon).health()
        reason = daemon.portfolios.invalid["old"]
        assert reason.startswith("weaker than driftd requires: ")
        assert "no oracle guard caveat" in reason
        assert "no expiry" in reason
        assert "old" not in daemon.supervisor.actors
        assert health["portfolios"]["old"]["state"] == "invalid"
        assert await finished_rows(db, "old") == []
        assert await chain.get_transaction_count(devnet.signer, "latest") == nonce


async def test_expiring_delegations_are_warned_ahead_and_not_used_after_expiry(
    chain: ChainClient,
    devnet: Devnet,
    db_config: DatabaseConfig,
    db: dbm.Database,
    tmp_path: Path,
) -> None:
    with trio.fail_after(60):
        path, env = await _setup(chain, devnet, db_config, tmp_path)
        account = devnet.accounts[0]
        expires_at = int((datetime.now(UTC) + timedelta(days=3)).timestamp())
        await register_portfolio(
            devnet, account, "soon", TARGETS, path, env, tmp_path, expires_at=expires_at
        )
        clock = Clock()
        async with running_daemon(devnet, db_config, clock) as daemon:
            await wait_for(lambda: evaluated(daemon, "soon", 1), "a first evaluation")
            health = DaemonControls(daemon).health()
            assert health["status"] == "degraded"
            soon = ("portfolio soon: delegations expire in 3.0 days", "2.9 days")
            assert any(p.startswith(soon[0]) or soon[1] in p for p in health["problems"]), health[
                "problems"
            ]
            left = health["portfolios"]["soon"]["delegations_expire_in_seconds"]
            assert 2.9 * 86400 < left <= 3 * 86400
            # Four days later (the daemon's clock): expired. The market moves; nothing trades.
            clock.offset = timedelta(days=4)
            await move_price(chain, devnet, "WETH", Decimal("1.3"))
            seen = daemon.supervisor.actors["soon"].state.evaluations
            await wait_for(lambda: evaluated(daemon, "soon", seen + 3), "more evaluations")
            state = daemon.supervisor.actors["soon"].state
            assert (state.last_decision or "").startswith(
                "No trade: the portfolio's delegations expired at "
            ), state.last_decision
            expired = DaemonControls(daemon).health()
            assert any("delegations expired" in p for p in expired["problems"])
        assert await finished_rows(db, "soon") == []


async def test_delegations_the_owner_revoked_are_not_traded(
    chain: ChainClient,
    devnet: Devnet,
    db_config: DatabaseConfig,
    db: dbm.Database,
    tmp_path: Path,
) -> None:
    """The owner revokes everything in one step (incrementNonce) while the daemon runs: at its
    next reconcile the portfolio is invalid, and a market move is not traded (nor attempted)."""
    with trio.fail_after(60):
        path, env = await _setup(chain, devnet, db_config, tmp_path)
        account = devnet.accounts[0]
        await register_portfolio(devnet, account, "main", TARGETS, path, env, tmp_path)
        async with running_daemon(devnet, db_config) as daemon:
            await wait_for(lambda: evaluated(daemon, "main", 1), "a first evaluation")
            await owner_increments_nonce(chain, devnet, account)
            # Any change to the portfolio reconciles at once (otherwise: RECHECK_SECONDS).
            await db.set_portfolio_paused("main", False)
            await wait_for(
                lambda: _true(daemon.portfolios.invalid.get("main")), "the revocation noticed"
            )
            await move_price(chain, devnet, "WETH", Decimal("1.3"))
            await trio.sleep(1.0)
        assert daemon.portfolios.invalid["main"].startswith(
            "revoked: the owner incremented the NonceEnforcer nonce (signed at nonce 0, current 1)"
        )
        assert "main" not in daemon.supervisor.actors
        assert await finished_rows(db, "main") == []


async def _true(value: object) -> bool:
    return bool(value)


async def _register_with_guard_bound(
    chain: ChainClient,
    devnet: Devnet,
    db_config: DatabaseConfig,
    tmp_path: Path,
    max_loss_bps: int,
) -> None:
    """Portfolio "main" whose owner signed a guard tighter than the configured one."""
    path, env = await _setup(chain, devnet, db_config, tmp_path)
    guard = GuardConfig(**{**GUARD_DOCUMENT, "max_loss_bps": max_loss_bps})
    await register_portfolio(
        devnet, devnet.accounts[0], "main", TARGETS, path, env, tmp_path, guard=guard
    )


async def _market_moves_weth(chain: ChainClient, devnet: Devnet) -> None:
    """WETH up 30 % in its pool and at its feed alike: the daemon sells WETH at a fair price."""
    await move_price(chain, devnet, "WETH", Decimal("1.3"))
    await set_feed_price(chain, devnet, "WETH", devnet.reference_usd["WETH"] * Decimal("1.3"))


async def test_a_rebalance_the_guard_could_revert_is_not_sent(
    chain: ChainClient,
    devnet: Devnet,
    db_config: DatabaseConfig,
    db: dbm.Database,
    tmp_path: Path,
) -> None:
    """The owner signed a 0.1 % loss bound; the daemon's slippage tolerance is 5 %. The quoted
    swap (~0.3 % fee on ~5 % of the portfolio) fits the bound, so the gas estimate passes — but
    a swap paid only its ``amountOutMin`` would lose ~0.25 % of the portfolio, and the guard would
    revert it on chain, gas paid. The daemon checks the bound at that worst case first: a SKIPPED
    row naming the guard's error, and no transaction."""
    with trio.fail_after(90):
        await _register_with_guard_bound(chain, devnet, db_config, tmp_path, max_loss_bps=10)
        nonce = await chain.get_transaction_count(devnet.signer, "latest")
        overrides = {"rebalance": {"slippage_tolerance": "0.05"}}
        async with running_daemon(devnet, db_config, **overrides):
            await _market_moves_weth(chain, devnet)
            (row, *_) = await wait_for(lambda: finished_rows(db, "main"), "an attempt")
        assert row.status == "SKIPPED", (row.status, row.error)
        assert (row.skip_reason or "").startswith(
            "No trade: the oracle guard could revert it: LossAboveBound: loses "
        ), row.skip_reason
        assert "(> 10 bps)" in (row.skip_reason or "")
        assert await chain.get_transaction_count(devnet.signer, "latest") == nonce


async def test_a_rebalance_within_the_guard_bound_is_sent(
    chain: ChainClient,
    devnet: Devnet,
    db_config: DatabaseConfig,
    db: dbm.Database,
    tmp_path: Path,
) -> None:
    """The same trade with the default 1 % slippage fits the same 0.1 % bound at worst: sent."""
    with trio.fail_after(90):
        await _register_with_guard_bound(chain, devnet, db_config, tmp_path, max_loss_bps=10)
        async with running_daemon(devnet, db_config):
            await _market_moves_weth(chain, devnet)
            (row, *_) = await wait_for(lambda: finished_rows(db, "main"), "a rebalance")
        assert row.status == "SUCCESS", (row.status, row.error, row.skip_reason)


async def test_a_stale_feed_stops_the_trade_before_it_is_sent(
    chain: ChainClient,
    devnet: Devnet,
    db_config: DatabaseConfig,
    db: dbm.Database,
    tmp_path: Path,
) -> None:
    """A feed older than the guard's ``max_staleness``: the guard would revert (StalePrice), so
    the daemon does not send, and says which feed."""
    with trio.fail_after(90):
        await _register_with_guard_bound(chain, devnet, db_config, tmp_path, max_loss_bps=100)
        nonce = await chain.get_transaction_count(devnet.signer, "latest")
        async with running_daemon(devnet, db_config):
            await move_price(chain, devnet, "WETH", Decimal("1.3"))
            block = await chain.latest_block()
            stale = block.timestamp - GUARD_DOCUMENT["max_staleness"] - 60
            usdc = devnet.reference_usd["USDC"]
            await set_feed_price(chain, devnet, "USDC", usdc, updated_at=stale)
            (row, *_) = await wait_for(lambda: finished_rows(db, "main"), "an attempt")
        assert row.status == "SKIPPED", (row.status, row.error)
        assert f"feed {devnet.feeds['USDC']} was updated at {stale}" in (row.skip_reason or "")
        assert "(StalePrice)" in (row.skip_reason or "")
        assert await chain.get_transaction_count(devnet.signer, "latest") == nonce

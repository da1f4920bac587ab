"""The running daemon re-checks a portfolio's delegations: weaker ones are not traded, expiry is
warned ahead and honoured (issue 11). Real PostgreSQL, anvil and Delegation Framework."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import trio
from daemon_harness import (
    Clock,
    daemon_document,
    fund_to_targets,
    guarded_delegations,
    move_price,
    owner_increments_nonce,
    register_portfolio,
    register_tokens,
    run_cli,
    write_toml,
)
from test_daemon import TARGETS, TOTAL_USD, evaluated, finished_rows, running_daemon, wait_for

from daemon import db as dbm
from daemon.chain import ChainClient
from daemon.config import DatabaseConfig
from daemon.control import DaemonControls
from daemon.delegation import (
    DelegationDomain,
    build_portfolio_delegations,
    dump_delegation_file,
    sign_delegation,
)
from daemon.devnet import Devnet


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
            await wait_for(lambda: _true(daemon.invalid.get("old")), "the portfolio refused")
            await trio.sleep(1.0)  # several price ticks: still nothing
            health = DaemonControls(daemon).health()
        reason = daemon.invalid["old"]
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
        signed = guarded_delegations(devnet, account, list(TARGETS), expires_at=expires_at)
        file = tmp_path / "soon.json"
        file.write_text(dump_delegation_file(signed))
        argv = ["portfolio", "add", "soon", "--account", account.address, "--delegation", str(file)]
        argv += ["--target", *[f"{symbol}={weight}" for symbol, weight in TARGETS.items()]]
        assert await run_cli(argv, path, env) == 0
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
            await wait_for(lambda: _true(daemon.invalid.get("main")), "the revocation noticed")
            await move_price(chain, devnet, "WETH", Decimal("1.3"))
            await trio.sleep(1.0)
        assert daemon.invalid["main"].startswith(
            "revoked: the owner incremented the NonceEnforcer nonce (signed at nonce 0, current 1)"
        )
        assert "main" not in daemon.supervisor.actors
        assert await finished_rows(db, "main") == []


async def _true(value: object) -> bool:
    return bool(value)

"""`driftd portfolio add` checks the delegation file against least authority and the chain."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import attrs
import trio
from daemon_harness import (
    daemon_document,
    guarded_delegations,
    owner_increments_nonce,
    register_tokens,
    run_cli,
    write_toml,
)
from test_daemon import evaluated, running_daemon, wait_for

from daemon.chain import ChainClient
from daemon.config import DatabaseConfig, GuardConfig
from daemon.db import Allocation, Portfolio, TokenRecord, open_database
from daemon.delegation import (
    Delegation,
    DelegationDomain,
    build_portfolio_delegations,
    dump_delegation_file,
    sign_delegation,
)
from daemon.devtools.devnet_records import Devnet, SmartAccount, devnet_key
from daemon.registration import one_actor_per_account, portfolios_to_hold


def _with_signer(devnet: Devnet, account: SmartAccount, signer_label: str) -> SmartAccount:
    if signer_label == "owner":
        return account
    return attrs.evolve(account, owner_key=devnet_key(signer_label))


def delegation_file(
    devnet: Devnet,
    tmp_path: Path,
    *,
    delegate: str,
    signer_label: str,
    name: str = "signed",
    **guard: Any,
) -> Path:
    account = _with_signer(devnet, devnet.accounts[0], signer_label)
    signed = guarded_delegations(devnet, account, ["USDC", "WETH"], delegate=delegate, **guard)
    path = tmp_path / f"{name}.json"
    path.write_text(dump_delegation_file(signed))
    return path


def write_delegations(tmp_path: Path, name: str, delegations: list[Delegation]) -> Path:
    path = tmp_path / f"{name}.json"
    path.write_text(dump_delegation_file(delegations))
    return path


async def add(devnet: Devnet, config: Path, file: Path, env: dict[str, str]) -> int:
    argv = ["portfolio", "add", "p", "--account", devnet.accounts[0].address]
    argv += ["--target", "USDC=0.5", "WETH=0.5", "--delegation", str(file)]
    return await run_cli(argv, config, env)


async def test_good_file_is_accepted_and_bad_ones_are_refused(
    chain: ChainClient,
    devnet: Devnet,
    db_config: DatabaseConfig,
    tmp_path: Path,
) -> None:
    env = {"DRIFTD_SIGNER_KEY": devnet.signer_key.reveal()}
    config = write_toml(tmp_path / "c.toml", daemon_document(devnet, db_config))
    with trio.fail_after(60):
        await register_tokens(devnet, config, env)
        wrong_delegate = delegation_file(
            devnet, tmp_path, delegate=devnet.accounts[1].owner, signer_label="owner"
        )
        assert await add(devnet, config, wrong_delegate, env) == 65
        forged = delegation_file(devnet, tmp_path, delegate=devnet.signer, signer_label="thief")
        assert await add(devnet, config, forged, env) == 65
        good = delegation_file(devnet, tmp_path, delegate=devnet.signer, signer_label="owner")
        assert await add(devnet, config, good, env) == 0


async def test_unreachable_chain_is_exit_69(
    devnet: Devnet, db_config: DatabaseConfig, tmp_path: Path
) -> None:
    env = {"DRIFTD_SIGNER_KEY": devnet.signer_key.reveal()}
    document = daemon_document(devnet, db_config)
    config = write_toml(tmp_path / "c.toml", document)
    with trio.fail_after(60):
        await register_tokens(devnet, config, env)
        document["chain"]["rpc_url"] = "http://127.0.0.1:9"
        document["chain"]["max_retries"] = 0
        offline = write_toml(tmp_path / "offline.toml", document)
        good = delegation_file(devnet, tmp_path, delegate=devnet.signer, signer_label="owner")
        assert await add(devnet, offline, good, env) == 69


async def test_weaker_delegations_are_refused_with_the_problem_named(
    chain: ChainClient,
    devnet: Devnet,
    db_config: DatabaseConfig,
    tmp_path: Path,
    capsys: Any,
) -> None:
    """`portfolio add` refuses every delegation weaker than issue 11 requires."""
    env = {"DRIFTD_SIGNER_KEY": devnet.signer_key.reveal()}
    config = write_toml(tmp_path / "c.toml", daemon_document(devnet, db_config))
    account = devnet.accounts[0]
    domain = DelegationDomain(chain_id=devnet.chain_id, manager=devnet.manager)
    unguarded = build_portfolio_delegations(
        account=account.address,
        delegate=devnet.signer,
        router=devnet.router,
        tokens=[devnet.token("USDC").address, devnet.token("WETH").address],
        enforcers=devnet.delegation_config(),
        salt=9,
    )
    base = daemon_document(devnet, db_config)["guard"]
    cases: list[tuple[str, Path]] = [
        (
            "swap: no oracle guard caveat",
            write_delegations(
                tmp_path,
                "unguarded",
                [sign_delegation(d, domain, account.owner_key) for d in unguarded.as_list()],
            ),
        ),
        (
            "swap: no oracle guard caveat",
            delegation_file(
                devnet,
                tmp_path,
                delegate=devnet.signer,
                signer_label="owner",
                name="elsewhere",
                guard=attrs.evolve(
                    devnet.guard_config(GuardConfig(**base)), enforcer=devnet.manager
                ),
            ),
        ),
        (
            "max_loss_bps is 500, above the configured 100",
            delegation_file(
                devnet,
                tmp_path,
                delegate=devnet.signer,
                signer_label="owner",
                name="loose",
                guard=GuardConfig(**{**base, "max_loss_bps": 500}),
            ),
        ),
        (
            "swap: no one-step revocation (NonceEnforcer)",
            delegation_file(
                devnet,
                tmp_path,
                delegate=devnet.signer,
                signer_label="owner",
                name="irrevocable",
                nonce=None,
            ),
        ),
        (
            "approve: expired at",
            delegation_file(
                devnet,
                tmp_path,
                delegate=devnet.signer,
                signer_label="owner",
                name="expired",
                expires_at=1_000_000,
            ),
        ),
    ]
    with trio.fail_after(90):
        await register_tokens(devnet, config, env)
        capsys.readouterr()
        for message, file in cases:
            assert await add(devnet, config, file, env) == 65, message
            assert message in capsys.readouterr().err
        # The guard must list exactly the portfolio's tokens and the quote token.
        wide = guarded_delegations(devnet, account, ["USDC", "WETH", "WBTC"])
        file = write_delegations(tmp_path, "wide", wide)
        assert await add(devnet, config, file, env) == 65
        assert "guard tokens are not exactly the portfolio's tokens" in capsys.readouterr().err


async def test_revoked_delegations_are_refused(
    chain: ChainClient,
    devnet: Devnet,
    db_config: DatabaseConfig,
    tmp_path: Path,
    capsys: Any,
) -> None:
    """After the owner's one ``incrementNonce``, `portfolio add` refuses what they signed before
    and accepts what they sign at the new nonce."""
    env = {"DRIFTD_SIGNER_KEY": devnet.signer_key.reveal()}
    config = write_toml(tmp_path / "c.toml", daemon_document(devnet, db_config))
    with trio.fail_after(60):
        await register_tokens(devnet, config, env)
        old = delegation_file(devnet, tmp_path, delegate=devnet.signer, signer_label="owner")
        await owner_increments_nonce(chain, devnet, devnet.accounts[0])
        capsys.readouterr()
        assert await add(devnet, config, old, env) == 65
        assert "revoked: the owner incremented the nonce" in capsys.readouterr().err
        fresh = delegation_file(
            devnet, tmp_path, delegate=devnet.signer, signer_label="owner", name="new", nonce=1
        )
        assert await add(devnet, config, fresh, env) == 0


async def test_the_daemon_runs_one_actor_per_account(
    chain: ChainClient,
    devnet: Devnet,
    db_config: DatabaseConfig,
    tmp_path: Path,
) -> None:
    """Finding: two active portfolios on one smart account ran as two actors that traded
    against each other. Rows written before migration 0005's index (here: the index dropped,
    rows inserted behind the CLI's back): the daemon runs the first and marks the later one
    invalid, naming the first."""

    env = {"DRIFTD_SIGNER_KEY": devnet.signer_key.reveal()}
    config = write_toml(tmp_path / "c.toml", daemon_document(devnet, db_config))
    account = devnet.accounts[0]
    with trio.fail_after(60):
        await register_tokens(devnet, config, env)
        async with open_database(db_config) as db:
            await db.execute("DROP INDEX IF EXISTS portfolio_one_active_per_account")
            for name, targets in (
                ("first", {"USDC": "0.5", "WETH": "0.5"}),
                ("second", {"USDC": "0.2", "WETH": "0.8"}),
            ):
                signed = guarded_delegations(devnet, account, list(targets))
                await db.add_portfolio(
                    name,
                    account.address,
                    chain_id=devnet.chain_id,
                    targets={symbol: Decimal(weight) for symbol, weight in targets.items()},
                    delegation=[d.to_json() for d in signed],
                )
            assert {p.name for p in await db.active_portfolios()} == {"first", "second"}
            async with running_daemon(devnet, db_config) as daemon:
                await wait_for(lambda: evaluated(daemon, "first", 2), "first's evaluations")
                actors = set(daemon.supervisor.actors)
                reason = daemon.portfolios.invalid.get("second", "")
    assert actors == {"first"}
    assert reason.startswith(
        f"account {account.address} on chain {devnet.chain_id} already runs portfolio 'first'"
    )
    assert "driftd portfolio deactivate second" in reason


def test_wallet_mode_portfolios_share_the_signers_account() -> None:
    """In wallet mode every portfolio trades from the signer's own address, whatever
    ``--account`` it was registered with: only the first runs."""
    now = datetime.now(UTC)

    def row(portfolio_id: int, name: str, account: str, chain_id: int = 1) -> Portfolio:
        return Portfolio(
            id=portfolio_id,
            name=name,
            smart_account=account,
            chain_id=chain_id,
            owner=None,
            is_active=True,
            delegation=[],
            allocations=(),
            created_at=now,
            updated_at=now,
        )

    signer = "0x" + "55" * 20
    rows = [row(3, "c", "0x" + "cc" * 20), row(1, "a", "0x" + "aa" * 20), row(2, "b", signer)]
    held = one_actor_per_account(rows, wallet_signer=signer)
    assert sorted(held) == ["b", "c"]
    assert held["c"].startswith(f"account {signer} on chain 1 already runs portfolio 'a' (id 1)")
    # Smart accounts: only the same account (any letter case) on the same chain collides.
    rows += [row(4, "d", "0x" + "AA" * 20), row(5, "e", "0x" + "aa" * 20, chain_id=5)]
    assert sorted(one_actor_per_account(rows)) == ["d"]


async def test_the_daemon_holds_back_delegations_that_miss_a_token(
    chain: ChainClient, devnet: Devnet
) -> None:
    """A row registered before `portfolio add` checked coverage (or written behind its back):
    its approve delegation cannot approve WETH, so every rebalance selling WETH would fail (a
    FAILED row on every tick). The reconcile holds it back with the reason instead."""
    account = devnet.accounts[0]
    domain = DelegationDomain(chain_id=devnet.chain_id, manager=devnet.manager)
    narrow = build_portfolio_delegations(
        account=account.address,
        delegate=devnet.signer,
        router=devnet.router,
        tokens=[devnet.token("USDC").address],
        enforcers=devnet.delegation_config(),
        salt=77,
    )
    signed = [sign_delegation(d, domain, account.owner_key).to_json() for d in narrow.as_list()]
    now = datetime.now(UTC)
    tokens = {
        token.symbol: TokenRecord(
            id=index,
            symbol=token.symbol,
            address=token.address,
            chain_id=devnet.chain_id,
            decimals=token.decimals,
            coingecko_id=None,
            is_quote=token.symbol == devnet.quote_symbol,
        )
        for index, token in enumerate(devnet.tokens, start=1)
    }
    row = Portfolio(
        id=1,
        name="narrow",
        smart_account=account.address,
        chain_id=devnet.chain_id,
        owner=None,
        is_active=True,
        delegation=signed,
        allocations=tuple(
            Allocation(tokens[symbol], Decimal("0.5")) for symbol in ("USDC", "WETH")
        ),
        created_at=now,
        updated_at=now,
    )
    decimals: dict[str, int] = {}
    with trio.fail_after(20):
        held = await portfolios_to_hold(
            chain,
            [row],
            list(tokens.values()),
            enforcers=devnet.delegation_config(),
            wallet_signer=None,
            onchain_decimals=decimals,
        )
    assert held["narrow"].startswith("approve: does not cover the portfolio's token(s) WETH")
    # The decimals of every registered token were read (one batch) and agree with the registry.
    assert decimals == {t.address: t.decimals for t in devnet.tokens}

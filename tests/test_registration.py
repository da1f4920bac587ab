"""`driftd portfolio add` checks the delegation file against least authority and the chain."""

from __future__ import annotations

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

from daemon.chain import ChainClient
from daemon.config import DatabaseConfig, GuardConfig
from daemon.delegation import (
    Delegation,
    DelegationDomain,
    build_portfolio_delegations,
    dump_delegation_file,
    sign_delegation,
)
from daemon.devnet import Devnet, SmartAccount, devnet_key


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

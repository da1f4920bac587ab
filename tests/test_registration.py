"""`driftd portfolio add` checks the delegation file against least authority and the chain."""

from __future__ import annotations

from pathlib import Path

import trio
from daemon_harness import daemon_document, register_tokens, run_cli, write_toml

from daemon.chain import ChainClient
from daemon.config import DatabaseConfig
from daemon.delegation import (
    DelegationDomain,
    build_portfolio_delegations,
    dump_delegation_file,
    sign_delegation,
)
from daemon.devnet import Devnet, devnet_key


def delegation_file(devnet: Devnet, tmp_path: Path, *, delegate: str, signer_label: str) -> Path:
    account = devnet.accounts[0]
    built = build_portfolio_delegations(
        account=account.address,
        delegate=delegate,
        router=devnet.router,
        tokens=[devnet.token("USDC").address, devnet.token("WETH").address],
        enforcers=devnet.delegation_config(),
        salt=5,
    )
    key = account.owner_key if signer_label == "owner" else devnet_key(signer_label)
    domain = DelegationDomain(chain_id=devnet.chain_id, manager=devnet.manager)
    path = tmp_path / "signed.json"
    path.write_text(
        dump_delegation_file([sign_delegation(d, domain, key) for d in built.as_list()])
    )
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

"""The devnet: what it deploys, that it cleans up after itself, and its failure messages."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import trio

from daemon.abi import encode_call
from daemon.address import to_address
from daemon.chain import ChainClient, erc20_decimals
from daemon.devtools.devnet_anvil import (
    evm_mine,
    evm_revert,
    evm_set_automine,
    evm_snapshot,
    launch_anvil,
)
from daemon.devtools.devnet_artifacts import NpmPackagesMissing, anvil_executable, load_artifacts
from daemon.devtools.devnet_deploy import create_address, fund
from daemon.devtools.devnet_records import Devnet

pytestmark = pytest.mark.chain


def test_create_address_matches_known_vector() -> None:
    # anvil's first account's first deployment is the well-known 0x5FbDB…
    deployer = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
    assert create_address(deployer, 0) == "0x5FbDB2315678afecb367f032d93F642f64180aa3"
    assert create_address(deployer, 1) == "0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512"


def test_missing_npm_packages_say_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(NpmPackagesMissing, match=r"\./dev setup"):
        anvil_executable(tmp_path)
    with pytest.raises(NpmPackagesMissing, match=r"\./dev setup"):
        load_artifacts(tmp_path)


def test_anvil_stops_without_orphans() -> None:
    anvil = launch_anvil()
    port = anvil.wait_ready()
    pid = anvil.process.pid
    with socket.create_connection(("127.0.0.1", port), timeout=2):
        pass
    anvil.stop()
    assert anvil.process.returncode is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    anvil.stop()  # idempotent


async def test_contracts_and_accounts_are_deployed(chain: ChainClient, devnet: Devnet) -> None:
    with trio.fail_after(10):
        addresses = [devnet.router, devnet.factory, devnet.manager, devnet.entry_point]
        addresses += [devnet.simple_factory, devnet.hybrid_implementation]
        addresses += list(devnet.enforcers.values())
        addresses += [account.address for account in devnet.accounts]
        for address in addresses:
            assert await chain.get_code(address), address
        for token in devnet.tokens:
            assert await erc20_decimals(chain, token.address) == token.decimals
        for account in devnet.accounts:
            owner = await chain.call(account.address, encode_call("owner()"))
            assert to_address(owner[12:]) == account.owner
        config = devnet.delegation_config()
        assert config.manager == devnet.manager
        assert config.allowed_calldata == devnet.enforcers["allowed_calldata"]
        assert devnet.chain_config().router == devnet.router
        assert devnet.deploy_seconds < 5


async def test_snapshots_isolate_changes(chain: ChainClient, devnet: Devnet) -> None:
    with trio.fail_after(10):
        usdc = devnet.token("USDC").address
        account = devnet.accounts[0].address
        before = await chain.balances(account, [usdc])
        snapshot = await evm_snapshot(chain)
        tx_hash = await chain.request(
            "eth_sendTransaction",
            [
                {
                    "from": devnet.deployer,
                    "to": usdc,
                    "data": "0x" + encode_call("mint(address,uint256)", account, 1).hex(),
                }
            ],
        )
        # anvil answers once the transaction is in its pool; automine mines it a moment later.
        receipt = await chain.wait_for_receipt(str(tx_hash), poll_interval=0.005)
        assert receipt.succeeded
        assert (await chain.balances(account, [usdc]))[usdc] == before[usdc] + 1
        await evm_revert(chain, snapshot)
        assert await chain.balances(account, [usdc]) == before


async def test_fund_returns_only_once_its_transactions_are_mined(
    chain: ChainClient, devnet: Devnet
) -> None:
    # anvil answers eth_sendTransaction when the transaction is in its pool; even automine mines
    # it a moment later. With automine off that moment is ours to choose: fund() must wait for
    # the block, not read the receipts once (they are null until then).
    usdc = devnet.token("USDC").address
    account = devnet.accounts[0].address
    before = (await chain.balances(account, [usdc]))[usdc]
    nonce = await chain.get_transaction_count(devnet.deployer, "latest")
    funded = trio.Event()

    async def funding() -> None:
        await fund(chain, devnet, account, {"USDC": 7})
        funded.set()

    with trio.fail_after(10):
        await evm_set_automine(chain, False)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(funding)
                while await chain.get_transaction_count(devnet.deployer) == nonce:
                    await trio.sleep(0.005)  # until the mint is in anvil's pool
                await trio.sleep(0.05)
                assert not funded.is_set()
                await evm_mine(chain)
        finally:
            await evm_set_automine(chain, True)
        assert funded.is_set()
        assert (await chain.balances(account, [usdc]))[usdc] == before + 7

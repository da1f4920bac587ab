"""Deterministic deployment of the guard: the CREATE2 formula, the proxy, ``driftd guard``."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon import solidity
from daemon.chain import ChainClient
from daemon.cli.main import main
from daemon.create2 import (
    GUARD_CONTRACT,
    GUARD_SALT,
    PROXY,
    PROXY_RUNTIME_CODE,
    Create2Error,
    create2_address,
    deploy,
)
from daemon.devtools.devnet_artifacts import load_artifacts
from daemon.devtools.devnet_records import Devnet
from daemon.signer import TxSigner

pytestmark = pytest.mark.chain

# EIP-1014's examples: (deployer, salt, init_code, address).
EIP1014_VECTORS = [
    (
        "0x0000000000000000000000000000000000000000",
        "00" * 32,
        "00",
        "0x4D1A2e2bB4F88F0250f26Ffff098B0b30B26BF38",
    ),
    (
        "0xdeadbeef00000000000000000000000000000000",
        "00" * 32,
        "00",
        "0xB928f69Bb1D91Cd65274e3c79d8986362984fDA3",
    ),
    (
        "0xdeadbeef00000000000000000000000000000000",
        "000000000000000000000000feed000000000000000000000000000000000000",
        "00",
        "0xD04116cDd17beBE565EB2422F2497E06cC1C9833",
    ),
    (
        "0x0000000000000000000000000000000000000000",
        "00" * 32,
        "deadbeef",
        "0x70f2b2914A2a4b783FaEFb75f459A580616Fcb5e",
    ),
    (
        "0x00000000000000000000000000000000deadbeef",
        "00000000000000000000000000000000000000000000000000000000cafebabe",
        "deadbeef",
        "0x60f3f640a8508fC6a86d45DF051962668E1e8AC7",
    ),
    (
        "0x00000000000000000000000000000000deadbeef",
        "00000000000000000000000000000000000000000000000000000000cafebabe",
        "deadbeef" * 11,
        "0x1d8bfDC5D46DC4f61D6b6115972536eBE6A8854C",
    ),
    (
        "0x0000000000000000000000000000000000000000",
        "00" * 32,
        "",
        "0xE33C0C7F7df4809055C3ebA6c09CFe4BaF1BD9e0",
    ),
]


@pytest.mark.parametrize(("deployer", "salt", "init_code", "expected"), EIP1014_VECTORS)
def test_create2_address_matches_eip1014_examples(
    deployer: str, salt: str, init_code: str, expected: str
) -> None:
    assert create2_address(bytes.fromhex(salt), bytes.fromhex(init_code), deployer) == expected


def test_create2_address_defaults_to_the_proxy_and_wants_a_32_byte_salt() -> None:
    code = bytes.fromhex("deadbeef")
    assert create2_address(GUARD_SALT, code) == create2_address(GUARD_SALT, code, PROXY)
    with pytest.raises(ValueError, match="32 bytes"):
        create2_address(b"\x01", code)


def test_compiler_missing_says_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(solidity.CompilerMissing, match=r"\./dev setup"):
        solidity.compile_contracts(tmp_path)


def test_devnet_guard_is_at_its_create2_address(devnet: Devnet) -> None:
    init_code = solidity.creation_code(GUARD_CONTRACT)
    assert init_code == load_artifacts().guard_enforcer
    assert devnet.guard == create2_address(GUARD_SALT, init_code)


async def test_deploy_is_idempotent_and_lands_at_the_predicted_address(
    chain: ChainClient, devnet: Devnet
) -> None:
    assert await chain.get_code(PROXY) == PROXY_RUNTIME_CODE
    assert await chain.get_code(devnet.guard)
    signer = TxSigner(key=devnet.signer_key)
    init_code = solidity.creation_code(GUARD_CONTRACT)
    salt = (1).to_bytes(32, "big")
    predicted = create2_address(salt, init_code)
    assert not await chain.get_code(predicted)

    nonce = await chain.get_transaction_count(signer.address)
    assert await deploy(chain, signer, salt, init_code, poll_interval=0.01) == predicted
    assert await chain.get_code(predicted)
    assert await chain.get_transaction_count(signer.address) == nonce + 1

    # Again, and for the devnet's own guard: already there, so nothing is sent.
    assert await deploy(chain, signer, salt, init_code, poll_interval=0.01) == predicted
    assert await deploy(chain, signer, GUARD_SALT, init_code) == devnet.guard
    assert await chain.get_transaction_count(signer.address) == nonce + 1


async def test_deploy_refuses_a_chain_without_the_proxy(chain: ChainClient, devnet: Devnet) -> None:
    await chain.request("anvil_setCode", [PROXY, "0x"])
    signer = TxSigner(key=devnet.signer_key)
    with pytest.raises(Create2Error, match="no deterministic-deployment proxy"):
        await deploy(chain, signer, (2).to_bytes(32, "big"), b"\x00")


def _config(tmp_path: Path, rpc_url: str, chain_id: int) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        f'[chain]\nrpc_url = "{rpc_url}"\nchain_id = {chain_id}\nmax_retries = 0\n'
        '[log]\nformat = "json"\n'
    )
    return path


def test_cli_guard_address_is_the_devnet_guard(
    devnet: Devnet,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("DRIFTD_SIGNER_KEY", raising=False)
    path = _config(tmp_path, "http://127.0.0.1:9", 1)  # offline: the chain is never asked
    assert main(["--config", str(path), "guard", "address"]) == 0
    assert capsys.readouterr().out.strip() == devnet.guard


def test_cli_guard_deploy_on_the_devnet_is_already_deployed(
    devnet: Devnet,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DRIFTD_SIGNER_KEY", devnet.signer_key.reveal())
    path = _config(tmp_path, devnet.rpc_url, devnet.chain_id)
    assert main(["--config", str(path), "guard", "deploy"]) == 0
    out = capsys.readouterr().out
    assert devnet.guard in out
    assert "already deployed" in out


def test_cli_guard_deploy_exit_codes(
    devnet: Devnet,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("DRIFTD_SIGNER_KEY", raising=False)
    path = _config(tmp_path, devnet.rpc_url, devnet.chain_id)
    assert main(["--config", str(path), "guard", "deploy"]) == 78
    assert "no signer key" in capsys.readouterr().err

    key = devnet.signer_key.reveal()
    monkeypatch.setenv("DRIFTD_SIGNER_KEY", key)
    wrong_chain = _config(tmp_path, devnet.rpc_url, devnet.chain_id + 1)
    assert main(["--config", str(wrong_chain), "guard", "deploy"]) == 78

    unreachable = _config(tmp_path, "http://127.0.0.1:9", devnet.chain_id)
    assert main(["--config", str(unreachable), "guard", "deploy"]) == 69
    err = capsys.readouterr().err
    assert "chain unavailable" in err
    assert key[2:] not in err

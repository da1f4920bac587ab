"""Deterministic deployment: CREATE2 through the standard deterministic-deployment proxy.

The proxy (Arachnid's ``deterministic-deployment-proxy``) lives at :data:`PROXY` on mainnet and
most EVM chains (it was deployed with a presigned, chain-id-less transaction, so it has the same
address everywhere; anvil predeploys it). Calling it with ``salt ‖ init_code`` (32 bytes of salt,
then the creation code) runs ``CREATE2`` with that salt and code and returns the new address; a
failing creation reverts. The address depends only on the proxy, the salt and the code::

    keccak256(0xff ‖ PROXY ‖ salt ‖ keccak256(init_code))[12:]

so whoever compiles the same source with the same settings (:mod:`daemon.solidity`) can compute
— and check on any chain — the one address where that contract is, without trusting whoever
deployed it. driftd's guard uses :data:`GUARD_SALT`.
"""

from __future__ import annotations

from typing import Final

import trio
from eth_utils.crypto import keccak

from daemon.address import to_address
from daemon.chain import ChainClient
from daemon.chain_errors import Reverted
from daemon.signer import TxRequest, TxSigner

PROXY: Final = "0x4e59b44847b379578588920cA78FbF26c0B4956C"
"""The deterministic-deployment proxy's address (the same on every chain that has it)."""
PROXY_RUNTIME_CODE: Final = bytes.fromhex(
    "7fffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffe03601600081602082378035828234f5"
    "8015156039578182fd5b8082525050506014600cf3"
)
"""The proxy's runtime code (what ``eth_getCode`` returns at :data:`PROXY`)."""
GUARD_CONTRACT: Final = "DriftGuardEnforcer"
"""The contract of :file:`contracts/DriftGuardEnforcer.sol` driftd deploys (no constructor
arguments, so its init code is its creation code)."""
GUARD_SALT: Final = bytes(32)
"""CREATE2 salt of the guard: zero. The address then depends on the code alone, so any deployment
of the same code through the proxy, by anyone, is the same contract at the same address."""
_GAS_MARGIN_PERCENT: Final = 25
_RECEIPT_TIMEOUT_SECONDS: Final = 180.0


class Create2Error(RuntimeError):
    """The deployment could not be made (no proxy on the chain, or the creation failed)."""


def create2_address(salt: bytes, init_code: bytes, deployer: str = PROXY) -> str:
    """Where ``init_code`` lands when ``deployer`` (by default :data:`PROXY`) CREATE2s it."""
    if len(salt) != 32:
        raise ValueError(f"a CREATE2 salt is 32 bytes, not {len(salt)}")
    sender = bytes.fromhex(to_address(deployer)[2:])
    return to_address(keccak(b"\xff" + sender + salt + keccak(init_code))[12:])


async def deploy(
    chain: ChainClient,
    signer: TxSigner,
    salt: bytes,
    init_code: bytes,
    *,
    receipt_timeout: float = _RECEIPT_TIMEOUT_SECONDS,
    poll_interval: float = 0.5,
) -> str:
    """Deploy ``init_code`` through :data:`PROXY` with ``salt``, paid by ``signer``; its address.

    Idempotent: when the address already has code, nothing is sent. Otherwise one transaction
    to the proxy with ``salt ‖ init_code`` (gas estimated, plus a margin), then it waits for the
    receipt and requires the code to be there. Raises :class:`Create2Error` when the chain has
    no proxy or the creation fails; RPC failures raise :class:`~daemon.chain.ChainError`.
    """
    address = create2_address(salt, init_code)
    if await chain.get_code(address):
        return address
    proxy_code = await chain.get_code(PROXY)
    if not proxy_code:
        raise Create2Error(
            f"chain {chain.chain_id} has no deterministic-deployment proxy at {PROXY}"
        )
    if proxy_code != PROXY_RUNTIME_CODE:
        raise Create2Error(f"the code at {PROXY} on chain {chain.chain_id} is not the proxy's")
    data = salt + init_code
    try:
        estimate = await chain.estimate_gas(PROXY, data, sender=signer.address)
    except Reverted as exc:
        raise Create2Error(f"creating the contract at {address} would fail: {exc}") from None
    gas = estimate * (100 + _GAS_MARGIN_PERCENT) // 100
    nonce = await chain.get_transaction_count(signer.address)
    fees = await chain.fee_data()
    signed = signer.sign(
        TxRequest(
            to=PROXY,
            data=data,
            nonce=nonce,
            gas=gas,
            max_fee_per_gas=fees.max_fee(),
            max_priority_fee_per_gas=fees.priority_fee,
            chain_id=chain.chain_id,
        )
    )
    tx_hash = await chain.send_raw_transaction(signed)
    try:
        with trio.fail_after(receipt_timeout):
            receipt = await chain.wait_for_receipt(tx_hash, poll_interval=poll_interval)
    except trio.TooSlowError:
        raise Create2Error(
            f"deployment transaction {tx_hash} was not mined within {receipt_timeout:.0f} s"
        ) from None
    if not receipt.succeeded:
        raise Create2Error(f"deployment transaction {tx_hash} reverted")
    if not await chain.get_code(address):
        raise Create2Error(f"deployment transaction {tx_hash} was mined but {address} has no code")
    return address

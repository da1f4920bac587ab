"""Signing EIP-1559 transactions with the daemon's key.

A module of its own: signing is a concept apart from talking to the node (the chain client only
broadcasts signed bytes and never sees a key), and the code that handles the key is easier to
audit in one small file. Signing uses eth-account (which uses coincurve when installed, ~10×
faster than pure Python). No message here ever contains key material.
"""

from __future__ import annotations

import attrs
from eth_account import Account

from daemon.abi import hex_of
from daemon.address import to_address
from daemon.config import Secret, private_key_bytes


@attrs.frozen
class TxRequest:
    """An unsigned EIP-1559 transaction."""

    to: str
    data: bytes
    nonce: int
    gas: int
    max_fee_per_gas: int
    max_priority_fee_per_gas: int
    chain_id: int
    value: int = 0


@attrs.frozen
class SignedTx:
    """Signed bytes ready for ``eth_sendRawTransaction`` and their hash."""

    raw: bytes = attrs.field(repr=False)
    hash: str
    nonce: int
    sender: str


@attrs.define(eq=False)
class TxSigner:
    """Signs EIP-1559 transactions with one private key. The key is never printed."""

    _key: Secret = attrs.field(repr=False, alias="key")
    address: str = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        try:
            # Exactly 32 bytes of hex: eth-account alone takes 63 digits (a truncated paste)
            # and would sign with another key. Its message says what is wrong, never the key.
            key = private_key_bytes(self._key.reveal())
        except ValueError as exc:
            raise ValueError(f"signer key is not a valid secp256k1 private key: {exc}") from None
        try:
            self.address = to_address(Account.from_key(key).address)
        except (ValueError, TypeError):
            # The library's message may echo the key; ours does not.
            raise ValueError("signer key is not a valid secp256k1 private key") from None

    def sign(self, tx: TxRequest) -> SignedTx:
        signed = Account.sign_transaction(
            {
                "type": 2,
                "chainId": tx.chain_id,
                "nonce": tx.nonce,
                "to": tx.to,
                "value": tx.value,
                "data": tx.data,
                "gas": tx.gas,
                "maxFeePerGas": tx.max_fee_per_gas,
                "maxPriorityFeePerGas": tx.max_priority_fee_per_gas,
                "accessList": [],
            },
            self._key.reveal(),
        )
        return SignedTx(
            raw=bytes(signed.raw_transaction),
            hash=hex_of(bytes(signed.hash)),
            nonce=tx.nonce,
            sender=self.address,
        )

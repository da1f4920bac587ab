"""ABI encoding by signature string, and the node's hex spellings of bytes and quantities.

Why a module of its own: every part of driftd that talks to a contract (the chain client, the
router, the delegation framework, the oracle guard, the devnet tooling) encodes calls the same
way, and none of it needs a JSON-RPC client for that. A call is encoded from its canonical
signature (``"approve(address,uint256)"``) with eth-abi and its selector hashed with eth-utils'
keccak; no contract object or ABI file is involved.
"""

from __future__ import annotations

from typing import Any

from eth_abi.abi import encode as abi_encode
from eth_utils.crypto import keccak


def function_selector(signature: str) -> bytes:
    """The 4-byte selector of a canonical signature such as ``"transfer(address,uint256)"``."""
    return keccak(text=signature)[:4]


def encode_call(signature: str, *args: Any) -> bytes:
    """Calldata for ``signature`` (e.g. ``"approve(address,uint256)"``) with ``args``."""
    arg_types = _argument_types(signature)
    return function_selector(signature) + abi_encode(arg_types, list(args))


def _argument_types(signature: str) -> list[str]:
    inner = signature[signature.index("(") + 1 : signature.rindex(")")]
    types: list[str] = []
    depth = 0
    current = ""
    for char in inner:
        if char == "," and depth == 0:
            types.append(current)
            current = ""
            continue
        depth += char == "("
        depth -= char == ")"
        current += char
    if current:
        types.append(current)
    return types


def hex_bytes(value: str) -> bytes:
    """Bytes from a node's ``0x…`` hex string."""
    return bytes.fromhex(value[2:] if value.startswith(("0x", "0X")) else value)


def hex_int(value: str) -> int:
    """An int from a node's ``0x…`` quantity."""
    return int(value, 16)


def hex_of(data: bytes) -> str:
    return "0x" + data.hex()

"""The typed failures of the chain client, and how a node's JSON-RPC error becomes one.

Callers decide on these types, never on message text: :class:`RpcError` (the node answered with
a JSON-RPC error), :class:`Reverted` (the EVM reverted; ``reason`` holds the decoded
``Error(string)``, ``Panic(uint256)`` or custom error), :class:`RpcTimeout` and
:class:`RpcTransportError` (the node could not be reached or answered garbage), and
:class:`ChainIdMismatch` (the node serves another chain). A module of its own because the
executor, the actors and the CLI catch these without needing the client, and because decoding
revert data is the same wherever it comes from (a call, a gas estimate, a replayed transaction).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final

from eth_abi.abi import decode as abi_decode

from daemon.abi import function_selector, hex_bytes

Json = Any
"""A decoded JSON value as the node sent it."""


class ChainError(Exception):
    """Base of every failure the chain client reports."""


class RpcTransportError(ChainError):
    """The node could not be reached, or answered with an HTTP error or something not JSON-RPC."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class RpcTimeout(ChainError):
    """The node did not answer within ``chain.request_timeout`` (after the retries)."""


class RpcError(ChainError):
    """The node answered with a JSON-RPC error object."""

    def __init__(self, code: int, message: str, data: Json = None) -> None:
        super().__init__(f"RPC error {code}: {message}")
        self.code = code
        self.message = message
        self.data = data


class Reverted(ChainError):
    """The EVM reverted. ``reason`` is human-readable; ``data`` is the raw revert data.

    ``reason`` is the ``Error(string)`` message (``"UniswapV2Router: INSUFFICIENT_OUTPUT_AMOUNT"``),
    ``"Panic(0x11)"``, the name of a known custom error (``"InvalidDelegate()"``), the selector of
    an unknown one (``"custom error 0x12345678"``) or ``""`` when the node gave no data.
    """

    def __init__(self, reason: str, data: bytes = b"") -> None:
        super().__init__(f"execution reverted: {reason}" if reason else "execution reverted")
        self.reason = reason
        self.data = data


class ChainIdMismatch(ChainError):
    """The node serves another chain than ``chain.chain_id`` says: nothing may be signed for it."""

    def __init__(self, expected: int, actual: int) -> None:
        super().__init__(f"chain id mismatch: configured {expected}, node reports {actual}")
        self.expected = expected
        self.actual = actual


_ERROR_STRING_SELECTOR: Final = function_selector("Error(string)")
_PANIC_SELECTOR: Final = function_selector("Panic(uint256)")

KNOWN_CUSTOM_ERRORS: Final[Mapping[bytes, str]] = MappingProxyType(
    {
        function_selector(signature): signature
        for signature in (
            # DelegationManager v1.3.0
            "InvalidDelegate()",
            "InvalidDelegator()",
            "InvalidAuthority()",
            "InvalidEOASignature()",
            "InvalidERC1271Signature()",
            "CannotUseADisabledDelegation()",
            "BatchDataLengthMismatch()",
            "EmptySignature()",
            "EnforcedPause()",
            # DeleGator / ERC-7579 execution
            "NotDelegationManager()",
            "NotEntryPoint()",
            "UnsupportedCallType(bytes1)",
            "UnsupportedExecType(bytes1)",
            "FailedInnerCall()",
            "ExecutionFailed()",
            # OpenZeppelin ERC20 v5
            "ERC20InsufficientBalance(address,uint256,uint256)",
            "ERC20InsufficientAllowance(address,uint256,uint256)",
            "ERC20InvalidReceiver(address)",
            "ERC20InvalidSpender(address)",
        )
    }
)
"""Custom errors the daemon may meet, by selector, to name them in :class:`Reverted`."""


def decode_revert_reason(data: bytes) -> str:
    """A readable reason from revert data (see :class:`Reverted`)."""
    if not data:
        return ""
    selector = data[:4]
    if selector == _ERROR_STRING_SELECTOR:
        try:
            (message,) = abi_decode(["string"], data[4:])
        except Exception:  # noqa: BLE001 - malformed revert data is still a revert
            return "Error(string) with malformed data"
        return str(message)
    if selector == _PANIC_SELECTOR and len(data) >= 36:
        return f"Panic({hex(int.from_bytes(data[4:36], 'big'))})"
    if selector in KNOWN_CUSTOM_ERRORS:
        return KNOWN_CUSTOM_ERRORS[selector]
    return f"custom error 0x{selector.hex()}"


def _revert_data(data: Json) -> bytes | None:
    """Revert data from a JSON-RPC error's ``data`` field, as nodes spell it."""
    if isinstance(data, str) and data.startswith("0x"):
        try:
            return hex_bytes(data)
        except ValueError:
            return None
    if isinstance(data, Mapping):  # some nodes nest it: {"data": "0x…"} or {"originalError": …}
        for key in ("data", "originalError"):
            if key in data:
                return _revert_data(data[key])
    return None


def _is_revert(code: int, message: str) -> bool:
    # geth and anvil use code 3 for eth_call/eth_estimateGas reverts; others -32000 + message.
    return code == 3 or message.lower().startswith("execution reverted")


def error_from_response(error: Mapping[str, Json]) -> ChainError:
    """The typed exception for a JSON-RPC error object."""
    code = int(error.get("code", 0))
    message = str(error.get("message", ""))
    data = error.get("data")
    if _is_revert(code, message):
        revert_data = _revert_data(data) or b""
        reason = decode_revert_reason(revert_data)
        if not reason and ":" in message:  # "execution reverted: reason" without data
            reason = message.split(":", 1)[1].strip()
        return Reverted(reason, revert_data)
    return RpcError(code, message, data)

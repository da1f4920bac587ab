"""Ethereum addresses: the one place that says what an address is, under two rules.

* :func:`checked_address` — for what a person typed or wrote in a file (the configuration, a
  command-line argument, a signed-delegation file): exactly ``0x`` and 40 hex digits, a
  mixed-case spelling must match its EIP-55 checksum, and the zero address is refused. A
  mismatch is never silently re-checksummed: it almost always means a typo, and the typo'd
  address is someone else's.
* :func:`to_address` — for values that are already addresses by construction (read from the
  chain, 20 raw bytes out of calldata or logs, values an earlier :func:`checked_address`
  accepted): normalised to the checksummed spelling so that comparisons are plain string
  equality. It judges nothing.

Why a module of its own rather than :mod:`daemon.chain` or :mod:`daemon.config`: the
configuration, the chain client, the delegation code and the command line all need the rule,
and :mod:`daemon.chain` imports :mod:`daemon.config` — so the rule lives below both, importing
nothing of driftd (``tests/test_architecture.py`` keeps the package free of cycles).
"""

from __future__ import annotations

import re
from typing import Final

from eth_utils.crypto import keccak

ZERO_ADDRESS: Final = "0x" + "0" * 40
_ADDRESS_RE: Final = re.compile(r"^0x[0-9a-fA-F]{40}$")
_BARE_ADDRESS_RE: Final = re.compile(r"^(0x)?[0-9a-fA-F]{40}$")


def _shown(value: object) -> str:
    """``value`` for an error message: short (a file can hold anything)."""
    text = value if isinstance(value, str) else repr(value)
    return repr(text[:40] + "…") if len(text) > 40 else repr(value)


def checked_address(value: object) -> str:
    """``value`` as a checksummed address, or ``ValueError`` saying what is wrong with it.

    Refused: anything but a string of ``0x`` and 40 hex digits (surrounding whitespace is
    ignored); a mixed-case spelling whose EIP-55 checksum does not match (it is not
    re-checksummed: a mismatch almost always means a typo, and the typo'd address is someone
    else's); the zero address. All-lowercase and all-uppercase hex carry no checksum and are
    accepted (EIP-55).
    """
    text = value.strip() if isinstance(value, str) else ""
    if not _ADDRESS_RE.match(text):
        raise ValueError(f"must be a 0x-prefixed 20-byte hex address, got {_shown(value)}")
    checksummed = to_address(text)
    digits = text[2:]
    if digits not in (digits.lower(), digits.upper()) and text != checksummed:
        raise ValueError(
            f"{text} does not match its EIP-55 checksum (its mixed case is wrong: most likely a "
            "typo, and a typo'd address is someone else's; copy it again from its source)"
        )
    if checksummed == ZERO_ADDRESS:
        raise ValueError("is the zero address (0x000…000), which is nobody's contract or account")
    return checksummed


def to_address(value: str | bytes) -> str:
    """A checksummed ``0x`` address from hex text (``0x`` optional) or 20 raw bytes (raises
    ``ValueError``).

    EIP-55 written out rather than ``eth_utils.to_checksum_address``: this runs for every
    address an attempt builds (legs, calls, delegations, logs), and the library's validation
    layers cost 5× the hash itself (measured: 66 µs against 13 µs per call)."""
    if isinstance(value, bytes):
        if len(value) != 20:
            raise ValueError(f"an address is 20 bytes, got {len(value)}")
        digits = value.hex()
    elif isinstance(value, str) and _BARE_ADDRESS_RE.match(value):
        digits = value[-40:].lower()
    else:
        raise ValueError(f"not an address: {_shown(value)}")
    hashed = keccak(digits.encode("ascii")).hex()
    # EIP-55: a letter is upper case where the hash's nibble at its position is 8 or more.
    return "0x" + "".join(
        d.upper() if h > "7" else d for d, h in zip(digits, hashed[:40], strict=True)
    )

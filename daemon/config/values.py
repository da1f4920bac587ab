"""Value parsers: a raw TOML or environment value → a typed value, or ValueError with a reason.

Every setting is read by one of these, from the file and the environment alike, so ``"1e999"``
in a unit file is refused exactly as ``1e999`` in the TOML file is. The magnitude limits of
numbers live here, once.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any, Final

from daemon.address import checked_address

Parser = Callable[[Any], Any]

NUMBER_LIMIT: Final = 10**9
"""Largest magnitude of a decimal or float setting. None needs more (durations are at most ~31
years in seconds or ~1 900 years in minutes, amounts a billion USD or gwei), and the bound keeps
every use of them finite: ``1e999`` is a finite Decimal but ``inf`` as a float, and a huge
duration overflows the datetime arithmetic of cooldowns and deadlines."""
INT_LIMIT: Final = 2**63 - 1
"""Largest magnitude of an integer setting: PostgreSQL's bigint and int64 (chain ids are stored
as bigint; ids of real chains reach ~10^13)."""
_INT_TEXT_LIMIT: Final = 100
"""Longest integer text considered at all (Python refuses > 4 300 digits with an odd message)."""
_TRUE_WORDS: Final = frozenset({"1", "true", "yes", "on"})
_FALSE_WORDS: Final = frozenset({"0", "false", "no", "off"})


def _shown(raw: Any) -> str:
    """``raw`` for an error message: short, and never a 5 000-digit number."""
    if isinstance(raw, int) and not isinstance(raw, bool) and raw.bit_length() > 64:
        return f"an integer of {raw.bit_length()} bits"
    text = raw if isinstance(raw, str) else repr(raw)
    return repr(text[:40] + "…") if len(text) > 40 else repr(raw)


def _too_large(limit: int, raw: Any) -> ValueError:
    return ValueError(f"must be at most {limit} in magnitude, got {_shown(raw)}")


def parse_decimal(raw: Any) -> Decimal:
    """A finite number of magnitude at most :data:`NUMBER_LIMIT` (``inf``, ``nan`` and ``1e999``
    are refused, from the file and the environment alike)."""
    if isinstance(raw, bool):
        raise ValueError(f"must be a number, got {raw!r}")
    if isinstance(raw, Decimal):
        value = raw
    elif isinstance(raw, float):
        # Only code passes floats (TOML floats arrive as Decimal); repr is the shortest exact text.
        value = Decimal(repr(raw))
    elif isinstance(raw, int):
        if abs(raw) > NUMBER_LIMIT:
            raise _too_large(NUMBER_LIMIT, raw)
        value = Decimal(raw)
    elif isinstance(raw, str):
        try:
            value = Decimal(raw.strip())
        except InvalidOperation:
            raise ValueError(f"must be a number, got {_shown(raw)}") from None
    else:
        raise ValueError(f"must be a number, got {_shown(raw)}")
    if not value.is_finite():
        raise ValueError(f"must be a finite number, got {_shown(raw)}")
    if abs(value) > NUMBER_LIMIT:
        raise _too_large(NUMBER_LIMIT, raw)
    return value


def parse_float(raw: Any) -> float:
    """A finite float (seconds, mostly): :func:`parse_decimal`'s rules, then converted."""
    value = float(parse_decimal(raw))
    if not math.isfinite(value):  # pragma: no cover - parse_decimal's bound already excludes it
        raise ValueError(f"must be a finite number, got {_shown(raw)}")
    return value


def parse_int(raw: Any) -> int:
    """An integer of magnitude at most :data:`INT_LIMIT` (decimal, ``0x`` hex, ``1_000``)."""
    if isinstance(raw, bool):
        raise ValueError(f"must be an integer, got {raw!r}")
    if isinstance(raw, int):
        value = raw
    elif isinstance(raw, str) and len(raw.strip()) > _INT_TEXT_LIMIT:
        raise _too_large(INT_LIMIT, raw)
    elif isinstance(raw, str):
        try:
            value = int(raw.strip(), 0)
        except ValueError:
            raise ValueError(f"must be an integer, got {_shown(raw)}") from None
    else:
        raise ValueError(f"must be an integer, got {_shown(raw)}")
    if abs(value) > INT_LIMIT:
        raise _too_large(INT_LIMIT, raw)
    return value


def parse_bool(raw: Any) -> bool:
    """``true``/``false`` from TOML; ``1``/``0``, ``yes``/``no``, ``on``/``off`` as text too."""
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.strip().lower() in _TRUE_WORDS:
        return True
    if isinstance(raw, str) and raw.strip().lower() in _FALSE_WORDS:
        return False
    raise ValueError(f"must be true or false, got {raw!r}")


def parse_str(raw: Any) -> str:
    """A string, as written."""
    if not isinstance(raw, str):
        raise ValueError(f"must be a string, got {raw!r}")
    return raw


def choice(*choices: str) -> Parser:
    """One of ``choices``, in any case (the seed writes ``ORACLE``; we store ``oracle``)."""

    def parse(raw: Any) -> str:
        value = parse_str(raw).strip().lower()
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, got {raw!r}")
        return value

    return parse


def parse_address(raw: Any) -> str:
    """An address, checksum-cased."""
    # Checksum casing is normalised here so comparisons elsewhere are plain string equality.
    return checked_address(parse_str(raw))


def parse_optional_address(raw: Any) -> str:
    """An address, or empty (not set)."""
    return "" if parse_str(raw).strip() == "" else parse_address(raw)

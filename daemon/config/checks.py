"""Checks on parsed values (the limits of settings): each returns a problem, or None.

A key's limits are declared with it in the schema (``setting(..., check=positive)``); these are
the rules they name.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from decimal import Decimal
from typing import Any, Final

from daemon.config.masking import mask_key_runs, mask_url

Check = Callable[[Any], str | None]

BASIS_POINTS: Final = 10_000
"""A whole, in basis points (the largest ``guard.max_loss_bps``)."""
LOG_LEVELS: Final = frozenset({"debug", "info", "warning", "error", "critical"})
_HTTP_URL_RE: Final = re.compile(r"^https?://\S+$")
_POSTGRES_URL_RE: Final = re.compile(r"^postgres(ql)?://")


def open_unit(value: Decimal) -> str | None:
    """A fraction strictly between 0 and 1."""
    return None if 0 < value < 1 else f"must be in (0, 1), got {value}"


def half_open_unit(value: Decimal) -> str | None:
    """A fraction in [0, 1)."""
    return None if 0 <= value < 1 else f"must be in [0, 1), got {value}"


def positive(value: Decimal | float | int) -> str | None:
    """> 0."""
    return None if value > 0 else f"must be > 0, got {value}"


def non_negative(value: Decimal | float | int) -> str | None:
    """>= 0."""
    return None if value >= 0 else f"must be >= 0, got {value}"


def greater_than_one(value: Decimal) -> str | None:
    """> 1 (a factor)."""
    return None if value > 1 else f"must be > 1, got {value}"


def basis_points(value: int) -> str | None:
    """A positive share of :data:`BASIS_POINTS`, the whole included."""
    return None if 0 < value <= BASIS_POINTS else f"must be in 1..{BASIS_POINTS}, got {value}"


def at_least(minimum: Decimal | float | int) -> Check:
    """>= ``minimum``."""

    def check(value: Decimal | float | int) -> str | None:
        return None if value >= minimum else f"must be >= {minimum}, got {value}"

    return check


def http_url(value: str) -> str | None:
    """An http(s) URL."""
    if _HTTP_URL_RE.match(value):
        return None
    # Echoed masked: a mistyped URL still carries its API key.
    return f"must be an http(s) URL, got {mask_url(mask_key_runs(value))!r}"


def optional_http_url(value: str) -> str | None:
    """An http(s) URL that is a secret as a whole (a webhook), or empty."""
    if value == "" or _HTTP_URL_RE.match(value):
        return None
    if "://" in value:
        return f"must be an http(s) URL, got {mask_url(value, hide_path=True)!r}"
    return "must be an http(s) URL (https://…; the value is not shown, it may hold a token)"


def postgres_url(value: str) -> str | None:
    """A PostgreSQL connection URL (libpq form)."""
    if _POSTGRES_URL_RE.match(value):
        return None
    return f"must be a postgresql:// URL, got {mask_url(value)!r}"


def log_level(value: str) -> str | None:
    """A logging level name, in lower case."""
    if value in LOG_LEVELS:
        return None
    return f"must be one of {', '.join(sorted(LOG_LEVELS))}, got {value!r}"

"""How one configuration key is declared, and how a declared key reads a raw value.

Why a schema instead of reading dicts: every key is declared once, with its type, default,
limits (its check) and documentation, so that unknown keys (typos) are errors, every error
names the key, and ``config.toml.example`` and the README reference are generated from the
declarations (:mod:`daemon.configdoc`). Code that needs a default reads it from the schema
(``Config()``, or :func:`daemon.config.key_specs`), never writes it again.
"""

from __future__ import annotations

from typing import Any

import attrs

from daemon.config.checks import Check
from daemon.config.values import Parser


def setting(
    default: Any,
    parse: Parser,
    doc: str,
    *,
    check: Check | None = None,
    env: tuple[str, ...] = (),
    live: bool = False,
) -> Any:
    """Declare one configuration key.

    ``env`` lists the seed's aliases (``DRIFTD_SECTION_KEY`` always works too), and ``live``
    marks keys that SIGHUP applies to running actors without a restart.
    """
    return attrs.field(
        default=default,
        metadata={"parse": parse, "doc": doc, "check": check, "env": env, "live": live},
    )


def parse_value(attribute: attrs.Attribute[Any], raw: Any) -> Any:
    """``raw`` read by ``attribute``'s parser and held to its check; ValueError says why not."""
    parse: Parser = attribute.metadata["parse"]
    value = parse(raw)
    check: Check | None = attribute.metadata["check"]
    if check is not None and (problem := check(value)) is not None:
        raise ValueError(problem)
    return value


def is_live(attribute: attrs.Attribute[Any]) -> bool:
    """Whether SIGHUP applies the key to running actors (else it needs a restart)."""
    return bool(attribute.metadata["live"])

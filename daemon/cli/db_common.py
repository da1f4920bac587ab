"""What the registry commands (:mod:`daemon.cli.db`, :mod:`daemon.cli.portfolio`) share.

Running a command against the database and mapping every failure to its exit code (a problem
with the input 65, an unreachable database or chain 69, a schema older or newer than this driftd
or a node on another chain 78), reading an address as the operator typed it, and printing
tables and JSON.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable, Sequence

import trio

from daemon import exitcodes
from daemon.address import checked_address
from daemon.chain_errors import ChainError, ChainIdMismatch
from daemon.config import Config
from daemon.db import (
    ConstraintViolation,
    Database,
    DatabaseError,
    DatabaseUnavailable,
    MigrationError,
    NotFound,
    load_migrations,
    open_database,
)
from daemon.registration import InputError


def parse_address(value: object, what: str) -> str:
    """A checksummed address, or :class:`InputError` naming ``what``: not an address, a wrong
    EIP-55 checksum (never silently re-checksummed) or the zero address
    (:func:`daemon.address.checked_address`)."""
    try:
        return checked_address(value)
    except ValueError as exc:
        raise InputError(f"{what}: {exc}") from None


def fail(message: object, code: int) -> int:
    print(f"driftd: {message}", file=sys.stderr)
    return code


def with_database(
    config: Config, work: Callable[[Database], Awaitable[int]], *, check_schema: bool = True
) -> int:
    """Open the database, run ``work``, map errors to exit codes."""

    async def main() -> int:
        async with open_database(config.database) as db:
            if check_schema:
                have = await db.schema_version()
                want = max((m.version for m in load_migrations()), default=0)
                if have < want:
                    return fail(
                        f"the database schema is at version {have}, this driftd needs {want}: "
                        "run `driftd migrate`",
                        exitcodes.CONFIG_ERROR,
                    )
            return await work(db)

    try:
        return trio.run(main)
    except DatabaseUnavailable as exc:
        return fail(exc, exitcodes.UNAVAILABLE)
    except (ConstraintViolation, NotFound, InputError) as exc:
        return fail(exc, exitcodes.DATA_ERROR)
    except MigrationError as exc:
        return fail(exc, exitcodes.CONFIG_ERROR)
    except DatabaseError as exc:
        return fail(exc, exitcodes.UNAVAILABLE)
    except ChainIdMismatch as exc:
        return fail(f"chain.rpc_url: {exc}", exitcodes.CONFIG_ERROR)
    except ChainError as exc:
        return fail(f"cannot read the chain: {exc}", exitcodes.UNAVAILABLE)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table with left-aligned columns."""
    cells = [[str(h) for h in headers], *[["" if c is None else str(c) for c in r] for r in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _json_default(value: object) -> str:
    return str(value)  # Decimal and datetime: exact strings


def print_json(value: object) -> None:
    print(json.dumps(value, indent=2, default=_json_default))

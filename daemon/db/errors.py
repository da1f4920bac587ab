"""The error taxonomy, and the translation of asyncpg and OS exceptions into it.

Errors are typed: :class:`DatabaseUnavailable` (connection refused or lost; the pool's
connections are expired so the pool reconnects once the server is back), :class:`QueryTimeout`,
:class:`ConstraintViolation` (with the constraint's name), :class:`NotFound`,
:class:`MigrationError`, else :class:`DatabaseError`. Messages name the database by its URL with
the password masked.
"""

from __future__ import annotations

import datetime as dt
from typing import Final

import asyncpg

from daemon.config import mask_url


class DatabaseError(Exception):
    """A database operation failed."""


class DatabaseUnavailable(DatabaseError):
    """The server cannot be reached or the connection was lost; retry later (exit code 69)."""


class QueryTimeout(DatabaseError):
    """A statement ran longer than ``database.command_timeout`` and was cancelled."""


class NotFound(DatabaseError):
    """The named row (token, portfolio, rebalance, intent) does not exist."""


class MigrationError(DatabaseError):
    """The schema cannot be brought up to date (changed or unknown migrations)."""


class LeaseHeld(DatabaseError):
    """Another live process holds the signer's lease."""

    def __init__(self, holder: str, expires_at: dt.datetime) -> None:
        self.holder = holder
        self.expires_at = expires_at
        super().__init__(f"the signer's lease is held by {holder} until {expires_at.isoformat()}")


class LeaseLost(DatabaseError):
    """Our lease was taken over or expired: this process must stop signing."""


class RebalanceRefused(DatabaseError):
    """The database refused to start an attempt (money-safety invariant 9); ``reason`` says why:
    another attempt of the portfolio is in flight, or a trade settled after the balances the plan
    was made from."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class ConstraintViolation(DatabaseError):
    """A write broke a rule of the schema; ``constraint`` names the rule."""

    def __init__(self, constraint: str, message: str) -> None:
        self.constraint = constraint
        super().__init__(message)


_UNAVAILABLE_ERRORS: Final = (
    OSError,  # refused, reset, unreachable (TimeoutError is an OSError: excluded below)
    asyncpg.PostgresConnectionError,  # class 08
    asyncpg.CannotConnectNowError,  # starting up / shutting down
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
)


def _translate(exc: Exception, where: str) -> DatabaseError:
    """asyncpg / OS exception → our typed error. Runs on the loop thread."""
    if isinstance(exc, DatabaseError):
        return exc
    if isinstance(exc, TimeoutError | asyncpg.QueryCanceledError):
        return QueryTimeout(f"query timed out on {where}")
    if isinstance(exc, _UNAVAILABLE_ERRORS) or (
        isinstance(exc, asyncpg.InterfaceError) and "closed" in str(exc)
    ):
        return DatabaseUnavailable(f"database unavailable at {where}: {_describe(exc)}")
    if isinstance(exc, asyncpg.IntegrityConstraintViolationError):
        constraint = getattr(exc, "constraint_name", None) or type(exc).__name__
        message = getattr(exc, "message", None) or str(exc)
        if isinstance(exc, asyncpg.UniqueViolationError) and getattr(exc, "detail", None):
            message = f"{message}: {exc.detail}"
        return ConstraintViolation(constraint, message)
    if isinstance(exc, asyncpg.PostgresError):
        return DatabaseError(f"{getattr(exc, 'sqlstate', '?')}: {_describe(exc)}")
    return DatabaseError(_describe(exc))


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return mask_url(text)

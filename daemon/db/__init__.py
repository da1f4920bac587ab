"""PostgreSQL for a Trio process: the asyncpg bridge, migrations and the repositories.

This is the only package that imports asyncpg. Everything it returns is a frozen attrs record or
plain data; asyncpg ``Record`` objects never leave it. Callers import from here
(``from daemon import db as dbm``, ``from daemon.db import Database``), never from a submodule.

Layout, one concept a module (each imports its siblings directly, never this package):

- :mod:`~daemon.db.errors`: the error taxonomy and the translation of asyncpg's exceptions;
- :mod:`~daemon.db.records`: the row records (frozen attrs classes) and their Literal types;
- :mod:`~daemon.db.codec`: JSON with exact ``Decimal`` numbers, and small value conversions;
- :mod:`~daemon.db.bridge`: the asyncio loop thread that owns asyncpg, and how Trio awaits it
  (why a bridge, the measurements, cancellation);
- :mod:`~daemon.db.pool`: :class:`~daemon.db.pool.Store`, the pool and its units of work;
- the repositories, one aggregate each, all subclasses of ``Store``:
  :mod:`~daemon.db.tokens`, :mod:`~daemon.db.portfolios`, :mod:`~daemon.db.rebalances`,
  :mod:`~daemon.db.leases`, :mod:`~daemon.db.intents`, :mod:`~daemon.db.prices`,
  :mod:`~daemon.db.system_config`, :mod:`~daemon.db.valuations`,
  :mod:`~daemon.db.migrations` (the SQL files stay in ``daemon/migrations/``) and
  :mod:`~daemon.db.notify` (LISTEN/NOTIFY);
- :mod:`~daemon.db.database`: :class:`Database`, all the repositories in one class, and
  :func:`open_database`;
- :mod:`~daemon.db.admin`: creating and dropping databases on a one-off connection.
"""

from daemon.db.admin import (
    admin_execute,
    create_database,
    database_url,
    drop_database,
)
from daemon.db.bridge import (
    CLOSE_TIMEOUT,
    CONNECT_TIMEOUT,
    SWITCH_INTERVAL,
)
from daemon.db.database import (
    Database,
    migrate,
    open_database,
)
from daemon.db.errors import (
    ConstraintViolation,
    DatabaseError,
    DatabaseUnavailable,
    LeaseHeld,
    LeaseLost,
    MigrationError,
    NotFound,
    QueryTimeout,
    RebalanceRefused,
)
from daemon.db.migrations import (
    MIGRATION_LOCK_KEY,
    MIGRATION_LOCK_POLL,
    MIGRATIONS_DIR,
    Migration,
    load_migrations,
)
from daemon.db.notify import (
    LISTEN_KEEPALIVE,
    LISTEN_RETRY_INITIAL,
    LISTEN_RETRY_MAX,
    NOTIFY_BUFFER,
    PORTFOLIO_CHANNEL,
    SYSTEM_CONFIG_CHANNEL,
    Notification,
    NotificationStream,
)
from daemon.db.pool import (
    Work,
)
from daemon.db.records import (
    LIVE_INTENT_STATUSES,
    TRADED_STATUSES,
    Allocation,
    AppliedMigration,
    DailyDriftStats,
    FinishedAttempt,
    HoldingValue,
    IntentPurpose,
    IntentStatus,
    LatestPrice,
    NewTxIntent,
    Portfolio,
    PortfolioSnapshot,
    PriceObservation,
    RebalanceLogEntry,
    RebalanceStatus,
    RebalanceTrigger,
    SignerLease,
    TerminalStatus,
    TokenRecord,
    TxIntent,
    TxReceipt,
)
from daemon.db.system_config import (
    REBALANCING_PARAMS,
)

__all__ = [
    "CLOSE_TIMEOUT",
    "CONNECT_TIMEOUT",
    "LISTEN_KEEPALIVE",
    "LISTEN_RETRY_INITIAL",
    "LISTEN_RETRY_MAX",
    "LIVE_INTENT_STATUSES",
    "MIGRATIONS_DIR",
    "MIGRATION_LOCK_KEY",
    "MIGRATION_LOCK_POLL",
    "NOTIFY_BUFFER",
    "PORTFOLIO_CHANNEL",
    "REBALANCING_PARAMS",
    "SWITCH_INTERVAL",
    "SYSTEM_CONFIG_CHANNEL",
    "TRADED_STATUSES",
    "Allocation",
    "AppliedMigration",
    "ConstraintViolation",
    "DailyDriftStats",
    "Database",
    "DatabaseError",
    "DatabaseUnavailable",
    "FinishedAttempt",
    "HoldingValue",
    "IntentPurpose",
    "IntentStatus",
    "LatestPrice",
    "LeaseHeld",
    "LeaseLost",
    "Migration",
    "MigrationError",
    "NewTxIntent",
    "NotFound",
    "Notification",
    "NotificationStream",
    "Portfolio",
    "PortfolioSnapshot",
    "PriceObservation",
    "QueryTimeout",
    "RebalanceLogEntry",
    "RebalanceRefused",
    "RebalanceStatus",
    "RebalanceTrigger",
    "SignerLease",
    "TerminalStatus",
    "TokenRecord",
    "TxIntent",
    "TxReceipt",
    "Work",
    "admin_execute",
    "create_database",
    "database_url",
    "drop_database",
    "load_migrations",
    "migrate",
    "open_database",
]

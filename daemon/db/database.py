"""The :class:`Database` (the pool and every repository), and opening and closing it."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator

import trio

from daemon.config import DatabaseConfig
from daemon.db.bridge import CLOSE_TIMEOUT, SWITCH_INTERVAL, _Bridge
from daemon.db.intents import TxIntents
from daemon.db.leases import SignerLeases
from daemon.db.migrations import Migrations
from daemon.db.notify import Notifications
from daemon.db.portfolios import PortfolioStore
from daemon.db.prices import PriceStore
from daemon.db.rebalances import RebalanceLog
from daemon.db.records import AppliedMigration
from daemon.db.system_config import SystemConfig
from daemon.db.tokens import TokenStore
from daemon.db.valuations import Valuations


class Database(
    TokenStore,
    PortfolioStore,
    RebalanceLog,
    SignerLeases,
    TxIntents,
    PriceStore,
    SystemConfig,
    Valuations,
    Migrations,
    Notifications,
):
    """An open connection pool and the repositories. Create with :func:`open_database`.

    One class for callers; each repository (an aggregate of the schema) is a base class in its own
    module of :mod:`daemon.db`, all sharing the pool of :class:`~daemon.db.pool.Store`.
    """

    __slots__ = ()


@contextlib.asynccontextmanager
async def open_database(
    config: DatabaseConfig, *, switch_interval: float | None = SWITCH_INTERVAL
) -> AsyncIterator[Database]:
    """Open the pool (raising :class:`DatabaseUnavailable` if the server cannot be reached),
    yield the :class:`Database`, and close everything when the block exits, even if cancelled.

    ``switch_interval`` lowers the GIL switch interval (see :mod:`daemon.db.bridge`); None leaves
    it alone.
    """
    if switch_interval is not None and sys.getswitchinterval() > switch_interval:
        sys.setswitchinterval(switch_interval)
    bridge = _Bridge(name="driftd-db", token=trio.lowlevel.current_trio_token())
    bridge.start()
    database = Database(config=config, bridge=bridge)
    try:
        await database._open()
        yield database
    finally:
        with trio.CancelScope(shield=True):
            with trio.move_on_after(CLOSE_TIMEOUT + 1):
                await database._close()
            await bridge.stop()


async def migrate(config: DatabaseConfig) -> list[AppliedMigration]:
    """Open the database, apply pending migrations, close it (``driftd migrate``)."""
    async with open_database(config) as database:
        return await database.migrate()

"""Background duties that need the database, during an outage: retried, or logged once.

An outage must not end the process (the probes report it in health), nor flood the log once per
tick. A duty that must eventually happen (a reconcile, reloading the runtime parameters) is
retried with capped exponential backoff (:func:`retry_database`); a duty whose result can be
skipped this time (storing a tick's prices, refreshing the token list) logs its failure once per
outage and its recovery once (:class:`OutageLog`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final

import attrs
import trio

from daemon import db as dbm
from daemon.backoff import Backoff
from daemon.logs import get_logger

DB_RETRY_INITIAL: Final = 0.5
DB_RETRY_MAX: Final = 30.0
"""Seconds: backoff of a watcher's database work during an outage (doubling, capped)."""


async def retry_database(work: Callable[[], Awaitable[None]], what: str) -> None:
    """Run ``work`` until it succeeds. A database error is logged and retried with capped
    exponential backoff, never raised: an outage must not end the process (the probes report
    it in health)."""
    log = get_logger(actor="app")
    schedule = Backoff(initial=DB_RETRY_INITIAL, maximum=DB_RETRY_MAX)
    failures = 0
    while True:
        try:
            await work()
        except dbm.DatabaseError as exc:
            delay = schedule.delay(failures)
            failures += 1
            log.warning(f"{what}_failed", error=str(exc), attempt=failures, retry_in=delay)
            await trio.sleep(delay)
            continue
        if failures:
            log.info(f"{what}_recovered", attempts=failures + 1)
        return


@attrs.define(eq=False)
class OutageLog:
    """Database-backed duties failing right now, each logged once per outage (health reports
    the outage through the database probe)."""

    failing: set[str] = attrs.Factory(set)

    def failed(self, event: str, exc: dbm.DatabaseError) -> None:
        """Log a duty's failure once per outage, not once per tick."""
        if event not in self.failing:
            self.failing.add(event)
            get_logger(actor="app").warning(event, error=str(exc))

    def ok(self, event: str) -> None:
        if event in self.failing:
            self.failing.discard(event)
            get_logger(actor="app").info("database_duty_resumed", after=event)

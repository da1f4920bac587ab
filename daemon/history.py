"""History for reports: every tick's prices and each portfolio's valuation, stored best-effort.

Nothing here controls trading, so nothing here may stop it: while the database is unreachable a
tick's prices are not stored (the feed publishes its snapshots anyway; logged once per outage)
and valuations wait in a bounded buffer (logged once per outage).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from decimal import Decimal
from typing import Final

import attrs
import trio

from daemon import db as dbm
from daemon.drift import Decision, Holding
from daemon.live_config import ConfigSource
from daemon.messages import PricePoint, ValuationKind
from daemon.portfolio import PortfolioSpec
from daemon.retry import OutageLog
from daemon.tokens import TokenBook

BATCH_WINDOW: Final = 1.0
"""Seconds a batch of valuations gathers after the first one arrives."""
MAX_PENDING: Final = 10_000
"""Valuations kept while the database is unreachable (then the oldest are dropped)."""
FLUSH_ON_STOP: Final = 2.0
"""Seconds the last write may take when the daemon stops."""


@attrs.frozen
class PriceStore:
    """Stores each tick's prices (the price feed's :class:`~daemon.prices.PriceRecorder`)."""

    db: dbm.Database
    tokens: TokenBook
    outages: OutageLog

    async def store(self, points: list[PricePoint]) -> None:
        """Store the tick's prices; while the database is unreachable they are not stored (the
        feed publishes its snapshots anyway: trading needs the database for other reasons)."""
        registered = self.tokens.registered
        observations = [
            dbm.PriceObservation(
                token_id=registered[p.symbol].id,
                source=p.source,
                usd=p.usd,
                observed_at=p.observed_at,
                block_number=p.block_number,
            )
            for p in points
            if p.symbol in registered
        ]
        if not observations:
            return
        try:
            await self.db.insert_prices(observations)
        except dbm.DatabaseError as exc:
            self.outages.failed("prices_not_stored", exc)
        else:
            self.outages.ok("prices_not_stored")


@attrs.define(eq=False)
class Valuations:
    """Stores portfolio valuations (the portfolio actor's
    :class:`~daemon.portfolio.ValuationRecorder`) in batches, off the actors' path.

    An actor only appends its valuation to a buffer (no await, no database round trip inside an
    evaluation); :meth:`run` writes what gathered within :data:`BATCH_WINDOW` seconds in one
    insert — one per tick for all portfolios, not one per portfolio. While the database is
    unreachable valuations wait in the buffer (the oldest dropped beyond
    :data:`MAX_PENDING`), and whatever is left is written once more when the daemon stops."""

    db: dbm.Database
    tokens: TokenBook
    config: ConfigSource
    now: Callable[[], datetime]
    outages: OutageLog
    _pending: list[dbm.PortfolioSnapshot] = attrs.field(factory=list, init=False)
    _arrived: trio.Event = attrs.field(factory=trio.Event, init=False)

    def record(
        self,
        spec: PortfolioSpec,
        decision: Decision,
        holdings: list[Holding],
        prices: Mapping[str, Decimal],
        kind: ValuationKind,
    ) -> None:
        """Queue a valuation, taken now, for the next batch."""
        registered = self.tokens.registered
        balances = {h.symbol: h.balance for h in holdings}
        rows = [
            dbm.HoldingValue(
                token_id=registered[d.symbol].id,
                amount=balances[d.symbol],
                usd=d.value_usd,
                weight=d.current_weight,
                drift=d.drift,
                price_usd=prices.get(d.symbol),
                target=d.target_weight,
            )
            for d in decision.drifts
            if d.symbol in registered
        ]
        if decision.total_usd is None or not rows:
            return
        source = self.config.current.prices.source
        self._pending.append(
            dbm.PortfolioSnapshot(
                portfolio_id=spec.id,
                total_usd=decision.total_usd,
                holdings=tuple(rows),
                max_drift=decision.max_drift,
                price_source="oracle" if source == "oracle" else "router",
                taken_at=self.now(),
                kind=kind,
            )
        )
        # A long outage: the oldest go first (the outage is logged by flush, once).
        del self._pending[:-MAX_PENDING]
        self._arrived.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write the queued valuations in batches, until cancelled (then once more)."""
        task_status.started()
        try:
            while True:
                await self._arrived.wait()
                # The other actors of this tick are evaluating too: one insert for all of them.
                await trio.sleep(BATCH_WINDOW)
                await self.flush()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(FLUSH_ON_STOP):
                await self.flush()

    async def flush(self) -> None:
        """Write every queued valuation now; after a database error they stay queued."""
        batch, self._pending = self._pending, []
        self._arrived = trio.Event()
        if not batch:
            return
        try:
            await self.db.insert_snapshots(batch)
        except dbm.DatabaseError as exc:
            self.outages.failed("valuations_not_stored", exc)
            self._pending[:0] = batch[-MAX_PENDING:]
            return
        self.outages.ok("valuations_not_stored")

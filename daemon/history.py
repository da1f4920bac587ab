"""History for reports: every tick's prices and each portfolio's valuation, stored best-effort.

Nothing here controls trading, so nothing here may stop it: while the database is unreachable a
tick's prices are not stored (the feed publishes its snapshots anyway; logged once per outage)
and a valuation snapshot is lost (logged).
"""

from __future__ import annotations

import attrs

from daemon import db as dbm
from daemon.drift import Decision, Holding
from daemon.live_config import ConfigSource
from daemon.logs import get_logger
from daemon.messages import PricePoint
from daemon.portfolio import PortfolioSpec
from daemon.retry import OutageLog
from daemon.tokens import TokenBook


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


@attrs.frozen
class Valuations:
    """Stores portfolio valuations (the portfolio actor's
    :class:`~daemon.portfolio.ValuationRecorder`)."""

    db: dbm.Database
    tokens: TokenBook
    config: ConfigSource

    async def record(
        self, spec: PortfolioSpec, decision: Decision, holdings: list[Holding]
    ) -> None:
        """Store a valuation snapshot; a database hiccup only costs this snapshot."""
        registered = self.tokens.registered
        balances = {h.symbol: h.balance for h in holdings}
        rows = [
            dbm.HoldingValue(
                token_id=registered[d.symbol].id,
                amount=balances[d.symbol],
                usd=d.value_usd,
                weight=d.current_weight,
                drift=d.drift,
            )
            for d in decision.drifts
            if d.symbol in registered
        ]
        if decision.total_usd is None or not rows:
            return
        source = self.config.current.prices.source
        snapshot = dbm.PortfolioSnapshot(
            portfolio_id=spec.id,
            total_usd=decision.total_usd,
            holdings=tuple(rows),
            max_drift=decision.max_drift,
            price_source="oracle" if source == "oracle" else "router",
        )
        try:
            await self.db.insert_snapshots([snapshot])
        except dbm.DatabaseError as exc:
            get_logger(actor="app").warning("valuation_not_stored", error=str(exc))

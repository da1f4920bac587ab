"""The price repository: price observations and the latest price per token and source."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from daemon.db.pool import Store
from daemon.db.records import LatestPrice, PriceObservation
from daemon.messages import PriceSourceName


class PriceStore(Store):
    """Price observations."""

    __slots__ = ()

    async def insert_prices(self, observations: Sequence[PriceObservation]) -> int:
        """Append a batch of observations (one COPY); returns how many."""
        records = [
            (o.token_id, o.source, o.usd, o.observed_at, o.block_number) for o in observations
        ]
        if not records:
            return 0

        async def work(conn: asyncpg.Connection) -> int:
            await conn.copy_records_to_table(
                "price",
                records=records,
                columns=["token_id", "source", "usd", "observed_at", "block_number"],
            )
            return len(records)

        return await self._unit(work)

    async def latest_prices(self, source: PriceSourceName | None = None) -> list[LatestPrice]:
        """The newest observation per (token, source), optionally of one source."""

        async def work(conn: asyncpg.Connection) -> list[LatestPrice]:
            rows = await conn.fetch(
                "SELECT DISTINCT ON (p.token_id, p.source) p.token_id, t.symbol, p.source,"
                " p.usd, p.observed_at, p.block_number"
                " FROM price p JOIN token t ON t.id = p.token_id"
                " WHERE $1::text IS NULL OR p.source = $1"
                " ORDER BY p.token_id, p.source, p.observed_at DESC, p.id DESC",
                source,
            )
            return [LatestPrice(**dict(r)) for r in rows]

        return await self._unit(work, transaction=False)

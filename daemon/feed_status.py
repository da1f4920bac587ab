"""What the price feed last did, for liveness, health and metrics.

The feed reports every tick it attempts (:meth:`FeedStatus.ticked`): the watchdog asks whether
the feed loop still turns (``loop_at``, whether or not the source answered), health judges the
age of the last published snapshot (``last_tick_at``), and the tick counters and the price
head's age go to metrics.
"""

from __future__ import annotations

from datetime import datetime

import attrs
import trio

from daemon.live_config import ConfigSource
from daemon.messages import PriceSnapshot
from daemon.metrics import Metrics


@attrs.define(eq=False)
class FeedStatus:
    """The price feed's :class:`~daemon.prices.TickListener`."""

    config: ConfigSource
    metrics: Metrics
    loop_at: float | None = None
    """trio.current_time() of the price feed's last attempted tick (liveness)."""
    last_tick_at: datetime | None = None
    """When the last snapshot was published."""

    def ticked(self, snapshot: PriceSnapshot | None) -> None:
        """A tick was attempted: ``snapshot`` was published, or None (the tick failed)."""
        self.loop_at = trio.current_time()
        source = self.config.current.prices.source
        if snapshot is None:
            self.metrics.price_tick_failed(source)
        else:
            self.last_tick_at = snapshot.taken_at
            self.metrics.price_tick(source, snapshot.taken_at.timestamp())
            heads = [p.block_timestamp for p in snapshot.prices.values() if p.block_timestamp]
            if heads:  # router prices: the block they were read at
                self.metrics.price_head(max(heads).timestamp())

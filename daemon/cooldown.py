"""The cooldown rule, pure: how long until a portfolio may trade again.

The clock starts at each *successful* rebalance (a failed one did not move the portfolio, so
waiting would only leave it drifted). Its source of truth is ``rebalance_log``, so it survives
actor and process restarts; the actor keeps a copy and callers pass ``now`` so tests need not wait.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from decimal import Decimal


def cooldown_remaining(
    last_success_at: datetime | None, now: datetime, cooldown_minutes: Decimal
) -> timedelta:
    """Time left before the next rebalance is allowed (zero when allowed)."""
    if last_success_at is None:
        return timedelta(0)
    ready_at = last_success_at + timedelta(minutes=float(cooldown_minutes))
    return max(timedelta(0), ready_at - now)


def cooldown_message(remaining: timedelta) -> str:
    """The seed's wording, with whole minutes rounded up (never "0 minutes" while active)."""
    minutes = max(1, math.ceil(remaining.total_seconds() / 60))
    return f"Cooldown active. Next rebalance available in {minutes} minutes"

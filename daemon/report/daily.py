"""The seed's drift trend, per UTC day: drift, rebalances and gas cost.

A day's average drift is the plain mean of its valuations' max drift (like the seed's AVG); its
rebalances are the attempts that traded (SUCCESS or PARTIAL) started that day.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from decimal import Decimal

import attrs

from daemon.report.history import Attempt, Valuation


@attrs.frozen
class Day:
    date: dt.date
    valuations: int
    avg_drift: Decimal | None
    max_drift: Decimal | None
    rebalances: int
    failed: int
    gas_usd: Decimal


def daily(valuations: Sequence[Valuation], attempts: Sequence[Attempt]) -> list[Day]:
    drifts: dict[dt.date, list[Decimal]] = {}
    counts: dict[dt.date, int] = {}
    for v in valuations:
        day = v.taken_at.astimezone(dt.UTC).date()
        counts[day] = counts.get(day, 0) + 1
        if v.max_drift is not None:
            drifts.setdefault(day, []).append(v.max_drift)
    by_day: dict[dt.date, list[Attempt]] = {}
    for a in attempts:
        by_day.setdefault(a.started_at.astimezone(dt.UTC).date(), []).append(a)
    days = []
    for day in sorted(counts.keys() | by_day.keys()):
        of_day = drifts.get(day, [])
        tried = by_day.get(day, [])
        days.append(
            Day(
                date=day,
                valuations=counts.get(day, 0),
                avg_drift=sum(of_day, Decimal(0)) / len(of_day) if of_day else None,
                max_drift=max(of_day) if of_day else None,
                rebalances=sum(a.status in ("SUCCESS", "PARTIAL") for a in tried),
                failed=sum(a.status == "FAILED" for a in tried),
                gas_usd=sum((a.gas_usd for a in tried if a.gas_usd is not None), Decimal(0)),
            )
        )
    return days

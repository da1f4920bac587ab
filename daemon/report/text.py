"""The report as a plain-text table and as JSON: the same figures, rounded the same way."""

from __future__ import annotations

import itertools
import json
from decimal import Decimal
from typing import Any

from daemon.report.daily import Day
from daemon.report.figures import Report


def _when(report: Report) -> tuple[str, str]:
    history = report.history
    return history.since.isoformat(), history.until.isoformat()


def _pct(value: Decimal | None, digits: int = 4) -> str | None:
    return None if value is None else str(round(value * 100, digits))


def day_row(day: Day) -> dict[str, Any]:
    """One day as JSON (and, in the same strings, as a table row)."""
    return {
        "date": day.date.isoformat(),
        "valuations": day.valuations,
        "avg_drift_pct": _pct(day.avg_drift),
        "max_drift_pct": _pct(day.max_drift),
        "rebalances": day.rebalances,
        "failed": day.failed,
        "gas_usd": str(round(day.gas_usd, 2)),
    }


def as_json(report: Report) -> dict[str, Any]:
    since, until = _when(report)
    return {
        "portfolio": report.history.portfolio,
        "since": since,
        "until": until,
        "valuations": len(report.history.valuations),
        "sampling": report.sampling,
        "figures": {f.key: f.json() for f in report.figures},
        "daily": [day_row(day) for day in report.days],
    }


def render_json(report: Report) -> str:
    return json.dumps(as_json(report), indent=2)


def render_table(report: Report) -> str:
    since, until = _when(report)
    lines = [
        f"portfolio {report.history.portfolio}: {since} → {until}, "
        f"{len(report.history.valuations)} valuations",
    ]
    width = max(len(f.label) for f in report.figures)
    for section, figures in itertools.groupby(report.figures, key=lambda f: f.section):
        lines += ["", section]
        for figure in figures:
            unit = f" {figure.unit}" if figure.unit else ""
            lines.append(f"  {figure.label.ljust(width)}  {figure.text()}{unit}")
    lines += ["", "Per day (UTC)"]
    headers = list(day_row(report.days[0]).keys()) if report.days else []
    rows = [[str(v) if v is not None else "n/a" for v in day_row(d).values()] for d in report.days]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines.append("  " + "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    for row in rows:
        lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    return "\n".join(line.rstrip() for line in lines)

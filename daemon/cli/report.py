"""``driftd report``: what rebalancing cost and earned for one portfolio over a period.

Reads the valuations and rebalance attempts the daemon stored (:mod:`daemon.report.load`),
computes the figures (:mod:`daemon.report.figures`) and writes them as a table, JSON, one
self-contained HTML page with charts, or one chart as PNG or SVG. A history too short for a
report is exit 65 with a line saying what is missing; matplotlib missing for charts, 69.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from daemon import exitcodes
from daemon.config import Config

if TYPE_CHECKING:
    from daemon.cli.main import Subparsers
    from daemon.db import Database, Portfolio
    from daemon.report.figures import Report

FORMATS = ("table", "json", "html", "png", "svg")
CHART_NAMES = ("allocation", "value", "drift", "costs")


def _moment(raw: str) -> dt.datetime:
    """An ISO date or date-time; without a zone, UTC."""
    try:
        moment = dt.datetime.fromisoformat(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an ISO date or date-time (2025-01-31, 2025-01-31T12:00), got {raw!r}"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)


def _days(raw: str) -> float:
    try:
        days = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {raw!r}") from None
    if not days > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {raw}")
    return days


def _rate(raw: str) -> float:
    try:
        rate = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {raw!r}") from None
    if not 0 <= rate < 1:
        raise argparse.ArgumentTypeError(f"must be a yearly fraction in [0, 1), got {raw}")
    return rate


def register(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "report",
        help="what rebalancing cost and earned: drift, costs, attribution vs buy-and-hold",
        description="A portfolio's drift trend, rebalances and their costs (gas, DEX fees, "
        "price impact, slippage), its return against buy-and-hold of its starting holdings, "
        "volatility, Sharpe ratio and drawdown, over a period of the stored history.",
    )
    parser.add_argument("--portfolio", metavar="NAME", help="(default: the only portfolio)")
    period = parser.add_mutually_exclusive_group()
    period.add_argument(
        "--days", type=_days, metavar="N", help="the last N days up to --until (default 30)"
    )
    period.add_argument("--since", type=_moment, metavar="WHEN", help="ISO date or date-time")
    parser.add_argument(
        "--until", type=_moment, metavar="WHEN", help="ISO date or date-time (default: now)"
    )
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="table",
        help="table, json, html (the figures and every chart), or one chart as png or svg",
    )
    parser.add_argument(
        "--chart", choices=CHART_NAMES, default="value", help="the chart of --format png|svg"
    )
    parser.add_argument("--output", type=Path, metavar="PATH", help="write here (default: stdout)")
    parser.add_argument(
        "--risk-free",
        type=_rate,
        metavar="RATE",
        help="yearly risk-free rate for Sharpe (default: report.risk_free_rate)",
    )
    parser.set_defaults(func=cmd_report)


def _period(args: argparse.Namespace, now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    until = args.until or now
    since = args.since or until - dt.timedelta(days=args.days or 30)
    return since, until


def cmd_report(args: argparse.Namespace, config: Config) -> int:
    from daemon.cli.db_common import fail, with_database

    since, until = _period(args, dt.datetime.now(dt.UTC))
    if since >= until:
        return fail("report: --since must be before --until", exitcodes.USAGE)
    if args.format == "png" and args.output is None:
        return fail("report: --format png needs --output PATH", exitcodes.USAGE)
    if args.format in ("html", "png", "svg") and not _has_matplotlib():
        return fail(
            f"report: --format {args.format} needs matplotlib: pip install 'driftd[analytics]'",
            exitcodes.UNAVAILABLE,
        )
    risk_free = float(config.report.risk_free_rate) if args.risk_free is None else args.risk_free

    async def work(database: Database) -> int:
        from daemon.report.figures import NoData, build_report
        from daemon.report.load import load_history

        portfolio = await _portfolio(database, args.portfolio)
        if isinstance(portfolio, str):
            return fail(f"report: {portfolio}", exitcodes.USAGE)
        history = await load_history(
            database, portfolio, since, until, config.rebalance.drift_threshold
        )
        try:
            report = build_report(history, risk_free)
        except NoData as exc:
            return fail(f"report: {exc}", exitcodes.DATA_ERROR)
        _write(_rendered(report, args.format, args.chart), args.output)
        return exitcodes.OK

    return with_database(config, work)


async def _portfolio(database: Database, name: str | None) -> Portfolio | str:
    """The named portfolio (NotFound: exit 65), the only one, or why none was chosen."""
    if name is not None:
        return await database.portfolio(name)
    every = await database.portfolios()
    if len(every) == 1:
        return every[0]
    if not every:
        return "no portfolios registered"
    return "name one with --portfolio: " + ", ".join(p.name for p in every)


def _has_matplotlib() -> bool:
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def _rendered(report: Report, file_format: str, chart: str) -> str | bytes:
    if file_format == "json":
        from daemon.report.text import render_json

        return render_json(report) + "\n"
    if file_format == "table":
        from daemon.report.text import render_table

        return render_table(report) + "\n"
    if file_format == "html":
        from daemon.report.html import render_html

        return render_html(report) + "\n"
    from daemon.report.charts import render

    return render(report, chart, file_format)


def _write(content: str | bytes, output: Path | None) -> None:
    if output is None:
        if isinstance(content, bytes):
            sys.stdout.buffer.write(content)
        else:
            sys.stdout.write(content)
        return
    if isinstance(content, bytes):
        output.write_bytes(content)
    else:
        output.write_text(content, encoding="utf-8")
    print(f"report written to {output}", file=sys.stderr)

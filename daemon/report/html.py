"""The report as one self-contained HTML page: the figures, the daily trend and the charts as
inline SVG. No script, stylesheet, font or image is fetched: it opens with no network."""

from __future__ import annotations

import html
import itertools

from daemon.report.charts import CHARTS, render
from daemon.report.figures import Report
from daemon.report.text import day_row

STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 960px; color: #222; }
table { border-collapse: collapse; margin-bottom: 1.5em; }
td, th { padding: 2px 12px; border-bottom: 1px solid #ddd; text-align: left; }
td.value { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 0 0 1.5em 0; }
"""


def _svg(report: Report, name: str) -> str:
    text = render(report, name, "svg").decode("utf-8")
    # The XML prolog and DOCTYPE are for standalone files, not for SVG inside HTML.
    return text[text.index("<svg") :]


def render_html(report: Report) -> str:
    history = report.history
    title = f"driftd report: {history.portfolio}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>{history.since.isoformat()} → {history.until.isoformat()}: "
        f"{len(history.valuations)} valuations, {len(history.attempts)} rebalance attempts.</p>",
    ]
    for name in CHARTS:
        parts.append(f'<figure id="chart-{name}">{_svg(report, name)}</figure>')
    for section, figures in itertools.groupby(report.figures, key=lambda f: f.section):
        parts.append(f"<h2>{html.escape(section)}</h2><table>")
        for figure in figures:
            parts.append(
                f'<tr id="figure-{figure.key}"><td>{html.escape(figure.label)}</td>'
                f'<td class="value">{html.escape(figure.text())}</td>'
                f"<td>{html.escape(figure.unit)}</td></tr>"
            )
        parts.append("</table>")
    if report.days:
        rows = [day_row(day) for day in report.days]
        parts.append('<h2>Per day (UTC)</h2><table id="daily"><tr>')
        parts += [f"<th>{html.escape(h)}</th>" for h in rows[0]]
        parts.append("</tr>")
        for row in rows:
            cells = ("n/a" if v is None else str(v) for v in row.values())
            parts.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)

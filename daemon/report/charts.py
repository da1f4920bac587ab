"""The report's charts, drawn with matplotlib (the ``analytics`` extra) as SVG or PNG.

Each chart's series carry an id (matplotlib's ``gid``: the SVG element's ``id``), so a test or a
stylesheet can find them: ``weight-SYMBOL`` and ``target-SYMBOL``, ``portfolio-value`` and
``buy-and-hold-value``, ``max-drift``, ``threshold`` and ``rebalances``, ``cost-gas``,
``cost-fees``, ``cost-impact`` and ``cost-slippage``. Figures are built with the object API
(no pyplot, no global state); SVG text is drawn as paths, so a page needs no fonts.
"""

from __future__ import annotations

import datetime as dt
import io
import math
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Final

from daemon.report.figures import Report

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

CHARTS: Final = ("allocation", "value", "drift", "costs")
"""The charts, in the order the HTML report shows them."""
SIZE: Final = (9.0, 3.6)


def _x(times: Sequence[dt.datetime]) -> list[float]:
    """Matplotlib's date numbers: days since its default epoch, 1970-01-01 UTC."""
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return [(t - epoch).total_seconds() / 86400 for t in times]


def _y(values: Sequence[Decimal | None], scale: int = 1) -> list[float]:
    """Floats for a chart (a gap where a value is missing)."""
    return [math.nan if v is None else float(v) * scale for v in values]


def _allocation(report: Report, axes: Axes) -> None:
    series = report.series
    for index, (symbol, weights) in enumerate(sorted(series.weights.items())):
        color = f"C{index}"
        (line,) = axes.plot(
            _x(series.times), _y(weights, 100), color=color, label=f"{symbol} weight"
        )
        line.set_gid(f"weight-{symbol}")
        (target,) = axes.plot(
            _x(series.times),
            _y(series.targets[symbol], 100),
            color=color,
            linestyle="--",
            label=f"{symbol} target",
        )
        target.set_gid(f"target-{symbol}")
    axes.set_title("Allocation vs target")
    axes.set_ylabel("% of value")


def _value(report: Report, axes: Axes) -> None:
    series = report.series
    (value,) = axes.plot(_x(series.times), _y(series.values), label="portfolio")
    value.set_gid("portfolio-value")
    (hold,) = axes.plot(
        _x(series.times), _y(series.benchmark), linestyle="--", label="buy-and-hold"
    )
    hold.set_gid("buy-and-hold-value")
    axes.set_title("Portfolio value vs buy-and-hold")
    axes.set_ylabel("USD")


def _drift(report: Report, axes: Axes) -> None:
    series = report.series
    (line,) = axes.plot(_x(series.times), _y(series.max_drift, 100), label="max drift")
    line.set_gid("max-drift")
    threshold = axes.axhline(
        float(report.history.threshold) * 100, color="C3", linestyle="--", label="threshold"
    )
    threshold.set_gid("threshold")
    if series.rebalances:
        marks = axes.vlines(
            _x(series.rebalances),
            0,
            1,
            transform=axes.get_xaxis_transform(),
            colors="C2",
            linestyles=":",
            label="rebalances",
        )
        marks.set_gid("rebalances")
    axes.set_title("Max drift, threshold and rebalances")
    axes.set_ylabel("%")


def _costs(report: Report, axes: Axes) -> None:
    spent = report.costs
    parts = (
        ("gas", "gas", spent.gas_usd),
        ("fees", "DEX fees", spent.fees_usd),
        ("impact", "price impact", spent.impact_usd),
        ("slippage", "slippage", spent.slippage_usd),
    )
    bars = axes.bar([label for _, label, _ in parts], [float(usd) for _, _, usd in parts])
    for (key, _, _), bar in zip(parts, bars, strict=True):
        bar.set_gid(f"cost-{key}")
    axes.set_title(f"Costs: {spent.total_usd:.2f} USD in total")
    axes.set_ylabel("USD")


_DRAW: Final[dict[str, Callable[[Report, Axes], None]]] = {
    "allocation": _allocation,
    "value": _value,
    "drift": _drift,
    "costs": _costs,
}


def chart(report: Report, name: str) -> Figure:
    from matplotlib.figure import Figure

    figure = Figure(figsize=SIZE, layout="constrained")
    axes = figure.subplots()
    _DRAW[name](report, axes)
    axes.grid(alpha=0.3)
    if name != "costs":
        axes.xaxis_date()
    if name != "costs":
        axes.legend(loc="best", fontsize="small")
    return figure


def render(report: Report, name: str, file_format: str) -> bytes:
    """One chart as ``svg`` or ``png`` bytes (the same report gives the same SVG)."""
    import matplotlib

    figure = chart(report, name)
    buffer = io.BytesIO()
    with matplotlib.rc_context({"svg.hashsalt": "driftd", "svg.fonttype": "path"}):
        figure.savefig(buffer, format=file_format, metadata=_metadata(file_format))
    return buffer.getvalue()


def _metadata(file_format: str) -> dict[str, str | None]:
    # No creation date: the same history gives the same file.
    return {"Date": None} if file_format == "svg" else {}

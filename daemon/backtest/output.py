"""A backtest's output: the table, the JSON document and the charts."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from daemon.backtest.figures import Figures
from daemon.backtest.simulate import RunResult

COLUMNS: Final = (
    ("strategy", "strategy", "{}"),
    ("final_value_usd", "final $", "{:,.0f}"),
    ("return_pct", "return %", "{:+.2f}"),
    ("return_vs_hold_pct", "vs hold pp", "{:+.2f}"),
    ("rebalances", "rebal", "{}"),
    ("legs", "legs", "{}"),
    ("turnover_usd", "turnover $", "{:,.0f}"),
    ("mean_drift_pct", "mean drift %", "{:.2f}"),
    ("rms_drift_pct", "RMS drift %", "{:.2f}"),
    ("max_drift_pct", "max drift %", "{:.1f}"),
    ("stuck_pct", "stuck >1d %", "{:.2f}"),
    ("gas_usd", "gas $", "{:,.2f}"),
    ("fees_usd", "fees $", "{:,.2f}"),
    ("impact_usd", "impact $", "{:,.2f}"),
    ("cost_usd", "cost $", "{:,.2f}"),
    ("volatility_pct", "vol %", "{:.1f}"),
    ("sharpe", "Sharpe", "{:.2f}"),
    ("max_drawdown_pct", "max DD %", "{:.1f}"),
)


def _cell(value: object, form: str) -> str:
    return "-" if value is None else form.format(value)


def table(rows: Sequence[Figures]) -> str:
    """A plain-text table, one strategy per row."""
    cells = [[title for _, title, _ in COLUMNS]]
    for row in rows:
        cells.append([_cell(getattr(row, name), form) for name, _, form in COLUMNS])
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    lines = []
    for number, line in enumerate(cells):
        parts = [line[0].ljust(widths[0])]
        parts += [cell.rjust(width) for cell, width in zip(line[1:], widths[1:], strict=True)]
        lines.append("  ".join(parts))
        if number == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)


def document(inputs: dict[str, Any], rows: Sequence[Figures]) -> str:
    """The JSON output: the inputs that produced the run and every strategy's figures."""
    return json.dumps(
        {"schema": 1, "inputs": inputs, "strategies": [row.as_json() for row in rows]},
        indent=2,
        sort_keys=False,
    )


def write_charts(
    results: Sequence[RunResult],
    rows: Sequence[Figures],
    directory: Path,
    threshold: float,
    image_format: str = "svg",
) -> list[Path]:
    """``value``, ``drift`` and ``costs`` charts in ``directory``; returns their paths.

    Needs matplotlib (the ``analytics`` extra)."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, no GUI toolkit
    matplotlib.rcParams["svg.hashsalt"] = "driftd"  # the same run writes the same SVG
    from matplotlib import pyplot

    directory.mkdir(parents=True, exist_ok=True)
    written = []
    metadata = {"Date": None} if image_format == "svg" else {}

    figure, axes = pyplot.subplots(figsize=(10, 5))
    for result in results:
        days = [i * result.step / 86400 for i in range(0, len(result.net_value), 288)]
        axes.plot(days, result.net_value[::288], label=result.strategy, linewidth=1)
    axes.set(xlabel="day", ylabel="value net of gas, USD", title="Portfolio value")
    axes.legend()
    written.append(_save(figure, directory / f"value.{image_format}", metadata))

    figure, axes = pyplot.subplots(figsize=(10, 5))
    for result in results:
        if result.rebalances == 0 and result.strategy == "hold":
            continue
        days = [i * result.step / 86400 for i in range(0, len(result.max_drift), 12)]
        axes.plot(
            days, [100 * d for d in result.max_drift[::12]], label=result.strategy, linewidth=0.6
        )
    axes.axhline(100 * threshold, color="black", linestyle="--", linewidth=1, label="threshold")
    axes.set(xlabel="day", ylabel="largest |drift|, %", title="Drift")
    axes.legend()
    written.append(_save(figure, directory / f"drift.{image_format}", metadata))

    figure, axes = pyplot.subplots(figsize=(10, 5))
    names = [row.strategy for row in rows]
    bottom = [0.0] * len(rows)
    for field, label in (
        ("gas_usd", "gas"),
        ("fees_usd", "DEX fees"),
        ("impact_usd", "price impact"),
    ):
        values = [getattr(row, field) for row in rows]
        axes.bar(names, values, bottom=bottom, label=label)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    axes.set(ylabel="USD", title="Costs")
    axes.legend()
    written.append(_save(figure, directory / f"costs.{image_format}", metadata))
    return written


def _save(figure: Any, path: Path, metadata: dict[str, Any]) -> Path:
    from matplotlib import pyplot

    figure.tight_layout()
    figure.savefig(path, metadata=metadata)
    pyplot.close(figure)
    return path

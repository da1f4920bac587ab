"""How the demo shows what happens: a live rich view on a terminal, or JSON lines (``--headless``).

Both are :class:`Reporter` implementations fed the same values
(:mod:`daemon.devtools.demo_stats`), so what CI checks in the JSON lines is what a person watches
in the view. JSON lines go to stdout,
one object per line with an ``event`` field (``started``, ``price_move``, ``rebalance``,
``summary``); decimals are strings so nothing is rounded; progress messages go to stderr.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import IO, Any, Protocol

from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from daemon.devtools.demo_stats import Board, PortfolioSummary, RebalanceEvent, StartedInfo, Summary
from daemon.devtools.market import PriceMove


class Reporter(Protocol):
    """Where the demo's progress, events and summary go."""

    def progress(self, message: str) -> None: ...
    def error(self, message: str) -> None: ...
    def started(self, info: StartedInfo) -> None: ...
    def price_move(self, move: PriceMove) -> None: ...
    def rebalance(self, event: RebalanceEvent) -> None: ...
    def frame(self, board: Board) -> None: ...
    def summary(self, summary: Summary) -> None: ...
    def live(self) -> contextlib.AbstractContextManager[None]: ...


# --- JSON lines -----------------------------------------------------------------------------


def _text(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def _rounded(value: Decimal | None, places: int = 6) -> str | None:
    return None if value is None else str(round(value, places))


def rebalance_json(event: RebalanceEvent) -> dict[str, Any]:
    return {
        "event": "rebalance",
        "id": event.id,
        "portfolio": event.portfolio,
        "status": event.status,
        "tx_hash": event.tx_hash,
        "on_chain": event.on_chain,
        "block_number": event.block_number,
        "gas_used": event.gas_used,
        "gas_cost_usd": _text(event.gas_cost_usd),
        "drift": _rounded(event.drift_before),
        "drift_after": _rounded(event.drift_after),
        "slippage": _rounded(event.slippage, 8),
        "legs": event.legs,
        "error": event.error,
    }


def portfolio_summary_json(item: PortfolioSummary) -> dict[str, Any]:
    return {
        "name": item.name,
        "rebalances": item.successes,
        "attempts": item.attempts,
        "failures": item.failures,
        "success_rate": _rounded(item.success_rate, 4),
        "on_chain": item.on_chain,
        "gas_used": item.gas_used,
        "gas_cost_usd": str(item.gas_cost_usd),
        "avg_slippage": _rounded(item.avg_slippage, 8),
        "avg_drift_before": _rounded(item.avg_drift_before),
        "avg_drift_after": _rounded(item.avg_drift_after),
    }


def summary_json(summary: Summary) -> dict[str, Any]:
    return {
        "event": "summary",
        "ended_by": summary.ended_by,
        "run_seconds": round(summary.run_seconds, 3),
        "setup_seconds": round(summary.setup_seconds, 3),
        "first_success_seconds": None
        if summary.first_success_seconds is None
        else round(summary.first_success_seconds, 3),
        "price_moves": summary.price_moves,
        "pending": summary.pending,
        "portfolios": [portfolio_summary_json(p) for p in summary.portfolios],
        "total": portfolio_summary_json(summary.total),
    }


def started_json(info: StartedInfo) -> dict[str, Any]:
    return {
        "event": "started",
        "seed": info.seed,
        "duration": info.duration,
        "setup_seconds": round(info.setup_seconds, 3),
        "rpc_url": info.rpc_url,
        "database_port": info.database_port,
        "temp_dir": info.temp_dir,
        "health_socket": info.health_socket,
        "prices": {symbol: str(price) for symbol, price in info.prices.items()},
        "portfolios": [
            {
                "name": p.name,
                "account": p.account,
                "targets": {symbol: str(weight) for symbol, weight in p.targets.items()},
            }
            for p in info.portfolios
        ],
    }


def price_move_json(move: PriceMove) -> dict[str, Any]:
    return {
        "event": "price_move",
        "symbol": move.symbol,
        "price_before": _rounded(move.price_before),
        "price_after": _rounded(move.price_after),
        "change": _rounded(move.price_after / move.price_before - 1),
        "jump": move.jump,
        "tx_hash": move.tx_hash,
    }


class JsonLinesReporter:
    """``--headless``: one JSON object per line on ``out``; progress as text on ``err``."""

    def __init__(self, out: IO[str], err: IO[str]) -> None:
        self.out = out
        self.err = err

    def _emit(self, document: dict[str, Any]) -> None:
        stamped = {"ts": datetime.now(UTC).isoformat(timespec="milliseconds"), **document}
        self.out.write(json.dumps(stamped) + "\n")
        self.out.flush()

    def progress(self, message: str) -> None:
        self.err.write(f"driftd demo: {message}\n")
        self.err.flush()

    def error(self, message: str) -> None:
        self.err.write(f"driftd demo: error: {message}\n")
        self.err.flush()

    def started(self, info: StartedInfo) -> None:
        self._emit(started_json(info))

    def price_move(self, move: PriceMove) -> None:
        self._emit(price_move_json(move))

    def rebalance(self, event: RebalanceEvent) -> None:
        self._emit(rebalance_json(event))

    def frame(self, board: Board) -> None:
        """The live board is for people; JSON consumers get the events."""

    def summary(self, summary: Summary) -> None:
        self._emit(summary_json(summary))

    @contextlib.contextmanager
    def live(self) -> Iterator[None]:
        yield


# --- the rich view ----------------------------------------------------------------------------


def pct(value: Decimal | None, places: int = 1) -> str:
    return "-" if value is None else f"{value * 100:.{places}f}%"


def usd(value: Decimal | None, places: int = 2) -> str:
    return "-" if value is None else f"${value:,.{places}f}"


def short_hash(tx_hash: str | None) -> str:
    return "-" if not tx_hash else f"{tx_hash[:8]}…{tx_hash[-6:]}"


def _drift_style(drift: Decimal | None, threshold: Decimal) -> str:
    if drift is None:
        return "dim"
    if abs(drift) >= threshold:
        return "bold red"
    if abs(drift) >= threshold * 2 / 3:
        return "yellow"
    return "green"


_STATUS_STYLE = {"SUCCESS": "green", "FAILED": "red", "SKIPPED": "yellow", "DRY_RUN": "cyan"}


def _clock(moment: datetime | None) -> str:
    return "-" if moment is None else moment.astimezone().strftime("%H:%M:%S")


def _price_line(board: Board) -> Text:
    text = Text()
    for symbol, price in board.prices.items():
        start = board.start_prices.get(symbol)
        if price == 1 and start == 1:
            continue
        change = None if not start else price / start - 1
        style = "green" if change is not None and change >= 0 else "red"
        text.append(f"{symbol} ", style="bold")
        text.append(usd(price))
        if change is not None:
            text.append(f" ({change * 100:+.1f}%)", style=style)
        text.append("   ")
    return text


def render_board(board: Board, width: int = 200) -> Group:
    """The live view: header, portfolios, recent rebalances (full hashes when ``width`` allows)."""
    return Group(_board_header(board), _portfolio_table(board), _recent_table(board, width))


def _board_header(board: Board) -> Text:
    header = Text()
    header.append("driftd demo", style="bold cyan")
    header.append(f"   {board.elapsed:5.0f} s / {board.duration:.0f} s   ")
    header.append_text(_price_line(board))
    header.append(
        f"\n{board.price_moves} price moves by real swaps · rebalance at "
        f"{pct(board.threshold, 0)} drift · Ctrl-C ends with a summary",
        style="dim",
    )
    if board.last_move:
        header.append(f"\nlast move: {board.last_move}", style="dim")
    return header


def _portfolio_table(board: Board) -> Table:
    symbols = list(board.rows[0].targets) if board.rows else []
    portfolios = Table(box=box.SIMPLE_HEAD, expand=False, title="Portfolios", title_justify="left")
    portfolios.add_column("Portfolio", style="bold")
    portfolios.add_column("Value", justify="right")
    for symbol in symbols:
        portfolios.add_column(f"{symbol} now / target", justify="right")
    portfolios.add_column("Max drift", justify="right")
    portfolios.add_column("Cooldown", justify="right")
    portfolios.add_column("Rebalances", justify="right")
    portfolios.add_column("Last trade")
    for row in board.rows:
        cells: list[Text | str] = [row.name, usd(row.value_usd, 0)]
        for symbol in symbols:
            weight, target = row.weights.get(symbol), row.targets[symbol]
            drift = None if weight is None else (weight - target) / target
            cells.append(
                Text(
                    f"{pct(weight)} / {pct(target, 0)}", style=_drift_style(drift, board.threshold)
                )
            )
        cells.append(Text(pct(row.max_drift), style=_drift_style(row.max_drift, board.threshold)))
        cells.append("ready" if row.cooldown_seconds <= 0 else f"{row.cooldown_seconds:.0f} s")
        cells.append(str(row.successes))
        last = row.last
        if last is None:
            cells.append(Text("-", style="dim"))
        else:
            cells.append(
                Text(
                    f"{_clock(last.finished_at)} {last.status} {short_hash(last.tx_hash)}",
                    style=_STATUS_STYLE.get(last.status, ""),
                )
            )
        portfolios.add_row(*cells)
    return portfolios


def _recent_table(board: Board, width: int) -> Table:
    recent = Table(box=box.SIMPLE_HEAD, title="Recent rebalances", title_justify="left")
    for column in ("Time", "Portfolio", "Status", "Drift → after", "Tx hash", "Block", "Gas"):
        recent.add_column(column, justify="right" if column in ("Block", "Gas") else "left")
    recent.add_column("Gas USD", justify="right")
    recent.add_column("Slippage", justify="right")
    for event in board.recent:
        recent.add_row(
            _clock(event.finished_at),
            event.portfolio,
            Text(event.status, style=_STATUS_STYLE.get(event.status, "")),
            f"{pct(event.drift_before)} → {pct(event.drift_after)}",
            (event.tx_hash if width >= 170 else short_hash(event.tx_hash))
            if event.tx_hash
            else (event.error or "-")[:40],
            "-" if event.block_number is None else str(event.block_number),
            "-" if event.gas_used is None else f"{event.gas_used:,}",
            usd(event.gas_cost_usd, 4),
            pct(event.slippage, 3),
        )
    if not board.recent:
        recent.caption = "waiting for the first drift over the threshold…"
    return recent


def render_summary(summary: Summary) -> Group:
    table = Table(box=box.SIMPLE_HEAD, title="Summary", title_justify="left")
    for column in (
        "Portfolio",
        "Rebalances",
        "Success rate",
        "On chain",
        "Gas",
        "Gas USD",
        "Avg slippage vs quote (− better)",
        "Avg drift before → after",
    ):
        table.add_column(column, justify="left" if column == "Portfolio" else "right")
    for item in (*summary.portfolios, summary.total):
        table.add_row(
            Text(item.name, style="bold" if item is summary.total else ""),
            f"{item.successes} / {item.attempts}",
            pct(item.success_rate, 0),
            str(item.on_chain),
            f"{item.gas_used:,}",
            usd(item.gas_cost_usd, 4),
            pct(item.avg_slippage, 4),
            f"{pct(item.avg_drift_before)} → {pct(item.avg_drift_after)}",
            end_section=item is summary.portfolios[-1] if summary.portfolios else False,
        )
    first = (
        "no successful rebalance"
        if summary.first_success_seconds is None
        else f"first rebalance after {summary.first_success_seconds:.1f} s"
    )
    footer = Text(
        f"ended by {summary.ended_by} after {summary.run_seconds:.0f} s (setup "
        f"{summary.setup_seconds:.1f} s) · {summary.price_moves} price moves · {first}"
        + (f" · {summary.pending} still in flight" if summary.pending else ""),
        style="dim",
    )
    return Group(table, footer)


class RichReporter:
    """The live terminal view (refreshed by the demo's monitor, no refresh thread)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._live: Live | None = None

    def progress(self, message: str) -> None:
        self.console.print(f"[bold]==>[/bold] {message}", highlight=False)

    def error(self, message: str) -> None:
        self.console.print(f"[bold red]error:[/bold red] {message}", highlight=False)

    def started(self, info: StartedInfo) -> None:
        for p in info.portfolios:
            targets = " ".join(f"{s}={pct(w, 0)}" for s, w in p.targets.items())
            self.console.print(f"    {p.name:<14} {p.account}  {targets}", highlight=False)
        self.console.print(
            f"    seed {info.seed} · setup took {info.setup_seconds:.1f} s · running for "
            f"{info.duration:.0f} s",
            style="dim",
        )

    def price_move(self, move: PriceMove) -> None:
        """Shown on the board (count and last move)."""

    def rebalance(self, event: RebalanceEvent) -> None:
        """Shown on the board (recent rebalances)."""

    def frame(self, board: Board) -> None:
        if self._live is not None:
            self._live.update(render_board(board, self.console.width), refresh=True)

    def summary(self, summary: Summary) -> None:
        self.console.print(render_summary(summary))

    @contextlib.contextmanager
    def live(self) -> Iterator[None]:
        # auto_refresh=False: the monitor task refreshes; no thread reads state under our feet.
        with Live(console=self.console, auto_refresh=False, transient=False) as live:
            self._live = live
            try:
                yield
            finally:
                self._live = None


def describe_move(move: PriceMove) -> str:
    change = move.price_after / move.price_before - 1
    kind = "jump" if move.jump else "move"
    price = usd(move.price_after)
    return f"{move.symbol} {kind} {change * 100:+.1f}% to {price} ({short_hash(move.tx_hash)})"

"""What the demo saw, as plain values: rebalance events, the live board and the summary.

Pure (no I/O): the demo's monitor fills these from the database, the chain and the daemon's
actor states; the view (:mod:`daemon.devtools.demo_view`) renders them as a rich table or JSON
lines.
Money stays exact: gas in integer units, USD and drift as :class:`~decimal.Decimal`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import attrs


@attrs.frozen
class RebalanceEvent:
    """One finished rebalance attempt (a ``rebalance_log`` row) as the demo saw it."""

    id: int
    portfolio: str
    status: str
    """SUCCESS, FAILED, DRY_RUN or SKIPPED."""
    finished_at: datetime | None
    tx_hash: str | None
    on_chain: bool
    """The demo found the transaction's successful receipt on the devnet."""
    block_number: int | None
    gas_used: int | None
    gas_cost_usd: Decimal | None
    drift_before: Decimal | None
    """The max drift that triggered the attempt."""
    drift_after: Decimal | None
    """The portfolio's max drift right after it (successful attempts only)."""
    slippage: Decimal | None
    """Mean over legs of (quoted − actual) / quoted output; None without both figures."""
    legs: int
    error: str | None


def leg_slippages(expected_outputs: Any) -> list[Decimal]:
    """(quoted − actual) / quoted per leg of a ``rebalance_log.expected_outputs`` JSON list."""
    out: list[Decimal] = []
    if not isinstance(expected_outputs, list):
        return out
    for leg in expected_outputs:
        if not isinstance(leg, Mapping):
            continue
        try:
            quoted = Decimal(str(leg["quoted_out"]))
            actual = Decimal(str(leg["actual_out"]))
        except (KeyError, InvalidOperation, TypeError):
            continue
        if quoted > 0:
            out.append((quoted - actual) / quoted)
    return out


def mean(values: Iterable[Decimal]) -> Decimal | None:
    items = list(values)
    return sum(items, Decimal(0)) / len(items) if items else None


@attrs.frozen
class PortfolioSummary:
    """Totals of one portfolio (or of all: ``name == "total"``)."""

    name: str
    attempts: int
    successes: int
    failures: int
    on_chain: int
    """Successful rebalances whose transaction the demo found on the devnet."""
    gas_used: int
    gas_cost_usd: Decimal
    avg_slippage: Decimal | None
    avg_drift_before: Decimal | None
    avg_drift_after: Decimal | None

    @property
    def success_rate(self) -> Decimal | None:
        return Decimal(self.successes) / self.attempts if self.attempts else None


def summarize_portfolio(name: str, events: Sequence[RebalanceEvent]) -> PortfolioSummary:
    successes = [e for e in events if e.status == "SUCCESS"]
    return PortfolioSummary(
        name=name,
        attempts=len(events),
        successes=len(successes),
        failures=sum(1 for e in events if e.status == "FAILED"),
        on_chain=sum(1 for e in successes if e.on_chain),
        gas_used=sum(e.gas_used or 0 for e in events),
        gas_cost_usd=sum((e.gas_cost_usd or Decimal(0) for e in events), Decimal(0)),
        avg_slippage=mean(e.slippage for e in successes if e.slippage is not None),
        avg_drift_before=mean(e.drift_before for e in successes if e.drift_before is not None),
        avg_drift_after=mean(e.drift_after for e in successes if e.drift_after is not None),
    )


@attrs.frozen
class Summary:
    """The end of a demo run."""

    portfolios: tuple[PortfolioSummary, ...]
    total: PortfolioSummary
    ended_by: str
    """duration, SIGINT or SIGTERM."""
    run_seconds: float
    setup_seconds: float
    price_moves: int
    pending: int
    """Attempts still in flight when the run ended."""
    first_success_seconds: float | None
    """Seconds from the start of the run to the first successful rebalance."""


def summarize(
    names: Sequence[str],
    events: Sequence[RebalanceEvent],
    *,
    ended_by: str,
    run_seconds: float,
    setup_seconds: float,
    price_moves: int,
    pending: int,
    first_success_seconds: float | None,
) -> Summary:
    return Summary(
        portfolios=tuple(
            summarize_portfolio(name, [e for e in events if e.portfolio == name]) for name in names
        ),
        total=summarize_portfolio("total", events),
        ended_by=ended_by,
        run_seconds=run_seconds,
        setup_seconds=setup_seconds,
        price_moves=price_moves,
        pending=pending,
        first_success_seconds=first_success_seconds,
    )


@attrs.frozen
class PortfolioRow:
    """One portfolio on the live board."""

    name: str
    targets: Mapping[str, Decimal]
    weights: Mapping[str, Decimal]
    """Current share of each token by value (empty until first read)."""
    value_usd: Decimal | None
    max_drift: Decimal | None
    cooldown_seconds: float
    """Until the daemon may trade this portfolio again (0: it may)."""
    last: RebalanceEvent | None
    successes: int


@attrs.frozen
class Board:
    """Everything the live view shows at one moment."""

    elapsed: float
    duration: float
    threshold: Decimal
    prices: Mapping[str, Decimal]
    start_prices: Mapping[str, Decimal]
    rows: tuple[PortfolioRow, ...]
    recent: tuple[RebalanceEvent, ...]
    """Newest last."""
    price_moves: int
    last_move: str | None


@attrs.frozen
class DemoPortfolio:
    """A portfolio the demo registered."""

    name: str
    account: str
    """The smart account's address."""
    targets: Mapping[str, Decimal]


@attrs.frozen
class StartedInfo:
    """What the demo set up, reported once the daemon and the market run."""

    seed: int
    duration: float
    portfolios: tuple[DemoPortfolio, ...]
    rpc_url: str
    database_port: int
    temp_dir: str
    health_socket: str
    setup_seconds: float
    prices: Mapping[str, Decimal]

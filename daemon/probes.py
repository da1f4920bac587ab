"""Liveness, background probes, systemd's status line and the metrics scrape.

Everything the control socket asks for synchronously (``health``, ``metrics``) is read from
state kept current here: the database ping and the chain head are probed every few seconds in
the background (:func:`run_probes`), so a health request never waits on I/O.

Liveness for the systemd watchdog (:func:`is_alive`) means "the loops still turn": the price
feed attempted a tick recently (whether or not CoinGecko answered — an outage is reported as
failing health, not answered with a restart) and the probes ran.

These functions see the daemon through :class:`ObservedDaemon`, the part of
:class:`daemon.app.Daemon` they read.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final, NoReturn, Protocol

import attrs
import trio

from daemon.chain_errors import ChainError
from daemon.cooldown import cooldown_remaining
from daemon.db import DatabaseError
from daemon.health_document import portfolio_state
from daemon.logs import get_logger
from daemon.metrics import Metrics

if TYPE_CHECKING:
    from daemon.alerts import Alerter
    from daemon.chain import Block
    from daemon.executor_status import ExecutorStatus
    from daemon.live_config import ConfigSource
    from daemon.portfolio import PortfolioSpec, PortfolioState
    from daemon.supervise import Supervised

PROBE_SECONDS: Final = 5.0
EXECUTOR_STALL_SECONDS: Final = 120.0
"""The executor counts as wedged after this long without a sign of life."""
FEED_STALL_FACTOR: Final = 3.0
"""The feed counts as wedged after this many poll intervals without an attempted tick."""


@attrs.define(eq=False)
class Probes:
    """What the background probes last saw."""

    database_ok: bool = True
    database_error: str | None = None
    chain_ok: bool = True
    chain_error: str | None = None
    head_block: int | None = None
    head_block_at: datetime | None = None
    probed_at: float | None = None
    """trio.current_time() of the last completed probe round."""


class RunningActors(Protocol):
    """The portfolio actors, as the supervisor keeps them (read only)."""

    @property
    def actors(self) -> Mapping[str, Supervised[PortfolioState]]: ...

    @property
    def specs(self) -> Mapping[str, PortfolioSpec]: ...


class ExecutorView(Protocol):
    @property
    def status(self) -> ExecutorStatus: ...


class FeedView(Protocol):
    @property
    def loop_at(self) -> float | None: ...

    @property
    def last_tick_at(self) -> datetime | None: ...


class Expiries(Protocol):
    def expiring(self, running: Mapping[str, PortfolioSpec]) -> dict[str, float]: ...


class Pingable(Protocol):
    async def ping(self) -> None: ...


class ChainHead(Protocol):
    async def latest_block(self) -> Block: ...


class StatusLine(Protocol):
    def status(self, text: str) -> bool: ...


class ObservedDaemon(Protocol):
    """What liveness, the status line and the metrics scrape read of the running daemon."""

    @property
    def config(self) -> ConfigSource: ...

    @property
    def supervisor(self) -> RunningActors: ...

    @property
    def executor(self) -> ExecutorView: ...

    @property
    def feed(self) -> FeedView: ...

    @property
    def probes(self) -> Probes: ...

    @property
    def now(self) -> Callable[[], datetime]: ...


class ProbedDaemon(ObservedDaemon, Protocol):
    """What :func:`run_probes` needs besides: what it probes, and where it reports."""

    @property
    def db(self) -> Pingable: ...

    @property
    def chain(self) -> ChainHead: ...

    @property
    def modes(self) -> Expiries: ...

    @property
    def alerts(self) -> Alerter: ...

    @property
    def notifier(self) -> StatusLine: ...


async def run_probes(
    daemon: ProbedDaemon, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> NoReturn:
    """Probe the database and the chain head, and refresh systemd's STATUS line, forever."""
    log = get_logger(actor="probes")
    started = False
    while True:
        probes = daemon.probes
        try:
            await daemon.db.ping()
        except DatabaseError as exc:
            if probes.database_ok:
                log.error("database_unreachable", error=str(exc))
            probes.database_ok, probes.database_error = False, str(exc)
        else:
            probes.database_ok, probes.database_error = True, None
        try:
            head = await daemon.chain.latest_block()
        except ChainError as exc:
            if probes.chain_ok:
                log.error("chain_unreachable", error=str(exc))
            probes.chain_ok, probes.chain_error = False, str(exc)
        else:
            probes.chain_ok, probes.chain_error = True, None
            probes.head_block = head.number
            probes.head_block_at = datetime.fromtimestamp(head.timestamp, UTC)
        for name, left in daemon.modes.expiring(daemon.supervisor.specs).items():
            # Repeats are suppressed by the alert sink (alerts.repeat_window).
            daemon.alerts.fire(
                "DELEGATION_EXPIRING", {"portfolio": name, "seconds_left": int(left)}
            )
        probes.probed_at = trio.current_time()
        daemon.notifier.status(status_line(daemon))
        if not started:
            started = True
            task_status.started()
        await trio.sleep(PROBE_SECONDS)


def is_alive(daemon: ObservedDaemon) -> bool:
    """The watchdog's question: are the daemon's loops still turning?"""
    now = trio.current_time()
    poll = daemon.config.current.prices.poll_interval
    feed_at = daemon.feed.loop_at
    feed_ok = feed_at is not None and now - feed_at < FEED_STALL_FACTOR * poll + PROBE_SECONDS
    probes_ok = (
        daemon.probes.probed_at is not None
        and now - daemon.probes.probed_at < FEED_STALL_FACTOR * PROBE_SECONDS
    )
    # The executor's watcher turns every second while anything is unsettled; a wedged settle
    # loop (an await that never returns) stops it and lets systemd restart us into recovery.
    executor_at = daemon.executor.status.last_loop_at
    executor_ok = executor_at is None or now - executor_at < EXECUTOR_STALL_SECONDS
    return feed_ok and probes_ok and executor_ok


def status_line(daemon: ObservedDaemon) -> str:
    """systemd's one-line STATUS=."""
    actors = daemon.supervisor.actors
    parked = sum(1 for a in actors.values() if a.status == "parked")
    line = f"{len(actors)} portfolios"
    if parked:
        line += f" ({parked} parked)"
    executor = daemon.executor.status
    line += f", executor pending {executor.pending}"
    if executor.unsettled:
        line += f", {executor.unsettled} unsettled tx"
    if executor.degraded is not None:
        line += f", {executor.degraded}"
    last_tick_at = daemon.feed.last_tick_at
    if last_tick_at is not None:
        age = (daemon.now() - last_tick_at).total_seconds()
        line += f", prices {age:.0f}s old"
    return line


@attrs.frozen
class LiveMetrics:
    """The metrics as scraped: live state (drift, cooldowns, the executor's counters) is copied
    into the gauges just before each render rather than pushed constantly."""

    metrics: Metrics
    config: ConfigSource
    supervisor: RunningActors
    executor: ExecutorView
    now: Callable[[], datetime]
    probes: Probes

    def render(self) -> str:
        """Prometheus exposition text, current as of now."""
        self._collect()
        return self.metrics.render()

    def _collect(self) -> None:
        metrics = self.metrics
        now = self.now()
        config = self.config.current
        cooldown = config.rebalance.cooldown_minutes
        actors = self.supervisor.actors
        metrics.retain_portfolios(actors)
        requested = 0
        for name, actor in actors.items():
            state = actor.state
            if state.last_max_drift is not None:
                metrics.drift(name, state.last_max_drift)
            remaining = cooldown_remaining(state.last_success_at, now, cooldown).total_seconds()
            metrics.cooldown_remaining(name, remaining)
            metrics.portfolio_state_is(name, portfolio_state(actor, remaining))
            requested += state.in_flight
        status = self.executor.status
        metrics.executor(
            pending=status.pending,
            next_nonce=status.next_nonce,
            requested=requested,
            unsettled=status.unsettled,
            recovering=status.recovering,
            blocked=status.blocked is not None,
            stuck_seconds=status.stuck_for,
            lease_held=status.lease_held,
        )
        probes = self.probes
        head_at = probes.head_block_at
        metrics.probed(
            database_ok=probes.database_ok,
            chain_ok=probes.chain_ok,
            head_at=None if head_at is None else head_at.timestamp(),
        )
        metrics.settings(
            drift_threshold=config.rebalance.drift_threshold,
            high_drift=config.alerts.high_drift,
            max_price_age=config.prices.max_age,
        )

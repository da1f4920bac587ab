"""The running daemon as operators see it: health, metrics, control commands, liveness probes.

:class:`DaemonControls` implements :class:`daemon.health.Controls` on top of the wiring in
:mod:`daemon.app`. Everything the socket asks for synchronously (``health``, ``metrics``) is
read from state kept current by :func:`run_probes` — the database ping and the chain head are
probed every few seconds in the background, so a health request never waits on I/O.

Liveness for the systemd watchdog (:func:`is_alive`) means "the loops still turn": the price
feed attempted a tick recently (whether or not CoinGecko answered — an outage is reported as
failing health, not answered with a restart) and the probes ran.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, NoReturn

import attrs
import trio

from daemon import package_version
from daemon.chain import ChainError
from daemon.cooldown import cooldown_message, cooldown_remaining
from daemon.db import DatabaseError
from daemon.health_document import build_health_document
from daemon.logs import get_logger
from daemon.metrics import Metrics

if TYPE_CHECKING:
    from daemon.app import Daemon

PROBE_SECONDS: Final = 5.0
MANUAL_EVALUATION_TIMEOUT: Final = 120.0
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


async def run_probes(
    daemon: Daemon, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
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
        for name, left in daemon.expiring().items():
            # Repeats are suppressed by the alert sink (alerts.repeat_window).
            daemon.alert("DELEGATION_EXPIRING", {"portfolio": name, "seconds_left": int(left)})
        probes.probed_at = trio.current_time()
        daemon.notifier.status(status_line(daemon))
        if not started:
            started = True
            task_status.started()
        await trio.sleep(PROBE_SECONDS)


def is_alive(daemon: Daemon) -> bool:
    """The watchdog's question: are the daemon's loops still turning?"""
    now = trio.current_time()
    poll = daemon.config.current.prices.poll_interval
    feed_ok = (
        daemon.feed_loop_at is not None
        and now - daemon.feed_loop_at < FEED_STALL_FACTOR * poll + PROBE_SECONDS
    )
    probes_ok = (
        daemon.probes.probed_at is not None
        and now - daemon.probes.probed_at < FEED_STALL_FACTOR * PROBE_SECONDS
    )
    # The executor's watcher turns every second while anything is unsettled; a wedged settle
    # loop (an await that never returns) stops it and lets systemd restart us into recovery.
    executor_at = daemon.executor.status.last_loop_at
    executor_ok = executor_at is None or now - executor_at < EXECUTOR_STALL_SECONDS
    return feed_ok and probes_ok and executor_ok


def status_line(daemon: Daemon) -> str:
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
    if daemon.last_tick_at is not None:
        age = (daemon.now() - daemon.last_tick_at).total_seconds()
        line += f", prices {age:.0f}s old"
    return line


def collect_metrics(daemon: Daemon) -> Callable[[Metrics], None]:
    """Copy live state into the gauges just before each scrape."""

    def collect(metrics: Metrics) -> None:
        now = daemon.now()
        cooldown = daemon.config.current.rebalance.cooldown_minutes
        for name, actor in daemon.supervisor.actors.items():
            state = actor.state
            if state.last_max_drift is not None:
                metrics.drift(name, state.last_max_drift)
            remaining = cooldown_remaining(state.last_success_at, now, cooldown)
            metrics.cooldown_remaining(name, remaining.total_seconds())
        metrics.executor(
            pending=daemon.executor.status.pending, next_nonce=daemon.executor.status.next_nonce
        )

    return collect


@attrs.define(eq=False)
class DaemonControls:
    """:class:`daemon.health.Controls` for the running daemon."""

    daemon: Daemon

    def health(self) -> dict[str, Any]:
        daemon = self.daemon
        config = daemon.config.current
        snapshot = daemon.snapshots.value
        return build_health_document(
            now=daemon.now(),
            version=package_version(),
            started_at=daemon.started_at,
            config_generation=daemon.config.generation,
            last_reload_error=daemon.config.last_reload_error,
            price_source=config.prices.source,
            last_tick_at=daemon.last_tick_at,
            max_price_age=config.prices.max_age,
            executor=daemon.executor.status,
            database_ok=daemon.probes.database_ok,
            chain_ok=daemon.probes.chain_ok,
            head_block=daemon.probes.head_block,
            head_block_at=daemon.probes.head_block_at,
            actors=daemon.supervisor.actors,
            cooldown_minutes=config.rebalance.cooldown_minutes,
            invalid=daemon.invalid,
            expiring=daemon.expiring(),
            price_problems=snapshot.problems if snapshot is not None else (),
            database_error=daemon.probes.database_error,
            chain_error=daemon.probes.chain_error,
            chain_id=config.chain.chain_id,
            max_head_age=config.prices.max_head_age or None,
            trio_now=trio.current_time(),
            pid=os.getpid(),
        )

    def metrics(self) -> str:
        return self.daemon.metrics.render()

    async def rebalance(self, portfolio: str) -> dict[str, Any]:
        """Evaluate now (the seed's manual trigger); refused with the seed's message while
        the cooldown runs."""
        actor = self.daemon.supervisor.actors.get(portfolio)
        if actor is None:
            return _reply(False, "not_found", f"no running portfolio named {portfolio!r}")
        if actor.status != "running":
            return _reply(False, "not_running", f"portfolio {portfolio} is {actor.status}")
        state = actor.state
        if state.paused:
            return _reply(False, "not_running", f"portfolio {portfolio} is paused")
        cooldown = self.daemon.config.current.rebalance.cooldown_minutes
        remaining = cooldown_remaining(state.last_success_at, self.daemon.now(), cooldown)
        if remaining.total_seconds() > 0:
            reply = _reply(False, "cooldown", cooldown_message(remaining))
            reply["cooldown_minutes"] = max(1, math.ceil(remaining.total_seconds() / 60))
            return reply
        if state.in_flight:
            return _reply(False, "busy", f"portfolio {portfolio} is rebalancing right now")
        evaluated = state.evaluated
        state.trigger.set()
        with trio.move_on_after(MANUAL_EVALUATION_TIMEOUT):
            await evaluated.wait()
            return _reply(True, "evaluated", state.last_decision or "evaluated")
        return _reply(True, "triggered", "evaluation started; see the log for its outcome")

    async def pause(self, portfolio: str) -> dict[str, Any]:
        """Durable: written to the portfolio row first (it survives restarts), then applied."""
        actor = self.daemon.supervisor.actors.get(portfolio)
        if actor is None:
            return _reply(False, "not_found", f"no running portfolio named {portfolio!r}")
        try:
            await self.daemon.db.set_portfolio_paused(portfolio, True)
        except DatabaseError as exc:
            return _reply(False, "unavailable", f"pause not recorded: {exc}")
        actor.state.paused = True
        get_logger(actor="control").info("portfolio_paused", portfolio=portfolio)
        return _reply(True, "paused", f"portfolio {portfolio} paused")

    async def resume(self, portfolio: str) -> dict[str, Any]:
        actor = self.daemon.supervisor.actors.get(portfolio)
        if actor is None:
            return _reply(False, "not_found", f"no running portfolio named {portfolio!r}")
        try:
            await self.daemon.db.set_portfolio_paused(portfolio, False)
        except DatabaseError as exc:
            return _reply(False, "unavailable", f"resume not recorded: {exc}")
        actor.state.paused = False
        was_parked = actor.status == "parked"
        self.daemon.supervisor.resume(portfolio)
        get_logger(actor="control").info(
            "portfolio_resumed", portfolio=portfolio, unparked=was_parked
        )
        return _reply(True, "resumed", f"portfolio {portfolio} resumed")


def _reply(ok: bool, status: str, message: str) -> dict[str, Any]:
    return {"ok": ok, "status": status, "message": message}

"""The running daemon as operators command it: the control socket's :class:`DaemonControls`.

:class:`DaemonControls` implements :class:`daemon.control_protocol.Controls` (the socket's
commands) on a :class:`ControlledDaemon`: exactly what the commands read of the daemon, and the
portfolio supervisor, which carries the commands out (pause, resume, rebalance now): the
supervisor owns the portfolio actors' state, so the control server never writes it. Health and
metrics are read from state kept current in the background (:mod:`daemon.probes`), so a request
never waits on I/O.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final, Protocol

import attrs
import trio

from daemon import package_version
from daemon.cooldown import cooldown_message, cooldown_remaining
from daemon.db import DatabaseError
from daemon.health_document import HealthInputs, build_health_document
from daemon.logs import get_logger
from daemon.probes import Expiries, ObservedDaemon, RunningActors

if TYPE_CHECKING:
    from daemon.config import Config
    from daemon.latest import Latest
    from daemon.messages import PriceSnapshot

MANUAL_EVALUATION_TIMEOUT: Final = 120.0


class ConfigState(Protocol):
    """The configuration in force, and how its last reload went."""

    @property
    def current(self) -> Config: ...

    @property
    def generation(self) -> int: ...

    @property
    def last_reload_error(self) -> str | None: ...


class PortfolioCommands(RunningActors, Protocol):
    """The portfolio actors (read), and the commands their supervisor carries out."""

    def evaluate_now(self, name: str) -> trio.Event: ...

    def pause_portfolio(self, name: str) -> None: ...

    def resume_portfolio(self, name: str) -> bool: ...


class InvalidPortfolios(Protocol):
    @property
    def invalid(self) -> Mapping[str, str]: ...


class MetricsText(Protocol):
    def render(self) -> str: ...


class PauseStore(Protocol):
    """Where a pause is recorded durably (the portfolio's row)."""

    async def set_portfolio_paused(self, key: int | str, paused: bool) -> object: ...


class ControlledDaemon(ObservedDaemon, Protocol):
    """What the control server reads of the running daemon, and where its commands go."""

    @property
    def config(self) -> ConfigState: ...

    @property
    def supervisor(self) -> PortfolioCommands: ...

    @property
    def started_at(self) -> datetime: ...

    @property
    def snapshots(self) -> Latest[PriceSnapshot]: ...

    @property
    def portfolios(self) -> InvalidPortfolios: ...

    @property
    def modes(self) -> Expiries: ...

    @property
    def metrics(self) -> MetricsText: ...

    @property
    def db(self) -> PauseStore: ...


@attrs.define(eq=False)
class DaemonControls:
    """:class:`daemon.control_protocol.Controls` for the running daemon."""

    daemon: ControlledDaemon

    def health(self) -> dict[str, Any]:
        daemon = self.daemon
        config = daemon.config.current
        snapshot = daemon.snapshots.value
        probes = daemon.probes
        return build_health_document(
            HealthInputs(
                now=daemon.now(),
                version=package_version(),
                started_at=daemon.started_at,
                config_generation=daemon.config.generation,
                last_reload_error=daemon.config.last_reload_error,
                price_source=config.prices.source,
                last_tick_at=daemon.feed.last_tick_at,
                max_price_age=config.prices.max_age,
                executor=daemon.executor.status,
                database_ok=probes.database_ok,
                chain_ok=probes.chain_ok,
                head_block=probes.head_block,
                head_block_at=probes.head_block_at,
                actors=daemon.supervisor.actors,
                cooldown_minutes=config.rebalance.cooldown_minutes,
                invalid=daemon.portfolios.invalid,
                expiring=daemon.modes.expiring(daemon.supervisor.specs),
                price_problems=snapshot.problems if snapshot is not None else (),
                database_error=probes.database_error,
                chain_error=probes.chain_error,
                chain_id=config.chain.chain_id,
                max_head_age=config.prices.max_head_age or None,
                trio_now=trio.current_time(),
                pid=os.getpid(),
            )
        )

    def metrics(self) -> str:
        return self.daemon.metrics.render()

    async def rebalance(self, portfolio: str) -> dict[str, Any]:
        """Evaluate now (the seed's manual trigger); refused with the seed's message while
        the cooldown runs."""
        supervisor = self.daemon.supervisor
        actor = supervisor.actors.get(portfolio)
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
        evaluated = supervisor.evaluate_now(portfolio)
        with trio.move_on_after(MANUAL_EVALUATION_TIMEOUT):
            await evaluated.wait()
            return _reply(True, "evaluated", state.last_decision or "evaluated")
        return _reply(True, "triggered", "evaluation started; see the log for its outcome")

    async def pause(self, portfolio: str) -> dict[str, Any]:
        """Durable: written to the portfolio row first (it survives restarts), then applied."""
        if portfolio not in self.daemon.supervisor.actors:
            return _reply(False, "not_found", f"no running portfolio named {portfolio!r}")
        try:
            await self.daemon.db.set_portfolio_paused(portfolio, True)
        except DatabaseError as exc:
            return _reply(False, "unavailable", f"pause not recorded: {exc}")
        self.daemon.supervisor.pause_portfolio(portfolio)
        get_logger(actor="control").info("portfolio_paused", portfolio=portfolio)
        return _reply(True, "paused", f"portfolio {portfolio} paused")

    async def resume(self, portfolio: str) -> dict[str, Any]:
        if portfolio not in self.daemon.supervisor.actors:
            return _reply(False, "not_found", f"no running portfolio named {portfolio!r}")
        try:
            await self.daemon.db.set_portfolio_paused(portfolio, False)
        except DatabaseError as exc:
            return _reply(False, "unavailable", f"resume not recorded: {exc}")
        was_parked = self.daemon.supervisor.resume_portfolio(portfolio)
        get_logger(actor="control").info(
            "portfolio_resumed", portfolio=portfolio, unparked=was_parked
        )
        return _reply(True, "resumed", f"portfolio {portfolio} resumed")


def _reply(ok: bool, status: str, message: str) -> dict[str, Any]:
    return {"ok": ok, "status": status, "message": message}

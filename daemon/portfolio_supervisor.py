"""The portfolio actors' supervisor: the one owner of their state.

Every change to a running portfolio's state from outside its actor goes through here: the
reconciler starts, restarts and stops actors and applies a pause recorded in the database;
operators' control commands (pause, resume, rebalance now) arrive as calls on this object; and
the executor reports every finished attempt here, so the portfolio's cooldown and failure
backoff start even when the actor that asked was restarted meanwhile (DESIGN.md §4.9). An actor
parked after repeated crashes raises ``ACTOR_PARKED``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal

import trio

from daemon import db as dbm
from daemon.alerts import Alerter
from daemon.live_config import ConfigSource
from daemon.metrics import Metrics, slippage_ratio
from daemon.portfolio import PortfolioSpec, PortfolioState, record_outcome
from daemon.supervise import ActorFn, RestartPolicy, Supervisor


class PortfolioSupervisor(Supervisor[PortfolioState]):
    """Supervises one actor per running portfolio (keyed by name) and owns their state."""

    def __init__(
        self,
        policy: RestartPolicy,
        *,
        alerts: Alerter,
        metrics: Metrics,
        config: ConfigSource,
        now: Callable[[], datetime],
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(policy, rng=rng)
        self._alerts = alerts
        self._metrics = metrics
        self._config = config
        self._now = now
        self.specs: dict[str, PortfolioSpec] = {}
        """The running portfolios by name, as their actors were started."""

    def on_parked(self, key: str, error: str) -> None:
        self._alerts.fire("ACTOR_PARKED", {"portfolio": key, "error": error})

    # --- the reconciler ---------------------------------------------------------------------

    def start_portfolio(
        self, spec: PortfolioSpec, actor: ActorFn[PortfolioState], state: PortfolioState
    ) -> None:
        """Start the portfolio's actor with ``state`` (seeded from the database)."""
        self.start(spec.name, actor, state)
        self.specs[spec.name] = spec

    def change_portfolio(self, spec: PortfolioSpec, actor: ActorFn[PortfolioState]) -> None:
        """Restart the portfolio's actor for a changed ``spec``, keeping its state."""
        self.restart(spec.name, actor)
        self.specs[spec.name] = spec

    def stop_portfolio(self, name: str) -> None:
        """Stop the portfolio's actor (deactivated, invalid, or another daemon's)."""
        self.stop(name)
        del self.specs[name]

    def set_paused(self, name: str, paused: bool) -> bool:
        """Apply the pause recorded in the portfolio's row; whether it changed anything."""
        entry = self._actors.get(name)
        if entry is None or entry.state.paused == paused:
            return False
        entry.state.paused = paused
        return True

    # --- control commands -------------------------------------------------------------------

    def evaluate_now(self, name: str) -> trio.Event:
        """Make the portfolio's actor evaluate now; the event is set once that evaluation (and
        any rebalance it starts) is over. Raises ``KeyError`` if no such actor runs."""
        entry = self._actors[name]
        evaluated = entry.state.evaluated
        entry.state.request_evaluation()
        return evaluated

    def pause_portfolio(self, name: str) -> None:
        """Stop trading the portfolio until resumed (the caller recorded it durably)."""
        entry = self._actors.get(name)
        if entry is not None:
            entry.state.paused = True

    def resume_portfolio(self, name: str) -> bool:
        """Trade the portfolio again, unparking its actor; whether it was parked."""
        entry = self._actors.get(name)
        if entry is None:
            return False
        entry.state.paused = False
        was_parked = entry.status == "parked"
        self.resume(name)
        return was_parked

    # --- the executor -----------------------------------------------------------------------

    def rebalance_finished(
        self, portfolio_id: int, portfolio: str, result: dbm.FinishedAttempt
    ) -> None:
        """Every finished attempt, live or recovered: the portfolio's clocks, then metrics.

        The clocks are set here rather than by the actor that asked, so an attempt whose actor
        was restarted meanwhile still starts the cooldown (DESIGN.md §4.9)."""
        name = next((n for n, s in self.specs.items() if s.id == portfolio_id), portfolio)
        entry = self._actors.get(name)
        execution = self._config.current.execution
        if entry is not None:
            record_outcome(
                entry.state,
                result.status,
                self._now(),
                backoff=execution.failure_backoff,
                backoff_max=execution.failure_backoff_max,
            )
        expected = actual = 0
        for leg in result.expected_outputs or ():
            if leg.get("actual_out") is not None:
                expected += int(leg["quoted_out"])
                actual += int(leg["actual_out"])
        traded = sum((Decimal(leg["usd"]) for leg in result.token_amounts or ()), Decimal(0))
        self._metrics.rebalance_finished(
            name,
            result.status,
            execution_ms=result.execution_time_ms,
            gas_usd=result.gas_cost_usd,
            traded_usd=traded if result.status == "SUCCESS" and traded else None,
            slippage=slippage_ratio(expected, actual) if expected else None,
        )

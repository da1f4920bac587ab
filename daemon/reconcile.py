"""Keeping the running portfolio actors in step with the database.

The set of actors follows the active portfolios of this chain delegated to this daemon's signer
(several daemons may share one database): a reconcile runs at start, on every change announced
through LISTEN/NOTIFY (portfolios, allocations, tokens; after an outage the reconnected listener
says ``resync``), and at least every :data:`RECHECK_SECONDS` — revocations (on chain) and
expiries (by the clock) announce nothing. A portfolio that cannot run (a malformed or too weak
delegation, revoked, a second portfolio on one account, a token's decimals wrong on chain) is
reported as invalid with its reason and runs no actor until fixed.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from datetime import datetime
from typing import Final, NoReturn

import attrs
import trio

from daemon import db as dbm
from daemon.chain import ChainClient
from daemon.config import ExecutionConfig
from daemon.delegation import DelegationFormatError
from daemon.live_config import ConfigSource
from daemon.logs import get_logger
from daemon.modes import ExecutionModeBook, OtherSigner, revoked_portfolios
from daemon.portfolio import (
    PortfolioDeps,
    PortfolioSpec,
    PortfolioState,
    failure_backoff,
    run_portfolio_actor,
)
from daemon.portfolio_supervisor import PortfolioSupervisor
from daemon.registration import portfolios_to_hold
from daemon.retry import retry_database
from daemon.tokens import TokenBook, message_token
from daemon.txbuild import ExecutionMode

RECHECK_SECONDS: Final = 300.0
"""Seconds between reconciles without a change (to notice revoked delegations)."""


@attrs.frozen
class _Seeds:
    """What the database remembers of each portfolio's clocks (they survive restarts), and the
    backoff settings in force when they were read."""

    last_success: Mapping[int, datetime]
    failures: Mapping[int, tuple[int, datetime]]
    execution: ExecutionConfig


@attrs.define(eq=False)
class PortfolioReconciler:
    """Starts, changes and stops portfolio actors (through the supervisor) to match the
    database; remembers the portfolios it does not run, and why."""

    db: dbm.Database
    chain: ChainClient
    signer: str
    """The address this daemon signs with."""
    config: ConfigSource
    tokens: TokenBook
    modes: ExecutionModeBook
    supervisor: PortfolioSupervisor
    deps: PortfolioDeps
    """What every portfolio actor is started with."""
    invalid: dict[str, str] = attrs.Factory(dict)
    """Portfolios that cannot run (bad delegation file…), with the reason."""
    not_ours: dict[str, str] = attrs.Factory(dict)
    """Active portfolios delegated to another daemon's signer (by name → that delegate)."""

    async def watch(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> NoReturn:
        """Reconcile at start and whenever a portfolio, its allocations or tokens change (after
        an outage the reconnected listener says ``resync``, which reconciles too)."""
        async with self.db.listen(dbm.PORTFOLIO_CHANNEL) as notifications:
            await self.reconcile()
            task_status.started()
            while True:
                # Changes arrive as notifications; revocations (on chain) and expiries (by the
                # clock) do not, so reconcile at least every RECHECK_SECONDS as well.
                with trio.move_on_after(RECHECK_SECONDS):
                    try:
                        await notifications.receive()
                    except trio.EndOfChannel:
                        raise RuntimeError("the portfolio notification stream ended") from None
                await retry_database(self.reconcile, "portfolio_reconcile")

    async def reconcile(self) -> None:
        """Make the running actors match the active portfolios in the database (of this chain,
        and delegated to this daemon's signer: several daemons may share one database)."""
        log = get_logger(actor="app")
        await self.tokens.refresh()
        config = self.config.current
        active = {p.name: p for p in await self.db.active_portfolios(config.chain.chain_id)}
        for name in list(self.supervisor.specs):
            if name not in active:
                self.supervisor.stop_portfolio(name)
                log.info("portfolio_stopped", portfolio=name)
        last_success = await self.db.last_successful_rebalances()
        failures = await self.db.failure_streaks()
        seeds = _Seeds(last_success, failures, self.config.current.execution)
        portfolios = list(active.values())
        revoked = await revoked_portfolios(self.chain, self.config.current, portfolios)
        # Issue 12: one actor per account, registered decimals = the chain's, covering delegations.
        held = await portfolios_to_hold(
            self.chain,
            portfolios,
            list(self.tokens.registered.values()),
            enforcers=self.config.current.delegation,
            wallet_signer=self.signer if seeds.execution.mode == "wallet" else None,
            onchain_decimals=self.tokens.onchain_decimals,
        )
        for portfolio in portfolios:
            mode = self._mode(portfolio, revoked, held)
            if mode is not None:
                self._run(portfolio, mode, seeds)

    def _mode(
        self, portfolio: dbm.Portfolio, revoked: Mapping[str, str], held: Mapping[str, str]
    ) -> ExecutionMode | None:
        """The portfolio's execution mode, or None when it is not ours to run (another daemon's,
        or invalid: then its actor, if any, is stopped)."""
        log = get_logger(actor="app")
        name = portfolio.name
        try:
            if name in revoked:
                raise ValueError(revoked[name])
            mode = self.modes.build(portfolio)
            if name in held:
                raise ValueError(held[name])
        except OtherSigner as exc:
            if name in self.supervisor.specs:
                self.supervisor.stop_portfolio(name)
            if self.not_ours.get(name) != exc.delegate:
                log.info("portfolio_of_another_signer", portfolio=name, delegate=exc.delegate)
            self.not_ours[name] = exc.delegate
            return None
        except (DelegationFormatError, ValueError) as exc:
            if self.invalid.get(name) != str(exc):
                log.error("portfolio_invalid", portfolio=name, error=str(exc))
            self.invalid[name] = str(exc)
            if name in self.supervisor.specs:
                self.supervisor.stop_portfolio(name)
            return None
        return mode

    def _run(self, portfolio: dbm.Portfolio, mode: ExecutionMode, seeds: _Seeds) -> None:
        """Start the portfolio's actor, or bring the running one up to date."""
        log = get_logger(actor="app")
        name = portfolio.name
        self.invalid.pop(name, None)
        spec = self._spec(portfolio)
        self.modes.use(portfolio.id, mode)
        actor = functools.partial(_portfolio_actor, spec, self.deps)
        self.not_ours.pop(name, None)
        running = self.supervisor.specs.get(name)
        if running is None:
            self.supervisor.start_portfolio(spec, actor, _seeded(portfolio, seeds))
            log.info("portfolio_started", portfolio=name, account=spec.account)
            return
        if self.supervisor.set_paused(name, portfolio.is_paused):
            log.info(
                "portfolio_paused" if portfolio.is_paused else "portfolio_resumed", portfolio=name
            )
        if running != spec:
            self.supervisor.change_portfolio(spec, actor)
            log.info("portfolio_changed", portfolio=name)

    def _spec(self, portfolio: dbm.Portfolio) -> PortfolioSpec:
        wallet = self.config.current.execution.mode == "wallet"
        return PortfolioSpec(
            id=portfolio.id,
            name=portfolio.name,
            account=self.signer if wallet else portfolio.smart_account,
            targets={a.token.symbol: a.weight for a in portfolio.allocations},
            tokens=tuple(message_token(a.token) for a in portfolio.allocations),
        )


def _seeded(portfolio: dbm.Portfolio, seeds: _Seeds) -> PortfolioState:
    """A new actor's state: the cooldown clock and the failure backoff seeded from
    rebalance_log and the pause from the portfolio row (all survive process restarts)."""
    state = PortfolioState(
        last_success_at=seeds.last_success.get(portfolio.id), paused=portfolio.is_paused
    )
    if portfolio.id in seeds.failures:
        execution = seeds.execution
        count, last_failed = seeds.failures[portfolio.id]
        state.failures = count
        state.retry_at = last_failed + failure_backoff(
            count, execution.failure_backoff, execution.failure_backoff_max
        )
    return state


async def _portfolio_actor(spec: PortfolioSpec, deps: PortfolioDeps, state: PortfolioState) -> None:
    await run_portfolio_actor(spec, state, deps)

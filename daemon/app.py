"""The process: build the wiring, start every actor in one root nursery, keep portfolios in sync.

Start order (each step ``started()`` only when really ready): database (migrated) → chain client
(chain id checked) → executor (recovered unfinished intents, knows its next nonce) → price feed
(first tick attempted) → supervisor → portfolio watcher (one actor per active portfolio; the set
follows the database through LISTEN/NOTIFY). A crash of the executor, price feed or database
layer propagates out of the root nursery and ends the process (systemd restarts it); a crash of a
portfolio actor is contained by the supervisor.
"""

from __future__ import annotations

import contextlib
import functools
import signal
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, NoReturn

import attrs
import httpx
import trio

from daemon import db as dbm
from daemon import package_version
from daemon.address import to_address
from daemon.alerts import AlertSettings, AlertSink
from daemon.authority import (
    least_authority_problems,
)
from daemon.backoff import Backoff
from daemon.balances import BalanceBatcher
from daemon.chain import ChainClient, ChainError, TxSigner, encode_call
from daemon.coingecko import CoinGeckoSource
from daemon.config import (
    Config,
    ConfigError,
    DelegationConfig,
    apply_runtime_params,
    changed_keys,
    keep_restart_keys,
)
from daemon.control import (
    DaemonControls,
    Probes,
    collect_metrics,
    is_alive,
    run_probes,
    status_line,
)
from daemon.delegation import (
    Delegation,
    DelegationFormatError,
    decode_nonce,
    decode_timestamp,
    delegation_from_json,
)
from daemon.drift import Decision, EngineParams, Holding
from daemon.executor import Executor, ExecutorSettings
from daemon.faults import Faults
from daemon.health import HealthSocketInUse, serve_health
from daemon.latest import Latest
from daemon.logs import get_logger
from daemon.messages import PricePoint, PriceSnapshot, RebalanceRequest, Token
from daemon.metrics import Metrics, serve_metrics, slippage_ratio
from daemon.portfolio import (
    PortfolioDeps,
    PortfolioSpec,
    PortfolioState,
    RuntimeParams,
    failure_backoff,
    record_outcome,
    run_portfolio_actor,
)
from daemon.prices import FeedSettings, OracleSource, PriceSource, RouterSource, run_price_feed
from daemon.registration import portfolios_to_hold
from daemon.supervise import RestartPolicy, Supervisor
from daemon.systemd import Notifier, run_watchdog, watchdog_interval
from daemon.transactions import LifecycleSettings
from daemon.txbuild import DelegationMode, ExecutionMode, WalletMode
from daemon.uniswap import UniswapV2

RECHECK_SECONDS = 300.0
"""Seconds between reconciles without a change (to notice revoked delegations)."""
EXPIRY_WARNING = 7 * 86400.0
"""Seconds before its delegations expire that a portfolio shows in health and alerts."""
LEASE_WAIT_EXTEND = 30.0
"""Seconds of start-up time asked of systemd at each lease wait (a standby is not stuck)."""
DB_RETRY_INITIAL = 0.5
DB_RETRY_MAX = 30.0
"""Seconds: backoff of a watcher's database work during an outage (doubling, capped)."""


class StartupError(Exception):
    """The daemon cannot start with this configuration or state; the message says why."""


def utc_now() -> datetime:
    return datetime.now(UTC)


@attrs.define(eq=False)
class ConfigHolder:
    """The effective configuration and where it came from.

    ``base`` is the file and environment as last loaded (keys that need a restart pinned to
    what the process started with); ``runtime_params`` is the last valid
    ``system_config.REBALANCING_PARAMS``; ``current`` = base overlaid with them, read afresh by
    every actor on every use, so a reload needs no restart. A bad reload changes nothing but
    ``last_reload_error``.
    """

    base: Config
    runtime_params: Any = None
    generation: int = 1
    last_reload_error: str | None = None
    restart_pending: list[str] = attrs.Factory(list)
    """Keys changed on disk that only a restart applies."""
    current: Config = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.current = self.base

    def _effective(self, base: Config, params: Any) -> Config:
        return base if params is None else apply_runtime_params(base, params)

    def reload_base(self, loaded: Config) -> list[str]:
        """Apply a freshly loaded file + environment; returns the live keys that changed.

        Raises :class:`ConfigError` (and changes nothing) if the result is invalid.
        """
        live, restart = changed_keys(self.base, loaded)
        base = keep_restart_keys(self.base, loaded)
        self.current = self._effective(base, self.runtime_params)
        self.base = base
        self.restart_pending = sorted(set(self.restart_pending) | set(restart))
        self.generation += 1
        self.last_reload_error = None
        return live

    def set_runtime_params(self, params: Any) -> None:
        """Apply ``REBALANCING_PARAMS`` from the database (None: none stored)."""
        self.current = self._effective(self.base, params)
        self.runtime_params = params
        self.generation += 1
        self.last_reload_error = None


def runtime_params(config: Config) -> RuntimeParams:
    """What a portfolio evaluation reads from the configuration."""
    rebalance = config.rebalance
    return RuntimeParams(
        engine=EngineParams(
            drift_threshold=rebalance.drift_threshold,
            min_trade_usd=rebalance.min_trade_usd,
            max_trade_usd=rebalance.max_trade_usd,
            rebalance_to="band" if rebalance.rebalance_to == "band" else "target",
            band_fraction=rebalance.band_fraction,
        ),
        cooldown_minutes=rebalance.cooldown_minutes,
        max_price_age=config.prices.max_age,
        high_drift_alert=config.alerts.high_drift,
    )


def executor_settings(config: Config) -> ExecutorSettings:
    execution = config.execution
    return ExecutorSettings(
        slippage=config.rebalance.slippage_tolerance,
        price_impact_cap=config.rebalance.price_impact_threshold,
        max_quote_deviation=config.rebalance.max_quote_deviation,
        dry_run=execution.dry_run,
        deadline_seconds=execution.deadline_seconds,
        native_price_symbol=execution.gas_price_symbol,
        gas_alert_factor=config.alerts.gas_cost_factor,
        expected_gas_cost_usd=config.alerts.expected_gas_cost_usd,
        max_price_age=config.prices.max_age,
        stuck_after=execution.stuck_after,
        lifecycle=LifecycleSettings(
            max_fee_per_gas=int(execution.max_fee_gwei * 10**9),
            fee_bump=execution.fee_bump,
            receipt_timeout=execution.receipt_timeout,
            poll_interval=execution.poll_interval,
        ),
    )


def alert_settings(config: Config) -> AlertSettings:
    return AlertSettings(
        webhook_url=config.alerts.webhook_url, repeat_window=config.alerts.repeat_window
    )


def message_token(token: dbm.Token) -> Token:
    return Token(
        symbol=token.symbol,
        address=token.address,
        decimals=token.decimals,
        coingecko_id=token.coingecko_id,
        is_quote=token.is_quote,
    )


@attrs.define(eq=False)
class Daemon:
    """The wiring: every shared object the actors are built from. Created by :func:`run_daemon`."""

    config: ConfigHolder
    db: dbm.Database
    chain: ChainClient
    uniswap: UniswapV2
    signer: TxSigner
    snapshots: Latest[PriceSnapshot]
    supervisor: Supervisor[PortfolioState]
    executor: Executor
    requests: trio.MemorySendChannel[RebalanceRequest]
    faults: Faults
    tokens: dict[str, dbm.Token] = attrs.Factory(dict)
    specs: dict[str, PortfolioSpec] = attrs.Factory(dict)
    modes: dict[int, ExecutionMode] = attrs.Factory(dict)
    alerts: AlertSink | None = None
    metrics: Metrics = attrs.Factory(Metrics)
    notifier: Notifier = attrs.Factory(lambda: Notifier(None))
    now: Callable[[], datetime] = utc_now
    probes: Probes = attrs.Factory(Probes)
    feed_loop_at: float | None = None
    """trio.current_time() of the price feed's last attempted tick (liveness)."""
    last_tick_at: datetime | None = None
    """When the last snapshot was published."""
    invalid: dict[str, str] = attrs.Factory(dict)
    """Portfolios that cannot run (bad delegation file…), with the reason."""
    expiries: dict[int, int] = attrs.Factory(dict)
    """Portfolio id → when its delegations expire (unix seconds; the earliest of them)."""
    not_ours: dict[str, str] = attrs.Factory(dict)
    """Active portfolios delegated to another daemon's signer (by name → that delegate)."""
    token_decimals: dict[str, int] = attrs.Factory(dict)
    """Token address → its ``decimals()`` on chain, read once (registration.portfolios_to_hold)."""
    started_at: datetime = attrs.Factory(utc_now)
    accepting: bool = True
    """False once stopping: portfolio actors start no new rebalance."""
    db_failing: set[str] = attrs.Factory(set)
    """Database-backed duties failing right now (each logged once per outage; health reports
    the outage through the database probe)."""

    def alert(self, kind: str, fields: Mapping[str, object]) -> None:
        if self.alerts is not None and self.alerts.fire(kind, fields):
            self.metrics.alert(kind)

    def price_ticked(self, snapshot: PriceSnapshot | None) -> None:
        self.feed_loop_at = trio.current_time()
        source = self.config.current.prices.source
        if snapshot is None:
            self.metrics.price_tick_failed(source)
        else:
            self.last_tick_at = snapshot.taken_at
            self.metrics.price_tick(source, snapshot.taken_at.timestamp())
            heads = [p.block_timestamp for p in snapshot.prices.values() if p.block_timestamp]
            if heads:  # router prices: the block they were read at
                self.metrics.price_head(max(heads).timestamp())

    def rebalance_finished(
        self, portfolio_id: int, portfolio: str, result: dbm.RebalanceOutcome
    ) -> None:
        """Every finished attempt, live or recovered: the portfolio's clocks, then metrics.

        The clocks are set here rather than by the actor that asked, so an attempt whose actor
        was restarted meanwhile still starts the cooldown (DESIGN.md §4.9)."""
        name = next((n for n, s in self.specs.items() if s.id == portfolio_id), portfolio)
        actor = self.supervisor.actors.get(name)
        execution = self.config.current.execution
        if actor is not None:
            record_outcome(
                actor.state,
                result.status,
                self.now(),
                backoff=execution.failure_backoff,
                backoff_max=execution.failure_backoff_max,
            )
        expected = actual = 0
        for leg in result.expected_outputs or ():
            if leg.get("actual_out") is not None:
                expected += int(leg["quoted_out"])
                actual += int(leg["actual_out"])
        traded = sum((Decimal(leg["usd"]) for leg in result.token_amounts or ()), Decimal(0))
        self.metrics.rebalance_finished(
            name,
            result.status,
            execution_ms=result.execution_time_ms,
            gas_usd=result.gas_cost_usd,
            traded_usd=traded if result.status == "SUCCESS" and traded else None,
            slippage=slippage_ratio(expected, actual) if expected else None,
        )

    async def drain(self, grace: float) -> None:
        """Stop taking new rebalances and give an in-flight one up to ``grace`` seconds to
        reach its receipt (its intent is durable either way)."""
        self.accepting = False
        with trio.move_on_after(grace):
            await self.executor.status.idle.wait()

    def reload(self, load: Callable[[], Config]) -> bool:
        """SIGHUP: re-read file and environment; on any error keep the running config."""
        log = get_logger(actor="app")
        self.notifier.reloading()
        try:
            applied = self.config.reload_base(load())
        except ConfigError as exc:
            self.config.last_reload_error = "; ".join(exc.problems)
            log.error("config_reload_failed", problems=exc.problems)
            self.metrics.config_reloaded(ok=False, generation=self.config.generation)
            return False
        finally:
            self.notifier.ready()
        self.metrics.config_reloaded(ok=True, generation=self.config.generation)
        log.info(
            "config_reloaded",
            generation=self.config.generation,
            applied=applied,
            needs_restart=self.config.restart_pending,
        )
        return True

    async def load_runtime_params(self) -> None:
        """Apply ``system_config.REBALANCING_PARAMS`` (the database has the last word)."""
        log = get_logger(actor="app")
        params = await self.db.get_system_config(dbm.REBALANCING_PARAMS)
        if params == self.config.runtime_params:
            return
        try:
            self.config.set_runtime_params(params)
        except ConfigError as exc:
            self.config.last_reload_error = "; ".join(exc.problems)
            log.error("runtime_params_rejected", problems=exc.problems)
            return
        log.info("runtime_params_applied", params=params, generation=self.config.generation)

    def message_tokens(self) -> dict[str, Token]:
        return {symbol: message_token(token) for symbol, token in self.tokens.items()}

    async def refresh_tokens(self) -> None:
        chain_id = self.config.current.chain.chain_id
        self.tokens = {token.symbol: token for token in await self.db.tokens(chain_id)}

    def _db_duty_failed(self, event: str, exc: dbm.DatabaseError) -> None:
        """Log a database-backed duty's failure once per outage, not once per tick."""
        if event not in self.db_failing:
            self.db_failing.add(event)
            get_logger(actor="app").warning(event, error=str(exc))

    def _db_duty_ok(self, event: str) -> None:
        if event in self.db_failing:
            self.db_failing.discard(event)
            get_logger(actor="app").info("database_duty_resumed", after=event)

    async def load_tokens(self) -> list[Token]:
        """The registered tokens; while the database is unreachable, the last ones read."""
        try:
            await self.refresh_tokens()
        except dbm.DatabaseError as exc:
            self._db_duty_failed("tokens_not_refreshed", exc)
        else:
            self._db_duty_ok("tokens_not_refreshed")
        return list(self.message_tokens().values())

    async def store_prices(self, points: list[PricePoint]) -> None:
        """Store the tick's prices; while the database is unreachable they are not stored (the
        feed publishes its snapshots anyway: trading needs the database for other reasons)."""
        observations = [
            dbm.PriceObservation(
                token_id=self.tokens[p.symbol].id,
                source=p.source,
                usd=p.usd,
                observed_at=p.observed_at,
                block_number=p.block_number,
            )
            for p in points
            if p.symbol in self.tokens
        ]
        if not observations:
            return
        try:
            await self.db.insert_prices(observations)
        except dbm.DatabaseError as exc:
            self._db_duty_failed("prices_not_stored", exc)
        else:
            self._db_duty_ok("prices_not_stored")

    async def record_valuation(
        self, spec: PortfolioSpec, decision: Decision, holdings: list[Holding]
    ) -> None:
        """Store a valuation snapshot; a database hiccup only costs this snapshot."""
        balances = {h.symbol: h.balance for h in holdings}
        rows = [
            dbm.HoldingValue(
                token_id=self.tokens[d.symbol].id,
                amount=balances[d.symbol],
                usd=d.value_usd,
                weight=d.current_weight,
                drift=d.drift,
            )
            for d in decision.drifts
            if d.symbol in self.tokens
        ]
        if decision.total_usd is None or not rows:
            return
        snapshot = dbm.PortfolioSnapshot(
            portfolio_id=spec.id,
            total_usd=decision.total_usd,
            holdings=tuple(rows),
            max_drift=decision.max_drift,
            price_source="oracle" if self.config.current.prices.source == "oracle" else "router",
        )
        try:
            await self.db.insert_snapshots([snapshot])
        except dbm.DatabaseError as exc:
            get_logger(actor="app").warning("valuation_not_stored", error=str(exc))

    def mode_for(self, request: RebalanceRequest) -> ExecutionMode:
        return self.modes[request.portfolio_id]

    def build_mode(self, portfolio: dbm.Portfolio) -> ExecutionMode:
        config = self.config.current
        if config.execution.mode == "wallet":
            return WalletMode(router=config.chain.router, signer=self.signer.address)
        delegations = [
            delegation_from_json(item, f"delegation[{i}]")
            for i, item in enumerate(portfolio.delegation)
        ]
        mode = DelegationMode.from_signed(
            delegations,
            router=config.chain.router,
            enforcers=config.delegation,
            guard=config.guard.enforcer,
        )
        delegate = to_address(mode.delegations.swap.delegate)
        if delegate != self.signer.address:
            raise OtherSigner(delegate)
        # The same least-authority rules as `portfolio add` (delegator = the portfolio's account
        # among them), re-checked whenever the portfolio or the configuration is (re)loaded: a
        # row edited behind the CLI's back, or delegations signed before the oracle guard
        # existed, are not traded.
        guarded = [a.token for a in portfolio.allocations]
        guarded += [t for t in self.tokens.values() if t.is_quote and t not in guarded]
        problems = [
            f"{kind}: {problem}"
            for kind, delegation in (
                ("approve", mode.delegations.approve),
                ("swap", mode.delegations.swap),
            )
            for problem in least_authority_problems(
                delegation,
                account=portfolio.smart_account,
                delegate=self.signer.address,
                router=config.chain.router,
                enforcers=config.delegation,
                guard=config.guard,
                guard_feeds={t.address: str(t.price_feed) for t in guarded},
                token_decimals={t.address: t.decimals for t in guarded},
                now=int(self.now().timestamp()),
            )
        ]
        if problems:
            raise ValueError("weaker than driftd requires: " + "; ".join(problems))
        expires_at = delegations_expire_at(
            [mode.delegations.approve, mode.delegations.swap], config.delegation
        )
        if expires_at is not None:  # least_authority_problems requires an expiry
            self.expiries[portfolio.id] = expires_at
        return mode

    def delegation_problem(self, portfolio_id: int) -> str | None:
        """Why the portfolio's delegations cannot be redeemed now (expired), or None."""
        expires_at = self.expiries.get(portfolio_id)
        if expires_at is not None and self.now().timestamp() >= expires_at:
            when = datetime.fromtimestamp(expires_at, UTC).isoformat()
            return (
                f"No trade: the portfolio's delegations expired at {when} "
                "(have the owner sign new ones: driftd delegation build)"
            )
        return None

    def expiring(self) -> dict[str, float]:
        """Running portfolios whose delegations expire within :data:`EXPIRY_WARNING`, with the
        seconds left (negative: expired)."""
        now = self.now().timestamp()
        out: dict[str, float] = {}
        for name, spec in self.specs.items():
            expires_at = self.expiries.get(spec.id)
            if expires_at is not None and expires_at - now < EXPIRY_WARNING:
                out[name] = expires_at - now
        return out

    def spec_of(self, portfolio: dbm.Portfolio) -> PortfolioSpec:
        wallet = self.config.current.execution.mode == "wallet"
        return PortfolioSpec(
            id=portfolio.id,
            name=portfolio.name,
            account=self.signer.address if wallet else portfolio.smart_account,
            targets={a.token.symbol: a.weight for a in portfolio.allocations},
            tokens=tuple(message_token(a.token) for a in portfolio.allocations),
        )


def delegations_expire_at(
    delegations: Sequence[Delegation], enforcers: DelegationConfig
) -> int | None:
    """The earliest TimestampEnforcer "before" bound among ``delegations`` (None: none)."""
    bounds = []
    for delegation in delegations:
        for caveat in delegation.caveats:
            if caveat.enforcer == enforcers.timestamp:
                with contextlib.suppress(ValueError):
                    before = decode_timestamp(caveat.terms)[1]
                    if before > 0:
                        bounds.append(before)
    return min(bounds, default=None)


class OtherSigner(Exception):
    """The portfolio is delegated to another daemon's signer: that daemon runs it, not us."""

    def __init__(self, delegate: str) -> None:
        super().__init__(f"delegated to {delegate}")
        self.delegate = delegate


async def revoked_portfolios(daemon: Daemon, portfolios: Sequence[dbm.Portfolio]) -> dict[str, str]:
    """Portfolios whose owner revoked their delegations (the NonceEnforcer nonce moved on since
    they were signed), with the reason: one batched read of every delegator's current nonce. A
    node that cannot answer leaves the check to the next reconcile (the redemption would revert
    on chain anyway)."""
    config = daemon.config.current
    enforcers = config.delegation
    if config.execution.mode == "wallet" or not enforcers.nonce:
        return {}
    signed: list[tuple[str, str, int]] = []
    for portfolio in portfolios:
        for index, item in enumerate(portfolio.delegation):
            try:
                delegation = delegation_from_json(item, f"delegation[{index}]")
            except DelegationFormatError:
                continue  # build_mode reports it
            for caveat in delegation.caveats:
                if caveat.enforcer == enforcers.nonce:
                    with contextlib.suppress(ValueError):
                        nonce = decode_nonce(caveat.terms)
                        signed.append((portfolio.name, delegation.delegator, nonce))
    delegators = sorted({delegator for _, delegator, _ in signed})
    if not delegators:
        return {}
    calls = [
        (enforcers.nonce, encode_call("currentNonce(address,address)", enforcers.manager, d))
        for d in delegators
    ]
    try:
        results = await daemon.chain.call_many(calls)
    except ChainError as exc:
        get_logger(actor="app").warning("revocation_check_failed", error=str(exc))
        return {}
    current = {
        delegator: int.from_bytes(raw[:32], "big")
        for delegator, raw in zip(delegators, results, strict=True)
        if len(raw) >= 32
    }
    revoked: dict[str, str] = {}
    for name, delegator, nonce in signed:
        now = current.get(delegator)
        if now is not None and now != nonce:
            revoked[name] = (
                f"revoked: the owner incremented the NonceEnforcer nonce (signed at nonce {nonce},"
                f" current {now}); have the owner sign new delegations"
            )
    return revoked


async def reconcile_portfolios(daemon: Daemon, deps: PortfolioDeps) -> None:
    """Make the running actors match the active portfolios in the database (of this chain, and
    delegated to this daemon's signer: several daemons may share one database)."""
    log = get_logger(actor="app")
    await daemon.refresh_tokens()
    chain_id = daemon.config.current.chain.chain_id
    active = {p.name: p for p in await daemon.db.active_portfolios(chain_id)}
    for name in list(daemon.specs):
        if name not in active:
            daemon.supervisor.stop(name)
            del daemon.specs[name]
            log.info("portfolio_stopped", portfolio=name)
    last_success = await daemon.db.last_successful_rebalances()
    failures = await daemon.db.failure_streaks()
    execution = daemon.config.current.execution
    revoked = await revoked_portfolios(daemon, list(active.values()))
    # Issue 12: one actor per account, registered decimals = the chain's, covering delegations.
    held = await portfolios_to_hold(
        daemon.chain,
        list(active.values()),
        list(daemon.tokens.values()),
        enforcers=daemon.config.current.delegation,
        wallet_signer=daemon.signer.address if execution.mode == "wallet" else None,
        onchain_decimals=daemon.token_decimals,
    )
    for name, portfolio in active.items():
        try:
            if name in revoked:
                raise ValueError(revoked[name])
            mode = daemon.build_mode(portfolio)
            if name in held:
                raise ValueError(held[name])
        except OtherSigner as exc:
            if name in daemon.specs:
                daemon.supervisor.stop(name)
                del daemon.specs[name]
            if daemon.not_ours.get(name) != exc.delegate:
                log.info("portfolio_of_another_signer", portfolio=name, delegate=exc.delegate)
            daemon.not_ours[name] = exc.delegate
            continue
        except (DelegationFormatError, ValueError) as exc:
            if daemon.invalid.get(name) != str(exc):
                log.error("portfolio_invalid", portfolio=name, error=str(exc))
            daemon.invalid[name] = str(exc)
            if name in daemon.specs:
                daemon.supervisor.stop(name)
                del daemon.specs[name]
            continue
        daemon.invalid.pop(name, None)
        spec = daemon.spec_of(portfolio)
        daemon.modes[portfolio.id] = mode
        actor = functools.partial(_portfolio_actor, spec, deps)
        daemon.not_ours.pop(name, None)
        if name not in daemon.specs:
            # The cooldown clock and the failure backoff are seeded from rebalance_log and the
            # pause from the portfolio row: all survive process restarts.
            seeded = PortfolioState(
                last_success_at=last_success.get(portfolio.id), paused=portfolio.is_paused
            )
            if portfolio.id in failures:
                count, last_failed = failures[portfolio.id]
                seeded.failures = count
                seeded.retry_at = last_failed + failure_backoff(
                    count, execution.failure_backoff, execution.failure_backoff_max
                )
            daemon.supervisor.start(name, actor, seeded)
            log.info("portfolio_started", portfolio=name, account=spec.account)
        else:
            state = daemon.supervisor.actors[name].state
            if state.paused != portfolio.is_paused:
                state.paused = portfolio.is_paused
                log.info(
                    "portfolio_paused" if state.paused else "portfolio_resumed", portfolio=name
                )
            if daemon.specs[name] != spec:
                daemon.supervisor.restart(name, actor)
                log.info("portfolio_changed", portfolio=name)
        daemon.specs[name] = spec


async def _portfolio_actor(spec: PortfolioSpec, deps: PortfolioDeps, state: PortfolioState) -> None:
    await run_portfolio_actor(spec, state, deps)


async def retry_database(work: Callable[[], Awaitable[None]], what: str) -> None:
    """Run ``work`` until it succeeds. A database error is logged and retried with capped
    exponential backoff, never raised: an outage must not end the process (the probes report
    it in health)."""
    log = get_logger(actor="app")
    schedule = Backoff(initial=DB_RETRY_INITIAL, maximum=DB_RETRY_MAX)
    failures = 0
    while True:
        try:
            await work()
        except dbm.DatabaseError as exc:
            delay = schedule.delay(failures)
            failures += 1
            log.warning(f"{what}_failed", error=str(exc), attempt=failures, retry_in=delay)
            await trio.sleep(delay)
            continue
        if failures:
            log.info(f"{what}_recovered", attempts=failures + 1)
        return


async def watch_runtime_params(
    daemon: Daemon, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> NoReturn:
    """Apply REBALANCING_PARAMS at start and whenever it changes (LISTEN/NOTIFY). The listener
    reconnects by itself after an outage and then says ``resync``: reload."""
    async with daemon.db.listen(dbm.SYSTEM_CONFIG_CHANNEL) as notifications:
        await daemon.load_runtime_params()
        task_status.started()
        async for note in notifications:
            if note.resync or note.payload == dbm.REBALANCING_PARAMS:
                await retry_database(daemon.load_runtime_params, "runtime_params_reload")
    raise RuntimeError("the system_config notification stream ended")


async def watch_portfolios(
    daemon: Daemon,
    deps: PortfolioDeps,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Reconcile at start and whenever a portfolio, its allocations or tokens change (after an
    outage the reconnected listener says ``resync``, which reconciles too)."""
    async with daemon.db.listen(dbm.PORTFOLIO_CHANNEL) as notifications:
        await reconcile_portfolios(daemon, deps)
        task_status.started()
        while True:
            # Changes arrive as notifications; revocations (on chain) and expiries (by the
            # clock) do not, so reconcile at least every RECHECK_SECONDS as well.
            with trio.move_on_after(RECHECK_SECONDS):
                try:
                    await notifications.receive()
                except trio.EndOfChannel:
                    raise RuntimeError("the portfolio notification stream ended") from None
            await retry_database(
                functools.partial(reconcile_portfolios, daemon, deps), "portfolio_reconcile"
            )


def price_sources(
    config: Config, uniswap: UniswapV2, http: httpx.AsyncClient, now: Callable[[], datetime]
) -> tuple[PriceSource, PriceSource | None]:
    router = RouterSource(uniswap, now, max_batch_calls=config.chain.max_batch_calls)
    oracle = OracleSource(
        CoinGeckoSource(
            http,
            config.prices.coingecko_base_url,
            config.secrets.coingecko_api_key,
            config.prices.coingecko_plan,
            now=now,
        )
    )
    primary: PriceSource = oracle if config.prices.source == "oracle" else router
    other: PriceSource = router if primary is oracle else oracle
    return primary, (other if config.prices.cross_check else None)


def feed_settings(config: Config) -> FeedSettings:
    """The price feed's live settings (``[prices]``)."""
    prices = config.prices
    return FeedSettings(
        poll_interval=prices.poll_interval,
        max_divergence=prices.max_divergence,
        max_age=prices.max_age,
        max_head_age=prices.max_head_age,
        max_price_usd=prices.max_price_usd,
        max_move_factor=prices.max_move_factor,
    )


async def start_operator_interfaces(
    nursery: trio.Nursery, daemon: Daemon, config: Config, env: Mapping[str, str]
) -> None:
    """The health/control socket, the optional metrics listener and the systemd watchdog."""
    if config.health.socket:
        socket_dir = Path(config.health.socket).parent
        try:
            socket_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        except OSError as exc:
            raise StartupError(
                f"health.socket: cannot create {socket_dir}: {exc.strerror} (under systemd "
                "RuntimeDirectory=driftd provides it; otherwise choose a writable path)"
            ) from None
        try:
            await nursery.start(serve_health, config.health.socket, DaemonControls(daemon))
        except HealthSocketInUse as exc:
            raise StartupError(f"health.socket: {exc}") from None
    if config.health.metrics_listen:
        await nursery.start(serve_metrics, config.health.metrics_listen, daemon.metrics.render)
    interval = watchdog_interval(env)
    if interval is not None:
        await nursery.start(run_watchdog, daemon.notifier, lambda: is_alive(daemon), interval)


async def run_daemon(
    config: Config,
    *,
    env: Mapping[str, str] | None = None,
    now: Callable[[], datetime] = utc_now,
    task_status: trio.TaskStatus[Daemon] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """``driftd run``: everything, until cancelled or something vital crashes.

    ``now`` is the wall clock of cooldowns and price ages (tests move it forward)."""
    log = get_logger(actor="app")
    faults = Faults.from_env(env or {})
    if config.secrets.signer_key is None:
        raise StartupError(
            "no signer key: set signer.key_file, a systemd credential signer-key, or "
            "DRIFTD_SIGNER_KEY"
        )
    try:
        signer = TxSigner(key=config.secrets.signer_key)
    except ValueError as exc:  # a malformed key is a configuration error (78), not a crash
        raise StartupError(str(exc)) from None
    holder = ConfigHolder(base=config)
    async with dbm.open_database(config.database) as database:
        applied = await database.migrate()
        if applied:
            log.info("migrations_applied", versions=[m.version for m in applied])
        async with ChainClient(config.chain) as chain, httpx.AsyncClient(timeout=10) as http:
            quote = next(
                (t for t in await database.tokens(config.chain.chain_id) if t.is_quote), None
            )
            uniswap = UniswapV2(chain, config.chain.router, quote.address if quote else None)
            snapshots: Latest[PriceSnapshot] = Latest()
            supervisor: Supervisor[PortfolioState] = Supervisor(
                RestartPolicy(
                    backoff_initial=config.supervisor.backoff_initial,
                    backoff_max=config.supervisor.backoff_max,
                    max_restarts=config.supervisor.max_restarts,
                    window=config.supervisor.restart_window,
                ),
                on_parked=lambda key, error: daemon.alert(
                    "ACTOR_PARKED", {"portfolio": key, "error": error}
                ),
            )
            send, receive = trio.open_memory_channel[RebalanceRequest](0)
            daemon = Daemon(
                config=holder,
                db=database,
                chain=chain,
                uniswap=uniswap,
                signer=signer,
                snapshots=snapshots,
                supervisor=supervisor,
                executor=Executor(
                    chain=chain,
                    uniswap=uniswap,
                    signer=signer,
                    db=database,
                    tokens=lambda: daemon.message_tokens(),
                    mode_for=lambda request: daemon.mode_for(request),
                    settings=lambda: executor_settings(holder.current),
                    max_in_flight=config.execution.max_in_flight,
                    delegation_problem=lambda portfolio_id: daemon.delegation_problem(portfolio_id),
                    now=now,
                    fault=faults.check,
                    alert=lambda kind, fields: daemon.alert(kind, fields),
                    on_finished=lambda portfolio_id, name, result: daemon.rebalance_finished(
                        portfolio_id, name, result
                    ),
                    on_waiting=lambda: _extend_start_timeout(daemon),
                ),
                requests=send,
                faults=faults,
                alerts=AlertSink(lambda: alert_settings(holder.current), now),
                metrics=Metrics(
                    version=package_version(),
                    now=lambda: now().timestamp(),
                    on_collect=lambda metrics: collect_metrics(daemon)(metrics),
                ),
                notifier=Notifier.from_env(env or {}),
                now=now,
            )
            await daemon.refresh_tokens()
            # Every actor's balance reads in a few JSON-RPC batches per tick, not one each.
            batcher = BalanceBatcher(chain, max_calls=config.chain.max_batch_calls)
            deps = PortfolioDeps(
                snapshots=snapshots,
                read_balances=batcher.read_with_block,
                executor=send,
                params=lambda: runtime_params(holder.current),
                now=now,
                fault=faults.check,
                alert=daemon.alert,
                accepting=lambda: daemon.accepting,
                record_valuation=daemon.record_valuation,
                signer_blocked=lambda: daemon.executor.transactions.blocked(),
                delegation_problem=lambda portfolio_id: daemon.delegation_problem(portfolio_id),
                in_flight=lambda portfolio_id: portfolio_id in daemon.executor.in_flight,
                healthy=supervisor.mark_healthy,
            )
            primary, secondary = price_sources(config, uniswap, http, now)
            async with trio.open_nursery() as nursery:
                if daemon.alerts is not None:
                    await nursery.start(daemon.alerts.run, http)
                await nursery.start(watch_runtime_params, daemon)
                await nursery.start(daemon.executor.run, receive)
                await nursery.start(
                    functools.partial(
                        run_price_feed,
                        primary=primary,
                        secondary=secondary,
                        load_tokens=daemon.load_tokens,
                        store=daemon.store_prices,
                        snapshots=snapshots,
                        settings=lambda: feed_settings(holder.current),
                        now=now,
                        on_tick=daemon.price_ticked,
                        alert=daemon.alert,
                    )
                )
                await nursery.start(supervisor.run)
                await nursery.start(batcher.run)
                await nursery.start(watch_portfolios, daemon, deps)
                await nursery.start(run_probes, daemon)
                await start_operator_interfaces(nursery, daemon, config, env or {})
                log.info(
                    "daemon_started",
                    signer=signer.address,
                    portfolios=sorted(daemon.specs),
                    price_source=primary.name,
                    dry_run=config.execution.dry_run,
                )
                task_status.started(daemon)
                await trio.sleep_forever()
    raise AssertionError("unreachable")


async def serve(
    config: Config,
    *,
    load: Callable[[], Config] | None = None,
    env: Mapping[str, str] | None = None,
    task_status: trio.TaskStatus[Daemon] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the daemon with signal handling until SIGINT or SIGTERM.

    SIGHUP re-reads the configuration with ``load`` (file + environment). SIGINT/SIGTERM stop
    new rebalances, give an in-flight transaction ``execution.shutdown_grace`` seconds to reach
    its receipt, then cancel everything. The executor's record-and-broadcast step is shielded,
    so no transaction is ever on the wire without its intent; whatever is still pending is
    settled by the next start's recovery.
    """
    log = get_logger(actor="app")
    signals_wanted = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    with trio.open_signal_receiver(*signals_wanted) as signals:
        async with trio.open_nursery() as nursery:
            daemon: Daemon = await nursery.start(functools.partial(run_daemon, config, env=env))
            task_status.started(daemon)
            nursery.start_soon(_ready_after_first_snapshot, daemon)
            async for signum in signals:
                if signum == signal.SIGHUP:
                    if load is None:
                        log.warning("reload_unavailable", reason="no configuration loader")
                    else:
                        daemon.reload(load)
                    continue
                log.info("stopping", signal=signal.Signals(signum).name)
                daemon.notifier.stopping()
                await daemon.drain(daemon.config.current.execution.shutdown_grace)
                nursery.cancel_scope.cancel()
                break
    log.info("stopped")


def _extend_start_timeout(daemon: Daemon) -> None:
    daemon.notifier.extend_timeout(LEASE_WAIT_EXTEND)


async def _ready_after_first_snapshot(daemon: Daemon) -> None:
    """READY=1 once every actor runs and the first price snapshot is in."""
    await daemon.snapshots.wait_newer(0)
    daemon.notifier.ready(status_line(daemon))
    get_logger(actor="app").info("ready")


def leaf_exceptions(exc: BaseException) -> list[BaseException]:
    """The non-group exceptions inside (possibly nested) exception groups."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in leaf_exceptions(inner)]
    return [exc]

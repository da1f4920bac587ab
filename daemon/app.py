"""The process: build the services, start every actor in one root nursery, stop on a signal.

Wiring only: :func:`run_daemon` builds small named services and hands each actor the ones it
serves — the configuration (:mod:`daemon.live_config`), the token book (:mod:`daemon.tokens`),
price and valuation history (:mod:`daemon.history`), the execution modes
(:mod:`daemon.modes`), the portfolio supervisor, which owns the portfolio actors' state
(:mod:`daemon.portfolio_supervisor`), the reconciler (:mod:`daemon.reconcile`), alerts, metrics
and the probes (:mod:`daemon.probes`). :class:`Daemon` is the record of them that the control
server, the probes and tests read.

Start order (each step ``started()`` only when really ready): database (migrated) → chain client
(chain id checked) → executor (recovered unfinished intents, knows its next nonce) → price feed
(first tick attempted) → supervisor → portfolio watcher (one actor per active portfolio; the set
follows the database through LISTEN/NOTIFY). A crash of the executor, price feed or database
layer propagates out of the root nursery and ends the process (systemd restarts it); a crash of a
portfolio actor is contained by the supervisor.
"""

from __future__ import annotations

import functools
import signal
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import NoReturn

import attrs
import httpx
import trio

from daemon import db as dbm
from daemon import package_version
from daemon.alerts import AlertSink
from daemon.balances import BalanceBatcher
from daemon.chain import ChainClient
from daemon.coingecko import CoinGeckoSource
from daemon.config import Config
from daemon.control import DaemonControls
from daemon.executor import Executor
from daemon.executor_status import ExecutorStatus
from daemon.faults import Faults
from daemon.feed_status import FeedStatus
from daemon.health import HealthSocketInUse, serve_health
from daemon.held_balances import HeldBalances
from daemon.history import PriceStore, Valuations
from daemon.latest import Latest
from daemon.live_config import ConfigHolder, RuntimeParamsWatcher, reload_config
from daemon.logs import get_logger
from daemon.messages import PriceSnapshot, RebalanceRequest
from daemon.metrics import Metrics, serve_metrics
from daemon.modes import ExecutionModeBook
from daemon.portfolio import EverySnapshot, PortfolioDeps, no_field_reprs
from daemon.portfolio_supervisor import PortfolioSupervisor
from daemon.prices import OracleSource, PriceSource, RouterSource, run_price_feed
from daemon.probes import LiveMetrics, Probes, is_alive, run_probes, status_line
from daemon.reconcile import PortfolioReconciler
from daemon.retry import OutageLog
from daemon.signer import TxSigner
from daemon.supervise import RestartPolicy
from daemon.systemd import Notifier, run_watchdog, watchdog_interval
from daemon.tick_screen import TickScreen
from daemon.tokens import TokenBook
from daemon.uniswap import UniswapV2


class StartupError(Exception):
    """The daemon cannot start with this configuration or state; the message says why."""


def utc_now() -> datetime:
    return datetime.now(UTC)


@attrs.define(eq=False)
class RebalanceGate:
    """Whether the portfolio actors may start new rebalances: closed once the daemon stops."""

    executor: ExecutorStatus
    accepting: bool = True

    async def drain(self, grace: float) -> None:
        """Stop taking new rebalances and give an in-flight one up to ``grace`` seconds to
        reach its receipt (its intent is durable either way)."""
        self.accepting = False
        with trio.move_on_after(grace):
            await self.executor.idle.wait()


@attrs.frozen(eq=False, field_transformer=no_field_reprs)
class Daemon:
    """The running daemon's services as :func:`run_daemon` built them: what the control server,
    the probes and tests read. A record; it has no behaviour of its own (nor a field in its
    ``repr``: a crash report would render every service)."""

    config: ConfigHolder
    db: dbm.Database
    chain: ChainClient
    signer: TxSigner
    snapshots: Latest[PriceSnapshot]
    supervisor: PortfolioSupervisor
    """The portfolio actors and their state; control commands go here."""
    executor: Executor
    tokens: TokenBook
    modes: ExecutionModeBook
    portfolios: PortfolioReconciler
    """Which portfolios run, and why the others do not (``invalid``)."""
    feed: FeedStatus
    alerts: AlertSink
    metrics: LiveMetrics
    notifier: Notifier
    probes: Probes
    gate: RebalanceGate
    now: Callable[[], datetime]
    started_at: datetime
    held: HeldBalances | None = None
    """The balance follower (``chain.follow_transfers``), or None: every balance read."""


@attrs.frozen
class _Starts:
    """What :func:`run_daemon` starts besides the record's services."""

    requests: trio.MemoryReceiveChannel[RebalanceRequest]
    batcher: BalanceBatcher
    held: HeldBalances | None
    """``chain.follow_transfers``: balances followed from Transfer logs (else the batcher's)."""
    screen: TickScreen | None
    """With ``held``: the per-tick screen that wakes only the actors needing the exact engine."""
    prices: PriceStore
    valuations: Valuations
    """Writes the actors' valuations in batches."""
    runtime_params: RuntimeParamsWatcher
    uniswap: UniswapV2


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


def _signer(config: Config) -> TxSigner:
    if config.secrets.signer_key is None:
        raise StartupError(
            "no signer key: set signer.key_file, a systemd credential signer-key, or "
            "DRIFTD_SIGNER_KEY"
        )
    try:
        return TxSigner(key=config.secrets.signer_key)
    except ValueError as exc:  # a malformed key is a configuration error (78), not a crash
        raise StartupError(str(exc)) from None


@attrs.frozen
class _Services:
    """The services the actors share, before the actors that use them are wired."""

    config: ConfigHolder
    outages: OutageLog
    tokens: TokenBook
    uniswap: UniswapV2
    metrics: Metrics
    alerts: AlertSink
    supervisor: PortfolioSupervisor
    modes: ExecutionModeBook
    notifier: Notifier
    executor: Executor


async def _services(
    config: Config,
    env: Mapping[str, str],
    now: Callable[[], datetime],
    faults: Faults,
    signer: TxSigner,
    database: dbm.Database,
    chain: ChainClient,
    metrics: Metrics,
) -> _Services:
    """Every shared service, in dependency order (the token book is read once here)."""
    holder = ConfigHolder(base=config)
    outages = OutageLog()
    tokens = TokenBook(database, holder, outages)
    await tokens.refresh()
    quote = tokens.quote()
    uniswap = UniswapV2(chain, config.chain.router, quote.address if quote else None)
    alerts = AlertSink(holder, now, counter=metrics)
    supervisor = PortfolioSupervisor(
        RestartPolicy.from_config(config), alerts=alerts, metrics=metrics, config=holder, now=now
    )
    modes = ExecutionModeBook(holder, signer.address, tokens, now)
    notifier = Notifier.from_env(env)
    executor = Executor(
        chain=chain,
        uniswap=uniswap,
        signer=signer,
        db=database,
        tokens=tokens,
        modes=modes,
        config=holder,
        alerts=alerts,
        outcomes=supervisor,
        max_in_flight=config.execution.max_in_flight,
        now=now,
        startup=notifier,
        faults=faults,
    )
    return _Services(
        holder, outages, tokens, uniswap, metrics, alerts, supervisor, modes, notifier, executor
    )


def _assemble(
    services: _Services,
    signer: TxSigner,
    database: dbm.Database,
    chain: ChainClient,
    now: Callable[[], datetime],
) -> tuple[Daemon, _Starts]:
    """The actors' wiring around the shared services, and the record of it all."""
    s = services
    send, receive = trio.open_memory_channel[RebalanceRequest](0)
    snapshots: Latest[PriceSnapshot] = Latest()
    gate = RebalanceGate(s.executor.status)
    # Every actor's balance reads in a few JSON-RPC batches per tick, not one each.
    batcher = BalanceBatcher(chain, max_calls=s.config.current.chain.max_batch_calls)
    follow = s.config.current.chain.follow_transfers
    held = HeldBalances(chain, batcher, snapshots) if follow else None
    valuations = Valuations(database, s.tokens, s.config, now, s.outages)
    # Balances held in memory: one pass per tick screens every portfolio and wakes only the
    # actors that need the exact engine. Read from the node, they are each actor's to read.
    screen = (
        None
        if held is None
        else TickScreen(snapshots, held, s.config, now, records_valuations=True)
    )
    deps = PortfolioDeps(
        snapshots=snapshots,
        balances=batcher if held is None else held,
        requests=send,
        executor=s.executor,
        delegations=s.modes,
        config=s.config,
        now=now,
        alerts=s.alerts,
        admission=gate,
        supervisor=s.supervisor,
        valuations=valuations,
        faults=s.executor.faults,
        turns=EverySnapshot(snapshots) if screen is None else screen,
    )
    probes = Probes()
    reconciler = PortfolioReconciler(
        database, chain, signer.address, s.config, s.tokens, s.modes, s.supervisor, deps
    )
    daemon = Daemon(
        config=s.config,
        db=database,
        chain=chain,
        signer=signer,
        snapshots=snapshots,
        supervisor=s.supervisor,
        executor=s.executor,
        tokens=s.tokens,
        modes=s.modes,
        portfolios=reconciler,
        feed=FeedStatus(s.config, s.metrics),
        alerts=s.alerts,
        metrics=LiveMetrics(s.metrics, s.config, s.supervisor, s.executor, now, probes),
        notifier=s.notifier,
        probes=probes,
        gate=gate,
        now=now,
        started_at=utc_now(),
        held=held,
    )
    starts = _Starts(
        requests=receive,
        batcher=batcher,
        held=held,
        screen=screen,
        prices=PriceStore(database, s.tokens, s.outages),
        valuations=valuations,
        runtime_params=RuntimeParamsWatcher(s.config, database),
        uniswap=s.uniswap,
    )
    return daemon, starts


def _unix_time(now: Callable[[], datetime]) -> float:
    return now().timestamp()


async def _start_actors(
    nursery: trio.Nursery,
    daemon: Daemon,
    starts: _Starts,
    http: httpx.AsyncClient,
    primary: PriceSource,
    secondary: PriceSource | None,
) -> None:
    """Start every actor in order, each once the one before is ready."""
    await nursery.start(daemon.alerts.run, http)
    await nursery.start(starts.runtime_params.run)
    await nursery.start(daemon.executor.run, starts.requests)
    await nursery.start(
        functools.partial(
            run_price_feed,
            primary=primary,
            secondary=secondary,
            tokens=daemon.tokens,
            history=starts.prices,
            snapshots=daemon.snapshots,
            config=daemon.config,
            now=daemon.now,
            ticks=daemon.feed,
            alerts=daemon.alerts,
        )
    )
    await nursery.start(starts.valuations.run)
    await nursery.start(daemon.supervisor.run)
    await nursery.start(starts.batcher.run)
    if starts.held is not None:
        await nursery.start(starts.held.run)
    if starts.screen is not None:
        await nursery.start(starts.screen.run)
    await nursery.start(daemon.portfolios.watch)
    await nursery.start(run_probes, daemon)


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
        alive = functools.partial(is_alive, daemon)
        await nursery.start(run_watchdog, daemon.notifier, alive, interval)


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
    env = env or {}
    faults = Faults.from_env(env)
    signer = _signer(config)
    async with dbm.open_database(config.database) as database:
        applied = await database.migrate()
        if applied:
            log.info("migrations_applied", versions=[m.version for m in applied])
        # Made first: the chain client counts every JSON-RPC call in it.
        metrics = Metrics(version=package_version(), now=functools.partial(_unix_time, now))
        async with (
            ChainClient(config.chain, observer=metrics) as chain,
            httpx.AsyncClient(timeout=10) as http,
        ):
            services = await _services(config, env, now, faults, signer, database, chain, metrics)
            daemon, starts = _assemble(services, signer, database, chain, now)
            primary, secondary = price_sources(config, starts.uniswap, http, now)
            async with trio.open_nursery() as nursery:
                await _start_actors(nursery, daemon, starts, http, primary, secondary)
                await start_operator_interfaces(nursery, daemon, config, env)
                log.info(
                    "daemon_started",
                    signer=signer.address,
                    portfolios=sorted(daemon.supervisor.specs),
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
                        reload_config(daemon.config, load, daemon.notifier, daemon.metrics.metrics)
                    continue
                log.info("stopping", signal=signal.Signals(signum).name)
                daemon.notifier.stopping()
                await daemon.gate.drain(daemon.config.current.execution.shutdown_grace)
                nursery.cancel_scope.cancel()
                break
    log.info("stopped")


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

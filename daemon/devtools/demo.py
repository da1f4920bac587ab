"""``driftd demo``: the whole system on one machine, with nothing of the user's own.

What it does, in order (each step announced):

1. **Prerequisites.** The pinned npm packages (anvil, contract bytecode, solc): ``npm ci`` in
   the checkout on first use. PostgreSQL server binaries: from the system (Debian's
   ``postgresql`` package, which ``./dev setup`` installs).
2. **Throwaway services** on free loopback ports: PostgreSQL (:mod:`daemon.devtools.pgserver`)
   and anvil with Uniswap V2, WETH9/USDC/WBTC and the Delegation Framework
   (:mod:`daemon.devtools.devnet`).
3. **Portfolios as an operator would make them:** N HybridDeleGator smart accounts with
   different targets, funded at their targets; each owner signs the two least-authority
   delegations; then ``driftd migrate``, ``driftd token add`` and ``driftd portfolio add`` run
   through the CLI's own parser and handlers (with the demo's configuration, so variables in the
   user's environment cannot point them elsewhere), which verify the signatures on chain.
4. **The real daemon** (:func:`daemon.app.run_daemon`, the code of ``driftd run``) with the router
   price source, a short cooldown and a fast poll, next to a **market**
   (:mod:`daemon.devtools.market`) that moves prices by real swaps, and a **monitor** that reads
   the chain, ``rebalance_log`` and the actors' states to drive the live view or the JSON lines
   (:mod:`daemon.devtools.demo_view`).
5. After ``--duration`` seconds, Ctrl-C or SIGTERM: a summary, then everything is stopped and
   deleted.

Lifetimes: every resource is entered on one :class:`contextlib.AsyncExitStack` as it is created
and the stack is closed in a shielded ``finally`` — anvil and PostgreSQL are stopped (and their
directories deleted) on every path: normal end, signal, error. Both also carry a parent-death
signal, so even ``kill -9`` of the demo does not leave them running. Signals are taken by a
receiver for the whole run and cancel only the current *phase*: during setup the demo stops
(exit 130/143); during the run it goes on to the summary (exit 0); a second signal during the
summary skips it.

Ctrl-C in a terminal signals the whole foreground process group, which includes PostgreSQL
(anvil runs in its own session): the database may be gone by the time the summary is made, so
the monitor keeps every event in memory and the final database read is best effort.
"""

from __future__ import annotations

import contextlib
import functools
import json
import random
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import IO, Any, Final

import attrs
import trio

from daemon import exitcodes
from daemon.app import Daemon, leaf_exceptions, run_daemon
from daemon.chain_errors import ChainError
from daemon.db import DatabaseError, open_database
from daemon.devtools import pgserver
from daemon.devtools.demo_monitor import Monitor
from daemon.devtools.demo_setup import (
    MAX_PORTFOLIOS,
    DemoEnvironment,
    PrerequisiteMissing,
    SetupFailed,
    check_prerequisites,
    setup,
)
from daemon.devtools.demo_stats import StartedInfo, Summary, summarize
from daemon.devtools.demo_view import JsonLinesReporter, Reporter, RichReporter
from daemon.devtools.devnet_artifacts import DevnetError
from daemon.devtools.market import MarketError, RandomWalk, WalkParams, run_market
from daemon.solidity import project_root

TEARDOWN_SECONDS: Final = 30.0
"""Upper bound on closing connections during teardown (processes are then killed anyway)."""
SIGNAL_GRACE_SECONDS: Final = 1.0
EXIT_ON_SIGNAL: Final = {"SIGINT": 130, "SIGTERM": 143}


@attrs.frozen
class DemoOptions:
    """``driftd demo``'s command line."""

    portfolios: int = 3
    duration: float = 120.0
    """Seconds the daemon and the market run (setup not included)."""
    seed: int | None = None
    """The market's seed; None: a random one (reported, so a run can be repeated)."""
    headless: bool = False
    report_dir: Path | None = None
    """``--report DIR``: each portfolio's HTML report is written there before cleaning up."""

    def __attrs_post_init__(self) -> None:
        if not 1 <= self.portfolios <= MAX_PORTFOLIOS:
            raise ValueError(f"--portfolios must be in 1..{MAX_PORTFOLIOS}")
        if self.duration <= 0:
            raise ValueError("--duration must be positive")


# --- signals --------------------------------------------------------------------------------


@attrs.define(eq=False)
class Interrupts:
    """SIGINT/SIGTERM cancel the current phase only (see the module docstring)."""

    received: str | None = None
    """Name of the first signal received."""
    pending: bool = False
    """A signal arrived that the current (or next) phase has not yet answered."""
    signalled: trio.Event = attrs.Factory(trio.Event)
    _scope: trio.CancelScope | None = None

    async def watch(self, signals: Any) -> None:
        async for signum in signals:
            self.received = self.received or signal.Signals(signum).name
            self.pending = True
            self.signalled.set()
            if self._scope is not None:
                self._scope.cancel()

    async def came_with_signal(self) -> bool:
        """Whether a failure just seen came with a signal (waiting a moment for it to land).

        A terminal's Ctrl-C also reaches PostgreSQL (and initdb, npm…), which stop at once; we
        may see a connection drop a moment before our signal task runs.
        """
        with trio.move_on_after(SIGNAL_GRACE_SECONDS):
            await self.signalled.wait()
        return self.received is not None

    @contextlib.contextmanager
    def phase(self) -> Iterator[trio.CancelScope]:
        with trio.CancelScope() as scope:
            self._scope = scope
            if self.pending:
                scope.cancel()
            try:
                yield scope
            finally:
                self._scope = None

    def acknowledge(self) -> None:
        self.pending = False


# --- the run ----------------------------------------------------------------------------------


async def run_phase(
    env: DemoEnvironment,
    options: DemoOptions,
    seed: int,
    reporter: Reporter,
    monitor: Monitor,
    scope: trio.CancelScope,
    setup_seconds: float,
) -> None:
    """The daemon, the market and the monitor, until ``scope`` ends (deadline or signal)."""
    symbols = [t.symbol for t in env.devnet.tokens if t.symbol != env.devnet.quote_symbol]
    walk = RandomWalk(symbols, WalkParams(), seed)
    async with trio.open_nursery() as nursery:
        daemon: Daemon = await nursery.start(functools.partial(run_daemon, env.config, env={}))
        start_prices = await nursery.start(run_market, env.trader, walk, monitor.on_move)
        await monitor.begin({env.devnet.quote_symbol: Decimal(1), **start_prices})
        scope.deadline = trio.current_time() + options.duration
        reporter.started(
            StartedInfo(
                seed=seed,
                duration=options.duration,
                portfolios=env.portfolios,
                rpc_url=env.devnet.rpc_url,
                database_port=env.postgres.port,
                temp_dir=str(env.temp_dir),
                health_socket=env.config.health.socket,
                setup_seconds=setup_seconds,
                prices=monitor.start_prices,
            )
        )
        with reporter.live():
            await monitor.run(daemon)


async def finish(
    monitor: Monitor, reporter: Reporter, ended_by: str, setup_seconds: float
) -> Summary:
    """Last read of rebalance_log (best effort: the database may be gone after a Ctrl-C)."""
    run_seconds = trio.current_time() - monitor.started_at if monitor.started_at else 0.0
    try:
        with trio.move_on_after(5):
            await monitor.poll(None)
    except (DatabaseError, ChainError, OSError) as exc:
        reporter.progress(f"final read skipped ({type(exc).__name__}); summary from what was seen")
    summary = summarize(
        [p.name for p in monitor.env.portfolios],
        monitor.events,
        ended_by=ended_by,
        run_seconds=run_seconds,
        setup_seconds=setup_seconds,
        price_moves=monitor.price_moves,
        pending=monitor.pending,
        first_success_seconds=monitor.first_success_seconds,
    )
    reporter.summary(summary)
    return summary


async def demo_body(
    options: DemoOptions, reporter: Reporter, interrupts: Interrupts, root: Path
) -> int:
    seed = options.seed if options.seed is not None else random.SystemRandom().randrange(2**31)
    setup_started = trio.current_time()
    stack = contextlib.AsyncExitStack()
    temp_dir = Path(tempfile.mkdtemp(prefix="driftd-demo-"))
    stack.callback(shutil.rmtree, temp_dir, ignore_errors=True)
    try:
        env: DemoEnvironment | None = None
        with interrupts.phase():
            try:
                bindir = await check_prerequisites(root, reporter)
                env = await setup(stack, options.portfolios, reporter, root, bindir, temp_dir)
            except Exception:
                if not await interrupts.came_with_signal():
                    raise
        if env is None:
            reporter.progress(f"{interrupts.received}: stopped during setup; cleaning up")
            return EXIT_ON_SIGNAL.get(interrupts.received or "", 130)
        setup_seconds = trio.current_time() - setup_started
        reporter.progress(f"ready after {setup_seconds:.1f} s; starting the daemon and the market")
        monitor = Monitor(env=env, reporter=reporter, duration=options.duration)
        failure: Exception | None = None
        with interrupts.phase() as scope:
            try:
                await run_phase(env, options, seed, reporter, monitor, scope, setup_seconds)
            except Exception as exc:  # noqa: BLE001 - re-raised below unless a signal caused it
                failure = exc
        if failure is not None:
            if not await interrupts.came_with_signal():
                raise failure
            kinds = sorted({type(leaf).__name__ for leaf in leaf_exceptions(failure)})
            reporter.progress(f"{interrupts.received} also stopped services ({', '.join(kinds)})")
        ended_by = interrupts.received if interrupts.pending else "duration"
        interrupts.acknowledge()
        with interrupts.phase() as scope:
            await finish(monitor, reporter, ended_by or "duration", setup_seconds)
            await point_to_reports(env, options.report_dir, reporter)
        if scope.cancelled_caught:
            return EXIT_ON_SIGNAL.get(interrupts.received or "", 130)
        return exitcodes.OK
    except Exception:
        for line in daemon_errors(temp_dir / "driftd.log"):
            reporter.error(f"daemon log: {line}")
        raise
    finally:
        with trio.CancelScope(shield=True, deadline=trio.current_time() + TEARDOWN_SECONDS):
            await stack.aclose()


async def point_to_reports(
    env: DemoEnvironment, report_dir: Path | None, reporter: Reporter
) -> None:
    """After the summary: ``driftd report`` for this run, written to ``report_dir`` before the
    database is deleted (best effort), or how to get it."""
    names = [p.name for p in env.portfolios]
    if report_dir is None:
        reporter.progress(
            f"what rebalancing cost and earned in this run: `driftd --config {env.temp_dir}/"
            f"config.toml report --portfolio {names[0]}` while it runs, or "
            "`driftd demo --report DIR` to keep every portfolio's HTML report"
        )
        return
    from daemon.report.figures import NoData, build_report
    from daemon.report.html import render_html
    from daemon.report.load import load_history

    await trio.Path(report_dir).mkdir(parents=True, exist_ok=True)
    config = env.config
    until = datetime.now(UTC)
    try:
        async with open_database(config.database) as database:
            for name in names:
                portfolio = await database.portfolio(name)
                history = await load_history(
                    database,
                    portfolio,
                    until - timedelta(days=1),
                    until,
                    config.rebalance.drift_threshold,
                )
                try:
                    report = build_report(history, float(config.report.risk_free_rate))
                except NoData as exc:
                    reporter.progress(f"no report for {name}: {exc}")
                    continue
                path = report_dir / f"{name}.html"
                await trio.Path(path).write_text(render_html(report), encoding="utf-8")
                reporter.progress(f"report (driftd report --format html): {path}")
    except DatabaseError as exc:
        reporter.progress(f"reports not written: the database is gone ({exc})")


def daemon_errors(log_path: Path, limit: int = 5) -> list[str]:
    """The last error lines of the daemon's JSON log (shown when the demo fails)."""
    try:
        lines = log_path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []
    errors = []
    for line in lines:
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict) and record.get("level") in ("error", "critical"):
                errors.append(line[:300])
    return errors[-limit:]


async def run_demo(options: DemoOptions, reporter: Reporter, *, root: Path | None = None) -> int:
    """The demo; returns the exit code. Takes SIGINT and SIGTERM while it runs."""
    interrupts = Interrupts()
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(interrupts.watch, signals)
            try:
                return await demo_body(options, reporter, interrupts, root or project_root())
            finally:
                nursery.cancel_scope.cancel()


_EXPECTED_FAILURES: Final = (
    SetupFailed,
    DevnetError,
    pgserver.PostgresServerError,
    DatabaseError,
    ChainError,
    MarketError,
)


def make_reporter(headless: bool, out: IO[str], err: IO[str]) -> Reporter:
    if headless:
        return JsonLinesReporter(out, err)
    from rich.console import Console

    return RichReporter(Console(file=out))


def run(
    options: DemoOptions,
    *,
    out: IO[str] | None = None,
    err: IO[str] | None = None,
    root: Path | None = None,
) -> int:
    """Sync entry point for the CLI: run the demo and map expected failures to exit codes."""
    reporter = make_reporter(options.headless, out or sys.stdout, err or sys.stderr)
    try:
        return trio.run(functools.partial(run_demo, options, reporter, root=root))
    except BaseException as exc:  # expected failures become a message and exit 69; others raise
        leaves = leaf_exceptions(exc)
        if all(isinstance(leaf, KeyboardInterrupt) for leaf in leaves):
            # Ctrl-C before the demo's own signal handling was in place: nothing was started.
            reporter.error("interrupted")
            return EXIT_ON_SIGNAL["SIGINT"]
        if not all(isinstance(leaf, (PrerequisiteMissing, *_EXPECTED_FAILURES)) for leaf in leaves):
            raise
        for leaf in leaves:
            if isinstance(leaf, PrerequisiteMissing):
                reporter.error(str(leaf))
            else:
                reporter.error(f"{type(leaf).__name__}: {leaf}")
        return exitcodes.UNAVAILABLE

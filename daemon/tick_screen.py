"""The tick screen: one pass over the waiting portfolio actors per price snapshot, waking only
those that need the exact engine (issue 15).

With balances held in memory (``chain.follow_transfers``: :class:`daemon.held_balances.
HeldBalances`) nothing about a portfolio far inside its band changes between ticks but the
float value of its drift. Waking every actor on every snapshot to find that out cost ~0.1 ms
per portfolio (a task switch, a logger, a price check, a balance read, the engine, a log line),
so a tick grew with the number of portfolios rather than with the number that had anything to
do. Here one loop does the float part for all of them, and an actor is woken only when its turn
could change anything.

An actor is **woken** (it runs the exact Decimal engine, which alone decides whether and what
to trade) unless every one of these holds:

- the exact engine has accepted its spec since the actor started, and its last decision was
  "within tolerance" (so a change of decision is always the actor's to record and log);
- it is not paused, not asked to evaluate (``driftd rebalance``), and no valuation is due
  (``report.valuation_interval``, or the first after a trade);
- every token has a usable price (present, fresh, positive) and a followed balance;
- the float drift (:func:`daemon.drift.screen_drift`) is a margin below both the drift threshold
  and ``alerts.high_drift`` (:func:`daemon.portfolio.screen_limit`).

The others are **settled** here: the snapshot counts as evaluated for them, so their health and
metrics stay current — ``evaluations`` and ``last_evaluated_at`` count screened ticks as they
counted the actor's own screened ones, and ``last_max_drift`` is the float drift to 6 decimals —
while ``last_decision`` stays "within tolerance", as the exact engine last found.

An actor busy when a snapshot was screened (evaluating, or waiting for its trade) was not
waiting, so was neither woken nor settled: it evaluates the newest snapshot as soon as it is
back (:meth:`TickScreen.wait_turn`), as it did before. A failed balance refresh wakes every
waiting actor: each skips the tick with the reason, as without the screen.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Sequence
from datetime import datetime
from decimal import Decimal
from typing import NoReturn, Protocol

import attrs
import trio

from daemon.chain_errors import ChainError
from daemon.drift import (
    WITHIN_TOLERANCE,
    ScreenHoldings,
    ScreenPrices,
    ScreenTargets,
    screen_drift,
)
from daemon.latest import Latest
from daemon.live_config import ConfigSource
from daemon.logs import get_logger
from daemon.messages import NoPrices, PriceSnapshot
from daemon.portfolio import (
    PortfolioSpec,
    PortfolioState,
    RuntimeParamsBook,
    screen_limit,
    valuation_due,
)


class HeldView(Protocol):
    """Balances held in memory (:class:`daemon.held_balances.HeldBalances`)."""

    async def refresh(self) -> None:
        """Bring them up to the chain's head for the current tick (raises ChainError)."""

    def held(self, account: str, tokens: Sequence[str]) -> list[int] | None:
        """Balances of ``tokens`` in that order, without I/O; None when not followed."""


@attrs.frozen
class ScreenedTick:
    """What the screen did with one snapshot (the benchmark and the debug log read it)."""

    version: int
    woken: int
    """Actors woken to evaluate exactly."""
    settled: int
    """Actors settled by the screen."""
    seconds: float
    """How long the pass took (it never awaits; the balance refresh before it excluded)."""


@attrs.define(eq=False)
class _Waiter:
    """An actor's portfolio as the screen reads it (built once per spec; its balances as floats
    rebuilt only when they change)."""

    spec: PortfolioSpec
    addresses: tuple[str, ...]
    targets: ScreenTargets | None
    """None: a weight the float screen cannot carry (every turn is the actor's)."""
    balances: list[int] | None = None
    holdings: ScreenHoldings | None = None

    @classmethod
    def of(cls, spec: PortfolioSpec) -> _Waiter:
        targets = ScreenTargets.of(
            [t.symbol for t in spec.tokens],
            [t.decimals for t in spec.tokens],
            [Decimal(spec.targets.get(t.symbol, 0)) for t in spec.tokens],
        )
        return cls(spec, tuple(t.address for t in spec.tokens), targets)

    def screened(self, balances: list[int]) -> ScreenHoldings | None:
        if balances != self.balances and self.targets is not None:
            self.balances, self.holdings = balances, self.targets.holdings(balances)
        return self.holdings


@attrs.frozen(eq=False)
class _Turn:
    """One wait of one actor: its portfolio, and what wakes it."""

    waiter: _Waiter
    woken: trio.Event = attrs.Factory(trio.Event)


@attrs.define(eq=False)
class TickScreen:
    """The portfolio actors' turns (:class:`daemon.portfolio.Turns`) when balances are held."""

    snapshots: Latest[PriceSnapshot]
    balances: HeldView
    config: ConfigSource
    now: Callable[[], datetime]
    records_valuations: bool
    """Whether the actors store valuations (a due one wakes its actor)."""
    ticks: Latest[ScreenedTick] = attrs.Factory(Latest)
    """The last pass's figures."""
    _params: RuntimeParamsBook = attrs.field(
        init=False,
        default=attrs.Factory(lambda self: RuntimeParamsBook(self.config), takes_self=True),
    )
    _waiting: dict[PortfolioState, _Turn] = attrs.field(factory=dict, init=False)
    _known: weakref.WeakKeyDictionary[PortfolioState, _Waiter] = attrs.field(
        factory=weakref.WeakKeyDictionary, init=False
    )
    """Each running portfolio's :class:`_Waiter`, kept between its waits (forgotten with its
    state when the portfolio stops)."""

    async def wait_turn(self, spec: PortfolioSpec, state: PortfolioState) -> None:
        """Until the screen wakes this actor (or a request cancels the wait:
        :meth:`PortfolioState.request_evaluation`), or at once for a snapshot it missed."""
        if self.snapshots.value is not None and self.snapshots.version > state.seen_version:
            await trio.lowlevel.checkpoint()
            return
        waiter = self._known.get(state)
        if waiter is None or waiter.spec is not spec:
            waiter = self._known[state] = _Waiter.of(spec)
        # Its float holdings now, in its own task, rather than in the next pass over all.
        balances = self.balances.held(spec.account, waiter.addresses)
        if balances is not None:
            waiter.screened(balances)
        turn = self._waiting[state] = _Turn(waiter)
        try:
            await turn.woken.wait()
        finally:
            # After a restart the next incarnation may have registered already: keep it.
            if self._waiting.get(state) is turn:
                del self._waiting[state]

    async def run(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> NoReturn:
        """Screen every new snapshot, forever."""
        log = get_logger(actor="tick_screen")
        task_status.started()
        version = 0
        while True:
            version, snapshot = await self.snapshots.wait_newer(version)
            try:
                await self.balances.refresh()
            except ChainError:
                balances_known = False
            else:
                balances_known = True
            tick = self.screen(version, snapshot, balances_known=balances_known)
            self.ticks.publish(tick)
            log.debug(
                "tick_screened",
                version=tick.version,
                woken=tick.woken,
                settled=tick.settled,
                seconds=round(tick.seconds, 4),
            )

    def screen(
        self, version: int, snapshot: PriceSnapshot, *, balances_known: bool
    ) -> ScreenedTick:
        """Wake or settle every waiting actor that has not evaluated ``snapshot`` yet.

        Synchronous: no actor runs (nor leaves the waiting set) until the pass is over."""
        started = time.perf_counter()
        now = self.now()
        params = self._params.current()
        prices = _TickPrices(snapshot, now, params.max_age)
        limit = screen_limit(params)
        valuations_from = (
            trio.current_time() - params.valuation_interval if self.records_valuations else None
        )
        woken = settled = 0
        failed: list[str] = []
        for state, turn in self._waiting.items():
            if state.seen_version >= version or turn.woken.is_set():
                continue  # it evaluated this snapshot already, or is about to
            waiter = turn.waiter
            try:
                drift = (
                    self._settled_drift(state, waiter, prices, limit, valuations_from)
                    if balances_known
                    else None
                )
            except Exception as exc:  # noqa: BLE001 - a screen fault must wake, never hide
                failed.append(f"{waiter.spec.name}: {type(exc).__name__}: {exc}")
                drift = None
            if drift is None:
                # An event, not a cancellation: waking 10 000 actors by cancelling their
                # waits cost ~100 µs each (an exception unwound through each wait).
                turn.woken.set()
                woken += 1
                continue
            state.settle(version, now, drift)
            settled += 1
        if failed:
            # A bug, not a portfolio's problem: those actors evaluate exactly meanwhile.
            get_logger(actor="tick_screen").error(
                "tick_screen_failed", portfolios=len(failed), first=failed[0]
            )
        return ScreenedTick(version, woken, settled, time.perf_counter() - started)

    def _settled_drift(
        self,
        state: PortfolioState,
        waiter: _Waiter,
        prices: _TickPrices,
        limit: float,
        valuations_from: float | None,
    ) -> float | None:
        """The float drift when the screen may settle this actor's turn, else None (wake)."""
        if (
            not state.accepted
            or state.paused
            or state.evaluation_requested
            or state.last_decision != WITHIN_TOLERANCE
            or (valuations_from is not None and valuation_due(state, valuations_from))
            or waiter.targets is None
        ):
            return None
        priced = prices.of(waiter.targets.symbols)
        if priced is None:
            return None
        balances = self.balances.held(waiter.spec.account, waiter.addresses)
        holdings = None if balances is None else waiter.screened(balances)
        if holdings is None:
            return None
        drift = screen_drift(holdings, priced)
        if drift is None or drift >= limit:
            return None
        return drift


@attrs.define(eq=False)
class _TickPrices:
    """One snapshot's usable prices as floats, per set of tokens (portfolios share a few)."""

    snapshot: PriceSnapshot
    now: datetime
    max_age: float
    _by_symbols: dict[tuple[str, ...], ScreenPrices | None] = attrs.field(factory=dict)

    def of(self, symbols: tuple[str, ...]) -> ScreenPrices | None:
        """None when a price is not usable: missing, stale or invalid (the actor's exact
        path tells which) or not a normal float."""
        try:
            return self._by_symbols[symbols]
        except KeyError:
            pass
        usable = self.snapshot.usable_prices(list(symbols), self.now, self.max_age)
        priced = (
            None
            if isinstance(usable, NoPrices)
            else ScreenPrices.of(symbols, usable, self.snapshot.health)
        )
        self._by_symbols[symbols] = priced
        return priced

"""The portfolio actor: one per active portfolio, run by the supervisor.

On its turn — every new price snapshot (:class:`EverySnapshot`), or, with balances held in
memory, the snapshots the tick screen wakes it for (:mod:`daemon.tick_screen`: the others it
settles itself) — or on a manual trigger, it reads the smart account's balances, runs the pure
engine, and — when the engine says REBALANCE and the cooldown has passed — sends the plan to
the executor and waits for the outcome on its own reply channel. Everything it must remember
across crashes lives in :class:`PortfolioState`, which the supervisor owns; the cooldown clock in
it is seeded from ``rebalance_log`` when the actor is first created, so it also survives process
restarts.

Skips are logged with their reason (bad prices, cooldown, failure backoff, paused, a signer that
cannot send); they are not rebalance attempts, so they write no ``rebalance_log`` row — only what
reaches the executor does. The outcome of an attempt is recorded in the state by the executor's
hook (:func:`record_outcome`), not by the actor that asked: a reply the actor never received (it
was restarted meanwhile) still starts the cooldown. The actor's own checks only save work; the
executor and the database are what refuse a second trade (DESIGN.md §4.9).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from collections.abc import Set as AbstractSet
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol

import attrs
import trio
from structlog.typing import FilteringBoundLogger

from daemon.backoff import Backoff
from daemon.chain_errors import ChainError
from daemon.cooldown import cooldown_message, cooldown_remaining
from daemon.drift import (
    SCREEN_MARGIN,
    WITHIN_TOLERANCE,
    Decision,
    EngineParams,
    Holding,
    InvalidPortfolio,
    NoRebalance,
    Rebalance,
    evaluate,
    screened_max_drift,
)
from daemon.faults import Faults
from daemon.latest import Latest
from daemon.logs import get_logger
from daemon.messages import (
    NoPrices,
    PriceSnapshot,
    RebalanceOutcome,
    RebalanceRequest,
    Token,
    ValuationKind,
)

if TYPE_CHECKING:
    from daemon.alerts import Alerter
    from daemon.config import Config
    from daemon.live_config import ConfigSource


@attrs.frozen
class PortfolioSpec:
    """A portfolio as registered: what to hold and where."""

    id: int
    name: str
    account: str
    """The smart account (or, in wallet mode, the signer) holding the tokens."""
    targets: Mapping[str, Decimal]
    tokens: tuple[Token, ...]


@attrs.define(eq=False)
class PortfolioState:
    """What a portfolio actor knows, kept by the supervisor across restarts."""

    last_success_at: datetime | None = None
    """The cooldown clock: when the last trade (SUCCESS, PARTIAL, or a dry run) was recorded."""
    failures: int = 0
    """FAILED attempts since the last trade."""
    retry_at: datetime | None = None
    """After a FAILED attempt: no new request before this (exponential backoff)."""
    _last_max_drift: Decimal | float | None = attrs.field(default=None, alias="last_max_drift")
    """:attr:`last_max_drift` as last set: exact, or the tick screen's float (not converted
    until read: 10 000 conversions per tick cost more than the screen's arithmetic)."""
    last_decision: str | None = None
    last_evaluated_at: datetime | None = None
    last_outcome: RebalanceOutcome | None = None
    paused: bool = False
    seen_version: int = 0
    in_flight: bool = False
    evaluations: int = 0
    last_valuation_at: float | None = None
    valuation_after_trade: bool = False
    """A trade of the portfolio settled: the next evaluation stores an ``after_rebalance``
    valuation (its balances include the trade), whatever the interval."""
    accepted: bool = False
    """The engine has evaluated this portfolio without finding it malformed (from then on a
    float screen may skip the exact evaluation far inside the threshold)."""
    evaluation_requested: bool = False
    """Evaluate now without waiting for the next snapshot (``driftd rebalance``, through
    :meth:`daemon.portfolio_supervisor.PortfolioSupervisor.evaluate_now`)."""
    waiting: trio.CancelScope | None = attrs.field(default=None, repr=False)
    """The actor's wait for the next snapshot, while it waits (cancelled by a request)."""
    evaluated: trio.Event = attrs.Factory(trio.Event)
    """Set (and replaced) after each evaluation, including any rebalance it started."""

    @property
    def last_max_drift(self) -> Decimal | None:
        """The largest drift last found: the exact engine's, or the float screen's to 6
        decimals."""
        drift = self._last_max_drift
        if isinstance(drift, float):
            drift = self._last_max_drift = Decimal(f"{drift:.6f}")
        return drift

    @last_max_drift.setter
    def last_max_drift(self, drift: Decimal | None) -> None:
        self._last_max_drift = drift

    def settle(self, version: int, at: datetime, drift: float) -> None:
        """Snapshot ``version`` evaluated by the tick screen at ``at``: within tolerance, as the
        last decision already says, with a float ``drift``."""
        self.seen_version = version
        self.evaluations += 1
        self.last_evaluated_at = at
        self._last_max_drift = drift

    def request_evaluation(self) -> None:
        """Make the actor evaluate now (or, if it is evaluating, once more right after)."""
        self.evaluation_requested = True
        if self.waiting is not None:
            self.waiting.cancel()


@attrs.frozen
class RuntimeParams:
    """The parameters an evaluation uses, read fresh each time (SIGHUP and DB changes apply)."""

    engine: EngineParams
    cooldown_minutes: Decimal
    max_age: float
    """``prices.max_age``: older prices are not traded on."""
    high_drift: Decimal
    """``alerts.high_drift``: a larger drift raises HIGH_DRIFT."""
    valuation_interval: float
    """``report.valuation_interval``: seconds between stored valuations."""

    @classmethod
    def from_config(cls, config: Config) -> RuntimeParams:
        return cls(
            engine=EngineParams.from_config(config),
            cooldown_minutes=config.rebalance.cooldown_minutes,
            max_age=config.prices.max_age,
            high_drift=config.alerts.high_drift,
            valuation_interval=config.report.valuation_interval,
        )


@attrs.define(eq=False)
class RuntimeParamsBook:
    """:class:`RuntimeParams` of the current configuration, built once per configuration.

    Every actor reads its parameters at every evaluation (a reload applies at once); with 10 000
    actors building them afresh each time cost as much as a screened evaluation. A reload or a
    REBALANCING_PARAMS change installs a new configuration object, which is all this checks."""

    config: ConfigSource
    _built_from: Config | None = attrs.field(default=None, init=False)
    _params: RuntimeParams | None = attrs.field(default=None, init=False)

    def current(self) -> RuntimeParams:
        config = self.config.current
        if self._params is None or config is not self._built_from:
            self._params = RuntimeParams.from_config(config)
            self._built_from = config
        return self._params


class BalanceReader(Protocol):
    """Reads an account's balances (implemented by :class:`daemon.balances.BalanceBatcher`)."""

    async def read_with_block(
        self, account: str, tokens: Iterable[str]
    ) -> tuple[Mapping[str, int], int | None]:
        """(balance by token address in base units, the block they were read at or after)."""

    def traded(self) -> None:
        """The portfolio's trade was mined: the next read must see balances from after it."""


class ExecutorState(Protocol):
    """What an actor asks the executor before it sends a request
    (:class:`daemon.executor.Executor`)."""

    @property
    def in_flight(self) -> AbstractSet[int]:
        """Portfolio ids with an attempt being carried out (or recovered)."""

    def signer_blocked(self) -> str | None:
        """Why the signer cannot send now (no gas money…), or None."""


class DelegationCheck(Protocol):
    """Whether a portfolio's delegations can be redeemed now
    (:class:`daemon.modes.ExecutionModeBook`)."""

    def delegation_problem(self, portfolio_id: int) -> str | None:
        """Why not (expired), or None."""


class ValuationRecorder(Protocol):
    """Stores valuation snapshots (:class:`daemon.history.Valuations`)."""

    def record(
        self,
        spec: PortfolioSpec,
        decision: Decision,
        holdings: list[Holding],
        prices: Mapping[str, Decimal],
        kind: ValuationKind,
    ) -> None:
        """Queue one valuation for storage: no waiting, never raises for a database problem."""


class Admission(Protocol):
    """Whether new rebalances are taken (False while the daemon stops)."""

    @property
    def accepting(self) -> bool: ...


class HealthReport(Protocol):
    """Hears about completed evaluations (:class:`daemon.supervise.Supervisor`)."""

    def mark_healthy(self, key: str) -> None:
        """The actor ``key`` completed a cycle: its next crash backs off from scratch."""


class Turns(Protocol):
    """When an actor evaluates next: :class:`EverySnapshot`, or the tick screen
    (:class:`daemon.tick_screen.TickScreen`), which wakes only the actors that need the exact
    engine and settles the others itself."""

    async def wait_turn(self, spec: PortfolioSpec, state: PortfolioState) -> None:
        """Return when the actor must evaluate (a request cancels the wait: see
        :meth:`PortfolioState.request_evaluation`)."""


@attrs.define(eq=False)
class EverySnapshot:
    """Every actor evaluates every new snapshot: for balances read from the node on each
    evaluation, which no screen outside the actor could see without reading them itself."""

    snapshots: Latest[PriceSnapshot]

    async def wait_turn(self, spec: PortfolioSpec, state: PortfolioState) -> None:
        await self.snapshots.wait_newer(state.seen_version)


def no_field_reprs(cls: type, fields: list[attrs.Attribute[Any]]) -> list[attrs.Attribute[Any]]:
    """An attrs ``field_transformer``: no field in the ``repr`` (nor in a pretty-printer that
    reads the fields, such as a traceback rendering frame locals). For records of services: a
    crash report must not render every service behind them (slow, and large)."""
    return [field.evolve(repr=False) for field in fields]


@attrs.frozen(field_transformer=no_field_reprs)
class PortfolioDeps:
    """What a portfolio actor needs from the rest of the process (no field in its ``repr``)."""

    snapshots: Latest[PriceSnapshot]
    balances: BalanceReader
    requests: trio.MemorySendChannel[RebalanceRequest]
    """The executor's inbox."""
    executor: ExecutorState
    delegations: DelegationCheck
    config: ConfigSource
    """Read afresh at every evaluation, through :attr:`params`."""
    now: Callable[[], datetime]
    alerts: Alerter
    admission: Admission
    supervisor: HealthReport
    valuations: ValuationRecorder | None = None
    """Stores valuations (every ``report.valuation_interval`` seconds, and around trades)."""
    faults: Faults = attrs.Factory(Faults)
    """Test hook: raises at named points (``evaluate``) to exercise supervision."""
    turns: Turns = attrs.field(
        default=attrs.Factory(lambda self: EverySnapshot(self.snapshots), takes_self=True)
    )
    """When each actor evaluates (by default: on every new snapshot)."""
    params: RuntimeParamsBook = attrs.field(
        init=False,
        default=attrs.Factory(lambda self: RuntimeParamsBook(self.config), takes_self=True),
    )


async def run_portfolio_actor(
    spec: PortfolioSpec, state: PortfolioState, deps: PortfolioDeps
) -> None:
    """Evaluate whenever :attr:`PortfolioDeps.turns` says so or an operator asks, forever."""
    state.accepted = False  # the spec may be new: the first evaluation is exact
    log = get_logger(actor="portfolio", portfolio=spec.name)  # bound once, not per evaluation
    while True:
        await _next_cause(spec, state, deps)
        state.seen_version = deps.snapshots.version  # the snapshot this evaluation reads
        try:
            await evaluate_portfolio(spec, state, deps, log)
        finally:
            done, state.evaluated = state.evaluated, trio.Event()
            done.set()
        deps.supervisor.mark_healthy(spec.name)


async def _next_cause(spec: PortfolioSpec, state: PortfolioState, deps: PortfolioDeps) -> None:
    """Until the actor's turn (:attr:`PortfolioDeps.turns`), or a request to evaluate now.

    In the actor's own task, under a cancel scope the request cancels: no task is spawned per
    tick (with 10 000 actors a nursery per wait cost more than the engine)."""
    if not state.evaluation_requested:
        with trio.CancelScope() as scope:
            state.waiting = scope
            try:
                await deps.turns.wait_turn(spec, state)
            finally:
                # A restart starts the next incarnation before this one has unwound: never
                # clear its wait (a request could then no longer wake it).
                if state.waiting is scope:
                    state.waiting = None
    state.evaluation_requested = False


@attrs.frozen
class _Priced:
    """What an evaluation trades on: the snapshot and its usable prices."""

    snapshot: PriceSnapshot
    prices: Mapping[str, Decimal]


@attrs.frozen
class _Skip:
    """An evaluation that ends without a request, and why."""

    reason: str
    fields: Mapping[str, object] = attrs.Factory(dict)


async def evaluate_portfolio(
    spec: PortfolioSpec,
    state: PortfolioState,
    deps: PortfolioDeps,
    log: FilteringBoundLogger | None = None,
) -> str:
    """One evaluation; returns what happened in a few words (for logs, tests and control)."""
    log = log or get_logger(actor="portfolio", portfolio=spec.name)
    deps.faults.check("evaluate", spec.name)
    now = deps.now()
    params = deps.params.current()
    state.evaluations += 1
    state.last_evaluated_at = now
    if state.paused:
        return _skip(state, log, "paused")
    priced = _usable_prices(spec, deps, now, params)
    if isinstance(priced, _Skip):
        return _skip(state, log, priced.reason)
    try:
        by_address, balances_block = await deps.balances.read_with_block(
            spec.account, [t.address for t in spec.tokens]
        )
    except ChainError as exc:
        # The node is unwell, not the portfolio: skip this tick (crashing would park the actor
        # after a few ticks of an RPC outage, and nothing would resume it).
        return _skip(state, log, f"No trade: balances unavailable: {exc}")
    holdings = [Holding(t.symbol, by_address[t.address], t.decimals) for t in spec.tokens]
    screened = _screened(spec, state, deps, priced, holdings, params)
    if screened is not None:
        state.last_max_drift = screened
        return _skip(state, log, WITHIN_TOLERANCE, max_drift=screened)
    try:
        decision = evaluate(
            holdings, spec.targets, priced.prices, priced.snapshot.health, params=params.engine
        )
    except InvalidPortfolio as exc:
        return _skip(state, log, f"No trade: invalid portfolio: {exc}")
    state.last_max_drift = decision.max_drift
    state.accepted = True
    held_back = (
        None
        if isinstance(decision, NoRebalance)
        else _held_back(spec, state, deps, decision, now, params)
    )
    trading = isinstance(decision, Rebalance) and held_back is None
    _record_valuation(spec, state, deps, decision, holdings, priced, params, trading=trading)
    if decision.max_drift is not None and decision.max_drift > params.high_drift:
        deps.alerts.fire(
            "HIGH_DRIFT",
            {"portfolio": spec.name, "drift": str(decision.max_drift)},
        )
    if isinstance(decision, NoRebalance):
        return _skip(state, log, decision.reason, max_drift=decision.max_drift)
    if held_back is not None:
        return _skip(state, log, held_back.reason, **held_back.fields)
    return await _request(spec, state, deps, decision, priced, balances_block, log)


def _screened(
    spec: PortfolioSpec,
    state: PortfolioState,
    deps: PortfolioDeps,
    priced: _Priced,
    holdings: list[Holding],
    params: RuntimeParams,
) -> Decimal | None:
    """The largest drift (6 decimals) when a float screen shows it far below the threshold and
    no valuation is due, so the exact evaluation can be skipped; else None (evaluate exactly).

    Only for a portfolio the engine has accepted before (the screen does not validate), and
    never a decision to trade: that is always the exact engine's."""
    if not state.accepted or _valuation_due(state, deps, params):
        return None
    drift = screened_max_drift(holdings, spec.targets, priced.prices, priced.snapshot.health)
    if drift is None or drift >= screen_limit(params):
        return None
    return Decimal(f"{drift:.6f}")


def _usable_prices(
    spec: PortfolioSpec, deps: PortfolioDeps, now: datetime, params: RuntimeParams
) -> _Priced | _Skip:
    """The snapshot's prices of the portfolio's tokens, or why they cannot be traded on (a
    stale one raises PRICE_STALE)."""
    snapshot = deps.snapshots.value
    if snapshot is None:
        return _Skip("No trade: no price snapshot yet")
    symbols = [token.symbol for token in spec.tokens]
    prices = snapshot.usable_prices(symbols, now, params.max_age)
    if isinstance(prices, NoPrices):
        if prices.stale:
            deps.alerts.fire("PRICE_STALE", {"portfolio": spec.name, "reason": prices.reason})
        return _Skip(prices.reason)
    return _Priced(snapshot, prices)


def _held_back(
    spec: PortfolioSpec,
    state: PortfolioState,
    deps: PortfolioDeps,
    decision: Rebalance,
    now: datetime,
    params: RuntimeParams,
) -> _Skip | None:
    """Why a plan the engine made must not be sent now, or None: the cooldown, the failure
    backoff, a stopping daemon, an attempt in flight, unusable delegations, a blocked signer."""
    drift: dict[str, object] = {"max_drift": decision.max_drift}
    remaining = cooldown_remaining(state.last_success_at, now, params.cooldown_minutes)
    if remaining.total_seconds() > 0:
        return _Skip(
            cooldown_message(remaining),
            {**drift, "cooldown_seconds": int(remaining.total_seconds())},
        )
    if state.retry_at is not None and now < state.retry_at:
        wait = int((state.retry_at - now).total_seconds()) + 1
        return _Skip(
            f"No trade: backing off after {state.failures} failed attempt(s), {wait} s left",
            drift,
        )
    if not deps.admission.accepting:
        return _Skip("No trade: the daemon is stopping", drift)
    if spec.id in deps.executor.in_flight:
        # An attempt of this portfolio (made before this actor restarted, or being recovered)
        # is still settling; the executor would refuse, this saves it the row.
        return _Skip("No trade: a rebalance of this portfolio is in flight", drift)
    unusable = deps.delegations.delegation_problem(spec.id)
    if unusable is not None:
        return _Skip(unusable, drift)
    blocked = deps.executor.signer_blocked()
    if blocked is not None:
        return _Skip(f"No trade: the signer cannot send: {blocked}", drift)
    return None


async def _request(
    spec: PortfolioSpec,
    state: PortfolioState,
    deps: PortfolioDeps,
    decision: Rebalance,
    priced: _Priced,
    balances_block: int | None,
    log: FilteringBoundLogger,
) -> str:
    """Send the plan to the executor and wait for its outcome."""
    reply_send, reply_receive = trio.open_memory_channel[RebalanceOutcome](1)
    symbols = [token.symbol for token in spec.tokens]
    request = RebalanceRequest(
        portfolio_id=spec.id,
        portfolio_name=spec.name,
        account=spec.account,
        plan=decision,
        prices=priced.prices,
        reply=reply_send,
        requested_at=trio.current_time(),
        balances_block=balances_block,
        prices_observed_at=min(priced.snapshot.prices[symbol].observed_at for symbol in symbols),
    )
    log.info(
        "rebalance_requested",
        max_drift=str(decision.max_drift),
        legs=[f"{leg.sell}->{leg.buy} {leg.usd:.2f} USD" for leg in decision.legs],
    )
    state.in_flight = True
    try:
        async with reply_receive:
            await deps.requests.send(request)
            outcome = await reply_receive.receive()
    finally:
        state.in_flight = False
    if outcome.status in ("SUCCESS", "PARTIAL"):
        deps.balances.traded()
    state.last_outcome = outcome
    state.last_decision = f"{outcome.status}: {outcome.error or outcome.tx_hash or ''}".strip()
    log.info(
        "rebalance_finished", status=outcome.status, tx_hash=outcome.tx_hash, error=outcome.error
    )
    return outcome.status


def record_outcome(
    state: PortfolioState,
    status: str,
    now: datetime,
    *,
    backoff: float,
    backoff_max: float,
) -> None:
    """What a finished attempt means for the portfolio's clocks (called by the executor's hook,
    for live and recovered attempts alike)."""
    if status in ("SUCCESS", "PARTIAL", "DRY_RUN"):
        # A dry run keeps the cooldown too, so it shows what live trading would do (and does not
        # log the same plan on every tick). A partial trade moved tokens: it cools down too.
        state.last_success_at = now
        state.failures = 0
        state.retry_at = None
        if status != "DRY_RUN":
            state.valuation_after_trade = True
    elif status == "FAILED":
        state.failures += 1
        state.retry_at = now + failure_backoff(state.failures, backoff, backoff_max)


def failure_backoff(failures: int, initial: float, ceiling: float) -> timedelta:
    """Wait after the ``failures``-th consecutive FAILED attempt: doubling, capped."""
    if failures <= 0:
        return timedelta(0)
    # The doubling stops after 30 steps whatever the ceiling (as it always has): folded into
    # the maximum, since min(c, i·2^min(n, 30)) = min(c, i·2^30, i·2^n).
    schedule = Backoff(initial=initial, maximum=min(ceiling, initial * 2**30))
    return timedelta(seconds=schedule.delay(failures - 1))


def _record_valuation(
    spec: PortfolioSpec,
    state: PortfolioState,
    deps: PortfolioDeps,
    decision: Decision,
    holdings: list[Holding],
    priced: _Priced,
    params: RuntimeParams,
    *,
    trading: bool,
) -> None:
    """Queue a valuation when one is due: before a request (``before_rebalance``), at the first
    evaluation after a trade (``after_rebalance``), else every ``report.valuation_interval``.

    Valuations are history for reports, not control: queuing costs no await, and storing one
    (in batches, :class:`daemon.history.Valuations`) can never hold the portfolio back."""
    if deps.valuations is None:
        return
    kind: ValuationKind
    if trading:
        kind = "before_rebalance"
    elif state.valuation_after_trade:
        kind = "after_rebalance"
    elif _valuation_due(state, deps, params):
        kind = "interval"
    else:
        return
    now = trio.current_time()
    if kind == "interval" and state.last_valuation_at is None:
        # Portfolios started together would all come due on the same tick, every interval
        # (10 000 actors woken at once): the first one's clock is set back by a share of the
        # interval fixed by the portfolio id, so its next valuation comes sooner, never later.
        now -= valuation_phase(spec.id) * params.valuation_interval
    state.last_valuation_at = now
    state.valuation_after_trade = False
    deps.valuations.record(spec, decision, holdings, priced.prices, kind)


def valuation_phase(portfolio_id: int) -> float:
    """A share of the valuation interval in [0, 1), spread evenly over consecutive ids (the
    golden ratio's fractional part: any run of ids covers the interval without clumping)."""
    return (portfolio_id * 0.6180339887498949) % 1.0


def _valuation_due(state: PortfolioState, deps: PortfolioDeps, params: RuntimeParams) -> bool:
    return deps.valuations is not None and valuation_due(
        state, trio.current_time() - params.valuation_interval
    )


def valuation_due(state: PortfolioState, last_due: float) -> bool:
    """Whether the portfolio's next evaluation stores a valuation (when valuations are kept):
    one after a trade, a first one, or when the last was taken at or before ``last_due``
    (``trio.current_time()`` minus ``report.valuation_interval``)."""
    return (
        state.valuation_after_trade
        or state.last_valuation_at is None
        or state.last_valuation_at <= last_due
    )


def screen_limit(params: RuntimeParams) -> float:
    """The float drift below which an evaluation may be settled without the exact engine:
    :data:`~daemon.drift.SCREEN_MARGIN` below the drift threshold, or below ``high_drift`` when
    that is lower (HIGH_DRIFT is the exact engine's to raise, too)."""
    return float(min(params.engine.drift_threshold, params.high_drift)) - SCREEN_MARGIN


def _skip(state: PortfolioState, log: FilteringBoundLogger, reason: str, **fields: object) -> str:
    # "Still within tolerance" on every tick of every portfolio says nothing an operator needs
    # (health and metrics show the drift): info when the decision changes, debug otherwise.
    # Other skips (cooldown, stale prices, paused…) stay at info every time.
    repeated = reason == WITHIN_TOLERANCE and state.last_decision == WITHIN_TOLERANCE
    state.last_decision = reason
    printable = {k: (str(v) if isinstance(v, Decimal) else v) for k, v in fields.items()}
    (log.debug if repeated else log.info)("rebalance_skipped", reason=reason, **printable)
    return reason

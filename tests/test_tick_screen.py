"""The tick screen (:mod:`daemon.tick_screen`): one pass per snapshot wakes only the portfolio
actors that need the exact engine and settles the others.

The money-safety property comes first: whatever a portfolio looks like, the screen never
settles one whose exact decision would be anything but "within tolerance" (a trade, a skip for
a reason, a HIGH_DRIFT alert). Then the actor under the screen, on the fakes of
``test_portfolio_unit.py``: what wakes it, what the screen keeps current for health and
metrics, valuations on time, a busy actor, a failed balance refresh, a fault in the screen.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from decimal import Decimal

import attrs
import pytest
import structlog
import trio
import trio.testing
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from schema_defaults import config, holder
from test_drift_screen import extreme_portfolios
from test_portfolio_unit import (
    BELOW_THRESHOLD,
    CONFIG,
    DRIFTED,
    EPOCH,
    SPEC,
    USDC,
    WETH,
    Actor,
    holding,
    wall_clock,
)

from daemon.chain_errors import ChainError
from daemon.config import Config
from daemon.drift import (
    WITHIN_TOLERANCE,
    Decision,
    Holding,
    InvalidPortfolio,
    NoRebalance,
    evaluate,
)
from daemon.faults import Faults
from daemon.latest import Latest
from daemon.live_config import ConfigHolder
from daemon.messages import PricePoint, PriceSnapshot, Token, ValuationKind
from daemon.portfolio import (
    PortfolioSpec,
    PortfolioState,
    RuntimeParams,
    run_portfolio_actor,
    screen_limit,
    valuation_phase,
)
from daemon.tick_screen import TickScreen

FAR_INSIDE = holding("5100", "1.96")  # 4 900 USD of WETH: drift 0.02


# --- the property: the screen never settles what the exact engine would not ---------------------


@settings(max_examples=400, deadline=None)
@given(
    extreme_portfolios(),
    st.sampled_from([Decimal("0.01"), Decimal("0.05"), Decimal("0.15"), Decimal("0.3")]),
    st.sampled_from([Decimal("0.02"), Decimal("0.1"), Decimal("0.25"), Decimal(1)]),
)
def test_the_screen_wakes_every_actor_whose_exact_decision_is_not_within_tolerance(
    drawn: tuple[list[Holding], dict[str, Decimal], dict[str, Decimal], dict[str, str]],
    threshold: Decimal,
    high_drift: Decimal,
) -> None:
    """An actor as settle-able as one can be (accepted, last found within tolerance, nothing
    due): the screen settles it only when the exact engine, on the same balances and prices,
    says "within tolerance" with no HIGH_DRIFT — never when it would trade, skip for any other
    reason, or alert."""
    holdings, weights, prices, health = drawn
    running = config(rebalance={"drift_threshold": threshold}, alerts={"high_drift": high_drift})
    params = RuntimeParams.from_config(running)
    try:
        decision = evaluate(holdings, weights, prices, health, params=params.engine)
    except InvalidPortfolio:
        assume(False)
        return
    tokens = tuple(Token(h.symbol, f"0x{i + 1:040x}", h.decimals) for i, h in enumerate(holdings))
    spec = PortfolioSpec(1, "p", "0x" + "ab" * 20, weights, tokens)
    balances = {t.address: h.balance for t, h in zip(tokens, holdings, strict=True)}
    settled = trio.run(_one_tick, spec, balances, prices, health, running)
    exact_within = (
        isinstance(decision, NoRebalance)
        and decision.reason == WITHIN_TOLERANCE
        and decision.max_drift is not None
        and decision.max_drift <= high_drift
    )
    if settled is not None:
        assert exact_within, decision
        assert decision.max_drift is not None
        assert abs(settled - decision.max_drift) <= Decimal("0.0000005") + Decimal("1e-12")
        assert settled < min(threshold, high_drift)


async def _one_tick(
    spec: PortfolioSpec,
    balances: Mapping[str, int],
    prices: Mapping[str, Decimal],
    health: Mapping[str, str],
    running: Config,
) -> Decimal | None:
    """Register one settle-able actor, screen one snapshot; its settled drift, or None if
    the screen woke it."""
    snapshots: Latest[PriceSnapshot] = Latest()
    screen = TickScreen(
        snapshots,
        HeldDict(balances),
        ConfigHolder(base=running),
        lambda: EPOCH,
        records_valuations=False,
    )
    state = PortfolioState(accepted=True, last_decision=WITHIN_TOLERANCE)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(screen.wait_turn, spec, state)
        await trio.testing.wait_all_tasks_blocked()
        snapshots.publish(snapshot_of(prices, health))
        tick = screen.screen(snapshots.version, snapshots.value, balances_known=True)  # type: ignore[arg-type]
        nursery.cancel_scope.cancel()
    assert tick.woken + tick.settled == 1
    return None if tick.woken else state.last_max_drift


@attrs.define
class HeldDict:
    balances: Mapping[str, int]

    async def refresh(self) -> None:
        await trio.lowlevel.checkpoint()

    def held(self, account: str, tokens: Sequence[str]) -> list[int] | None:
        return [self.balances[t] for t in tokens]


def snapshot_of(prices: Mapping[str, Decimal], health: Mapping[str, str]) -> PriceSnapshot:
    return PriceSnapshot(
        prices={s: PricePoint(s, usd, EPOCH, "oracle") for s, usd in prices.items()},
        taken_at=EPOCH,
        source="oracle",
        health=dict(health),
    )


def test_the_limit_is_below_both_the_threshold_and_high_drift() -> None:
    low_alert = RuntimeParams.from_config(config(alerts={"high_drift": Decimal("0.05")}))
    assert screen_limit(low_alert) == pytest.approx(0.04)
    default = RuntimeParams.from_config(config())
    assert screen_limit(default) == pytest.approx(0.14)


# --- the actor under the screen ------------------------------------------------------------------


@attrs.define(eq=False)
class ScreenedActor(Actor):
    """The unit tests' actor, wired as the daemon wires it with held balances: the tick screen
    decides its turns, and balances come from memory (``held``) for the screen and, through
    ``read_with_block``, for the actor. The ``*_error`` fields make those fail."""

    valuations: list[tuple[ValuationKind, float]] = attrs.Factory(list)
    refresh_error: ChainError | None = None
    read_error: ChainError | None = None
    held_error: Exception | None = None
    screen: TickScreen = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.screen = TickScreen(self.snapshots, self, CONFIG, wall_clock, True)
        self.deps = attrs.evolve(self.deps, turns=self.screen, valuations=self)

    async def refresh(self) -> None:
        await trio.lowlevel.checkpoint()
        if self.refresh_error is not None:
            raise self.refresh_error

    def held(self, account: str, tokens: Sequence[str]) -> list[int] | None:
        if self.held_error is not None:
            raise self.held_error
        return [self.balances[t] for t in tokens]

    def traded(self) -> None:
        """Balances here are read afresh every time."""

    async def read_with_block(
        self, account: str, tokens: Iterable[str]
    ) -> tuple[Mapping[str, int], int | None]:
        if self.read_error is not None:
            raise self.read_error
        return await super().read_with_block(account, tokens)

    def record(
        self,
        spec: PortfolioSpec,
        decision: Decision,
        holdings: list[Holding],
        prices: Mapping[str, Decimal],
        kind: ValuationKind,
    ) -> None:
        self.valuations.append((kind, trio.current_time()))

    async def start(self, nursery: trio.Nursery, state: PortfolioState | None = None) -> None:
        await nursery.start(self.screen.run)
        await super().start(nursery, state)

    async def tick(self) -> tuple[int, int]:
        """Publish a fresh snapshot; once the screen has passed and every actor it woke is
        done, how many it woke and how many it settled."""
        passes = self.screen.ticks.version
        self.publish()
        _, tick = await self.screen.ticks.wait_newer(passes)
        await trio.testing.wait_all_tasks_blocked()
        return tick.woken, tick.settled


async def running(actor: Actor, body: Callable[[], Awaitable[None]]) -> None:
    async with trio.open_nursery() as nursery:
        await actor.start(nursery)
        await trio.testing.wait_all_tasks_blocked()
        await body()
        nursery.cancel_scope.cancel()


WOKEN = (1, 0)
SETTLED = (0, 1)


async def test_far_inside_tolerance_the_screen_settles_the_tick_and_keeps_health_current(
    autojump_clock: trio.testing.MockClock,
) -> None:
    actor = ScreenedActor(balances=dict(FAR_INSIDE))

    async def body() -> None:
        assert await actor.tick() == WOKEN  # the first evaluation is exact
        assert (actor.reads, actor.state.evaluations) == (1, 1)
        assert actor.state.last_max_drift == Decimal("0.02")
        for _ in range(3):
            await trio.sleep(30)
            assert await actor.tick() == SETTLED
        state = actor.state
        assert actor.reads == 1, "settled ticks read nothing"
        assert state.evaluations == 4
        assert state.last_evaluated_at == wall_clock()
        assert state.last_max_drift == Decimal("0.020000")
        assert state.last_decision == WITHIN_TOLERANCE
        assert state.seen_version == actor.snapshots.version
        assert actor.executor.requests == []

    await running(actor, body)


async def test_a_drift_near_or_over_the_threshold_wakes_the_actor_which_trades(
    autojump_clock: trio.testing.MockClock,
) -> None:
    actor = ScreenedActor(balances=dict(FAR_INSIDE))

    async def body() -> None:
        await actor.tick()
        assert await actor.tick() == SETTLED
        actor.balances = dict(BELOW_THRESHOLD)  # 0.14: within the screen's margin
        assert await actor.tick() == WOKEN
        assert actor.state.last_decision == WITHIN_TOLERANCE
        assert actor.state.last_max_drift == Decimal("0.14")
        actor.balances = dict(DRIFTED)  # 0.20
        assert await actor.tick() == WOKEN
        assert actor.state.last_decision == "SUCCESS:"
        assert len(actor.executor.requests) == 1
        actor.balances = dict(FAR_INSIDE)  # the trade's result, as the follower would see it
        assert await actor.tick() == WOKEN, "the decision changed: the actor records it"
        assert actor.state.last_decision == WITHIN_TOLERANCE
        assert [kind for kind, _ in actor.valuations] == [
            "interval",
            "before_rebalance",
            "after_rebalance",
        ]
        assert await actor.tick() == SETTLED

    await running(actor, body)


async def test_high_drift_below_the_threshold_wakes_the_actor_to_alert(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """alerts.high_drift under the drift threshold: HIGH_DRIFT is the exact engine's to raise."""
    actor = ScreenedActor(balances=dict(holding("4400", "2.24")))  # drift 0.12
    alerting = holder(prices={"max_age": 60.0}, alerts={"high_drift": Decimal("0.1")})
    actor.screen = TickScreen(actor.snapshots, actor, alerting, wall_clock, True)
    actor.deps = attrs.evolve(actor.deps, turns=actor.screen, config=alerting)

    async def body() -> None:
        for _ in range(3):
            assert await actor.tick() == WOKEN
        assert [kind for kind, _ in actor.alerts] == ["HIGH_DRIFT"] * 3

    await running(actor, body)


async def test_paused_requested_and_stale_portfolios_are_the_actors_to_evaluate(
    autojump_clock: trio.testing.MockClock,
) -> None:
    actor = ScreenedActor(balances=dict(FAR_INSIDE))

    async def body() -> None:
        await actor.tick()
        actor.supervisor.pause_portfolio("main")
        assert await actor.tick() == WOKEN
        assert actor.state.last_decision == "paused"
        assert await actor.tick() == WOKEN, "paused: every tick, as before the screen"
        actor.supervisor.resume_portfolio("main")
        assert await actor.tick() == WOKEN, "resumed: the exact engine decides again"
        assert actor.state.last_decision == WITHIN_TOLERANCE
        assert await actor.tick() == SETTLED
        # ``driftd rebalance``: evaluates now, whatever the screen would say.
        reads = actor.reads
        evaluated = actor.supervisor.evaluate_now("main")
        with trio.fail_after(1):
            await evaluated.wait()
        assert actor.reads == reads + 1
        # The feed republishes a snapshot whose prices are now 61 s old: stale.
        old = actor.snapshots.value
        assert old is not None
        await trio.sleep(61)
        passes = actor.screen.ticks.version
        actor.snapshots.publish(old)
        await actor.screen.ticks.wait_newer(passes)
        await trio.testing.wait_all_tasks_blocked()
        assert (actor.state.last_decision or "").startswith("No trade: price for USDC is stale")
        assert actor.alerts[-1][0] == "PRICE_STALE"

    await running(actor, body)


def test_valuation_phases_spread_portfolios_over_the_interval() -> None:
    """Started together, 10 000 portfolios do not all come due on the same tick: any tenth of
    the interval holds a tenth of them (within 1 %)."""
    counts = [0] * 10
    for portfolio_id in range(1, 10_001):
        phase = valuation_phase(portfolio_id)
        assert 0 <= phase < 1
        counts[int(phase * 10)] += 1
    assert all(990 <= count <= 1010 for count in counts), counts


async def test_valuations_are_still_stored_every_interval(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """report.valuation_interval (300 s by default) with a tick every 30 s: the screen wakes
    the actor for each valuation on the first tick it is due, and settles the ticks between."""
    actor = ScreenedActor(balances=dict(FAR_INSIDE))

    async def body() -> None:
        started = trio.current_time()
        woken = 0
        for _ in range(21):
            woken += (await actor.tick())[0]
            await trio.sleep(30)
        assert [kind for kind, _ in actor.valuations] == ["interval"] * 3
        # The first one's clock is set back by portfolio 7's phase (0.326 × 300 s = 98 s), so
        # the second comes on the first tick after 202 s, then every 300 s.
        assert valuation_phase(7) == pytest.approx(0.326, abs=1e-3)
        assert [at - started for _, at in actor.valuations] == [0, 210, 510]
        assert woken == 3

    await running(actor, body)


async def test_a_busy_actor_is_not_screened_and_evaluates_the_newest_snapshot_after(
    autojump_clock: trio.testing.MockClock,
) -> None:
    actor = ScreenedActor(balances=dict(DRIFTED))
    actor.executor.holding = True

    async def body() -> None:
        await actor.tick()
        assert actor.state.in_flight
        for _ in range(3):
            assert await actor.tick() == (0, 0)
        evaluations = actor.state.evaluations
        actor.balances = dict(FAR_INSIDE)
        actor.executor.release()
        await trio.testing.wait_all_tasks_blocked()
        assert actor.state.evaluations == evaluations + 1, "it caught up with the last tick"
        assert actor.state.seen_version == actor.snapshots.version
        assert actor.state.last_decision == WITHIN_TOLERANCE
        assert [kind for kind, _ in actor.valuations][-1] == "after_rebalance"
        assert await actor.tick() == SETTLED

    await running(actor, body)


async def test_a_failed_balance_refresh_wakes_every_actor_to_skip_with_the_reason(
    autojump_clock: trio.testing.MockClock,
) -> None:
    actor = ScreenedActor(balances=dict(FAR_INSIDE))

    async def body() -> None:
        await actor.tick()
        actor.refresh_error = actor.read_error = ChainError("node down")
        assert await actor.tick() == WOKEN
        assert actor.state.last_decision == "No trade: balances unavailable: node down"
        actor.refresh_error = actor.read_error = None
        assert await actor.tick() == WOKEN
        assert actor.state.last_decision == WITHIN_TOLERANCE
        assert await actor.tick() == SETTLED

    await running(actor, body)


async def test_a_fault_in_the_screen_wakes_that_actor_and_is_logged(
    autojump_clock: trio.testing.MockClock,
) -> None:
    actor = ScreenedActor(balances=dict(FAR_INSIDE))

    async def body() -> None:
        await actor.tick()
        actor.held_error = RuntimeError("a bug")
        with structlog.testing.capture_logs() as logs:
            assert await actor.tick() == WOKEN
        assert actor.state.last_decision == WITHIN_TOLERANCE  # the exact engine decided
        (error,) = [e for e in logs if e["event"] == "tick_screen_failed"]
        assert error["first"] == "main: RuntimeError: a bug"

    await running(actor, body)


async def test_one_actor_crashing_does_not_stop_the_screen_for_the_others(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Two portfolios under one screen; one crashes on every evaluation until it is parked:
    the other is settled all along, and woken when it drifts."""
    actor = ScreenedActor(balances=dict(FAR_INSIDE), faults=Faults({"evaluate@other": "raise"}))
    other = PortfolioSpec(8, "other", "0x" + "44" * 20, SPEC.targets, (USDC, WETH))

    async def run_other(state: PortfolioState) -> None:
        await run_portfolio_actor(other, state, actor.deps)

    async def body() -> None:
        actor.supervisor.start_portfolio(other, run_other, PortfolioState())
        await actor.tick()
        while actor.supervisor.actors["other"].status != "parked":
            await trio.sleep(30)
            await actor.tick()
        assert actor.state.evaluations > 3
        assert actor.reads == 1, "main was settled on every tick since its first"
        actor.balances = dict(DRIFTED)
        await actor.tick()
        assert actor.state.last_decision == "SUCCESS:"

    await running(actor, body)


async def test_within_tolerance_logs_at_info_once_then_at_debug(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Without the screen (balances read by each actor) every tick evaluates: a repeated
    "within tolerance" is no operator's news; other skips still log every time."""
    actor = Actor(balances=dict(BELOW_THRESHOLD))

    async def body() -> None:
        with structlog.testing.capture_logs() as logs:
            for _ in range(3):
                await actor.evaluation()
            actor.supervisor.pause_portfolio("main")
            for _ in range(2):
                await actor.evaluation()
        skips = [(e["log_level"], e["reason"]) for e in logs if e["event"] == "rebalance_skipped"]
        assert skips == [
            ("info", WITHIN_TOLERANCE),
            ("debug", WITHIN_TOLERANCE),
            ("debug", WITHIN_TOLERANCE),
            ("info", "paused"),
            ("info", "paused"),
        ]

    await running(actor, body)


async def test_the_in_actor_screen_leaves_high_drift_to_the_exact_engine(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Without the tick screen the actor screens itself: a drift above alerts.high_drift (here
    below the drift threshold) is evaluated exactly, so HIGH_DRIFT is raised every time."""
    alerting = holder(prices={"max_age": 60.0}, alerts={"high_drift": Decimal("0.01")})
    actor = Actor(balances=dict(FAR_INSIDE))  # drift 0.02
    actor.deps = attrs.evolve(actor.deps, config=alerting)

    async def body() -> None:
        for _ in range(3):
            assert await actor.evaluation() == WITHIN_TOLERANCE
        assert [kind for kind, _ in actor.alerts] == ["HIGH_DRIFT"] * 3

    await running(actor, body)


async def test_restarts_never_lose_the_actor_s_wake_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A restart (a changed spec) starts the next incarnation while the last one unwinds, in
    either order: the screen must still wake the one that runs, and so must a request."""
    actor = ScreenedActor(balances=dict(FAR_INSIDE))

    async def body() -> None:
        await actor.tick()
        for _ in range(10):
            reads = actor.reads
            actor.supervisor.change_portfolio(SPEC, actor.actor_function())
            await actor.tick()
            assert actor.reads == reads + 1, "a new incarnation's first turn is exact"
            assert await actor.tick() == SETTLED
            reads = actor.reads
            evaluated = actor.supervisor.evaluate_now("main")
            with trio.fail_after(1):
                await evaluated.wait()
            assert actor.reads == reads + 1
        actor.balances = dict(DRIFTED)
        assert await actor.tick() == WOKEN
        assert actor.state.last_decision == "SUCCESS:"

    await running(actor, body)


async def test_an_unwinding_incarnation_does_not_unregister_the_next_one() -> None:
    """The order a restart can take: the next incarnation registers, then the last one's wait
    unwinds. The screen must still see (and wake) the one that runs."""
    snapshots: Latest[PriceSnapshot] = Latest()
    balances = {USDC.address: 10**6, WETH.address: 10**18}
    screen = TickScreen(snapshots, HeldDict(balances), CONFIG, wall_clock, False)
    state = PortfolioState()
    last, next_one = trio.CancelScope(), trio.CancelScope()
    turns: list[trio.CancelScope] = []

    async def incarnation(scope: trio.CancelScope) -> None:
        with scope:
            state.waiting = scope
            await screen.wait_turn(SPEC, state)
            turns.append(scope)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(incarnation, last)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(incarnation, next_one)
        await trio.testing.wait_all_tasks_blocked()
        last.cancel()
        await trio.testing.wait_all_tasks_blocked()
        snapshots.publish(snapshot_of({"USDC": Decimal(1), "WETH": Decimal(2500)}, {}))
        tick = screen.screen(snapshots.version, snapshots.value, balances_known=True)  # type: ignore[arg-type]
        assert (tick.woken, tick.settled) == (1, 0)
    assert turns == [next_one], "the incarnation that runs got its turn"

"""The portfolio actor's loop (:func:`daemon.portfolio.run_portfolio_actor`) over time, on fakes:
a price snapshot cell, balances in memory and an executor that answers from a script.

``test_portfolio.py`` checks single evaluations and the backoff arithmetic; here the actor runs
as the supervisor runs it, and Trio's autojump clock drives the wall clock the actor reads, so
fifteen minutes of cooldown or a doubling backoff pass in milliseconds.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import attrs
import pytest
import structlog
import trio
import trio.testing
from schema_defaults import holder, restart_policy

from daemon import drift, portfolio
from daemon.db import FinishedAttempt
from daemon.drift import WITHIN_TOLERANCE
from daemon.faults import Faults
from daemon.latest import Latest
from daemon.messages import PricePoint, PriceSnapshot, RebalanceOutcome, RebalanceRequest, Token
from daemon.metrics import Metrics
from daemon.portfolio import (
    PortfolioDeps,
    PortfolioSpec,
    PortfolioState,
    run_portfolio_actor,
)
from daemon.portfolio_supervisor import PortfolioSupervisor

EPOCH = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
USDC = Token("USDC", "0x" + "11" * 20, 6, is_quote=True)
WETH = Token("WETH", "0x" + "22" * 20, 18)
SPEC = PortfolioSpec(
    id=7,
    name="main",
    account="0x" + "33" * 20,
    targets={"USDC": Decimal("0.5"), "WETH": Decimal("0.5")},
    tokens=(USDC, WETH),
)
PRICES = {"USDC": Decimal(1), "WETH": Decimal(2500)}
MAX_PRICE_AGE = 60.0
# The schema's defaults otherwise: a 15-minute cooldown, FAILED attempts backing off from 60 s.
CONFIG = holder(prices={"max_age": MAX_PRICE_AGE}, alerts={"high_drift": Decimal(1)})


def holding(usdc: str, weth: str) -> dict[str, int]:
    return {USDC.address: int(Decimal(usdc) * 10**6), WETH.address: int(Decimal(weth) * 10**18)}


# 10 000 USD in all at 2 500 USD per WETH; the drift is WETH's distance from its 5 000 USD.
BELOW_THRESHOLD = holding("4300", "2.28")  # 5 700 USD of WETH: drift 0.14
AT_THRESHOLD = holding("4250", "2.3")  # 5 750 USD: drift 0.15, the threshold itself
DRIFTED = holding("4000", "2.4")  # 6 000 USD: drift 0.20


def wall_clock() -> datetime:
    """The actor's wall clock, driven by Trio's (virtual) clock."""
    return EPOCH + timedelta(seconds=trio.current_time())


@pytest.fixture(autouse=True)
def _quiet_logs() -> Iterator[None]:
    with structlog.testing.capture_logs():
        yield


@attrs.define(eq=False)
class FakeExecutor:
    """The executor as a portfolio actor meets it: the request channel, ``in_flight`` and
    ``signer_blocked``.

    Answers each request with the next scripted status (SUCCESS when the script is empty) and,
    like the real executor, reports every finished attempt to the portfolio supervisor (which
    sets the portfolio's clocks) before it answers. With ``holding`` set, requests wait until
    :meth:`release`."""

    supervisor: PortfolioSupervisor
    statuses: list[str] = attrs.Factory(list)
    holding: bool = False
    blocked: str | None = None
    requests: list[RebalanceRequest] = attrs.Factory(list)
    in_flight: set[int] = attrs.Factory(set)
    _released: trio.Event = attrs.Factory(trio.Event)

    def release(self) -> None:
        self.holding = False
        self._released.set()

    def signer_blocked(self) -> str | None:
        return self.blocked

    async def run(self, inbox: trio.MemoryReceiveChannel[RebalanceRequest]) -> None:
        async for request in inbox:
            self.requests.append(request)
            self.in_flight.add(request.portfolio_id)
            if self.holding:
                await self._released.wait()
            status = self.statuses.pop(0) if self.statuses else "SUCCESS"
            self.in_flight.discard(request.portfolio_id)
            self.supervisor.rebalance_finished(
                request.portfolio_id,
                request.portfolio_name,
                FinishedAttempt(status=status),  # type: ignore[arg-type]
            )
            outcome = RebalanceOutcome(rebalance_id=len(self.requests), status=status)  # type: ignore[arg-type]
            # The actor that asked may have been restarted meanwhile: nobody listens.
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                request.reply.send_nowait(outcome)


@attrs.define(eq=False)
class Actor:
    """One portfolio actor under the portfolio supervisor, on fakes; its executor, and what
    they saw. The actor is also what it asks of the daemon besides the executor: the balance
    reader, the delegation check, the alert sink and the admission gate."""

    snapshots: Latest[PriceSnapshot] = attrs.Factory(Latest)
    balances: dict[str, int] = attrs.Factory(lambda: dict(DRIFTED))
    reads: int = 0
    alerts: list[tuple[str, dict[str, object]]] = attrs.Factory(list)
    accepting: bool = True
    expired: str | None = None
    faults: Faults = attrs.Factory(Faults)
    supervisor_metrics: Metrics = attrs.Factory(Metrics)
    supervisor: PortfolioSupervisor = attrs.field(init=False)
    executor: FakeExecutor = attrs.field(init=False)
    deps: PortfolioDeps = attrs.field(init=False)
    _inbox: trio.MemoryReceiveChannel[RebalanceRequest] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.supervisor = PortfolioSupervisor(
            restart_policy(),
            alerts=self,
            metrics=self.supervisor_metrics,
            config=CONFIG,
            now=wall_clock,
        )
        self.executor = FakeExecutor(self.supervisor)
        send, self._inbox = trio.open_memory_channel[RebalanceRequest](0)
        self.deps = PortfolioDeps(
            snapshots=self.snapshots,
            balances=self,
            requests=send,
            executor=self.executor,
            delegations=self,
            config=CONFIG,
            now=wall_clock,
            alerts=self,
            admission=self,
            supervisor=self.supervisor,
            faults=self.faults,
        )

    # -- what the actor asks of the daemon --

    def traded(self) -> None:
        """Balances here are read afresh every time."""

    async def read_with_block(
        self, account: str, tokens: Iterable[str]
    ) -> tuple[Mapping[str, int], int | None]:
        await trio.lowlevel.checkpoint()
        self.reads += 1
        return {t: self.balances[t] for t in tokens}, 100 + self.reads

    def delegation_problem(self, portfolio_id: int) -> str | None:
        return self.expired

    def fire(self, kind: str, fields: Mapping[str, object]) -> bool:
        self.alerts.append((kind, dict(fields)))
        return True

    # -- the test's handles --

    @property
    def state(self) -> PortfolioState:
        return self.supervisor.actors["main"].state

    async def start(self, nursery: trio.Nursery, state: PortfolioState | None = None) -> None:
        """Start the supervisor, the executor and the actor (with ``state``: seeded)."""
        await nursery.start(self.supervisor.run)
        nursery.start_soon(self.executor.run, self._inbox)
        self.supervisor.start_portfolio(SPEC, self.actor_function(), state or PortfolioState())

    def actor_function(self) -> Callable[[PortfolioState], Awaitable[None]]:
        async def actor(state: PortfolioState) -> None:
            await run_portfolio_actor(SPEC, state, self.deps)

        return actor

    def publish(self) -> None:
        """A snapshot of :data:`PRICES`, observed now."""
        now = wall_clock()
        self.snapshots.publish(
            PriceSnapshot(
                prices={s: PricePoint(s, usd, now, "oracle") for s, usd in PRICES.items()},
                taken_at=now,
                source="oracle",
            )
        )

    async def evaluation(self, cause: Callable[[], object] | None = None) -> str:
        """Publish a fresh snapshot (or run ``cause``), wait for the evaluation it starts, and
        return its decision."""
        done = self.state.evaluated
        (cause or self.publish)()
        with trio.fail_after(60):
            await done.wait()
        assert self.state.last_decision is not None
        return self.state.last_decision

    def trigger(self) -> None:
        """``driftd rebalance main``: a control command, carried out by the supervisor."""
        self.supervisor.evaluate_now("main")

    def waiting_for_executor(self) -> bool:
        return self.state.in_flight


async def running(actor: Actor, body: Callable[[trio.Nursery], Awaitable[None]]) -> None:
    """Run the supervisor, the executor and the actor while ``body`` runs."""
    async with trio.open_nursery() as nursery:
        await actor.start(nursery)
        await trio.testing.wait_all_tasks_blocked()
        await body(nursery)
        nursery.cancel_scope.cancel()


# --- tests ----------------------------------------------------------------------------------------


async def test_a_rebalance_is_requested_at_the_threshold_and_not_below_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    actor = Actor(balances=dict(BELOW_THRESHOLD))

    async def body(nursery: trio.Nursery) -> None:
        assert await actor.evaluation() == WITHIN_TOLERANCE
        assert actor.state.last_max_drift == Decimal("0.14")
        assert actor.executor.requests == []
        actor.balances = dict(AT_THRESHOLD)
        assert await actor.evaluation() == "SUCCESS:"
        (request,) = actor.executor.requests
        assert request.plan.max_drift == Decimal("0.15")
        ((sell, buy, usd),) = [(x.sell, x.buy, x.usd) for x in request.plan.legs]
        # The default band mode: back to 7.5 % (half the threshold), not all the way (750).
        assert (sell, buy, usd) == ("WETH", "USDC", Decimal(375))
        assert request.balances_block == 100 + actor.reads

    await running(actor, body)
    assert actor.reads == 2


async def test_after_a_trade_the_cooldown_holds_every_request_for_15_minutes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    actor = Actor()

    async def body(nursery: trio.Nursery) -> None:
        assert await actor.evaluation() == "SUCCESS:"
        traded_at = wall_clock()
        assert actor.state.last_success_at == traded_at
        await trio.sleep(60)
        assert await actor.evaluation() == (
            "Cooldown active. Next rebalance available in 14 minutes"
        )
        await trio.sleep(15 * 60 - 61)
        assert await actor.evaluation() == "Cooldown active. Next rebalance available in 1 minutes"
        assert len(actor.executor.requests) == 1
        await trio.sleep(1)
        assert wall_clock() - traded_at == timedelta(minutes=15)
        assert await actor.evaluation() == "SUCCESS:"
        assert len(actor.executor.requests) == 2

    await running(actor, body)


async def test_a_stale_price_is_skipped_with_its_reason_and_alerted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The feed went quiet: a manual trigger a minute later finds the same snapshot, too old
    to trade on, although the portfolio has drifted meanwhile."""
    actor = Actor(balances=dict(BELOW_THRESHOLD))

    async def body(nursery: trio.Nursery) -> None:
        assert await actor.evaluation() == WITHIN_TOLERANCE
        actor.balances = dict(DRIFTED)
        await trio.sleep(MAX_PRICE_AGE + 1)
        reason = "No trade: price for USDC is stale (61 s old, max_age 60 s)"
        assert await actor.evaluation(actor.trigger) == reason
        assert actor.alerts == [("PRICE_STALE", {"portfolio": "main", "reason": reason})]
        assert actor.reads == 1, "no balance read on stale prices"
        assert actor.executor.requests == []
        assert await actor.evaluation() == "SUCCESS:", "a fresh snapshot trades again"

    await running(actor, body)


async def test_no_second_request_while_one_is_in_flight_even_across_a_restart(
    autojump_clock: trio.testing.MockClock,
) -> None:
    actor = Actor()
    actor.executor.holding = True
    async with trio.open_nursery() as nursery:
        await actor.start(nursery)
        await trio.testing.wait_all_tasks_blocked()
        actor.publish()
        await trio.testing.wait_all_tasks_blocked()
        assert len(actor.executor.requests) == 1
        assert actor.waiting_for_executor()
        for _ in range(5):  # the feed ticks on while the executor works
            await trio.sleep(10)
            actor.publish()
        await trio.testing.wait_all_tasks_blocked()
        assert len(actor.executor.requests) == 1

        # The supervisor restarts the actor; the executor is still carrying the attempt out.
        state = actor.state
        actor.supervisor.change_portfolio(SPEC, actor.actor_function())
        await trio.testing.wait_all_tasks_blocked()
        assert actor.state is state, "a restart keeps the state"
        assert not actor.waiting_for_executor()
        assert await actor.evaluation() == "No trade: a rebalance of this portfolio is in flight"
        assert len(actor.executor.requests) == 1

        # It succeeds with nobody listening: the supervisor still starts the cooldown.
        actor.executor.release()
        await trio.testing.wait_all_tasks_blocked()
        decision = await actor.evaluation()
        assert decision.startswith("Cooldown active")
        assert len(actor.executor.requests) == 1
        nursery.cancel_scope.cancel()


async def test_failures_back_off_doubling_and_start_no_cooldown(
    autojump_clock: trio.testing.MockClock,
) -> None:
    actor = Actor()
    actor.executor.statuses = ["FAILED", "FAILED", "SUCCESS"]

    async def body(nursery: trio.Nursery) -> None:
        assert await actor.evaluation() == "FAILED:"
        await trio.sleep(30)
        assert await actor.evaluation() == (
            "No trade: backing off after 1 failed attempt(s), 31 s left"
        )
        await trio.sleep(30)  # the first backoff (60 s) is over; no 15-minute cooldown
        assert await actor.evaluation() == "FAILED:"
        await trio.sleep(119)
        assert await actor.evaluation() == (
            "No trade: backing off after 2 failed attempt(s), 2 s left"
        )
        await trio.sleep(1)  # the second backoff (120 s) is over
        assert await actor.evaluation() == "SUCCESS:"
        assert len(actor.executor.requests) == 3
        assert (actor.state.failures, actor.state.retry_at) == (0, None)

    await running(actor, body)


# --- control commands are carried out by the portfolio supervisor ---------------------------------


async def test_rebalance_now_evaluates_at_once_without_a_new_snapshot(
    autojump_clock: trio.testing.MockClock,
) -> None:
    actor = Actor(balances=dict(BELOW_THRESHOLD))

    async def body(nursery: trio.Nursery) -> None:
        assert await actor.evaluation() == WITHIN_TOLERANCE
        version = actor.snapshots.version
        actor.balances = dict(DRIFTED)
        await trio.sleep(30)  # the feed is quiet; the snapshot is 30 s old, still usable
        evaluated = actor.supervisor.evaluate_now("main")
        with trio.fail_after(1):
            await evaluated.wait()
        assert actor.snapshots.version == version
        assert actor.state.last_decision == "SUCCESS:"
        assert len(actor.executor.requests) == 1
        with pytest.raises(KeyError):
            actor.supervisor.evaluate_now("ghost")

    await running(actor, body)


@attrs.define(eq=False)
class SpawnCounter(trio.abc.Instrument):
    spawned: int = 0

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        self.spawned += 1


async def test_waiting_for_a_snapshot_or_a_trigger_spawns_no_task(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Issue 15: with 10 000 actors every task spawned per tick is 10 000 spawns (and cancels).
    The actor waits for the next snapshot or a control trigger in its own task."""
    actor = Actor(balances=dict(BELOW_THRESHOLD))

    async def body(nursery: trio.Nursery) -> None:
        await actor.evaluation()
        counter = SpawnCounter()
        trio.lowlevel.add_instrument(counter)
        try:
            for _ in range(5):
                assert await actor.evaluation() == WITHIN_TOLERANCE
            assert await actor.evaluation(actor.trigger) == WITHIN_TOLERANCE
        finally:
            trio.lowlevel.remove_instrument(counter)
        assert counter.spawned == 0

    await running(actor, body)


async def test_far_inside_the_threshold_the_exact_evaluation_is_skipped_never_near_it(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 15: a float screen skips the Decimal engine for portfolios far inside tolerance
    (after one exact evaluation has accepted the portfolio); near the threshold, and for every
    decision to trade, the exact engine runs."""
    exact: list[Decimal | None] = []

    def counting(*args: Any, **kwargs: Any) -> drift.Decision:
        decision = drift.evaluate(*args, **kwargs)
        exact.append(decision.max_drift)
        return decision

    monkeypatch.setattr(portfolio, "evaluate", counting)
    actor = Actor(balances=holding("5100", "1.96"))  # 4 900 USD of WETH: drift 0.02

    async def body(nursery: trio.Nursery) -> None:
        assert await actor.evaluation() == WITHIN_TOLERANCE  # the first one is exact
        for _ in range(3):
            assert await actor.evaluation() == WITHIN_TOLERANCE
        assert exact == [Decimal("0.02")]
        assert actor.state.last_max_drift == Decimal("0.020000")
        actor.balances = dict(BELOW_THRESHOLD)  # 0.14: within the screen's margin
        assert await actor.evaluation() == WITHIN_TOLERANCE
        actor.balances = dict(DRIFTED)
        assert await actor.evaluation() == "SUCCESS:"
        assert exact == [Decimal("0.02"), Decimal("0.14"), Decimal("0.2")]

    await running(actor, body)


async def test_a_paused_portfolio_reads_nothing_and_asks_nothing_until_resumed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    actor = Actor()

    async def body(nursery: trio.Nursery) -> None:
        actor.supervisor.pause_portfolio("main")
        assert actor.state.paused
        assert await actor.evaluation() == "paused"
        assert await actor.evaluation(actor.trigger) == "paused"
        assert (actor.reads, actor.executor.requests) == (0, [])
        assert actor.supervisor.resume_portfolio("main") is False, "it was not parked"
        assert not actor.state.paused
        assert await actor.evaluation() == "SUCCESS:"
        assert len(actor.executor.requests) == 1
        assert actor.supervisor.resume_portfolio("ghost") is False

    await running(actor, body)


async def test_the_pause_recorded_in_the_database_is_applied_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    actor = Actor()

    async def body(nursery: trio.Nursery) -> None:
        assert actor.supervisor.set_paused("main", True) is True
        assert actor.supervisor.set_paused("main", True) is False, "nothing changed"
        assert await actor.evaluation() == "paused"
        assert actor.supervisor.set_paused("main", False) is True
        assert actor.supervisor.set_paused("ghost", True) is False
        assert await actor.evaluation() == "SUCCESS:"

    await running(actor, body)


async def test_a_recovered_attempt_sets_the_clocks_of_the_portfolio_it_belongs_to(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Recovery knows a portfolio by id only (its name is ``str(id)``): the supervisor finds
    the running portfolio and starts its cooldown, and counts it under its name."""
    actor = Actor()

    async def body(nursery: trio.Nursery) -> None:
        actor.supervisor.rebalance_finished(
            SPEC.id, str(SPEC.id), FinishedAttempt(status="PARTIAL")
        )
        assert actor.state.last_success_at == wall_clock()
        assert (await actor.evaluation()).startswith("Cooldown active")
        actor.supervisor.rebalance_finished(99, "99", FinishedAttempt(status="FAILED"))
        assert actor.state.failures == 0, "another portfolio's attempt"

    await running(actor, body)
    rendered = actor.supervisor_metrics.render()
    assert 'driftd_rebalances_total{portfolio="main",status="PARTIAL"} 1.0' in rendered
    assert 'driftd_rebalances_total{portfolio="99",status="FAILED"} 1.0' in rendered


async def test_an_actor_that_keeps_crashing_is_parked_with_an_alert_and_resume_unparks_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    actor = Actor(faults=Faults({"evaluate": "raise"}))

    async def body(nursery: trio.Nursery) -> None:
        entry = actor.supervisor.actors["main"]
        while entry.status != "parked":
            actor.publish()
            await trio.sleep(1)
        ((kind, fields),) = actor.alerts
        assert kind == "ACTOR_PARKED"
        assert fields == {
            "portfolio": "main",
            "error": "InjectedFault: injected fault at evaluate@main",
        }
        assert actor.supervisor.resume_portfolio("main") is True
        await trio.testing.wait_all_tasks_blocked()
        assert entry.status == "running"

    await running(actor, body)

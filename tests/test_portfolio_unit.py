"""The portfolio actor's loop (:func:`daemon.portfolio.run_portfolio_actor`) over time, on fakes:
a price snapshot cell, balances in memory and an executor that answers from a script.

``test_portfolio.py`` checks single evaluations and the backoff arithmetic; here the actor runs
as the supervisor runs it, and Trio's autojump clock drives the wall clock the actor reads, so
fifteen minutes of cooldown or a doubling backoff pass in milliseconds.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import attrs
import pytest
import structlog
import trio
import trio.testing

from daemon.drift import WITHIN_TOLERANCE, EngineParams
from daemon.latest import Latest
from daemon.messages import PricePoint, PriceSnapshot, RebalanceOutcome, RebalanceRequest, Token
from daemon.portfolio import (
    PortfolioDeps,
    PortfolioSpec,
    PortfolioState,
    RuntimeParams,
    record_outcome,
    run_portfolio_actor,
)

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
BACKOFF, BACKOFF_MAX = 60.0, 3600.0


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
    """The executor as a portfolio actor meets it: the request channel, and ``in_flight``.

    Answers each request with the next scripted status (SUCCESS when the script is empty) and,
    like the daemon's ``on_finished`` hook, records the outcome in the portfolio's state
    before it answers. With ``holding`` set, requests wait until :meth:`release`."""

    state: PortfolioState
    statuses: list[str] = attrs.Factory(list)
    holding: bool = False
    requests: list[RebalanceRequest] = attrs.Factory(list)
    in_flight: set[int] = attrs.Factory(set)
    _released: trio.Event = attrs.Factory(trio.Event)

    def release(self) -> None:
        self.holding = False
        self._released.set()

    async def run(self, inbox: trio.MemoryReceiveChannel[RebalanceRequest]) -> None:
        async for request in inbox:
            self.requests.append(request)
            self.in_flight.add(request.portfolio_id)
            if self.holding:
                await self._released.wait()
            status = self.statuses.pop(0) if self.statuses else "SUCCESS"
            self.in_flight.discard(request.portfolio_id)
            record_outcome(
                self.state, status, wall_clock(), backoff=BACKOFF, backoff_max=BACKOFF_MAX
            )
            outcome = RebalanceOutcome(rebalance_id=len(self.requests), status=status)  # type: ignore[arg-type]
            # The actor that asked may have been restarted meanwhile: nobody listens.
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                request.reply.send_nowait(outcome)


@attrs.define(eq=False)
class Actor:
    """One portfolio actor on fakes, its executor, and what they saw."""

    state: PortfolioState = attrs.Factory(PortfolioState)
    snapshots: Latest[PriceSnapshot] = attrs.Factory(Latest)
    balances: dict[str, int] = attrs.Factory(lambda: dict(DRIFTED))
    reads: int = 0
    alerts: list[tuple[str, dict[str, object]]] = attrs.Factory(list)
    executor: FakeExecutor = attrs.field(init=False)
    deps: PortfolioDeps = attrs.field(init=False)
    _inbox: trio.MemoryReceiveChannel[RebalanceRequest] = attrs.field(init=False)
    _serving: bool = attrs.field(init=False, default=False)

    def __attrs_post_init__(self) -> None:
        self.executor = FakeExecutor(self.state)
        send, self._inbox = trio.open_memory_channel[RebalanceRequest](0)

        async def read_balances(
            account: str, tokens: list[str]
        ) -> tuple[Mapping[str, int], int | None]:
            await trio.lowlevel.checkpoint()
            self.reads += 1
            return {t: self.balances[t] for t in tokens}, 100 + self.reads

        self.deps = PortfolioDeps(
            snapshots=self.snapshots,
            read_balances=read_balances,
            executor=send,
            params=lambda: RuntimeParams(
                EngineParams(), Decimal(15), MAX_PRICE_AGE, high_drift_alert=Decimal(1)
            ),
            now=wall_clock,
            alert=lambda kind, fields: self.alerts.append((kind, dict(fields))),
            in_flight=lambda portfolio_id: portfolio_id in self.executor.in_flight,
        )

    def start(self, nursery: trio.Nursery) -> trio.CancelScope:
        """Start the executor (once) and an actor; the actor's scope cancels it (a restart)."""
        if not self._serving:
            self._serving = True
            nursery.start_soon(self.executor.run, self._inbox)
        scope = trio.CancelScope()

        async def actor() -> None:
            with scope:
                await run_portfolio_actor(SPEC, self.state, self.deps)

        nursery.start_soon(actor)
        return scope

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
        self.state.trigger.set()

    def waiting_for_executor(self) -> bool:
        return self.state.in_flight


async def running(actor: Actor, body: Callable[[trio.Nursery], Awaitable[None]]) -> None:
    """Run the executor and the actor while ``body`` runs."""
    async with trio.open_nursery() as nursery:
        actor.start(nursery)
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
        assert (sell, buy, usd) == ("WETH", "USDC", Decimal(750))
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
        first = actor.start(nursery)
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
        first.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert not actor.waiting_for_executor()
        assert await actor.evaluation(lambda: actor.start(nursery)) == (
            "No trade: a rebalance of this portfolio is in flight"
        )
        assert len(actor.executor.requests) == 1

        # It succeeds with nobody listening: its hook still starts the cooldown.
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

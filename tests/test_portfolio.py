"""The portfolio actor with in-memory fakes: what it asks the executor, and when it does not."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import attrs
import trio
import trio.testing
from schema_defaults import holder

from daemon.latest import Latest
from daemon.messages import PricePoint, PriceSnapshot, RebalanceOutcome, RebalanceRequest, Token
from daemon.portfolio import (
    PortfolioDeps,
    PortfolioSpec,
    PortfolioState,
    evaluate_portfolio,
    failure_backoff,
    record_outcome,
    run_portfolio_actor,
)

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
USDC = Token("USDC", "0x" + "11" * 20, 6, is_quote=True)
WETH = Token("WETH", "0x" + "22" * 20, 18)
SPEC = PortfolioSpec(
    id=7,
    name="main",
    account="0x" + "33" * 20,
    targets={"USDC": Decimal("0.5"), "WETH": Decimal("0.5")},
    tokens=(USDC, WETH),
)
# 10 000 USDC and 1 WETH at 3 000 USD: WETH is 46 % under target.
BALANCES = {USDC.address: 10_000 * 10**6, WETH.address: 10**18}


def snapshot(age: float = 5.0) -> PriceSnapshot:
    observed = NOW - timedelta(seconds=age)
    return PriceSnapshot(
        prices={
            "USDC": PricePoint("USDC", Decimal(1), observed, "oracle"),
            "WETH": PricePoint("WETH", Decimal(3000), observed - timedelta(seconds=3), "oracle"),
        },
        taken_at=NOW,
        source="oracle",
    )


@attrs.define
class Daemon:
    """What the actor asks of the rest of the daemon, as fakes."""

    blocked: str | None = None
    expired: str | None = None
    healthy: list[str] = attrs.Factory(list)
    in_flight: set[int] = attrs.Factory(set)
    accepting: bool = True

    def traded(self) -> None:
        """Balances here are read afresh every time."""

    async def read_with_block(
        self, account: str, tokens: Iterable[str]
    ) -> tuple[Mapping[str, int], int | None]:
        return {t: BALANCES[t] for t in tokens}, 1234

    def signer_blocked(self) -> str | None:
        return self.blocked

    def delegation_problem(self, portfolio_id: int) -> str | None:
        return None if self.expired is None else f"{self.expired} ({portfolio_id})"

    def fire(self, kind: str, fields: Mapping[str, object]) -> bool:
        return True

    def mark_healthy(self, key: str) -> None:
        self.healthy.append(key)


def make_deps(
    executor: trio.MemorySendChannel[RebalanceRequest], daemon: Daemon | None = None
) -> PortfolioDeps:
    snapshots: Latest[PriceSnapshot] = Latest()
    snapshots.publish(snapshot())
    daemon = daemon or Daemon()
    return PortfolioDeps(
        snapshots=snapshots,
        balances=daemon,
        requests=executor,
        executor=daemon,
        delegations=daemon,
        config=holder(prices={"max_age": 60.0}, alerts={"high_drift": Decimal(1)}),
        now=lambda: NOW,
        alerts=daemon,
        admission=daemon,
        supervisor=daemon,
    )


async def answer(
    inbox: trio.MemoryReceiveChannel[RebalanceRequest],
    seen: list[RebalanceRequest],
    status: str = "SUCCESS",
) -> None:
    async for request in inbox:
        seen.append(request)
        await request.reply.send(RebalanceOutcome(rebalance_id=1, status=status))  # type: ignore[arg-type]


async def test_a_request_carries_the_balances_block_and_the_oldest_price_time() -> None:
    send, inbox = trio.open_memory_channel[RebalanceRequest](0)
    seen: list[RebalanceRequest] = []
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(answer, inbox, seen)
            status = await evaluate_portfolio(SPEC, PortfolioState(), make_deps(send))
            nursery.cancel_scope.cancel()
    assert status == "SUCCESS"
    (request,) = seen
    assert request.balances_block == 1234
    # The executor judges the plan by its oldest price (WETH's, 8 s old).
    assert request.prices_observed_at == NOW - timedelta(seconds=8)


async def test_the_outcome_is_not_the_actors_to_record() -> None:
    """The cooldown starts from the executor's hook (record_outcome), so a reply the actor
    never reads (it was restarted) still counts: the actor itself sets no clock."""
    send, inbox = trio.open_memory_channel[RebalanceRequest](0)
    state = PortfolioState()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(answer, inbox, [])
            await evaluate_portfolio(SPEC, state, make_deps(send))
            nursery.cancel_scope.cancel()
    assert state.last_success_at is None
    assert state.last_outcome is not None
    assert state.last_outcome.status == "SUCCESS"


async def test_no_request_while_the_signer_is_blocked_or_backing_off() -> None:
    send, _inbox = trio.open_memory_channel[RebalanceRequest](0)
    with trio.fail_after(5):
        blocked = Daemon(blocked="nonce 3 cannot be sent: no gas")
        reason = await evaluate_portfolio(SPEC, PortfolioState(), make_deps(send, blocked))
        assert reason == "No trade: the signer cannot send: nonce 3 cannot be sent: no gas"
        state = PortfolioState(failures=2, retry_at=NOW + timedelta(seconds=90))
        reason = await evaluate_portfolio(SPEC, state, make_deps(send))
        assert reason == "No trade: backing off after 2 failed attempt(s), 91 s left"
        paused = await evaluate_portfolio(SPEC, PortfolioState(paused=True), make_deps(send))
        assert paused == "paused"
        deps = make_deps(send, Daemon(expired="expired"))
        assert await evaluate_portfolio(SPEC, PortfolioState(), deps) == "expired (7)"
        stopping = make_deps(send, Daemon(accepting=False))
        assert await evaluate_portfolio(SPEC, PortfolioState(), stopping) == (
            "No trade: the daemon is stopping"
        )


async def test_each_completed_evaluation_reports_the_actor_healthy(
    autojump_clock: trio.testing.MockClock,
) -> None:
    send, _inbox = trio.open_memory_channel[RebalanceRequest](0)
    daemon = Daemon(blocked="x")
    healthy = daemon.healthy
    deps = make_deps(send, daemon)
    state = PortfolioState()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_portfolio_actor, SPEC, state, deps)
            for _ in range(3):
                done = state.evaluated
                deps.snapshots.publish(snapshot())
                await done.wait()
                await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    assert healthy == ["main"] * 3


def test_failures_back_off_exponentially_up_to_the_cap_and_reset_on_a_trade() -> None:
    assert failure_backoff(0, 60, 3600) == timedelta(0)
    assert [failure_backoff(n, 60, 3600).total_seconds() for n in range(1, 9)] == [
        60,
        120,
        240,
        480,
        960,
        1920,
        3600,
        3600,
    ]
    state = PortfolioState()
    record_outcome(state, "FAILED", NOW, backoff=60, backoff_max=3600)
    record_outcome(state, "FAILED", NOW, backoff=60, backoff_max=3600)
    assert (state.failures, state.retry_at) == (2, NOW + timedelta(seconds=120))
    record_outcome(state, "SKIPPED", NOW, backoff=60, backoff_max=3600)
    assert state.failures == 2  # a skip is not an attempt on chain
    record_outcome(state, "PARTIAL", NOW, backoff=60, backoff_max=3600)
    assert (state.failures, state.retry_at, state.last_success_at) == (0, None, NOW)
    record_outcome(state, "DRY_RUN", NOW + timedelta(minutes=1), backoff=60, backoff_max=3600)
    assert state.last_success_at == NOW + timedelta(minutes=1)

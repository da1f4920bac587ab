"""The executor (:class:`daemon.executor.Executor`) on in-memory fakes of the chain, the pools
and the database, under Trio's virtual clock: what it refuses, what it signs, in which order,
and what it reports.

The fakes (``fakes_chain``, ``fakes_store``) share one event log, so the order of "plan
stored", "intent recorded", "broadcast" and "mined" is asserted, not assumed. Every test also
checks that nothing reached the node before the store recorded it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import attrs
import pytest
import structlog
import trio
import trio.testing
from fakes_chain import (
    CHAIN_ID,
    FakeChainClient,
    FakeNode,
    FakePools,
    transport_error,
)
from fakes_store import FakeDatabase
from schema_defaults import holder

from daemon.address import to_address
from daemon.config import Secret
from daemon.db import FinishedAttempt, TxIntent
from daemon.delegation import ROOT_AUTHORITY, Delegation, PortfolioDelegations
from daemon.drift import Leg, Rebalance, to_base_units
from daemon.executor import Executor
from daemon.guard import GuardBound, GuardTerms, GuardToken, usd
from daemon.live_config import ConfigHolder
from daemon.messages import RebalanceOutcome, RebalanceRequest, Token
from daemon.signer import TxSigner
from daemon.txbuild import DelegationMode, ExecutionMode, WalletMode

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
KEY = Secret("0x" + "44" * 32)
USDC = Token("USDC", to_address("0x" + "11" * 20), 6, is_quote=True)
WETH = Token("WETH", to_address("0x" + "22" * 20), 18)
WBTC = Token("WBTC", to_address("0x" + "23" * 20), 8)
TOKENS = {t.symbol: t for t in (USDC, WETH, WBTC)}
PRICES = {"USDC": Decimal(1), "WETH": Decimal(3000), "WBTC": Decimal(60000)}
ROUTER = to_address("0x" + "ab" * 20)
MANAGER = to_address("0x" + "dd" * 20)
GUARD = to_address("0x" + "9a" * 20)
ACCOUNT = to_address("0x" + "5c" * 20)
FEEDS = {
    t.address: to_address("0x" + f"f{i}" * 20) for i, t in enumerate((USDC, WETH, WBTC), start=1)
}
REASON = "UniswapV2Router: INSUFFICIENT_OUTPUT_AMOUNT"

Events = list[tuple[str, ...]]
WORLDS: list[World] = []


@pytest.fixture(autouse=True)
def _nothing_unrecorded_is_ever_sent() -> Iterator[None]:
    """Whatever a test does: every byte sent to the node was recorded in the store first."""
    WORLDS.clear()
    yield
    for world in WORLDS:
        assert world.node.unrecorded_sends == [], "sent before it was recorded"
    WORLDS.clear()


@pytest.fixture(autouse=True)
def _quiet_logs() -> Iterator[None]:
    """Log events go to a list, not through the renderer (settle loops poll often)."""
    with structlog.testing.capture_logs():
        yield


# --- the world ----------------------------------------------------------------------------------


def leg(sell: Token, buy: Token, usd_amount: int) -> Leg:
    """A leg as the engine plans it at :data:`PRICES`."""
    size = Decimal(usd_amount)
    return Leg(
        sell=sell.symbol,
        buy=buy.symbol,
        usd=size,
        amount_in=to_base_units(size / PRICES[sell.symbol], sell.decimals),
        expected_out=to_base_units(size / PRICES[buy.symbol], buy.decimals),
        capped=False,
    )


BUY_WETH = leg(USDC, WETH, 3000)
BUY_WBTC = leg(USDC, WBTC, 2000)


@attrs.define(eq=False)
class World:
    """The executor on fakes. The world is also what the executor asks of the daemon: the
    token book, the execution modes, the alert sink and the portfolio supervisor (which hears
    every finished attempt)."""

    node: FakeNode
    db: FakeDatabase
    chain: FakeChainClient
    pools: FakePools
    signer: TxSigner
    config: ConfigHolder
    mode: ExecutionMode
    workers: int = 1
    finished: list[tuple[int, str, str]] = attrs.Factory(list)
    alerts: list[tuple[str, dict[str, object]]] = attrs.Factory(list)
    executor: Executor = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.executor = Executor(
            chain=self.chain,  # type: ignore[arg-type]
            uniswap=self.pools,  # type: ignore[arg-type]
            signer=self.signer,
            db=self.db,  # type: ignore[arg-type]
            tokens=self,
            modes=self,
            config=self.config,
            alerts=self,
            outcomes=self,
            max_in_flight=self.workers,
            now=lambda: NOW,
            node=self.node,
        )

    # -- what the executor asks of the daemon --

    def by_symbol(self) -> Mapping[str, Token]:
        return TOKENS

    def mode_for(self, request: RebalanceRequest) -> ExecutionMode:
        return self.mode

    def delegation_problem(self, portfolio_id: int) -> str | None:
        return None

    def fire(self, kind: str, fields: Mapping[str, object]) -> bool:
        self.alerts.append((kind, dict(fields)))
        return True

    def rebalance_finished(
        self, portfolio_id: int, portfolio: str, result: FinishedAttempt
    ) -> None:
        self.finished.append((portfolio_id, portfolio, result.status))

    # -- the test's handles --

    @property
    def events(self) -> Events:
        return self.db.events

    def request(
        self, *legs: Leg, portfolio_id: int = 1, prices_age: float = 10.0
    ) -> tuple[RebalanceRequest, trio.MemoryReceiveChannel[RebalanceOutcome]]:
        reply, answers = trio.open_memory_channel[RebalanceOutcome](1)
        request = RebalanceRequest(
            portfolio_id=portfolio_id,
            portfolio_name=f"p{portfolio_id}",
            account=self.mode.holder,
            plan=Rebalance(
                max_drift=Decimal("0.4"), drifts=(), legs=legs, total_usd=Decimal(13000)
            ),
            prices=PRICES,
            reply=reply,
            requested_at=trio.current_time(),
            balances_block=self.node.block_number,
            prices_observed_at=NOW - timedelta(seconds=prices_age),
        )
        return request, answers

    async def handle(self, *legs: Leg, **request: Any) -> RebalanceOutcome:
        req, answers = self.request(*legs, **request)
        with trio.fail_after(3600):
            outcome = await self.executor.handle(req)
        assert answers.receive_nowait() == outcome, "the requester hears the same outcome"
        return outcome

    def intents(self) -> list[TxIntent]:
        return sorted(self.db.rows.values(), key=lambda r: r.id)

    def alerted(self, kind: str) -> list[dict[str, object]]:
        return [fields for k, fields in self.alerts if k == kind]


def make_world(workers: int = 1, **config: Mapping[str, Any]) -> World:
    """A world at the configuration schema's defaults, with ``config``'s keys changed (by
    section: ``make_world(rebalance={"price_impact_threshold": Decimal("0.05")})``)."""
    signer = TxSigner(key=KEY)
    events: Events = []
    node = FakeNode(signer=signer.address, events=events)
    pools = FakePools(node)
    # Deep pools at the plan's prices: 3 000 USDC per WETH, 60 000 USDC per WBTC.
    pools.set_pool(USDC.address, 3_000_000 * 10**6, WETH.address, 1_000 * 10**18)
    pools.set_pool(USDC.address, 6_000_000 * 10**6, WBTC.address, 100 * 10**8)
    world = World(
        node=node,
        db=FakeDatabase(events=events, on_record=node.learn),
        chain=FakeChainClient(node),
        pools=pools,
        signer=signer,
        # The world trades in wallet mode (tests that swap in delegations say so themselves).
        config=holder(**{**config, "execution": {"mode": "wallet", **config.get("execution", {})}}),
        mode=WalletMode(router=ROUTER, signer=signer.address),
        workers=workers,
    )
    WORLDS.append(world)
    return world


def delegation_mode(signer: TxSigner, max_loss_bps: int) -> DelegationMode:
    """A smart account's delegations with the oracle guard on the swap delegation."""

    def delegation(salt: int) -> Delegation:
        return Delegation(
            delegate=signer.address,
            delegator=ACCOUNT,
            authority=ROOT_AUTHORITY,
            caveats=(),
            salt=salt,
        )

    terms = GuardTerms(
        tokens=tuple(
            GuardToken(t.address, FEEDS[t.address], t.decimals, 8) for t in TOKENS.values()
        ),
        max_loss_bps=max_loss_bps,
        max_staleness=3600,
        period=86_400,
        period_cap=usd(1_000),
    )
    return DelegationMode(
        manager=MANAGER,
        router=ROUTER,
        delegations=PortfolioDelegations(approve=delegation(1), swap=delegation(2)),
        guard=GuardBound(enforcer=GUARD, terms=(terms,)),
    )


def in_order(events: Events, expected: Sequence[tuple[str, ...]]) -> bool:
    """Whether ``expected`` happened, in this order (other events in between)."""
    position = 0
    for event in events:
        if position < len(expected) and event == expected[position]:
            position += 1
    return position == len(expected)


def nothing_signed(world: World) -> bool:
    return (
        world.db.rows == {} and world.node.sends == [] and "estimate_gas" not in world.chain.asked
    )


# --- refusals before anything is written or asked -----------------------------------------------


async def test_prices_older_than_max_age_are_skipped_and_nothing_is_asked_or_signed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    world = make_world(prices={"max_age": 300.0})
    outcome = await world.handle(BUY_WETH, prices_age=301)
    assert outcome.status == "SKIPPED"
    assert outcome.error == "No trade: the plan's prices are 301 s old (max_age 300 s)"
    (row,) = world.db.attempts.values()
    assert (row.status, row.skip_reason) == ("SKIPPED", outcome.error)
    assert world.events == [("row", "1", "SKIPPED")], "no PENDING row, no plan, no intent"
    assert world.chain.asked == []
    assert world.pools.quoted == []
    assert nothing_signed(world)
    assert world.finished == [(1, "p1", "SKIPPED")]

    fresh = make_world(prices={"max_age": 300.0})
    assert (await fresh.handle(BUY_WETH, prices_age=299)).status == "SUCCESS"


# --- planning: each leg is checked against a fresh quote ----------------------------------------


async def test_a_leg_over_the_price_impact_cap_is_rejected_and_the_rest_is_sent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    world = make_world(rebalance={"price_impact_threshold": Decimal("0.05")})
    # 30 000 USDC and 0.5 WBTC: at the plan's price, but 2 000 USDC moves it ~6.5 %.
    world.pools.set_pool(USDC.address, 30_000 * 10**6, WBTC.address, 5 * 10**7)
    outcome = await world.handle(BUY_WETH, BUY_WBTC)
    assert outcome.status == "SUCCESS"
    assert outcome.error is not None
    assert outcome.error.startswith("USDC->WBTC: price impact 0.06")
    assert outcome.error.endswith("exceeds the cap 0.05")
    row = world.db.attempt(1)
    assert [e["buy"] for e in row.expected_outputs] == ["WETH"]
    assert (row.planned_txs, row.planned_swap_txs) == (2, 1)
    swaps = [i for i in world.intents() if i.purpose == "swap"]
    assert len(swaps) == 1, "only the WETH leg was signed"


@pytest.mark.parametrize(("usdc_per_weth", "sent"), [(2_940, True), (2_850, False)])
async def test_a_leg_whose_pool_is_off_the_plans_price_is_rejected(
    autojump_clock: trio.testing.MockClock, usdc_per_weth: int, sent: bool
) -> None:
    """2 % off the plan's 3 000 is within max_quote_deviation (3 %), 5 % is not; the pool is
    deep, so the price-impact cap alone would pass both."""
    world = make_world(rebalance={"max_quote_deviation": Decimal("0.03")})
    world.pools.set_pool(USDC.address, usdc_per_weth * 10**9, WETH.address, 1_000 * 10**18)
    outcome = await world.handle(BUY_WETH)
    if sent:
        assert outcome.status == "SUCCESS"
        assert len(world.node.sends) == 2  # approve, swap
        return
    assert outcome.status == "SKIPPED"
    assert outcome.error is not None
    assert outcome.error.startswith(
        "USDC->WETH: the pool prices 1 USDC at 0.000350877 WETH, the plan at 0.000333333 WETH"
    )
    assert outcome.error.endswith("WETH: 5.26% apart, above the max_quote_deviation 3%")
    assert nothing_signed(world)


async def test_a_plan_whose_legs_are_all_rejected_is_skipped_and_nothing_is_signed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    world = make_world()
    world.pools.set_pool(USDC.address, 2_500 * 10**9, WETH.address, 1_000 * 10**18)  # off price
    world.pools.set_pool(USDC.address, 30_000 * 10**6, WBTC.address, 5 * 10**7)  # shallow
    outcome = await world.handle(BUY_WETH, BUY_WBTC)
    assert outcome.status == "SKIPPED"
    assert outcome.error is not None
    off_price, impact = outcome.error.split("; ")
    assert off_price.startswith("USDC->WETH: the pool prices")
    assert impact.startswith("USDC->WBTC: price impact")
    # The attempt was started (PENDING) and ended SKIPPED; no plan, no transaction.
    assert world.events == [("pending", "1"), ("finished", "1", "SKIPPED")]
    assert world.db.attempt(1).skip_reason == outcome.error
    assert nothing_signed(world)
    assert world.alerts == []


# --- sending ------------------------------------------------------------------------------------


async def test_a_successful_request_stores_its_plan_first_and_sends_one_transaction_per_call(
    autojump_clock: trio.testing.MockClock,
) -> None:
    world = make_world()
    outcome = await world.handle(BUY_WETH, BUY_WBTC)
    assert outcome.status == "SUCCESS"

    # Wallet mode, no allowance yet: one approve for USDC (for the maximum), then two swaps.
    intents = world.intents()
    assert [(i.purpose, i.call_index, i.nonce) for i in intents] == [
        ("approve", 0, 0),
        ("swap", 1, 1),
        ("swap", 2, 2),
    ]
    assert all(i.status == "CONFIRMED" and i.rebalance_id == 1 for i in intents)
    assert [i.tx_to for i in intents] == [USDC.address, ROUTER, ROUTER]
    row = world.db.attempt(1)
    assert (row.planned_txs, row.planned_swap_txs) == (3, 2)
    hashes = [i.tx_hash for i in intents]
    assert world.node.sends == hashes, "each transaction sent once"

    # The plan before the first intent; each intent before its broadcast; the next call only
    # once the previous one is mined; the row finished last.
    expected: list[tuple[str, ...]] = [("pending", "1"), ("plan", "1")]
    for tx_hash in hashes:
        expected += [("recorded", tx_hash), ("send", tx_hash), ("mined", tx_hash)]
    expected.append(("finished", "1", "SUCCESS"))
    assert in_order(world.events, expected), world.events

    # The outcome is the mined receipts'.
    receipts = [world.node.receipts[h] for h in hashes]
    assert outcome.tx_hash == hashes[-1] == row.transaction_hash
    assert (row.status, row.error) == ("SUCCESS", None)
    assert row.gas_used == sum(r.gas_used for r in receipts)
    gas_wei = sum(r.gas_used * r.effective_gas_price for r in receipts)
    assert row.gas_cost_wei == gas_wei
    assert row.gas_cost_usd == Decimal(gas_wei).scaleb(-18) * PRICES["WETH"]
    assert world.finished == [(1, "p1", "SUCCESS")]
    assert world.executor.in_flight == set()
    assert world.executor.status.pending == 0


async def test_a_reverted_swap_ends_failed_with_its_reason_and_stops_the_attempt(
    autojump_clock: trio.testing.MockClock,
) -> None:
    world = make_world()
    world.node.reverts = lambda tx: tx.purpose == "swap"
    world.chain.revert_reason = REASON
    outcome = await world.handle(BUY_WETH, BUY_WBTC)
    assert outcome.status == "FAILED"
    assert outcome.error == f"transaction reverted: {REASON}"
    approve, swap = world.intents()  # the second swap was never signed
    assert (approve.status, swap.status) == ("CONFIRMED", "REVERTED")
    row = world.db.attempt(1)
    assert (row.status, row.error, row.transaction_hash) == ("FAILED", outcome.error, swap.tx_hash)
    assert row.gas_used == sum(i.gas_used or 0 for i in (approve, swap)), "a revert costs gas too"
    assert world.alerted("REBALANCE_FAILED") == [{"portfolio": "p1", "error": outcome.error}]


async def test_a_call_that_would_revert_is_not_signed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    world = make_world()
    world.chain.estimate_reverts = "TRANSFER_FROM_FAILED"
    outcome = await world.handle(BUY_WETH)
    assert outcome.status == "FAILED"
    assert "would revert: TRANSFER_FROM_FAILED" in (outcome.error or "")
    assert world.db.rows == {}
    assert world.node.sends == []


@pytest.mark.parametrize("taken", [True, False], ids=["node-took-it", "node-did-not"])
async def test_a_send_error_never_ends_the_attempt_before_the_nonce_is_settled(
    autojump_clock: trio.testing.MockClock, taken: bool
) -> None:
    """The broadcast raises (a lost reply); whether the node has the transaction is asked, not
    guessed, and the attempt waits for the nonce to be mined rather than call it failed."""
    world = make_world()
    world.node.automine = False
    world.node.send_script = [(transport_error("connection reset by peer"), taken)]
    outcome: list[RebalanceOutcome] = []
    async with trio.open_nursery() as nursery:

        async def handle() -> None:
            outcome.append(await world.handle(BUY_WETH))

        nursery.start_soon(handle)
        while not world.node.pool:
            await trio.sleep(0.25)
        await trio.sleep(60)  # a minute of virtual time: still waiting on the approve
        assert outcome == []
        assert world.db.attempt(1).status == "PENDING"
        (approve,) = world.intents()
        assert world.node.sends == [approve.tx_hash] * (1 if taken else 2), "same bytes resent"
        assert set(world.executor.transactions.slots) == {0}
        world.node.automine = True
        world.node.mine_all()
    assert outcome[0].status == "SUCCESS"
    approve, swap = world.intents()
    assert (approve.nonce, swap.nonce) == (0, 1), "one version per nonce: nothing re-signed"
    assert in_order(
        world.events,
        [("mined", approve.tx_hash), ("mined", swap.tx_hash), ("finished", "1", "SUCCESS")],
    )


async def test_a_signer_that_cannot_send_refuses_new_requests_until_it_can(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Portfolio 1's approve cannot be sent (no gas money): the nonce blocks the signer, and
    portfolio 2's request is SKIPPED before anything is written or signed. Funded again,
    portfolio 1's attempt completes."""
    world = make_world()
    world.node.funded = False
    first: list[RebalanceOutcome] = []
    async with trio.open_nursery() as nursery:

        async def handle_first() -> None:
            first.append(await world.handle(BUY_WETH, portfolio_id=1))

        nursery.start_soon(handle_first)
        while world.executor.transactions.blocked() is None:
            await trio.sleep(0.25)
        quoted = len(world.pools.quoted)
        second = await world.handle(BUY_WBTC, portfolio_id=2)
        assert second.status == "SKIPPED"
        assert second.error == (
            "No trade: the signer cannot send: nonce 0 cannot be sent: "
            "RPC error -32000: insufficient funds for gas * price + value"
        )
        (row,) = world.db.of_portfolio(2)
        assert (row.status, row.skip_reason) == ("SKIPPED", second.error)
        assert ("pending", str(row.id)) not in world.events
        assert len(world.pools.quoted) == quoted, "portfolio 2 was not even quoted"
        assert [i.rebalance_id for i in world.intents()] == [1], "portfolio 2 signed nothing"
        assert first == []
        world.node.funded = True
    assert first[0].status == "SUCCESS"
    assert world.executor.transactions.blocked() is None


async def test_a_node_on_another_chain_found_when_signing_skips_the_attempt(
    autojump_clock: trio.testing.MockClock,
) -> None:
    world = make_world()
    world.node.served_chain_id = 1
    outcome = await world.handle(BUY_WETH)
    assert outcome.status == "SKIPPED"
    assert (
        outcome.error
        == f"No trade: the signer cannot send: the node serves chain 1, not {CHAIN_ID}"
    )
    assert world.db.attempt(1).status == "SKIPPED"
    assert world.db.rows == {}
    assert world.node.sends == []
    # Known now: the next request is refused before its row is even started.
    again = await world.handle(BUY_WETH, portfolio_id=2)
    assert again.error == outcome.error
    assert world.events[-1] == ("row", "2", "SKIPPED")


async def test_dry_run_quotes_and_plans_but_sends_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    world = make_world(execution={"dry_run": True})
    outcome = await world.handle(BUY_WETH, BUY_WBTC)
    assert outcome.status == "DRY_RUN"
    assert nothing_signed(world)
    assert world.events == [("pending", "1"), ("finished", "1", "DRY_RUN")]
    row = world.db.attempt(1)
    assert [e["buy"] for e in row.expected_outputs] == ["WETH", "WBTC"]
    assert all(int(e["amount_out_min"]) > 0 for e in row.expected_outputs)
    assert world.finished == [(1, "p1", "DRY_RUN")]


# --- delegation mode: the oracle guard's bound is checked before sending ------------------------


def guarded_world(max_loss_bps: int) -> World:
    world = make_world()
    world.mode = delegation_mode(world.signer, max_loss_bps)
    head = world.node.head_timestamp
    world.chain.feeds = {
        FEEDS[USDC.address]: (10**8, head - 60),
        FEEDS[WETH.address]: (3_000 * 10**8, head - 60),
        FEEDS[WBTC.address]: (60_000 * 10**8, head - 60),
    }
    world.chain.balances = {
        (USDC.address, ACCOUNT): 10_000 * 10**6,
        (WETH.address, ACCOUNT): 10**18,
    }
    return world


async def test_a_redemption_the_oracle_guard_could_revert_is_skipped_unsent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """At worst (each swap paid its 1 %-slippage minimum) the two legs lose ~0.5 % of the
    account's 13 000 USD: above a 25 bps bound, so nothing is sent."""
    world = guarded_world(max_loss_bps=25)
    outcome = await world.handle(BUY_WETH, BUY_WBTC)
    assert outcome.status == "SKIPPED"
    assert outcome.error is not None
    assert outcome.error.startswith("No trade: the oracle guard could revert it: LossAboveBound")
    assert outcome.error.endswith("(> 25 bps)")
    assert world.events == [("pending", "1"), ("finished", "1", "SKIPPED")]
    assert nothing_signed(world)


async def test_a_redemption_within_the_guards_bound_is_one_transaction_for_all_legs(
    autojump_clock: trio.testing.MockClock,
) -> None:
    world = guarded_world(max_loss_bps=100)
    outcome = await world.handle(BUY_WETH, BUY_WBTC)
    assert outcome.status == "SUCCESS"
    (redemption,) = world.intents()
    assert (redemption.tx_to, redemption.purpose) == (MANAGER, "swap")
    assert (world.db.attempt(1).planned_txs, world.db.attempt(1).planned_swap_txs) == (1, 1)
    assert outcome.tx_hash == redemption.tx_hash


# --- the actor: requests through its channel, recovery of a previous run ------------------------


async def test_run_serves_requests_through_its_channel_with_several_workers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Two workers: the second portfolio's attempt starts while the first one's transaction
    waits to be mined (with one worker it would wait for the first attempt to end). Both are
    answered on their reply channels; the signer's lease is taken first and given back last."""
    world = make_world(workers=2)
    world.node.automine = False
    send, receive = trio.open_memory_channel[RebalanceRequest](0)
    first, first_answer = world.request(BUY_WETH, portfolio_id=1)
    second, second_answer = world.request(BUY_WBTC, portfolio_id=2)
    with trio.fail_after(3600):
        async with trio.open_nursery() as nursery:
            await nursery.start(world.executor.run, receive)
            assert world.events[0] == ("lease", "1")
            assert world.executor.status.lease_held  # health and /metrics say so
            await send.send(first)
            await send.send(second)
            await trio.testing.wait_all_tasks_blocked()
            assert ("pending", "1") in world.events
            assert ("pending", "2") in world.events
            assert not any(event[0] == "mined" for event in world.events)
            assert world.executor.status.pending == 2
            assert world.executor.in_flight == {1, 2}
            world.node.automine = True
            world.node.mine_all()
            outcomes = [await first_answer.receive(), await second_answer.receive()]
            nursery.cancel_scope.cancel()
    assert [(o.rebalance_id, o.status) for o in outcomes] == [(1, "SUCCESS"), (2, "SUCCESS")]
    assert sorted(world.finished) == [(1, "p1", "SUCCESS"), (2, "p2", "SUCCESS")]
    assert world.executor.status.handled == 2
    assert world.executor.in_flight == set()
    assert world.events[-1] == ("released", "1")
    assert world.db.lease is None
    assert not world.executor.status.lease_held


async def test_one_worker_carries_out_one_request_at_a_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    world = make_world(workers=1)
    world.node.automine = False
    send, receive = trio.open_memory_channel[RebalanceRequest](1)
    first, first_answer = world.request(BUY_WETH, portfolio_id=1)
    second, second_answer = world.request(BUY_WBTC, portfolio_id=2)
    with trio.fail_after(3600):
        async with trio.open_nursery() as nursery:
            await nursery.start(world.executor.run, receive)
            await send.send(first)
            await send.send(second)
            await trio.testing.wait_all_tasks_blocked()
            assert ("pending", "1") in world.events
            assert ("pending", "2") not in world.events, "the second waits for the first"
            world.node.automine = True
            world.node.mine_all()
            assert (await first_answer.receive()).status == "SUCCESS"
            assert (await second_answer.receive()).status == "SUCCESS"
            nursery.cancel_scope.cancel()
    first_done = world.events.index(("finished", "1", "SUCCESS"))
    assert world.events.index(("pending", "2")) > first_done


async def test_recovery_settles_a_previous_runs_attempt_in_the_background(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A previous run died with its approve broadcast and unmined. This run is ready at once;
    meanwhile the portfolio's new requests are refused (its attempt is PENDING); once the
    approve is mined the attempt is finished from its intents, as FAILED (no swap was sent),
    and the supervisor hears of it."""
    previous = make_world()
    previous.node.automine = False
    with trio.fail_after(3600):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(previous.handle, BUY_WETH)
            while not previous.node.pool:
                await trio.sleep(0.25)
            nursery.cancel_scope.cancel()  # the process dies here
    (approve,) = previous.intents()
    assert approve.live, "signed and sent, not settled"
    assert previous.db.attempt(1).status == "PENDING"

    world = World(
        node=previous.node,
        db=previous.db,
        chain=previous.chain,
        pools=previous.pools,
        signer=previous.signer,
        config=previous.config,
        mode=previous.mode,
    )
    WORLDS.append(world)
    send, receive = trio.open_memory_channel[RebalanceRequest](0)
    with trio.fail_after(3600):
        async with trio.open_nursery() as nursery:
            await nursery.start(world.executor.run, receive)
            status = world.executor.status
            assert (status.recovering, world.executor.in_flight) == (1, {1})
            assert set(world.executor.transactions.slots) == {0}
            assert world.db.attempt(1).status == "PENDING"

            again, answer = world.request(BUY_WETH, portfolio_id=1)
            await send.send(again)
            refused = await answer.receive()
            assert refused.status == "SKIPPED"
            assert refused.error == ("No trade: another rebalance of this portfolio is in flight")
            assert previous.node.sends == [approve.tx_hash], "nothing new was signed"

            world.node.mine_all()
            while status.recovering:
                await trio.sleep(0.25)
            nursery.cancel_scope.cancel()
    row = world.db.attempt(1)
    assert row.status == "FAILED"
    assert row.error == "no swap was mined; nothing was traded; settled after a restart"
    assert row.transaction_hash == approve.tx_hash
    assert world.db.by_hash(approve.tx_hash).status == "CONFIRMED"
    assert world.executor.in_flight == set()
    assert (1, "1", "FAILED") in world.finished
    assert world.alerted("REBALANCE_FAILED") == [{"portfolio": "1", "error": row.error}]

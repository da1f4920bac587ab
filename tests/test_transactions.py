"""The transaction lifecycle of one signer (:mod:`daemon.transactions`) against in-memory fakes
of the node and the intent store (``fakes_chain``), under Trio's virtual clock.

Every test is about one rule of the module: a signed transaction is seen through until its
nonce is provably consumed, whatever the node's replies say in words.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, MutableMapping
from decimal import Decimal
from typing import Any

import attrs
import pytest
import structlog
import trio
import trio.testing
from fakes_chain import CHAIN_ID, EPOCH, GWEI, FakeNode, FakeStore, rpc_error, transport_error

from daemon.address import to_address
from daemon.chain import FeeData
from daemon.chain_errors import ChainError, RpcError, RpcTimeout, RpcTransportError
from daemon.config import Secret
from daemon.db import (
    ConstraintViolation,
    DatabaseError,
    DatabaseUnavailable,
    NewTxIntent,
    TxIntent,
)
from daemon.signer import TxRequest, TxSigner
from daemon.transactions import CANCEL_GAS, UNSENDABLE_AFTER, SignerTransactions
from daemon.transactions_values import (
    FeeAboveCeiling,
    LifecycleSettings,
    NonceSlot,
    Settled,
    SignerBlocked,
    TxPlan,
    opening_fees,
    replacement_fees,
)

KEY = Secret("0x" + "11" * 32)
ROUTER = to_address("0x" + "ab" * 20)
SWAP_DATA = bytes.fromhex("38ed1739") + bytes(64)
CLOCK = trio.testing.MockClock
BUMP = Decimal("0.125")


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
def logs() -> Iterator[list[MutableMapping[str, Any]]]:
    """The lifecycle's log events, captured (cheap: settle loops poll thousands of times)."""
    with structlog.testing.capture_logs() as captured:
        yield captured


def logged(logs: list[MutableMapping[str, Any]], event: str) -> list[MutableMapping[str, Any]]:
    return [entry for entry in logs if entry["event"] == event]


# --- the world ------------------------------------------------------------------------------


@attrs.define(eq=False)
class World:
    node: FakeNode
    store: FakeStore
    signer: TxSigner
    settings: LifecycleSettings
    alerts: list[tuple[str, dict[str, object]]]
    txs: SignerTransactions

    @property
    def events(self) -> list[tuple[str, ...]]:
        return self.store.events

    def restart(self) -> SignerTransactions:
        """A new process on the same store and node (nothing in memory carried over)."""
        self.txs = SignerTransactions(
            node=self.node,
            store=self.store,
            signer=self.signer,
            settings=lambda: self.settings,
            alert=lambda kind, fields: self.alerts.append((kind, dict(fields))),
        )
        return self.txs

    def alerted(self, kind: str) -> list[dict[str, object]]:
        return [fields for k, fields in self.alerts if k == kind]


def make_world(settings: LifecycleSettings | None = None, **node: object) -> World:
    signer = TxSigner(key=KEY)
    events: list[tuple[str, ...]] = []
    fake_node = FakeNode(signer=signer.address, events=events, **node)  # type: ignore[arg-type]
    store = FakeStore(events=events, on_record=fake_node.learn)
    world = World(
        node=fake_node,
        store=store,
        signer=signer,
        settings=settings or LifecycleSettings(),
        alerts=[],
        txs=None,  # type: ignore[arg-type]
    )
    world.restart()
    WORLDS.append(world)
    return world


def plan(
    call_index: int = 0,
    *,
    purpose: str = "swap",
    deadline: int | None = None,
    rebalance_id: int = 7,
) -> TxPlan:
    return TxPlan(
        to=ROUTER,
        data=SWAP_DATA + bytes([call_index]),
        gas=150_000,
        purpose=purpose,  # type: ignore[arg-type]
        deadline=deadline,
        rebalance_id=rebalance_id,
        call_index=call_index,
    )


@attrs.define(eq=False)
class Watch:
    """A settle running in the background."""

    slot: NonceSlot
    result: Settled | None = None
    done: trio.Event = attrs.Factory(trio.Event)

    async def wait(self) -> Settled:
        await self.done.wait()
        assert self.result is not None
        return self.result


def watch(nursery: trio.Nursery, txs: SignerTransactions, slot: NonceSlot) -> Watch:
    w = Watch(slot)

    async def run() -> None:
        w.result = await txs.settle(slot)
        w.done.set()

    nursery.start_soon(run)
    return w


async def until(condition: Callable[[], bool], *, step: float = 0.25, limit: float = 3600) -> None:
    """Wait (virtual time) until ``condition`` holds."""
    with trio.fail_after(limit):
        while not condition():
            await trio.sleep(step)


def index_of(events: list[tuple[str, ...]], event: tuple[str, ...]) -> int:
    assert event in events, f"{event} never happened: {events}"
    return events.index(event)


def assert_no_nonce_reuse(store: FakeStore) -> None:
    """A nonce carries one planned call: every version of it (bumps, cancel) is of that call."""
    calls: dict[int, set[tuple[int | None, int | None]]] = {}
    for row in store.rows.values():
        calls.setdefault(row.nonce, set()).add((row.rebalance_id, row.call_index))
    reused = {nonce: c for nonce, c in calls.items() if len(c) > 1}
    assert not reused, f"nonces carrying different calls: {reused}"


def trouble_of(slot: NonceSlot) -> str | None:
    return slot.trouble


def bumped(new: int | None, old: int | None) -> bool:
    """``new`` ≥ ``old`` × 1.125, exactly."""
    assert new is not None
    assert old is not None
    return new * 8 >= old * 9


# --- the fee arithmetic -----------------------------------------------------------------------


def test_opening_fees_leave_room_for_a_doubling_base_fee_capped_at_the_ceiling() -> None:
    assert opening_fees(FeeData(10 * GWEI, 1 * GWEI), 500 * GWEI) == (21 * GWEI, 1 * GWEI)
    assert opening_fees(FeeData(10 * GWEI, 1 * GWEI), 15 * GWEI) == (15 * GWEI, 1 * GWEI)
    assert opening_fees(FeeData(10 * GWEI, 0), 500 * GWEI) == (20 * GWEI, 1)
    with pytest.raises(FeeAboveCeiling):
        opening_fees(FeeData(10 * GWEI, 1 * GWEI), 10 * GWEI)


def test_replacement_fees_raise_both_fees_by_the_bump_and_cover_the_base_fee() -> None:
    w = make_world()
    row = _fake_intent(w, max_fee=21 * GWEI, priority=1 * GWEI)
    max_fee, priority = replacement_fees(row, 10 * GWEI, BUMP)
    assert bumped(max_fee, row.max_fee_per_gas)
    assert bumped(priority, row.max_priority_fee_per_gas)
    max_fee, priority = replacement_fees(row, 40 * GWEI, BUMP)
    assert max_fee >= 2 * 40 * GWEI + priority


def _fake_intent(w: World, *, max_fee: int, priority: int) -> TxIntent:
    return TxIntent(
        id=1,
        rebalance_id=None,
        chain_id=CHAIN_ID,
        signer=w.signer.address,
        nonce=0,
        raw_tx=b"",
        tx_hash="0x00",
        status="BROADCAST",
        fencing_token=0,
        max_fee_per_gas=max_fee,
        max_priority_fee_per_gas=priority,
        replaces_id=None,
        block_number=None,
        gas_used=None,
        effective_gas_price=None,
        error=None,
        created_at=EPOCH,
        updated_at=EPOCH,
    )


# --- 1. the happy path ------------------------------------------------------------------------


async def test_happy_path_records_the_intent_before_the_first_send(autojump_clock: CLOCK) -> None:
    w = make_world()
    with trio.fail_after(60):
        slot = await w.txs.submit(plan())
        tx_hash = slot.newest.tx_hash
        # Durable before anything left the process.
        assert w.store.by_hash(tx_hash).status == "SIGNED"
        assert w.node.sends == []
        assert w.txs.slots == {slot.nonce: slot}
        settled = await w.txs.settle(slot)
    assert settled.outcome == "mined"
    assert settled.nonce == slot.nonce == 0
    assert settled.receipt is not None
    assert settled.receipt.transaction_hash == tx_hash
    assert settled.receipt.succeeded
    assert settled.intent is not None
    assert settled.intent.status == "CONFIRMED"
    row = w.store.by_hash(tx_hash)
    assert row.status == "CONFIRMED"
    assert row.block_number == settled.receipt.block_number
    assert row.gas_used == settled.receipt.gas_used
    # recorded → sent → mined, in that order; BROADCAST only once the node had it.
    recorded = index_of(w.events, ("recorded", tx_hash))
    sent = index_of(w.events, ("send", tx_hash))
    mined = index_of(w.events, ("mined", tx_hash))
    assert recorded < sent < mined
    history = w.store.status_history(tx_hash)
    assert history[0] == "SIGNED"
    assert history[-1] == "CONFIRMED"
    assert w.node.sends == [tx_hash]
    assert w.txs.slots == {}
    assert w.txs.blocked() is None
    assert w.txs.next_nonce == 1
    assert w.alerts == []


async def test_stored_plan_is_what_was_signed(autojump_clock: CLOCK) -> None:
    w = make_world()
    p = plan(3, deadline=w.node.head_timestamp + 300, rebalance_id=11)
    slot = await w.txs.submit(p)
    row = w.store.by_hash(slot.newest.tx_hash)
    assert (row.tx_to, row.tx_data, row.gas_limit, row.tx_value) == (p.to, p.data, p.gas, 0)
    assert (row.deadline, row.rebalance_id, row.call_index, row.purpose) == (
        p.deadline,
        11,
        3,
        "swap",
    )
    assert (row.chain_id, row.nonce) == (CHAIN_ID, 0)
    assert (row.max_fee_per_gas, row.max_priority_fee_per_gas) == (21 * GWEI, 1 * GWEI)


# --- 2. a lost reply --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        RpcTimeout("the node did not answer within 10 s"),
        RpcTransportError("connection reset by peer"),
        RpcTransportError("HTTP 502 from the node", status=502),
    ],
    ids=["timeout", "reset", "http-502"],
)
async def test_send_reply_lost_but_node_took_it_settles_the_same_hash(
    autojump_clock: CLOCK, error: ChainError
) -> None:
    w = make_world()
    w.node.send_script = [(error, True)]  # the node took it, the reply was lost
    with trio.fail_after(60):
        slot = await w.txs.submit(plan())
        settled = await w.txs.settle(slot)
    tx_hash = slot.versions[0].tx_hash
    assert settled.outcome == "mined"
    assert settled.receipt is not None
    assert settled.receipt.transaction_hash == tx_hash
    assert len(w.store.rows) == 1, "no replacement and no second nonce"
    assert w.node.sends == [tx_hash], "the node has it: nothing to send again"
    assert w.txs.next_nonce == 1
    assert w.store.by_hash(tx_hash).status == "CONFIRMED"
    assert w.txs.blocked() is None
    assert w.alerts == []


# --- 3. the wording of a refusal does not matter ----------------------------------------------


REFUSALS = [
    "transaction already imported",
    "already known",
    "nonce too low",
    "insufficient funds for gas * price + value",
    "replacement transaction underpriced",
    "ʕ•ᴥ•ʔ <html>502 Bad Gateway</html>",
    "",
]


@pytest.mark.parametrize("message", REFUSALS)
async def test_refusal_text_is_ignored_when_the_node_has_the_tx(
    autojump_clock: CLOCK, message: str
) -> None:
    w = make_world(automine=False)
    w.node.send_script = [(rpc_error(message), True)]
    with trio.fail_after(600):
        slot = await w.txs.submit(plan())
        async with trio.open_nursery() as nursery:
            running = watch(nursery, w.txs, slot)
            await trio.sleep(30)
            assert not running.done.is_set()
            assert w.store.by_hash(slot.newest.tx_hash).status == "BROADCAST"
            w.node.mine_all()
            settled = await running.wait()
    assert settled.outcome == "mined"
    assert settled.receipt is not None
    assert settled.receipt.transaction_hash == slot.versions[0].tx_hash
    assert len(w.store.rows) == 1
    assert len(w.node.sends) == 1
    assert w.alerts == [], "the node had it all along: nothing was blocked"


@pytest.mark.parametrize("message", ["already known", "transaction already imported"])
async def test_refusal_that_sounds_like_success_is_not_believed(
    autojump_clock: CLOCK, message: str
) -> None:
    """The node says "already known" but has nothing: the lifecycle keeps sending."""
    w = make_world()
    w.node.send_script = [(rpc_error(message), False), (rpc_error(message), False)]
    with trio.fail_after(600):
        slot = await w.txs.submit(plan())
        settled = await w.txs.settle(slot)
    tx_hash = slot.versions[0].tx_hash
    assert settled.outcome == "mined"
    assert settled.receipt is not None
    assert settled.receipt.transaction_hash == tx_hash
    assert w.node.sends == [tx_hash] * 3
    assert len(w.store.rows) == 1
    assert w.txs.blocked() is None


# --- 4. failed observations -------------------------------------------------------------------


async def test_failed_observations_are_retried_with_backoff_until_the_node_answers(
    autojump_clock: CLOCK,
) -> None:
    w = make_world(automine=False)
    failures: list[ChainError] = [
        transport_error("connection refused"),
        RpcTransportError("malformed reply to a transaction check: KeyError('timestamp')"),
        RpcTimeout("the node did not answer"),
        RpcError(-32603, "internal error"),
    ] * 2
    with trio.fail_after(3600):
        slot = await w.txs.submit(plan())
        async with trio.open_nursery() as nursery:
            running = watch(nursery, w.txs, slot)
            await until(lambda: slot.newest.tx_hash in w.node.pool)
            # Mined, but the node cannot tell us for a while.
            w.node.observe_errors = list(failures)
            w.node.mine_all()
            started = trio.current_time()
            await trio.sleep(30)
            assert not running.done.is_set(), "returned while the node could not be asked"
            assert slot.trouble is not None
            assert w.node.observe_errors, "backoff: fewer polls than at poll_interval"
            settled = await running.wait()
            elapsed = trio.current_time() - started
    assert settled.outcome == "mined"
    assert settled.receipt is not None
    assert settled.receipt.transaction_hash == slot.versions[0].tx_hash
    assert not w.node.observe_errors
    # 0.5 + 1 + 2 + 4 + 8 + 16 + 30 + 30: doubling, capped at 30 s.
    assert elapsed >= 90
    assert trouble_of(slot) is None, "cleared by the first answer"
    assert len(w.store.rows) == 1


async def test_failed_observations_before_the_first_send_delay_but_do_not_skip_it(
    autojump_clock: CLOCK,
) -> None:
    w = make_world()
    with trio.fail_after(3600):
        slot = await w.txs.submit(plan())
        w.node.observe_errors = [transport_error()] * 5
        settled = await w.txs.settle(slot)
    assert settled.outcome == "mined"
    assert w.node.sends == [slot.versions[0].tx_hash]


async def test_a_long_node_outage_does_not_end_settle(autojump_clock: CLOCK) -> None:
    """BUG: ``settle`` computes ``poll_interval * 2**failures`` before capping it, so at the
    1024th consecutive failed observation (≈ 8.5 h of a node outage at the 30 s cap) the float
    conversion overflows and settle raises OverflowError, abandoning the nonce (and crashing the
    executor). Expected: keep polling every 30 s for as long as the outage lasts."""
    w = make_world()
    with trio.fail_after(7 * 86400):
        slot = await w.txs.submit(plan())
        w.node.observe_errors = [transport_error("connection refused")] * 1100
        try:
            settled = await w.txs.settle(slot)
        except OverflowError as exc:  # pragma: no cover - the bug
            pytest.fail(f"settle raised after a long node outage: {exc!r}")
    assert settled.outcome == "mined"


# --- 5. a nonce no node takes: insufficient funds ---------------------------------------------


async def test_insufficient_funds_blocks_new_nonces_until_funded(autojump_clock: CLOCK) -> None:
    w = make_world(funded=False)
    with trio.fail_after(3600):
        slot = await w.txs.submit(plan(0))
        async with trio.open_nursery() as nursery:
            running = watch(nursery, w.txs, slot)
            await until(lambda: w.txs.blocked() is not None)
            assert len(w.node.sends) >= UNSENDABLE_AFTER
            reason = w.txs.blocked()
            assert reason is not None
            assert f"nonce {slot.nonce}" in reason
            [alert] = w.alerted("SIGNER_BLOCKED")
            assert alert["nonce"] == slot.nonce
            assert alert["signer"] == w.signer.address
            # No gap: nothing new is signed above an unsendable nonce.
            with pytest.raises(SignerBlocked):
                await w.txs.submit(plan(1))
            assert {r.nonce for r in w.store.rows.values()} == {slot.nonce}
            assert w.txs.next_nonce == slot.nonce + 1
            await trio.sleep(60)
            assert not running.done.is_set()
            assert w.store.by_hash(slot.newest.tx_hash).live
            w.node.funded = True
            settled = await running.wait()
    assert settled.outcome == "mined"
    assert settled.nonce == slot.nonce
    assert w.node.mined[slot.nonce] == settled.receipt.transaction_hash  # type: ignore[union-attr]
    assert w.txs.blocked() is None
    assert len(w.alerted("SIGNER_BLOCKED")) == 1, "alerted once, not on every retry"
    nxt = await w.txs.submit(plan(1))
    assert nxt.nonce == slot.nonce + 1
    assert_no_nonce_reuse(w.store)


# --- 6. a fee below the base fee --------------------------------------------------------------


async def test_fee_below_base_fee_is_resigned_at_market_fees(autojump_clock: CLOCK) -> None:
    w = make_world()
    with trio.fail_after(3600):
        slot = await w.txs.submit(plan())  # max fee 21 gwei
        old = slot.versions[0]
        w.node.base_fee = 40 * GWEI  # the node refuses it now
        settled = await w.txs.settle(slot)
    assert settled.outcome == "mined"
    assert settled.intent is not None
    new = settled.intent
    assert new.tx_hash != old.tx_hash
    assert new.nonce == old.nonce
    assert new.replaces_id == old.id
    assert new.max_fee_per_gas is not None
    assert new.max_fee_per_gas >= 40 * GWEI
    assert bumped(new.max_fee_per_gas, old.max_fee_per_gas)
    assert bumped(new.max_priority_fee_per_gas, old.max_priority_fee_per_gas)
    assert (new.tx_to, new.tx_data, new.gas_limit, new.purpose) == (
        old.tx_to,
        old.tx_data,
        old.gas_limit,
        "swap",
    )
    # The old one was marked REPLACED and the new one recorded before the new one was sent.
    assert w.store.status_history(old.tx_hash)[:2] == ["SIGNED", "REPLACED"]
    assert w.store.by_hash(old.tx_hash).status == "DROPPED"
    assert index_of(w.events, ("recorded", new.tx_hash)) < index_of(w.events, ("send", new.tx_hash))
    assert w.store.by_hash(new.tx_hash).status == "CONFIRMED"
    assert w.txs.blocked() is None


async def test_fee_below_base_fee_is_resigned_up_to_the_ceiling(autojump_clock: CLOCK) -> None:
    """BUG: ``replacement_fees`` always asks for ``2 × base fee + priority`` and
    ``_replace_if_due`` refuses anything above the ceiling, while ``opening_fees`` caps at the
    ceiling. With the ceiling at 100 gwei and the base fee at 60 gwei a fresh transaction would be
    signed at 100 gwei (valid and within the ceiling), but a version under the base fee is never
    re-signed (121 gwei > 100): the nonce stays refused and blocks the signer — and past the
    deadline not even a cancel can be signed (cancel ceiling 112.5 gwei) — until the base fee
    falls below half the ceiling. Expected: re-sign at min(2 × base + priority, ceiling) when
    that still pays the base fee (as ``opening_fees`` does) and get it mined."""
    w = make_world(LifecycleSettings(max_fee_per_gas=100 * GWEI, poll_interval=1.0))
    blocked: set[str] = set()
    with trio.fail_after(86400):
        slot = await w.txs.submit(plan())  # max fee 21 gwei
        w.node.base_fee = 60 * GWEI
        # A new transaction would be signed now, within the ceiling:
        assert opening_fees(await w.node.fees(), 100 * GWEI) == (100 * GWEI, 1 * GWEI)
        async with trio.open_nursery() as nursery:
            running = watch(nursery, w.txs, slot)
            for _ in range(60):
                await trio.sleep(10)
                blocked.add(w.txs.blocked() or "")
                if running.done.is_set():
                    break
            nursery.cancel_scope.cancel()
    settled = running.result
    assert settled is not None, (
        f"not re-signed in 10 min with base fee 60 gwei and ceiling 100 gwei; "
        f"versions={[(v.max_fee_per_gas, v.status) for v in w.store.versions(slot.nonce)]}, "
        f"blocked meanwhile: {sorted(blocked - {''})}"
    )
    assert settled.outcome == "mined"
    assert settled.intent is not None
    assert 60 * GWEI <= (settled.intent.max_fee_per_gas or 0) <= 100 * GWEI


# --- 7. stuck in the pool ---------------------------------------------------------------------


@pytest.mark.parametrize("winner", ["old", "new"])
async def test_stuck_tx_is_bumped_and_either_version_may_be_mined(
    autojump_clock: CLOCK, winner: str
) -> None:
    w = make_world(automine=False)
    timeout = w.settings.receipt_timeout
    with trio.fail_after(3600):
        slot = await w.txs.submit(plan())
        old = slot.versions[0]
        async with trio.open_nursery() as nursery:
            running = watch(nursery, w.txs, slot)
            await until(lambda: old.tx_hash in w.node.pool)
            await trio.sleep(timeout - 5)
            assert len(w.store.rows) == 1, "bumped before receipt_timeout"
            await until(lambda: len(w.store.rows) == 2)
            old_row, new = w.store.versions(slot.nonce)
            assert old_row.status == "REPLACED"
            assert new.replaces_id == old.id
            assert new.live
            assert bumped(new.max_fee_per_gas, old.max_fee_per_gas)
            assert bumped(new.max_priority_fee_per_gas, old.max_priority_fee_per_gas)
            await until(lambda: new.tx_hash in w.node.pool)
            assert index_of(w.events, ("recorded", new.tx_hash)) < index_of(
                w.events, ("send", new.tx_hash)
            )
            assert not running.done.is_set()
            if winner == "old":
                w.node.mine_version(old.tx_hash)  # a miner that still had the old one
            else:
                w.node.mine_all()
            settled = await running.wait()
    mined, dropped = (old, new) if winner == "old" else (new, old)
    assert settled.outcome == "mined"
    assert settled.receipt is not None
    assert settled.receipt.transaction_hash == mined.tx_hash
    assert settled.intent is not None
    assert settled.intent.tx_hash == mined.tx_hash
    assert w.store.by_hash(mined.tx_hash).status == "CONFIRMED"
    assert w.store.by_hash(dropped.tx_hash).status == "DROPPED"
    assert w.store.live() == []


# --- 8. at the fee ceiling, past the deadline -------------------------------------------------


async def test_fee_ceiling_then_deadline_cancels_the_trade(autojump_clock: CLOCK) -> None:
    ceiling = 30 * GWEI
    w = make_world(LifecycleSettings(max_fee_per_gas=ceiling, poll_interval=1.0), automine=False)
    deadline = w.node.head_timestamp + 3600
    with trio.fail_after(7200):
        slot = await w.txs.submit(plan(2, deadline=deadline, rebalance_id=9))
        async with trio.open_nursery() as nursery:
            running = watch(nursery, w.txs, slot)
            await trio.sleep(10 * w.settings.receipt_timeout)
            trades = w.store.versions(slot.nonce)
            # 21 → 23.6 → 26.6 → 29.9 gwei; the next bump (33.6) is above the ceiling.
            assert len(trades) == 4
            assert all((v.max_fee_per_gas or 0) <= ceiling for v in trades)
            assert all(v.purpose == "swap" for v in trades)
            assert not running.done.is_set()
            w.node.head_timestamp = deadline + 1
            await until(lambda: slot.newest.purpose == "cancel")
            cancel = slot.newest
            await until(lambda: cancel.tx_hash in w.node.pool)
            assert not running.done.is_set()
            w.node.mine_all()
            settled = await running.wait()
    row = w.store.by_hash(cancel.tx_hash)
    assert row.tx_to == w.signer.address
    assert (row.tx_value, row.gas_limit, row.tx_data) == (0, CANCEL_GAS, b"")
    assert (row.purpose, row.rebalance_id, row.call_index) == ("cancel", 9, 2)
    assert row.replaces_id == trades[-1].id
    assert bumped(row.max_fee_per_gas, trades[-1].max_fee_per_gas)
    assert (row.max_fee_per_gas or 0) <= ceiling * 9 // 8, "a cancel bids at most one bump above"
    assert index_of(w.events, ("recorded", cancel.tx_hash)) < index_of(
        w.events, ("send", cancel.tx_hash)
    )
    assert settled.outcome == "cancelled"
    assert settled.receipt is not None
    assert settled.receipt.transaction_hash == cancel.tx_hash
    assert settled.intent is not None
    assert settled.intent.status == "CONFIRMED"
    assert all(w.store.by_hash(v.tx_hash).status == "DROPPED" for v in trades)
    assert_no_nonce_reuse(w.store)


async def test_deadline_without_fee_trouble_cancels_too(autojump_clock: CLOCK) -> None:
    w = make_world(automine=False)
    deadline = w.node.head_timestamp + 60
    with trio.fail_after(3600):
        slot = await w.txs.submit(plan(deadline=deadline))
        async with trio.open_nursery() as nursery:
            running = watch(nursery, w.txs, slot)
            await trio.sleep(30)
            assert len(w.store.rows) == 1, "before the deadline the trade stands"
            w.node.head_timestamp = deadline  # not past it yet
            await trio.sleep(30)
            assert len(w.store.rows) == 1
            w.node.head_timestamp = deadline + 1
            await until(lambda: slot.newest.purpose == "cancel")
            await until(lambda: slot.newest.tx_hash in w.node.pool)
            w.node.mine_all()
            settled = await running.wait()
    assert settled.outcome == "cancelled"


# --- 9. another sender consumed the nonce -----------------------------------------------------


async def test_nonce_consumed_by_another_sender_after_the_grace(autojump_clock: CLOCK) -> None:
    w = make_world(automine=False)
    grace = w.settings.consumed_grace
    with trio.fail_after(3600):
        slot = await w.txs.submit(plan())
        async with trio.open_nursery() as nursery:
            running = watch(nursery, w.txs, slot)
            await until(lambda: slot.newest.tx_hash in w.node.pool)
            w.node.consume_by_other()
            consumed_at = trio.current_time()
            await trio.sleep(grace - 1)
            assert not running.done.is_set(), "believed before the grace period"
            assert w.store.by_hash(slot.newest.tx_hash).live
            settled = await running.wait()
            waited = trio.current_time() - consumed_at
    assert settled.outcome == "consumed"
    assert settled.receipt is None
    assert settled.intent is None
    assert waited >= grace
    assert all(r.status == "DROPPED" for r in w.store.versions(slot.nonce))
    assert all("not ours" in (r.error or "") for r in w.store.versions(slot.nonce))
    [alert] = w.alerted("NONCE_CONSUMED")
    assert alert["nonce"] == slot.nonce
    assert w.txs.blocked() is None


async def test_nonce_consumed_drops_every_version(autojump_clock: CLOCK) -> None:
    w = make_world(automine=False)
    with trio.fail_after(3600):
        slot = await w.txs.submit(plan())
        async with trio.open_nursery() as nursery:
            running = watch(nursery, w.txs, slot)
            await until(lambda: len(w.store.rows) == 2)  # bumped once
            await until(lambda: slot.newest.tx_hash in w.node.pool)
            w.node.consume_by_other()
            settled = await running.wait()
    assert settled.outcome == "consumed"
    assert [r.status for r in w.store.versions(slot.nonce)] == ["DROPPED", "DROPPED"]


async def test_our_receipt_within_the_grace_wins(autojump_clock: CLOCK) -> None:
    """The node counts the mined nonce before it serves the receipt: not "consumed"."""
    w = make_world(automine=False)
    with trio.fail_after(3600):
        slot = await w.txs.submit(plan())
        tx_hash = slot.newest.tx_hash
        async with trio.open_nursery() as nursery:
            running = watch(nursery, w.txs, slot)
            await until(lambda: tx_hash in w.node.pool)
            w.node.hidden.add(tx_hash)
            w.node.mine_all()
            await trio.sleep(w.settings.consumed_grace - 1)
            assert not running.done.is_set()
            w.node.hidden.clear()
            settled = await running.wait()
    assert settled.outcome == "mined"
    assert settled.receipt is not None
    assert settled.receipt.transaction_hash == tx_hash
    assert w.store.by_hash(tx_hash).status == "CONFIRMED"
    assert w.alerted("NONCE_CONSUMED") == []


async def test_consumed_nonce_is_not_reported_as_a_blocked_signer(autojump_clock: CLOCK) -> None:
    """BUG (minor): during the consumed grace the lifecycle keeps re-sending our version, the
    node refuses it (its nonce is below the mined count), and after UNSENDABLE_AFTER refusals the
    slot is marked unsendable: a SIGNER_BLOCKED alert fires and ``blocked()`` refuses trades for
    the rest of the grace, although nothing is wrong with the signer — its nonce was simply used.
    Expected: a nonce the node already counts as mined (``view.mined_nonce > slot.nonce``) is
    not "unsendable"; no SIGNER_BLOCKED alert."""
    w = make_world(automine=False)
    seen_blocked: list[str] = []
    with trio.fail_after(3600):
        slot = await w.txs.submit(plan())
        async with trio.open_nursery() as nursery:
            running = watch(nursery, w.txs, slot)
            await until(lambda: slot.newest.tx_hash in w.node.pool)
            w.node.consume_by_other()
            while not running.done.is_set():
                reason = w.txs.blocked()
                if reason is not None:
                    seen_blocked.append(reason)
                await trio.sleep(0.25)
            settled = await running.wait()
    assert settled.outcome == "consumed"
    assert w.alerted("SIGNER_BLOCKED") == [], w.alerted("SIGNER_BLOCKED")
    assert seen_blocked == []


# --- 10. a node of another chain --------------------------------------------------------------


async def test_wrong_chain_waits_and_blocks_then_proceeds(autojump_clock: CLOCK) -> None:
    w = make_world()
    with trio.fail_after(3600):
        slot = await w.txs.submit(plan(0))
        w.node.served_chain_id = 1  # e.g. the RPC endpoint was repointed at mainnet
        async with trio.open_nursery() as nursery:
            running = watch(nursery, w.txs, slot)
            await trio.sleep(150)  # past receipt_timeout too
            assert not running.done.is_set()
            assert w.node.sends == [], "nothing is sent to a node of another chain"
            reason = w.txs.blocked()
            assert reason is not None
            assert "chain 1" in reason
            assert slot.trouble is not None
            with pytest.raises(SignerBlocked):
                await w.txs.submit(plan(1))
            assert len(w.store.rows) == 1
            w.node.served_chain_id = CHAIN_ID
            settled = await running.wait()
    assert settled.outcome == "mined"
    assert w.txs.blocked() is None
    nxt = await w.txs.submit(plan(1))
    assert nxt.nonce == slot.nonce + 1


async def test_wrong_chain_seen_by_submit_clears_when_the_node_is_right_again(
    autojump_clock: CLOCK,
) -> None:
    """Regression: ``wrong_chain`` used to be cleared only inside a settle loop, so a wrong
    chain seen by ``submit`` with no nonce in flight blocked the signer forever (every later
    ``submit`` raised from ``blocked()`` before asking the node again)."""
    w = make_world()
    with trio.fail_after(3600):
        w.node.served_chain_id = 1
        with pytest.raises(SignerBlocked):
            await w.txs.submit(plan(0))
        assert w.store.rows == {}
        w.node.served_chain_id = CHAIN_ID
        await trio.sleep(60)
        try:
            slot = await w.txs.submit(plan(0))
        except SignerBlocked as exc:  # pragma: no cover - the bug
            pytest.fail(f"still blocked after the node is back on chain {CHAIN_ID}: {exc}")
    assert slot.nonce == 0


async def test_recheck_chain_clears_a_wrong_chain_while_nothing_is_in_flight(
    autojump_clock: CLOCK,
) -> None:
    w = make_world()
    with trio.fail_after(60):
        w.node.served_chain_id = 1
        with pytest.raises(SignerBlocked):
            await w.txs.submit(plan(0))
        assert w.txs.blocked() is not None
        w.node.served_chain_id = CHAIN_ID
        w.node.observe_errors = [transport_error()]
        await w.txs.recheck_chain()  # a failed check decides nothing
        assert w.txs.blocked() is not None
        await w.txs.recheck_chain()
        assert w.txs.blocked() is None
        w.node.served_chain_id = 1
        await w.txs.recheck_chain()
        assert w.txs.blocked() is not None
    assert w.store.rows == {}


# --- 11. the database fails while the outcome is recorded -------------------------------------


async def test_database_outage_while_recording_the_receipt(autojump_clock: CLOCK) -> None:
    w = make_world(automine=False)
    with trio.fail_after(3600):
        slot = await w.txs.submit(plan())
        tx_hash = slot.newest.tx_hash
        async with trio.open_nursery() as nursery:
            running = watch(nursery, w.txs, slot)
            await until(lambda: w.store.by_hash(tx_hash).status == "BROADCAST")
            w.store.outage = True
            w.node.mine_all()
            await trio.sleep(300)
            assert not running.done.is_set(), "returned before the outcome was stored"
            assert w.store.by_hash(tx_hash).status == "BROADCAST"
            failed = w.store.failed_calls.count("record_intent_receipt")
            assert failed >= 5, "retried (with backoff)"
            assert failed < 300 / w.settings.poll_interval, "with backoff"
            w.store.outage = False
            settled = await running.wait()
    assert settled.outcome == "mined"
    assert settled.intent is not None
    assert settled.intent.status == "CONFIRMED"
    assert w.store.by_hash(tx_hash).status == "CONFIRMED"
    assert len(w.store.rows) == 1, "no replacement while the outcome was being stored"


async def test_database_outage_during_a_bump_keeps_the_recorded_version(
    autojump_clock: CLOCK,
) -> None:
    """An unrecorded replacement is never sent; the recorded version stays watched."""
    w = make_world(LifecycleSettings(poll_interval=1.0), automine=False)
    with trio.fail_after(3600):
        slot = await w.txs.submit(plan())
        old = slot.newest
        async with trio.open_nursery() as nursery:
            running = watch(nursery, w.txs, slot)
            await until(lambda: old.tx_hash in w.node.pool)
            w.store.outage = True
            await trio.sleep(w.settings.receipt_timeout + 10)
            assert "replace_intent" in w.store.failed_calls
            assert w.node.sends == [old.tx_hash], "nothing unrecorded was sent"
            w.node.mine_all()
            await trio.sleep(30)
            assert not running.done.is_set()
            w.store.outage = False
            settled = await running.wait()
    assert settled.outcome == "mined"
    assert settled.intent is not None
    assert settled.intent.tx_hash == old.tx_hash
    assert len(w.store.rows) == 1


async def test_lost_reply_of_a_replacement_does_not_stop_the_bumps(
    autojump_clock: CLOCK, logs: list[MutableMapping[str, Any]]
) -> None:
    """BUG: ``replace_intent`` commits (old REPLACED, new SIGNED) but its reply is lost
    (DatabaseUnavailable). ``_replace_if_due`` logs and keeps the slot's in-memory view (old
    version live); every later ``replace_intent(old.id)`` is refused with ConstraintViolation
    (the old row is REPLACED), which is swallowed as "not recorded". The slot is never bumped
    or cancelled again; the recorded replacement is never sent. A transaction the market will
    not mine stays stuck (and blocks every later nonce) until a restart. Expected: after a
    failed replacement write, re-read the nonce's versions from the store and carry on with
    what is recorded."""
    w = make_world(LifecycleSettings(poll_interval=5.0), automine=False)
    w.node.min_priority_to_mine = 1 * GWEI + 1  # the opening tip is too low for the market
    with trio.fail_after(86400):
        slot = await w.txs.submit(plan())
        async with trio.open_nursery() as nursery:
            running = watch(nursery, w.txs, slot)
            await until(lambda: slot.newest.tx_hash in w.node.pool)
            w.store.lose_reply.add("replace_intent")
            for _ in range(10):
                await trio.sleep(60)
                w.node.mine_all()
                if running.done.is_set():
                    break
            finished = running.done.is_set()
            nursery.cancel_scope.cancel()
    unsent = [r.tx_hash for r in w.store.live() if r.tx_hash not in w.node.sends]
    refused = len(logged(logs, "tx_replacement_not_recorded"))
    assert finished, (
        f"stuck for 10 min after a lost replace_intent reply: {refused} replacements refused "
        f"by the store since, recorded but never sent: {unsent}"
    )


async def test_lost_reply_of_an_insert_leaves_no_live_intent_unwatched(
    autojump_clock: CLOCK,
) -> None:
    """BUG (mitigated by an executor restart): ``insert_intent`` commits but its reply is lost.
    ``submit`` raises DatabaseUnavailable with ``next_nonce`` not advanced and no slot, although
    a live intent for that nonce is in the store. The next ``submit`` signs the same nonce again
    and the store refuses it (ConstraintViolation ``tx_intent_live_nonce``) — on every later
    submit; the recorded intent is neither sent nor settled until ``load()`` runs after a restart.
    Expected: every live intent in the store is watched by a slot (re-read the nonce after an
    ambiguous write), and the next submit does not fail on it."""
    w = make_world()
    with trio.fail_after(3600):
        w.store.lose_reply.add("insert_intent")
        with contextlib.suppress(DatabaseError):  # raising here is fine: nothing was sent
            await w.txs.submit(plan(0))
        assert [r.nonce for r in w.store.live()] == [0]
        try:
            await w.txs.submit(plan(1))
        except ConstraintViolation as exc:  # pragma: no cover - the bug
            pytest.fail(f"the next submit collides with the unwatched intent: {exc}")
    watched = set(w.txs.slots)
    assert {r.nonce for r in w.store.live()} <= watched


# --- 12. recovery -----------------------------------------------------------------------------


@pytest.mark.parametrize("winner", ["old", "new"])
async def test_recovery_rebuilds_replaced_and_live_versions(
    autojump_clock: CLOCK, winner: str
) -> None:
    w = make_world(automine=False)
    p = plan(1, deadline=w.node.head_timestamp + 10_000, rebalance_id=5)
    with trio.fail_after(3600):
        slot = await w.txs.submit(p)
        with trio.move_on_after(w.settings.receipt_timeout + 10):
            await w.txs.settle(slot)  # bumped once, then the process stops
        old, new = w.store.versions(slot.nonce)
        assert (old.status, new.status) == ("REPLACED", "BROADCAST")
        txs = w.restart()
        [recovered] = await txs.load()
        assert recovered.nonce == slot.nonce
        assert recovered.hashes == [old.tx_hash, new.tx_hash]
        assert recovered.newest.tx_hash == new.tx_hash
        assert recovered.plan == p
        assert txs.slots == {slot.nonce: recovered}
        if winner == "old":
            w.node.mine_version(old.tx_hash)
        else:
            w.node.mine_all()
        settled = await txs.settle(recovered)
    mined = old if winner == "old" else new
    assert settled.outcome == "mined"
    assert settled.intent is not None
    assert settled.intent.tx_hash == mined.tx_hash
    assert w.store.by_hash(mined.tx_hash).status == "CONFIRMED"
    assert w.store.live() == []
    nxt = await txs.submit(plan(2))
    assert nxt.nonce == slot.nonce + 1


async def test_recovery_of_a_signed_never_sent_intent_sends_it(autojump_clock: CLOCK) -> None:
    w = make_world()
    with trio.fail_after(3600):
        slot = await w.txs.submit(plan())  # crash right after the intent was recorded
        txs = w.restart()
        [recovered] = await txs.load()
        assert recovered.hashes == slot.hashes
        # New nonces go above the recovered one even before it is settled.
        above = await txs.submit(plan(1))
        assert above.nonce == slot.nonce + 1
        async with trio.open_nursery() as nursery:
            first = watch(nursery, txs, recovered)
            second = watch(nursery, txs, above)
            a, b = await first.wait(), await second.wait()
    assert (a.outcome, b.outcome) == ("mined", "mined")
    assert a.receipt is not None
    assert b.receipt is not None
    assert a.receipt.block_number < b.receipt.block_number


def _legacy_intent(w: World, *, nonce: int, max_fee: int, priority: int) -> NewTxIntent:
    """An intent recorded before plans were stored (no to/data/gas)."""
    tx = TxRequest(
        to=ROUTER,
        data=SWAP_DATA,
        nonce=nonce,
        gas=150_000,
        max_fee_per_gas=max_fee,
        max_priority_fee_per_gas=priority,
        chain_id=CHAIN_ID,
    )
    signed = w.signer.sign(tx)
    return NewTxIntent(
        chain_id=CHAIN_ID,
        signer=w.signer.address,
        nonce=nonce,
        raw_tx=signed.raw,
        tx_hash=signed.hash,
        fencing_token=1,
        rebalance_id=3,
        max_fee_per_gas=max_fee,
        max_priority_fee_per_gas=priority,
    )


async def test_recovered_slot_without_a_plan_is_cancelled_after_receipt_timeout(
    autojump_clock: CLOCK,
) -> None:
    w = make_world(automine=False)
    with trio.fail_after(3600):
        legacy = await w.store.insert_intent(
            _legacy_intent(w, nonce=0, max_fee=21 * GWEI, priority=1 * GWEI)
        )
        await w.node.send(legacy.raw_tx)  # the old process had sent it
        [slot] = await w.txs.load()
        assert slot.plan is None
        async with trio.open_nursery() as nursery:
            running = watch(nursery, w.txs, slot)
            await trio.sleep(w.settings.receipt_timeout - 5)
            assert len(w.store.rows) == 1
            await until(lambda: slot.newest.purpose == "cancel")
            cancel = slot.newest
            await until(lambda: cancel.tx_hash in w.node.pool)
            w.node.mine_all()
            settled = await running.wait()
    assert settled.outcome == "cancelled"
    row = w.store.by_hash(cancel.tx_hash)
    assert (row.tx_to, row.tx_value, row.gas_limit, row.rebalance_id) == (
        w.signer.address,
        0,
        CANCEL_GAS,
        3,
    )
    assert w.store.by_hash(legacy.tx_hash).status == "DROPPED"


@pytest.mark.parametrize(
    "case",
    ["fee-below-base-fee", "fees-not-recorded"],
)
async def test_recovered_planless_intent_not_known_to_the_node_does_not_crash_settle(
    autojump_clock: CLOCK, case: str
) -> None:
    """BUG: a recovered intent with no stored plan that the node does not have at the first
    observation, and whose recorded max fee is at or below the base fee — including any legacy
    row whose fees are NULL (``max_fee_per_gas or 0``) — takes the "below the base fee" branch
    of ``_replace_if_due`` with ``cancel`` False and reaches ``assert slot.plan is not None``
    (transactions.py, the ``else`` after ``if cancel or cancelling``): settle raises
    AssertionError (with ``python -O``: AttributeError on ``None.to``) on its first iteration.
    In the executor this crashes recovery, on every start. Expected: a slot without a plan is
    only ever cancelled (or sent as recorded), never re-signed from a plan it does not have."""
    w = make_world(automine=False)
    with trio.fail_after(3600):
        intent = _legacy_intent(w, nonce=0, max_fee=21 * GWEI, priority=1 * GWEI)
        if case == "fee-below-base-fee":
            w.node.base_fee = 40 * GWEI  # the node refuses it
        else:
            # Recorded by v1 without fees; the node restarted and forgot it (it would take it).
            intent = attrs.evolve(intent, max_fee_per_gas=None, max_priority_fee_per_gas=None)
            w.node.refuse_below_base_fee = False
        legacy = await w.store.insert_intent(intent)
        [slot] = await w.txs.load()
        assert slot.plan is None
        crashed: list[BaseException] = []
        async with trio.open_nursery() as nursery:

            async def settle() -> None:
                try:
                    await w.txs.settle(slot)
                except AssertionError as exc:  # pragma: no cover - the bug
                    crashed.append(exc)

            nursery.start_soon(settle)
            await trio.sleep(1)
            if not crashed:
                await until(lambda: bool(w.node.pool))
                w.node.mine_all()
    assert not crashed, f"settle raised {crashed[0]!r} on a recovered slot without a plan"
    assert w.store.live() == []
    assert w.node.mined[0] in {r.tx_hash for r in w.store.versions(0)}
    assert w.store.by_hash(legacy.tx_hash).status in ("CONFIRMED", "DROPPED")


# --- 13. several nonces in flight -------------------------------------------------------------


async def test_pipelined_submits_get_consecutive_nonces_and_settle_concurrently(
    autojump_clock: CLOCK,
) -> None:
    w = make_world(automine=False)
    with trio.fail_after(3600):
        first = await w.txs.submit(plan(0))
        second = await w.txs.submit(plan(1))
        assert (first.nonce, second.nonce) == (0, 1)
        async with trio.open_nursery() as nursery:
            a, b = watch(nursery, w.txs, first), watch(nursery, w.txs, second)
            await until(lambda: len(w.node.pool) == 2)
            w.node.mine_all()
            ra, rb = await a.wait(), await b.wait()
    assert (ra.outcome, rb.outcome) == ("mined", "mined")
    assert ra.receipt is not None
    assert rb.receipt is not None
    assert ra.receipt.block_number < rb.receipt.block_number
    assert [r.status for r in w.store.rows.values()] == ["CONFIRMED", "CONFIRMED"]
    assert w.txs.next_nonce == 2
    assert_no_nonce_reuse(w.store)


async def test_concurrent_submits_never_share_a_nonce(autojump_clock: CLOCK) -> None:
    w = make_world()
    slots: list[NonceSlot] = []

    async def submit(i: int) -> None:
        slots.append(await w.txs.submit(plan(i)))

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for i in range(5):
                nursery.start_soon(submit, i)
    assert sorted(s.nonce for s in slots) == [0, 1, 2, 3, 4]
    assert_no_nonce_reuse(w.store)


async def test_unsendable_nonce_holds_back_the_next_one(autojump_clock: CLOCK) -> None:
    w = make_world()

    def refuse_nonce_zero(tx: object) -> ChainError | None:
        return rpc_error("insufficient funds") if getattr(tx, "nonce", None) == 0 else None

    with trio.fail_after(3600):
        first = await w.txs.submit(plan(0))
        second = await w.txs.submit(plan(1))
        w.node.refuse = refuse_nonce_zero
        async with trio.open_nursery() as nursery:
            a, b = watch(nursery, w.txs, first), watch(nursery, w.txs, second)
            await until(lambda: w.txs.blocked() is not None)
            reason = w.txs.blocked()
            assert reason is not None
            assert "nonce 0" in reason
            with pytest.raises(SignerBlocked):
                await w.txs.submit(plan(2))
            await trio.sleep(60)
            # Nonce 1 is with the node but cannot be mined before nonce 0.
            assert second.newest.tx_hash in w.node.pool
            assert not a.done.is_set()
            assert not b.done.is_set()
            assert w.node.mined_nonce == 0
            w.node.refuse = None
            ra, rb = await a.wait(), await b.wait()
    assert (ra.outcome, rb.outcome) == ("mined", "mined")
    assert ra.receipt is not None
    assert rb.receipt is not None
    assert ra.receipt.block_number < rb.receipt.block_number
    assert w.txs.blocked() is None
    assert {r.nonce for r in w.store.rows.values()} == {0, 1}
    assert_no_nonce_reuse(w.store)
    third = await w.txs.submit(plan(2))
    assert third.nonce == 2


async def test_next_nonce_moves_above_a_consumed_nonce(autojump_clock: CLOCK) -> None:
    w = make_world(automine=False)
    with trio.fail_after(3600):
        slot = await w.txs.submit(plan(0))
        async with trio.open_nursery() as nursery:
            running = watch(nursery, w.txs, slot)
            await until(lambda: slot.newest.tx_hash in w.node.pool)
            w.node.consume_by_other()  # nonce 0
            w.node.consume_by_other()  # and nonce 1, which we had not used yet
            settled = await running.wait()
        assert settled.outcome == "consumed"
        nxt = await w.txs.submit(plan(1))
    assert nxt.nonce == 2
    assert_no_nonce_reuse(w.store)


# --- 14. cancellation -------------------------------------------------------------------------


async def test_cancelled_settle_leaves_the_intent_live_for_recovery(autojump_clock: CLOCK) -> None:
    w = make_world(automine=False)
    with trio.fail_after(3600):
        slot = await w.txs.submit(plan(0))
        with trio.move_on_after(10) as scope:
            await w.txs.settle(slot)
        assert scope.cancelled_caught
        row = w.store.by_hash(slot.newest.tx_hash)
        assert row.live
        assert row.status == "BROADCAST"
        assert w.txs.slots == {}
        # The nonce still belongs to that intent: not reused by this process…
        nxt = await w.txs.submit(plan(1))
        assert nxt.nonce == slot.nonce + 1
        # …and the next process sees it through.
        txs = w.restart()
        recovered = {s.nonce: s for s in await txs.load()}
        assert recovered[slot.nonce].hashes == slot.hashes
        w.node.mine_all()
        settled = await txs.settle(recovered[slot.nonce])
    assert settled.outcome == "mined"
    assert_no_nonce_reuse(w.store)


async def test_cancelled_while_the_store_is_down_raises_nothing_else(
    autojump_clock: CLOCK,
) -> None:
    w = make_world(automine=False)
    with trio.fail_after(3600):
        slot = await w.txs.submit(plan(0))
        async with trio.open_nursery() as nursery:
            running = watch(nursery, w.txs, slot)
            await until(lambda: slot.newest.tx_hash in w.node.pool)
            w.store.outage = True
            w.node.mine_all()
            await trio.sleep(20)  # inside the receipt-recording retry loop
            nursery.cancel_scope.cancel()
        assert not running.done.is_set()
        w.store.outage = False
        assert w.store.by_hash(slot.newest.tx_hash).live
        assert w.txs.slots == {}


async def test_unrecorded_intent_is_never_sent(autojump_clock: CLOCK) -> None:
    """An outage at submit: the insert's fate is unknown, so submit waits for the database to
    tell whether the intent exists; it does not, so submit raises, nothing was sent, and the
    nonce is free for the next submit."""
    w = make_world()
    outcome: list[BaseException] = []

    async def submit() -> None:
        try:
            await w.txs.submit(plan(0))
        except DatabaseUnavailable as exc:
            outcome.append(exc)

    with trio.fail_after(60):
        w.store.outage = True
        async with trio.open_nursery() as nursery:
            nursery.start_soon(submit)
            await trio.sleep(20)
            assert outcome == [], "it waits for the database to answer"
            assert w.node.sends == []
            w.store.outage = False
        assert len(outcome) == 1
        assert w.node.sends == []
        assert w.txs.slots == {}
        slot = await w.txs.submit(plan(0))
    assert slot.nonce == 0

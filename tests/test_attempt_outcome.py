"""An attempt's terminal status from its recorded intents alone (:func:`attempt_outcome`), and
what a finished attempt does to the portfolio's clocks (:func:`record_outcome`,
:func:`failure_backoff`).

SUCCESS iff every planned transaction was mined successfully; PARTIAL iff some swap was and not
every planned transaction; FAILED otherwise. Gas counts every mined version, cancels included.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from fakes_chain import FakeNode, FakeStore

from daemon.attempt import attempt_outcome
from daemon.config import Secret
from daemon.db import IntentPurpose, IntentStatus, TxIntent
from daemon.portfolio import PortfolioState, failure_backoff, record_outcome
from daemon.signer import TxSigner
from daemon.transactions import SignerTransactions
from daemon.transactions_values import LifecycleSettings, TxPlan

EPOCH = datetime(2024, 1, 1, tzinfo=UTC)
SIGNER = "0x19E7E376E7C213B7E7e7e46cc70A5dD086DAff2A"
PRICE = 12 * 10**9
NOT_OURS = "nonce 4 was consumed by a transaction that is not ours"
_ids = itertools.count(1)


def tx(
    call_index: int | None,
    purpose: IntentPurpose = "swap",
    status: IntentStatus = "CONFIRMED",
    *,
    gas_used: int | None = None,
    price: int = PRICE,
    error: str | None = None,
    nonce: int | None = None,
) -> TxIntent:
    """One recorded version; mined ones carry their receipt's gas."""
    ident = next(_ids)
    mined = status in ("CONFIRMED", "REVERTED")
    if gas_used is None and mined:
        gas_used = 21_000 if purpose == "cancel" else 100_000 + 1_000 * (call_index or 0)
    return TxIntent(
        id=ident,
        rebalance_id=1,
        chain_id=31337,
        signer=SIGNER,
        nonce=nonce if nonce is not None else (call_index or 0),
        raw_tx=b"\x02",
        tx_hash=f"0x{ident:064x}",
        status=status,
        fencing_token=1,
        max_fee_per_gas=2 * PRICE,
        max_priority_fee_per_gas=10**9,
        replaces_id=None,
        block_number=100 + ident if mined else None,
        gas_used=gas_used if mined else None,
        effective_gas_price=price if mined else None,
        error=error,
        created_at=EPOCH,
        updated_at=EPOCH,
        purpose=purpose,
        call_index=call_index,
    )


def gas_of(intents: list[TxIntent]) -> tuple[int, int]:
    mined = [i for i in intents if i.status in ("CONFIRMED", "REVERTED")]
    return (
        sum(i.gas_used or 0 for i in mined),
        sum((i.gas_used or 0) * (i.effective_gas_price or 0) for i in mined),
    )


@attrs.frozen
class Case:
    planned: int | None
    swaps: int | None
    intents: list[TxIntent]
    status: str
    errors: tuple[str, ...] = ()
    """Fragments the error must contain (FAILED and PARTIAL always carry one)."""
    tx: int | None = None
    """Index into ``intents`` of the reported transaction hash; None: no hash."""
    stopped: str | None = None


def _delegation_cases() -> dict[str, Case]:
    swap = tx(0)
    reverted = tx(0, status="REVERTED")
    bumped_old, bumped_new = tx(0, status="DROPPED"), tx(0)
    old_won, new_lost = tx(0), tx(0, status="DROPPED")
    cancelled_trade, cancel = tx(0, status="DROPPED"), tx(0, "cancel")
    return {
        "delegation: the swap mined": Case(1, 1, [swap], "SUCCESS", tx=0),
        "delegation: a bumped swap mined": Case(1, 1, [bumped_old, bumped_new], "SUCCESS", tx=1),
        "delegation: the replaced version mined": Case(1, 1, [old_won, new_lost], "SUCCESS", tx=0),
        "delegation: reverted": Case(1, 1, [reverted], "FAILED", ("reverted",), tx=0),
        "delegation: cancelled": Case(1, 1, [cancelled_trade, cancel], "FAILED", ("cancel",), tx=1),
        "delegation: consumed by another sender": Case(
            1, 1, [tx(0, status="DROPPED", error=NOT_OURS)], "FAILED", ("not ours",)
        ),
        "delegation: nothing signed": Case(1, 1, [], "FAILED", ("nothing was traded",)),
        "delegation: refused before signing": Case(
            1, 1, [], "FAILED", ("signer cannot send",), stopped="the signer cannot send"
        ),
    }


def _wallet_cases() -> dict[str, Case]:
    approve, swap_never_sent = tx(0, "approve"), "would revert: TRANSFER_FROM_FAILED"
    full = [tx(0, "approve"), tx(1), tx(2, "approve"), tx(3)]
    half = [tx(0, "approve"), tx(1), tx(2, "approve"), tx(3, status="REVERTED")]
    half_cancel = [tx(0, "approve"), tx(1), tx(2, "approve"), tx(3, status="DROPPED")]
    half_cancel.append(tx(3, "cancel"))
    first_reverts = [tx(0, "approve"), tx(1, status="REVERTED")]
    return {
        "wallet: approve and swap mined": Case(2, 1, [approve, tx(1)], "SUCCESS", tx=1),
        "wallet: approve mined, swap never sent": Case(
            2,
            1,
            [tx(0, "approve")],
            "FAILED",
            (swap_never_sent,),
            tx=0,
            stopped=swap_never_sent,
        ),
        "wallet: approve mined, swap still unsigned (no reason)": Case(
            2, 1, [tx(0, "approve")], "FAILED", tx=0
        ),
        "wallet: approve reverted": Case(
            2, 1, [tx(0, "approve", "REVERTED")], "FAILED", ("reverted",), tx=0
        ),
        "wallet: swap reverted": Case(2, 1, first_reverts, "FAILED", ("reverted",), tx=1),
        "wallet: two legs mined": Case(4, 2, full, "SUCCESS", tx=3),
        "wallet: one of two swaps (the other reverted)": Case(
            4, 2, half, "PARTIAL", ("only 1 of 2 swap", "reverted"), tx=3
        ),
        "wallet: one of two swaps (the other cancelled)": Case(
            4, 2, half_cancel, "PARTIAL", ("only 1 of 2 swap", "cancel"), tx=1
        ),
        "wallet: one of two swaps (the other never sent)": Case(
            4, 2, full[:3], "PARTIAL", ("only 1 of 2 swap", "gas"), tx=1, stopped="gas"
        ),
        "wallet: one of two swaps (consumed by another sender)": Case(
            4,
            2,
            [*full[:3], tx(3, status="DROPPED", error=NOT_OURS)],
            "PARTIAL",
            ("only 1 of 2 swap", "not ours"),
            tx=1,
        ),
    }


def _legacy_cases() -> dict[str, Case]:
    return {
        "legacy: a swap mined, plan unknown": Case(
            None, None, [tx(None)], "PARTIAL", ("before attempts stored their plan",), tx=0
        ),
        "legacy: approve mined, plan unknown": Case(
            None, None, [tx(None, "approve")], "FAILED", ("before attempts stored",), tx=0
        ),
        "legacy: nothing mined": Case(
            None, None, [tx(None, status="DROPPED", error=NOT_OURS)], "FAILED", ("not ours",)
        ),
        "no plan at all (0 planned)": Case(0, 0, [], "FAILED"),
    }


CASES = {**_delegation_cases(), **_wallet_cases(), **_legacy_cases()}


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_attempt_outcome(case: Case) -> None:
    result = attempt_outcome(case.planned, case.swaps, case.intents, stopped=case.stopped)
    assert result.status == case.status
    if case.status == "SUCCESS":
        assert result.error is None
    else:
        assert result.error, "FAILED and PARTIAL say why"
    for fragment in case.errors:
        assert fragment in (result.error or ""), (fragment, result.error)
    expected_hash = None if case.tx is None else case.intents[case.tx].tx_hash
    assert result.transaction_hash == expected_hash
    if case.status == "PARTIAL":
        assert result.transaction_hash is not None, "PARTIAL rows need a hash (schema check)"
    gas_used, gas_wei = gas_of(case.intents)
    if gas_used:
        assert (result.gas_used, result.gas_cost_wei) == (gas_used, gas_wei)
    else:
        assert result.gas_used in (None, 0)


def test_gas_counts_every_mined_version_including_the_cancel() -> None:
    intents = [
        tx(0, "approve", gas_used=46_000, price=10 * 10**9),
        tx(1, "swap", "REPLACED", nonce=1),
        tx(1, "swap", "DROPPED", nonce=1),
        tx(1, "cancel", gas_used=21_000, price=30 * 10**9, nonce=1),
    ]
    result = attempt_outcome(2, 1, intents)
    assert result.status == "FAILED"
    assert "cancel" in (result.error or "")
    assert result.gas_used == 46_000 + 21_000
    assert result.gas_cost_wei == 46_000 * 10 * 10**9 + 21_000 * 30 * 10**9


def test_a_cancel_is_never_counted_as_the_planned_call() -> None:
    """The cancel carries the call index of the trade it replaced: it must not fill it."""
    result = attempt_outcome(1, 1, [tx(0, status="DROPPED"), tx(0, "cancel")])
    assert result.status == "FAILED"


def test_legacy_attempts_are_never_success() -> None:
    every_kind = [tx(None, "approve"), tx(None), tx(None)]
    assert attempt_outcome(None, None, every_kind).status != "SUCCESS"
    assert attempt_outcome(None, 2, every_kind).status != "SUCCESS"


def test_the_same_intents_decide_the_same_after_a_restart() -> None:
    """Live and recovered attempts use the same function: order of rows does not matter."""
    intents = [tx(0, "approve"), tx(1), tx(2, "approve"), tx(3, status="REVERTED")]
    forward = attempt_outcome(4, 2, intents)
    backward = attempt_outcome(4, 2, list(reversed(intents)))
    assert (forward.status, forward.gas_used, forward.gas_cost_wei) == (
        backward.status,
        backward.gas_used,
        backward.gas_cost_wei,
    )


# --- the rule, for any mix of outcomes ----------------------------------------------------------

FATES = ("confirmed", "reverted", "cancelled", "consumed", "replaced-then-confirmed", "unsent")


def _versions(call_index: int, purpose: IntentPurpose, fate: str) -> list[TxIntent]:
    if fate == "confirmed":
        return [tx(call_index, purpose)]
    if fate == "reverted":
        return [tx(call_index, purpose, "REVERTED")]
    if fate == "cancelled":
        return [tx(call_index, purpose, "DROPPED"), tx(call_index, "cancel")]
    if fate == "consumed":
        return [tx(call_index, purpose, "DROPPED", error=NOT_OURS)]
    if fate == "replaced-then-confirmed":
        return [tx(call_index, purpose, "DROPPED"), tx(call_index, purpose)]
    return []


APPROVE_FATES = ("confirmed", "reverted", "unsent")

Mix = tuple[tuple[IntentPurpose, str], ...]


def _every_mix() -> list[tuple[Mix, str | None]]:
    """Exhaustive: delegation (one transaction, any fate); wallet mode with 1–2 legs, each an
    approve and a swap of any fate; stopped early or not."""
    mixes: list[Mix] = [(("swap", fate),) for fate in FATES]
    leg_fates = list(itertools.product(APPROVE_FATES, FATES))
    for legs in (1, 2):
        for combo in itertools.product(leg_fates, repeat=legs):
            mixes.append(
                tuple(
                    call
                    for approve, swap in combo
                    for call in (("approve", approve), ("swap", swap))
                )
            )
    return [(mix, stopped) for mix in mixes for stopped in (None, "stopped early")]


def test_status_rule_holds_for_any_mix() -> None:
    for calls, stopped in _every_mix():
        _check_mix(calls, stopped)


def _check_mix(calls: Mix, stopped: str | None) -> None:
    intents: list[TxIntent] = []
    for index, (purpose, fate) in enumerate(calls):
        intents += _versions(index, purpose, fate)
    planned = len(calls)
    swaps = sum(1 for purpose, _ in calls if purpose == "swap")
    result = attempt_outcome(planned, swaps, intents, stopped=stopped)

    ok = {"confirmed", "replaced-then-confirmed"}
    all_ok = all(fate in ok for _, fate in calls)
    some_swap = any(purpose == "swap" and fate in ok for purpose, fate in calls)
    expected = "SUCCESS" if all_ok else "PARTIAL" if some_swap else "FAILED"
    assert result.status == expected, (calls, result)
    gas_used, gas_wei = gas_of(intents)
    if gas_used:
        assert (result.gas_used, result.gas_cost_wei) == (gas_used, gas_wei)
    if result.status != "SUCCESS":
        assert result.error
    if any(fate == "cancelled" for _, fate in calls):
        assert "cancel" in (result.error or "") or result.status == "SUCCESS"


# --- what an outcome does to the portfolio ------------------------------------------------------


@pytest.mark.parametrize(
    ("failures", "seconds"),
    [(-1, 0), (0, 0), (1, 60), (2, 120), (3, 240), (6, 1920), (7, 3600), (50, 3600), (10**9, 3600)],
)
def test_failure_backoff_doubles_up_to_the_cap(failures: int, seconds: float) -> None:
    assert failure_backoff(failures, 60.0, 3600.0) == timedelta(seconds=seconds)


def test_record_outcome_backs_off_after_failures_and_resets_on_a_trade() -> None:
    state = PortfolioState()
    now = EPOCH
    record_outcome(state, "FAILED", now, backoff=60, backoff_max=600)
    assert (state.failures, state.retry_at) == (1, now + timedelta(seconds=60))
    record_outcome(state, "FAILED", now, backoff=60, backoff_max=600)
    assert (state.failures, state.retry_at) == (2, now + timedelta(seconds=120))
    for _ in range(10):
        record_outcome(state, "FAILED", now, backoff=60, backoff_max=600)
    assert state.retry_at == now + timedelta(seconds=600), "capped"
    assert state.last_success_at is None, "a failure starts no cooldown"
    later = now + timedelta(hours=1)
    record_outcome(state, "SKIPPED", later, backoff=60, backoff_max=600)
    assert state.failures == 12, "a skip is not an attempt"
    record_outcome(state, "SUCCESS", later, backoff=60, backoff_max=600)
    assert _clocks(state) == (0, None, later)


def _clocks(state: PortfolioState) -> tuple[int, datetime | None, datetime | None]:
    return state.failures, state.retry_at, state.last_success_at


@pytest.mark.parametrize("status", ["SUCCESS", "PARTIAL", "DRY_RUN"])
def test_trades_and_dry_runs_start_the_cooldown_and_clear_the_backoff(status: str) -> None:
    state = PortfolioState()
    record_outcome(state, "FAILED", EPOCH, backoff=60, backoff_max=600)
    later = EPOCH + timedelta(minutes=5)
    record_outcome(state, status, later, backoff=60, backoff_max=600)
    assert state.last_success_at == later
    assert state.failures == 0
    assert state.retry_at is None


@pytest.mark.parametrize("status", ["SKIPPED", "PENDING"])
def test_non_attempts_leave_the_clocks_alone(status: str) -> None:
    state = PortfolioState(last_success_at=EPOCH, failures=2, retry_at=EPOCH)
    record_outcome(state, status, EPOCH + timedelta(hours=1), backoff=60, backoff_max=600)
    assert (state.last_success_at, state.failures, state.retry_at) == (EPOCH, 2, EPOCH)


# --- with the lifecycle's own records ---------------------------------------------------------


async def _attempt_through_the_lifecycle(
    scenario: str,
) -> tuple[Any, list[TxIntent]]:
    """Run one planned swap through SignerTransactions on the fakes; the attempt's outcome
    from the rows the lifecycle wrote."""
    signer = TxSigner(key=Secret("0x" + "22" * 32))
    node = FakeNode(signer=signer.address, automine=scenario == "mined")
    store = FakeStore(on_record=node.learn)
    txs = SignerTransactions(
        node=node, store=store, signer=signer, settings=lambda: LifecycleSettings()
    )
    deadline = node.head_timestamp + 60
    plan = TxPlan(
        to="0x" + "ab" * 20,
        data=b"\x01",
        gas=150_000,
        purpose="swap",
        deadline=deadline,
        rebalance_id=1,
        call_index=0,
    )
    with trio.fail_after(3600):
        slot = await txs.submit(plan)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(txs.settle, slot)
            while slot.newest.tx_hash not in node.pool and scenario != "mined":
                await trio.sleep(0.25)
            if scenario == "consumed":
                node.consume_by_other()
            elif scenario == "cancelled":
                node.head_timestamp = deadline + 1
                while slot.newest.purpose != "cancel" or slot.newest.tx_hash not in node.pool:
                    await trio.sleep(0.25)
                node.mine_all()
    intents = list(store.rows.values())
    return attempt_outcome(1, 1, intents), intents


@pytest.mark.parametrize(
    ("scenario", "status", "fragment"),
    [
        ("mined", "SUCCESS", None),
        ("consumed", "FAILED", "not ours"),
        ("cancelled", "FAILED", "cancel"),
    ],
)
async def test_outcome_of_what_the_lifecycle_recorded(
    autojump_clock: trio.testing.MockClock, scenario: str, status: str, fragment: str | None
) -> None:
    result, intents = await _attempt_through_the_lifecycle(scenario)
    assert result.status == status
    if fragment is not None:
        assert fragment in (result.error or "")
    assert result.gas_used == (gas_of(intents)[0] or None)

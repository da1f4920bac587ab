"""The values of the transaction lifecycle (:mod:`daemon.transactions`): its settings, what a
nonce carries and how it was settled, the slot that tracks one nonce, the fee rules of first
versions and replacements and when a version is due for one, one observation of the node
(:class:`NodeView`), and the two refusals of a new nonce.

Apart from the lifecycle engine because they are plain data and pure rules: the executor builds
plans, reads slots and outcomes and catches the refusals without the engine's machinery, and the
fee rules are unit-tested on their own. :mod:`daemon.transactions` re-exports the public names.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from decimal import Decimal
from typing import Literal

import attrs

from daemon.address import to_address
from daemon.chain import FeeData, Receipt
from daemon.db import IntentPurpose, TxIntent

TxOutcome = Literal["mined", "cancelled", "consumed"]


class SignerBlocked(Exception):
    """No new nonce may be allocated now (a nonce cannot be sent, or the node is wrong)."""


class FeeAboveCeiling(Exception):
    """The market fee is above ``execution.max_fee_gwei``: nothing was signed."""


@attrs.frozen
class NodeView:
    """One observation of the node, taken in one round trip."""

    chain_id: int
    mined_nonce: int
    """How many of the signer's transactions are mined (``eth_getTransactionCount … latest``)."""
    head_timestamp: int
    base_fee: int
    receipts: Mapping[str, Receipt]
    """Of the hashes asked about, those mined."""
    known: frozenset[str]
    """Of the hashes asked about, those the node has (in its pool or mined)."""


@attrs.frozen
class LifecycleSettings:
    """The live-reloadable parameters of the lifecycle (``[execution]``)."""

    max_fee_per_gas: int = 500 * 10**9
    """The fee ceiling of trades (wei); a cancel may bid one bump above it."""
    fee_bump: Decimal = Decimal("0.125")
    receipt_timeout: float = 120.0
    """Seconds a version may stay unmined before it is replaced with higher fees."""
    poll_interval: float = 0.25
    consumed_grace: float = 5.0
    """Seconds the nonce must look consumed by another transaction before we believe it (a
    node can count a mined nonce before it serves the receipt)."""


@attrs.frozen
class TxPlan:
    """What one nonce carries: everything needed to sign it again with other fees."""

    to: str = attrs.field(converter=to_address)
    data: bytes = attrs.field(repr=False)
    gas: int
    purpose: IntentPurpose
    value: int = 0
    deadline: int | None = None
    """Chain time after which the trade is void: the nonce is then cancelled."""
    rebalance_id: int | None = None
    call_index: int | None = None
    packed_rebalance_ids: tuple[int, ...] = ()
    """Every attempt a packed transaction carries, ``rebalance_id`` first (empty: not packed)."""
    packed_weights: tuple[int, ...] = ()
    """Each packed attempt's number of executions: its share of the gas."""


@attrs.frozen
class Settled:
    """How a nonce was consumed."""

    nonce: int
    outcome: TxOutcome
    receipt: Receipt | None = None
    """The mined version's receipt (``mined`` and ``cancelled``)."""
    intent: TxIntent | None = None
    """The mined version."""


@attrs.define(eq=False)
class NonceSlot:
    """One nonce in flight and every version of it we signed."""

    nonce: int
    plan: TxPlan | None
    """None for an intent recorded before plans were stored: it can only be cancelled."""
    versions: list[TxIntent]
    opened_at: float
    version_at: float
    """trio time the newest version was recorded (or recovered)."""
    next_send_at: float = 0.0
    failed_sends: int = 0
    refusals: int = 0
    """Sends the node answered with an error (not transport failures): counts toward
    :attr:`unsendable`."""
    last_send_error: str | None = None
    unsendable: str | None = None
    """Why no node takes any version of this nonce; set, it blocks new allocations."""
    consumed_since: float | None = None
    trouble: str | None = None
    """The last failed observation, for health."""
    sent_once: bool = False

    @property
    def newest(self) -> TxIntent:
        return self.versions[-1]

    @property
    def hashes(self) -> list[str]:
        return [v.tx_hash for v in self.versions]


def bump_fee(value: int, bump: Decimal) -> int:
    """``value`` raised by the fraction ``bump``, rounded up to the wei."""
    return math.ceil(Decimal(value) * (1 + bump))


def opening_fees(fees: FeeData, ceiling: int) -> tuple[int, int]:
    """``(max_fee, priority)`` of a first version: room for a doubling base fee, capped at the
    ceiling; :class:`FeeAboveCeiling` if the ceiling cannot pay today's base fee."""
    priority = max(fees.priority_fee, 1)
    max_fee = min(fees.max_fee(), ceiling)
    if max_fee < fees.base_fee + priority:
        raise FeeAboveCeiling(
            f"base fee {fees.base_fee} wei + priority {priority} is above the fee ceiling "
            f"{ceiling} wei"
        )
    return max_fee, priority


def replacement_fees(
    newest: TxIntent, base_fee: int, bump: Decimal, ceiling: int | None = None
) -> tuple[int, int]:
    """Fees of a replacement: both raised by at least ``bump`` over the newest version (what
    nodes require to replace it) and enough for today's base fee, with room for it to double
    — but no more than ``ceiling`` when the ceiling still pays the bump and today's base fee.
    A ``max_fee`` above ``ceiling`` means no replacement fits under it."""
    priority = max(bump_fee(newest.max_priority_fee_per_gas or 1, bump), 1)
    least = max(bump_fee(newest.max_fee_per_gas or 1, bump), base_fee + priority)
    wanted = max(least, 2 * base_fee + priority)
    if ceiling is not None and least <= ceiling:
        wanted = min(wanted, ceiling)
    return wanted, priority


def replacement_due(
    slot: NonceSlot, view: NodeView, settings: LifecycleSettings, waited: float
) -> tuple[str, bool] | None:
    """Why ``slot``'s newest version is due for a successor, and whether that is a cancel; None
    while it is not due. ``waited``: seconds since the newest version was recorded."""
    newest = slot.newest
    anything_known = any(h in view.known for h in slot.hashes)
    cancelling = newest.purpose == "cancel"
    deadline = slot.plan.deadline if slot.plan is not None else None
    below_base_fee = not anything_known and view.base_fee + 1 > (newest.max_fee_per_gas or 0)
    # A version no node has is only re-signed when its fee is what keeps it out; bumping
    # it for waiting (no gas money, say) would only raise the balance it needs.
    stuck = anything_known and waited > settings.receipt_timeout
    reason: str | None = None
    cancel = False
    if not cancelling and deadline is not None and view.head_timestamp > deadline:
        reason, cancel = f"the trade's deadline {deadline} has passed", True
    elif not cancelling and slot.plan is None and (stuck or below_base_fee):
        # Recorded before plans were stored: it cannot be re-signed, only cancelled.
        reason, cancel = "a recovered transaction without a stored plan is stuck", True
    elif below_base_fee:
        reason = f"its max fee is below the base fee {view.base_fee}"
    elif stuck:
        reason = f"not mined after {waited:.0f} s"
    if reason is None:
        return None
    return reason, cancel


def plan_of(intent: TxIntent) -> TxPlan | None:
    """The stored plan of a recorded version (None for intents recorded before v3)."""
    if intent.tx_to is None or intent.tx_data is None or intent.gas_limit is None:
        return None
    return TxPlan(
        to=intent.tx_to,
        data=intent.tx_data,
        gas=intent.gas_limit,
        purpose=intent.purpose,
        value=intent.tx_value or 0,
        deadline=intent.deadline,
        rebalance_id=intent.rebalance_id,
        call_index=intent.call_index,
        packed_rebalance_ids=intent.packed_rebalance_ids,
        packed_weights=intent.packed_weights,
    )

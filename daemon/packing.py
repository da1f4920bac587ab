"""Packing: the rebalances of several portfolios in one ``redeemDelegations`` transaction.

When many portfolios fall due together (a market-wide move), one transaction per portfolio
pays the transaction's fixed costs once per portfolio and fills blocks slowly. The
DelegationManager redeems any number of (permission context, execution) pairs in one call, each
under its own delegator's delegations and caveats (the oracle guard keeps one window per
delegator), so the executions of several portfolios can share one transaction.

``redeemDelegations`` is atomic: one portfolio's execution that reverts reverts the others'. A
pack therefore never costs a portfolio its trade:

* a pack whose estimate reverts is not sent: the members whose own call would revert go alone
  (and are refused there), the others are packed once more, or sent alone if that reverts too;
* a pack that reverts when mined executed nothing, so each member is re-planned and sent alone
  within the same attempt (still at most one trade per attempt: nothing of the reverted
  transaction happened).

Pure: calldata, predicted gas and shares only. The executor does the I/O (:mod:`daemon.executor`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import attrs

from daemon.delegation import Delegation, Execution, encode_redeem_delegations
from daemon.txbuild import Call

PACK_BASE_GAS: Final = 150_000
PACK_GAS_PER_EXECUTION: Final = 200_000
"""A member's gas predicted before any estimate, from its executions: above what guarded
rebalances cost alone on the devnet (one swap 305 k, approve and swap 490 k, three swaps 658 k),
so a pack is rarely estimated over its budget (it is split in two when it is)."""


@attrs.frozen
class PackMember:
    """One attempt's part of a pack."""

    rebalance_id: int
    redemptions: tuple[tuple[Delegation, Execution], ...]


def predicted_gas(executions: int) -> int:
    """Gas a member with ``executions`` is counted for when packs are grouped."""
    return PACK_BASE_GAS + PACK_GAS_PER_EXECUTION * executions


def weights(members: Sequence[PackMember]) -> tuple[int, ...]:
    """Each member's share of the pack's gas: its number of executions."""
    return tuple(len(member.redemptions) for member in members)


def packed_call(manager: str, members: Sequence[PackMember]) -> Call:
    """One ``redeemDelegations`` call carrying every member's executions, member after member."""
    return Call(
        to=manager,
        data=encode_redeem_delegations(
            [redemption for member in members for redemption in member.redemptions]
        ),
    )


def gas_share(gas_used: int, weights: Sequence[int], position: int) -> int:
    """The gas of a packed transaction charged to the member at ``position`` (rounded down,
    so the shares never add up to more than was paid)."""
    return gas_used * weights[position] // sum(weights)

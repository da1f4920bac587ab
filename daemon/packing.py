"""Packing: the rebalances of several portfolios in one ``redeemDelegations`` transaction.

When many portfolios fall due together (a market-wide move), one transaction per portfolio
pays the transaction's fixed costs once per portfolio and fills blocks slowly. The
DelegationManager redeems any number of (permission context, execution) pairs in one call, each
under its own delegator's delegations and caveats (the oracle guard keeps one window per
delegator), so the executions of several portfolios can share one transaction.

``redeemDelegations`` is atomic: one portfolio's execution that reverts reverts the others'. A
pack therefore never costs a portfolio its trade:

* a member whose own call would revert is never packed (it is sent alone, and refused there);
* a pack whose estimate reverts is not sent: its members are sent alone;
* a pack that reverts when mined executed nothing, so each member is re-planned and sent alone
  within the same attempt (still at most one trade per attempt: nothing of the reverted
  transaction happened).

Pure: grouping and shares only. The executor does the I/O (:mod:`daemon.executor`).
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from daemon.delegation import Delegation, Execution, encode_redeem_delegations
from daemon.txbuild import Call


@attrs.frozen
class PackMember:
    """One attempt's part of a pack."""

    rebalance_id: int
    redemptions: tuple[tuple[Delegation, Execution], ...]
    gas: int
    """The member's own call's gas estimate (what it would cost alone)."""


def group_by_gas(members: Sequence[PackMember], max_gas: int) -> list[list[PackMember]]:
    """Consecutive groups whose summed own estimates stay within ``max_gas`` (a pack costs less
    than its members alone: the fixed costs are paid once). A member above ``max_gas`` is a
    group of its own. Order is kept, so earlier requests go first."""
    groups: list[list[PackMember]] = []
    current: list[PackMember] = []
    total = 0
    for member in members:
        if current and total + member.gas > max_gas:
            groups.append(current)
            current, total = [], 0
        current.append(member)
        total += member.gas
    if current:
        groups.append(current)
    return groups


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

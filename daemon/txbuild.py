"""Execution modes: turn bounded swap legs into the calls the executor signs and sends.

Two ways to hold funds, one interface (:class:`ExecutionMode`), so the executor never branches on
the mode:

* :class:`DelegationMode` (default): the owner's smart account holds the funds. All legs go into
  *one* ``redeemDelegations`` transaction on the DelegationManager (gas per swap dominates small
  portfolios' costs, DESIGN.md §3): per leg an ``approve(router, amount_in)`` redeemed under the
  approve delegation, then the swap under the swap delegation, paying out to the smart account.
* :class:`WalletMode`: the signer's own address holds the funds; per leg a plain ``approve`` and
  a ``swapExactTokensForTokens`` transaction (an EOA cannot batch), in nonce order.

Approvals: given the holder's current allowances to the router, a leg whose allowance covers it
gets no approve, and a token whose allowance does not is approved once for the maximum (a standing
allowance: an approve execution costs ~25–30k gas per leg, and an allowance to the router can only
be spent by the holder's own swaps, because the router pulls tokens from its caller). Without
allowances each leg approves exactly ``amount_in``. Each leg's bounds are checked before anything
is built: a leg without a positive ``amount_out_min`` or a deadline is refused, because an
unbounded swap is the one thing DESIGN.md §4.4 forbids.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final, Protocol

import attrs

from daemon.address import to_address
from daemon.authority import (
    kind_of,
)
from daemon.config import DelegationConfig
from daemon.delegation import (
    Delegation,
    Execution,
    PortfolioDelegations,
    encode_redeem_delegations,
)
from daemon.guard import GuardBound, guard_terms_of
from daemon.uniswap import encode_approve, encode_swap_exact_tokens_for_tokens

MAX_ALLOWANCE: Final = 2**256 - 1


def _addresses(tokens: Sequence[str]) -> tuple[str, ...]:
    return tuple(to_address(token) for token in tokens)


@attrs.frozen
class SwapLeg:
    """One bounded swap, already quoted and sized (all amounts in base units)."""

    token_in: str = attrs.field(converter=to_address)
    token_out: str = attrs.field(converter=to_address)
    amount_in: int
    amount_out_min: int
    """Fresh quote minus slippage (:func:`daemon.uniswap.amount_out_min`)."""
    path: tuple[str, ...] = attrs.field(converter=_addresses)
    deadline: int
    """Unix seconds, from the latest block's timestamp."""

    def __attrs_post_init__(self) -> None:
        if self.amount_in <= 0:
            raise ValueError("amount_in must be positive")
        if self.amount_out_min <= 0:
            raise ValueError("amount_out_min must be positive: an unbounded swap is refused")
        if self.deadline <= 0:
            raise ValueError("a swap needs a deadline")
        if len(self.path) < 2 or self.path[0] != self.token_in or self.path[-1] != self.token_out:
            raise ValueError("path must start with token_in and end with token_out")


@attrs.frozen
class Call:
    """A transaction's destination and calldata (the executor adds nonce, gas and fees)."""

    to: str = attrs.field(converter=to_address)
    data: bytes
    value: int = 0
    approve: bool = False
    """Only grants an allowance (wallet mode): an attempt whose approves were mined but none of
    its swaps traded nothing."""


class ExecutionMode(Protocol):
    """What the executor needs from a mode."""

    @property
    def holder(self) -> str:
        """The address holding the funds and receiving swap outputs."""

    @property
    def router(self) -> str:
        """The router the swaps go through (and the allowances are for)."""

    def calls(
        self, legs: Sequence[SwapLeg], allowances: Mapping[str, int] | None = None
    ) -> list[Call]:
        """Transactions to send, in nonce order, that perform ``legs`` in order.
        ``allowances``: the holder's allowance to the router by token (None: unknown, approve
        each leg exactly)."""


def approvals(legs: Sequence[SwapLeg], allowances: Mapping[str, int] | None) -> list[int | None]:
    """Per leg, the amount to approve to the router before it, or None for no approve."""
    if allowances is None:
        return [leg.amount_in for leg in legs]
    left = {to_address(token): amount for token, amount in allowances.items()}
    out: list[int | None] = []
    for leg in legs:
        have = left.get(leg.token_in, 0)
        if have >= leg.amount_in:
            left[leg.token_in] = have - leg.amount_in
            out.append(None)
        else:
            left[leg.token_in] = MAX_ALLOWANCE - leg.amount_in
            out.append(MAX_ALLOWANCE)
    return out


@attrs.frozen
class DelegationMode:
    """Swaps from a smart account through its signed delegations (one transaction)."""

    manager: str = attrs.field(converter=to_address)
    router: str = attrs.field(converter=to_address)
    delegations: PortfolioDelegations
    guard: GuardBound | None = None
    """The swap delegation's oracle guards: the executor checks their bound before it sends."""

    @classmethod
    def from_signed(
        cls,
        delegations: Sequence[Delegation],
        *,
        router: str,
        enforcers: DelegationConfig,
        guard: str = "",
    ) -> DelegationMode:
        """Pick the approve and swap delegations out of a portfolio's delegation file (and the
        swap delegation's caveats under the oracle guard at ``guard``, if given)."""
        by_kind: dict[str, Delegation] = {}
        for delegation in delegations:
            kind = kind_of(delegation, enforcers)
            if kind is not None and kind not in by_kind:
                by_kind[kind] = delegation
        missing = {"approve", "swap"} - by_kind.keys()
        if missing:
            raise ValueError(f"no {' or '.join(sorted(missing))} delegation among the signed ones")
        approve, swap = by_kind["approve"], by_kind["swap"]
        if approve.delegator != swap.delegator:
            raise ValueError("approve and swap delegations come from different accounts")
        terms = tuple(guard_terms_of(swap, guard)) if guard else ()
        return cls(
            manager=enforcers.manager,
            router=router,
            delegations=PortfolioDelegations(approve=approve, swap=swap),
            guard=GuardBound(enforcer=guard, terms=terms) if terms else None,
        )

    @property
    def holder(self) -> str:
        return self.delegations.swap.delegator

    def calls(
        self, legs: Sequence[SwapLeg], allowances: Mapping[str, int] | None = None
    ) -> list[Call]:
        if not legs:
            return []
        return [
            Call(
                to=self.manager, data=encode_redeem_delegations(self.redemptions(legs, allowances))
            )
        ]

    def redemptions(
        self, legs: Sequence[SwapLeg], allowances: Mapping[str, int] | None = None
    ) -> list[tuple[Delegation, Execution]]:
        """The (delegation, execution) pairs of one ``redeemDelegations`` call that performs
        ``legs`` in order (what :meth:`calls` encodes, and what a pack concatenates)."""
        redemptions: list[tuple[Delegation, Execution]] = []
        for leg, approve in zip(legs, approvals(legs, allowances), strict=True):
            if approve is not None:
                redemptions.append(
                    (
                        self.delegations.approve,
                        Execution(leg.token_in, encode_approve(self.router, approve)),
                    )
                )
            redemptions.append(
                (
                    self.delegations.swap,
                    Execution(self.router, _swap_calldata(leg, self.holder)),
                )
            )
        return redemptions


@attrs.frozen
class WalletMode:
    """Swaps from the signer's own address (approve + swap transactions per leg)."""

    router: str = attrs.field(converter=to_address)
    signer: str = attrs.field(converter=to_address)

    @property
    def holder(self) -> str:
        return self.signer

    def calls(
        self, legs: Sequence[SwapLeg], allowances: Mapping[str, int] | None = None
    ) -> list[Call]:
        calls: list[Call] = []
        for leg, approve in zip(legs, approvals(legs, allowances), strict=True):
            if approve is not None:
                calls.append(
                    Call(to=leg.token_in, data=encode_approve(self.router, approve), approve=True)
                )
            calls.append(Call(to=self.router, data=_swap_calldata(leg, self.signer)))
        return calls


def _swap_calldata(leg: SwapLeg, recipient: str) -> bytes:
    return encode_swap_exact_tokens_for_tokens(
        leg.amount_in, leg.amount_out_min, leg.path, recipient, leg.deadline
    )

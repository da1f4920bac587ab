"""How each portfolio is traded: its execution mode, built from its delegations and re-checked.

A portfolio in delegation mode is traded by redeeming the delegations its owner signed; before
the daemon trades them it checks they are delegated to this daemon's signer
(:class:`OtherSigner` otherwise: another daemon runs the portfolio), that they are no weaker than
driftd requires (the same least-authority rules as ``portfolio add``), when they expire
(:meth:`ExecutionModeBook.delegation_problem` refuses a trade from then on, health and alerts
warn a week before) and whether their owner revoked them (:func:`revoked_portfolios`). In
wallet mode the signer trades its own tokens.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Final

import attrs

from daemon import db as dbm
from daemon.abi import encode_call
from daemon.address import to_address
from daemon.authority import least_authority_problems
from daemon.chain import ChainClient
from daemon.chain_errors import ChainError
from daemon.config import Config, DelegationConfig
from daemon.delegation import (
    Delegation,
    DelegationFormatError,
    decode_nonce,
    decode_timestamp,
    delegation_from_json,
)
from daemon.live_config import ConfigSource
from daemon.logs import get_logger
from daemon.messages import RebalanceRequest
from daemon.portfolio import PortfolioSpec
from daemon.tokens import TokenBook
from daemon.txbuild import DelegationMode, ExecutionMode, WalletMode

EXPIRY_WARNING: Final = 7 * 86400.0
"""Seconds before its delegations expire that a portfolio shows in health and alerts."""


class OtherSigner(Exception):
    """The portfolio is delegated to another daemon's signer: that daemon runs it, not us."""

    def __init__(self, delegate: str) -> None:
        super().__init__(f"delegated to {delegate}")
        self.delegate = delegate


def delegations_expire_at(
    delegations: Sequence[Delegation], enforcers: DelegationConfig
) -> int | None:
    """The earliest TimestampEnforcer "before" bound among ``delegations`` (None: none)."""
    bounds = []
    for delegation in delegations:
        for caveat in delegation.caveats:
            if caveat.enforcer == enforcers.timestamp:
                with contextlib.suppress(ValueError):
                    before = decode_timestamp(caveat.terms)[1]
                    if before > 0:
                        bounds.append(before)
    return min(bounds, default=None)


@attrs.define(eq=False)
class ExecutionModeBook:
    """The execution mode of every running portfolio, and when its delegations expire."""

    config: ConfigSource
    signer: str
    """The address this daemon signs with."""
    tokens: TokenBook
    now: Callable[[], datetime]
    modes: dict[int, ExecutionMode] = attrs.Factory(dict)
    expiries: dict[int, int] = attrs.Factory(dict)
    """Portfolio id → when its delegations expire (unix seconds; the earliest of them)."""

    def build(self, portfolio: dbm.Portfolio) -> ExecutionMode:
        """The portfolio's mode, checked (and its expiry noted). Raises :class:`OtherSigner`,
        :class:`~daemon.delegation.DelegationFormatError` or ``ValueError`` (too weak)."""
        config = self.config.current
        if config.execution.mode == "wallet":
            return WalletMode(router=config.chain.router, signer=self.signer)
        delegations = [
            delegation_from_json(item, f"delegation[{i}]")
            for i, item in enumerate(portfolio.delegation)
        ]
        mode = DelegationMode.from_signed(
            delegations,
            router=config.chain.router,
            enforcers=config.delegation,
            guard=config.guard.enforcer,
        )
        delegate = to_address(mode.delegations.swap.delegate)
        if delegate != self.signer:
            raise OtherSigner(delegate)
        problems = self._authority_problems(portfolio, mode, config)
        if problems:
            raise ValueError("weaker than driftd requires: " + "; ".join(problems))
        expires_at = delegations_expire_at(
            [mode.delegations.approve, mode.delegations.swap], config.delegation
        )
        if expires_at is not None:  # least_authority_problems requires an expiry
            self.expiries[portfolio.id] = expires_at
        return mode

    def _authority_problems(
        self, portfolio: dbm.Portfolio, mode: DelegationMode, config: Config
    ) -> list[str]:
        # The same least-authority rules as `portfolio add` (delegator = the portfolio's account
        # among them), re-checked whenever the portfolio or the configuration is (re)loaded: a
        # row edited behind the CLI's back, or delegations signed before the oracle guard
        # existed, are not traded.
        guarded = [a.token for a in portfolio.allocations]
        guarded += [t for t in self.tokens.registered.values() if t.is_quote and t not in guarded]
        return [
            f"{kind}: {problem}"
            for kind, delegation in (
                ("approve", mode.delegations.approve),
                ("swap", mode.delegations.swap),
            )
            for problem in least_authority_problems(
                delegation,
                account=portfolio.smart_account,
                delegate=self.signer,
                router=config.chain.router,
                enforcers=config.delegation,
                guard=config.guard,
                guard_feeds={t.address: str(t.price_feed) for t in guarded},
                token_decimals={t.address: t.decimals for t in guarded},
                now=int(self.now().timestamp()),
            )
        ]

    def use(self, portfolio_id: int, mode: ExecutionMode) -> None:
        """Trade the portfolio with ``mode`` from now on."""
        self.modes[portfolio_id] = mode

    def mode_for(self, request: RebalanceRequest) -> ExecutionMode:
        """The execution mode of a request's portfolio (its delegations, or the wallet)."""
        return self.modes[request.portfolio_id]

    def delegation_problem(self, portfolio_id: int) -> str | None:
        """Why the portfolio's delegations cannot be redeemed now (expired), or None."""
        expires_at = self.expiries.get(portfolio_id)
        if expires_at is not None and self.now().timestamp() >= expires_at:
            when = datetime.fromtimestamp(expires_at, UTC).isoformat()
            return (
                f"No trade: the portfolio's delegations expired at {when} "
                "(have the owner sign new ones: driftd delegation build)"
            )
        return None

    def expiring(self, running: Mapping[str, PortfolioSpec]) -> dict[str, float]:
        """Running portfolios whose delegations expire within :data:`EXPIRY_WARNING`, with the
        seconds left (negative: expired)."""
        now = self.now().timestamp()
        out: dict[str, float] = {}
        for name, spec in running.items():
            expires_at = self.expiries.get(spec.id)
            if expires_at is not None and expires_at - now < EXPIRY_WARNING:
                out[name] = expires_at - now
        return out


def _signed_nonces(
    portfolios: Sequence[dbm.Portfolio], enforcers: DelegationConfig
) -> list[tuple[str, str, int]]:
    """(portfolio, delegator, nonce) of every NonceEnforcer caveat in the portfolios'
    delegations (a malformed delegation is skipped: building its mode reports it)."""
    signed: list[tuple[str, str, int]] = []
    for portfolio in portfolios:
        for index, item in enumerate(portfolio.delegation):
            try:
                delegation = delegation_from_json(item, f"delegation[{index}]")
            except DelegationFormatError:
                continue  # build_mode reports it
            for caveat in delegation.caveats:
                if caveat.enforcer == enforcers.nonce:
                    with contextlib.suppress(ValueError):
                        nonce = decode_nonce(caveat.terms)
                        signed.append((portfolio.name, delegation.delegator, nonce))
    return signed


async def revoked_portfolios(
    chain: ChainClient, config: Config, portfolios: Sequence[dbm.Portfolio]
) -> dict[str, str]:
    """Portfolios whose owner revoked their delegations (the NonceEnforcer nonce moved on since
    they were signed), with the reason: one batched read of every delegator's current nonce. A
    node that cannot answer leaves the check to the next reconcile (the redemption would revert
    on chain anyway)."""
    enforcers = config.delegation
    if config.execution.mode == "wallet" or not enforcers.nonce:
        return {}
    signed = _signed_nonces(portfolios, enforcers)
    delegators = sorted({delegator for _, delegator, _ in signed})
    if not delegators:
        return {}
    calls = [
        (enforcers.nonce, encode_call("currentNonce(address,address)", enforcers.manager, d))
        for d in delegators
    ]
    try:
        results = await chain.call_many(calls)
    except ChainError as exc:
        get_logger(actor="app").warning("revocation_check_failed", error=str(exc))
        return {}
    current = {
        delegator: int.from_bytes(raw[:32], "big")
        for delegator, raw in zip(delegators, results, strict=True)
        if len(raw) >= 32
    }
    revoked: dict[str, str] = {}
    for name, delegator, nonce in signed:
        now = current.get(delegator)
        if now is not None and now != nonce:
            revoked[name] = (
                f"revoked: the owner incremented the NonceEnforcer nonce (signed at nonce {nonce},"
                f" current {now}); have the owner sign new delegations"
            )
    return revoked

"""What a delegation allows, and whether that is least authority (DESIGN.md §4.6, issue 11).

One checker for every place that decides whether delegations may be used: ``delegation
verify``, ``portfolio add`` (:mod:`daemon.registration`), the running daemon when it loads a
portfolio (:mod:`daemon.app`), and the execution modes that pick the approve and swap delegations
out of a signed file (:func:`kind_of`). The on-chain halves (signatures, revocation) are asked
here too, so the rules live in one module.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Literal

import attrs

from daemon.address import to_address
from daemon.chain import ChainClient
from daemon.chain_errors import Reverted
from daemon.config import DelegationConfig, GuardConfig
from daemon.delegation import (
    ROOT_AUTHORITY,
    Delegation,
    address_word,
    current_nonce,
    decode_calldata_pin,
    decode_methods,
    decode_nonce,
    decode_targets,
    decode_timestamp,
)
from daemon.guard import GuardTerms, GuardTermsError, guard_terms_of, usd
from daemon.uniswap import (
    APPROVE_SELECTOR,
    APPROVE_SPENDER_OFFSET,
    SWAP_EXACT_TOKENS_FOR_TOKENS_SELECTOR,
)

Kind = Literal["approve", "swap"]


@attrs.frozen
class Authority:
    """What a delegation's caveats allow, as far as the three enforcers we rely on say."""

    targets: frozenset[str] | None
    """None: no AllowedTargets caveat (any target)."""
    methods: frozenset[bytes] | None
    """None: no AllowedMethods caveat (any method)."""
    calldata_pins: frozenset[tuple[int, bytes]]


def authority_of(delegation: Delegation, enforcers: DelegationConfig) -> Authority:
    """Intersect the caveats (they are ANDed) into what the delegation allows."""
    targets: frozenset[str] | None = None
    methods: frozenset[bytes] | None = None
    pins: set[tuple[int, bytes]] = set()
    for caveat in delegation.caveats:
        if caveat.enforcer == enforcers.allowed_targets:
            found = frozenset(decode_targets(caveat.terms))
            targets = found if targets is None else targets & found
        elif caveat.enforcer == enforcers.allowed_methods:
            selectors = frozenset(decode_methods(caveat.terms))
            methods = selectors if methods is None else methods & selectors
        elif caveat.enforcer == enforcers.allowed_calldata:
            pins.add(decode_calldata_pin(caveat.terms))
    return Authority(targets=targets, methods=methods, calldata_pins=frozenset(pins))


def kind_of(delegation: Delegation, enforcers: DelegationConfig) -> Kind | None:
    """``approve`` when the delegation allows exactly ``approve``; ``swap`` when it allows
    exactly ``swapExactTokensForTokens`` or has no AllowedMethods caveat (the guarded swap
    delegation: the oracle guard allows only exact-input swaps, and a delegation taken for the
    swap one must carry it, see :func:`least_authority_problems`)."""
    methods = authority_of(delegation, enforcers).methods
    if methods == frozenset({APPROVE_SELECTOR}):
        return "approve"
    if methods is None or methods == frozenset({SWAP_EXACT_TOKENS_FOR_TOKENS_SELECTOR}):
        return "swap"
    return None


def least_authority_problems(
    delegation: Delegation,
    *,
    account: str,
    delegate: str,
    router: str,
    enforcers: DelegationConfig,
    guard: GuardConfig,
    tokens: Sequence[str] | None = None,
    guard_feeds: Mapping[str, str] | None = None,
    token_decimals: Mapping[str, int] | None = None,
    now: int | None = None,
) -> list[str]:
    """Why ``delegation`` grants more than DESIGN.md §4.6 and issue 11 allow (empty: it does not).

    Extra caveats are fine (each only restricts further); missing or wider ones are not. Both
    delegations must expire (TimestampEnforcer, after ``now``) and carry a NonceEnforcer caveat
    (one-step revocation; whether its nonce is still the current one is an on-chain question:
    :func:`nonce_problems`); the approve delegation ``ValueLteEnforcer(0)`` and its spender pin;
    the swap delegation the router as its only target and the oracle guard at
    ``guard.enforcer`` with bounds no weaker than ``guard``'s (the guard refuses ETH, other
    methods and other recipients itself, so stock pins for those are optional there).
    ``guard_feeds`` (token → feed: the portfolio's tokens and the quote token)
    is the exact token set the guard must list, each with its registered feed; ``token_decimals``
    the tokens' decimals. Without them, the token set is not checked (``delegation verify``
    without ``--token``).
    """
    problems = _party_problems(delegation, account=account, delegate=delegate)
    try:
        authority = authority_of(delegation, enforcers)
    except ValueError as exc:
        return [*problems, f"caveat terms: {exc}"]
    router = to_address(router)
    kind = kind_of(delegation, enforcers)
    if authority.targets is None:
        problems.append("no AllowedTargets caveat: any contract could be called")
    if kind is None:
        problems.append(
            "AllowedMethods must allow exactly one of approve or swapExactTokensForTokens"
        )
        return problems
    if kind == "approve":
        problems += _approve_problems(authority, router=router, tokens=tokens)
    else:
        # The guard (required below) allows one method family, the account as recipient and
        # zero ETH on every execution: the stock pins for those are optional here.
        if authority.targets is not None and authority.targets - {router}:
            problems.append(f"swap: targets beyond the router: {sorted(authority.targets)}")
        problems += guard_problems(
            delegation, guard=guard, feeds=guard_feeds, token_decimals=token_decimals
        )
    problems += _expiry_problems(
        delegation, kind, enforcers, now=int(time.time()) if now is None else now
    )
    if not delegation.signature:
        problems.append("not signed")
    return problems


def _party_problems(delegation: Delegation, *, account: str, delegate: str) -> list[str]:
    """Who delegates to whom: the portfolio's account to this daemon's signer, from the root."""
    problems: list[str] = []
    if delegation.delegator != to_address(account):
        problems.append(f"delegator is {delegation.delegator}, expected {to_address(account)}")
    if delegation.delegate != to_address(delegate):
        problems.append(f"delegate is {delegation.delegate}, expected {to_address(delegate)}")
    if delegation.authority != ROOT_AUTHORITY:
        problems.append("authority is not the root authority (re-delegations are not supported)")
    return problems


def _approve_problems(
    authority: Authority, *, router: str, tokens: Sequence[str] | None
) -> list[str]:
    """The approve delegation: its spender pinned to the router, its targets within ``tokens``."""
    problems: list[str] = []
    if (APPROVE_SPENDER_OFFSET, address_word(router)) not in authority.calldata_pins:
        problems.append("approve: spender is not pinned to the router by AllowedCalldata")
    if authority.targets is not None and tokens is not None:
        extra = authority.targets - {to_address(token) for token in tokens}
        if extra:
            problems.append(f"approve: targets beyond the portfolio's tokens: {sorted(extra)}")
    return problems


def _expiry_problems(
    delegation: Delegation, kind: Kind, enforcers: DelegationConfig, *, now: int
) -> list[str]:
    problems: list[str] = []
    expiries: list[int] = []
    value_caps: list[int] = []
    nonces = 0
    for caveat in delegation.caveats:
        if caveat.enforcer == enforcers.timestamp:
            try:
                expiries.append(decode_timestamp(caveat.terms)[1])
            except ValueError as exc:
                problems.append(f"{kind}: {exc}")
        elif caveat.enforcer == enforcers.value_lte:
            if len(caveat.terms) != 32:
                problems.append(f"{kind}: ValueLte terms are not 32 bytes")
            else:
                value_caps.append(int.from_bytes(caveat.terms, "big"))
        elif caveat.enforcer == enforcers.nonce:
            if len(caveat.terms) != 32:
                problems.append(f"{kind}: Nonce terms are not 32 bytes")
            else:
                nonces += 1
    bounded = [expiry for expiry in expiries if expiry > 0]
    if not bounded:
        problems.append(f"{kind}: no expiry (TimestampEnforcer caveat with a 'before' bound)")
    elif min(bounded) <= now:
        problems.append(f"{kind}: expired at {min(bounded)} (now {now})")
    if not value_caps:
        if kind == "approve":  # on the swap delegation, the guard refuses ETH itself
            problems.append(f"{kind}: no ValueLteEnforcer(0) caveat: the call could carry ETH")
    elif min(value_caps) != 0:
        problems.append(f"{kind}: ValueLte allows {min(value_caps)} wei per call, expected 0")
    if not nonces:
        problems.append(
            f"{kind}: no one-step revocation (NonceEnforcer): the owner could not revoke it and "
            "its sibling with one incrementNonce"
        )
    return problems


def guard_problems(
    delegation: Delegation,
    *,
    guard: GuardConfig,
    feeds: Mapping[str, str] | None = None,
    token_decimals: Mapping[str, int] | None = None,
) -> list[str]:
    """Why the swap delegation's oracle guard is missing or weaker than ``guard`` requires."""
    if not guard.enforcer:
        return ["swap: guard.enforcer is not configured, so the oracle guard cannot be checked"]
    try:
        found = guard_terms_of(delegation, guard.enforcer)
    except GuardTermsError as exc:
        return [f"swap: guard terms: {exc}"]
    if not found:
        others = [c.enforcer for c in delegation.caveats if c.enforcer != guard.enforcer]
        return [
            f"swap: no oracle guard caveat (DriftGuardEnforcer at {guard.enforcer}); "
            f"caveats name only {sorted(set(others))}"
        ]
    problems: list[str] = []
    # Several guard caveats are ANDed: the delegation is at least as strict as the strictest, so
    # it is acceptable when any one of them satisfies every requirement.
    for terms in found:
        mine = _bound_problems(terms, guard)
        if feeds is not None:
            mine += _guard_token_problems(terms, feeds, token_decimals)
        if not mine:
            return []
        problems = problems or mine
    return problems


def _bound_problems(terms: GuardTerms, guard: GuardConfig) -> list[str]:
    """One guard caveat's bounds that are weaker than the configured ones."""
    problems: list[str] = []
    if terms.max_loss_bps > guard.max_loss_bps:
        problems.append(
            f"swap: guard max_loss_bps is {terms.max_loss_bps}, above the configured "
            f"{guard.max_loss_bps}"
        )
    if terms.max_staleness > guard.max_staleness:
        problems.append(
            f"swap: guard max_staleness is {terms.max_staleness} s, above the configured "
            f"{guard.max_staleness} s"
        )
    if terms.period_cap > usd(guard.period_cap_usd):
        problems.append(
            f"swap: guard period cap is {terms.period_cap} (USD·1e18), above the configured "
            f"{usd(guard.period_cap_usd)}"
        )
    return problems


def _guard_token_problems(
    terms: GuardTerms, feeds: Mapping[str, str], token_decimals: Mapping[str, int] | None
) -> list[str]:
    """One guard caveat's tokens against ``feeds`` (exactly those tokens, each at its registered
    feed) and ``token_decimals``."""
    problems: list[str] = []
    want = {to_address(token): to_address(feed) for token, feed in feeds.items()}
    have = {token.token: token for token in terms.tokens}
    missing, extra = sorted(want.keys() - have.keys()), sorted(have.keys() - want.keys())
    if missing or extra:
        problems.append(
            "swap: guard tokens are not exactly the portfolio's tokens and the quote "
            f"token (missing {missing}, extra {extra})"
        )
    for token, entry in have.items():
        if token in want and entry.feed != want[token]:
            problems.append(
                f"swap: guard feed of {token} is {entry.feed}, the registered feed is {want[token]}"
            )
        expected = None if token_decimals is None else token_decimals.get(token)
        if expected is not None and entry.token_decimals != expected:
            problems.append(
                f"swap: guard decimals of {token} are {entry.token_decimals}, the "
                f"token has {expected}"
            )
    return problems


async def nonce_problems(
    client: ChainClient, delegation: Delegation, enforcers: DelegationConfig
) -> list[str]:
    """A delegation whose NonceEnforcer terms are not the delegator's current nonce on chain is
    revoked (the owner incremented it) or not yet valid: the enforcer reverts either way."""
    problems: list[str] = []
    current: int | None = None
    for caveat in delegation.caveats:
        if caveat.enforcer != enforcers.nonce:
            continue
        try:
            signed_at = decode_nonce(caveat.terms)
        except ValueError:
            continue  # reported by least_authority_problems
        if current is None:
            try:
                current = await current_nonce(client, enforcers, delegation.delegator)
            except (Reverted, ValueError):
                return [f"NonceEnforcer at {enforcers.nonce} does not answer currentNonce"]
        if signed_at < current:
            problems.append(
                f"revoked: the owner incremented the nonce (signed at nonce {signed_at}, "
                f"current {current})"
            )
        elif signed_at != current:
            problems.append(f"nonce {signed_at} is not the current nonce {current}")
    return problems

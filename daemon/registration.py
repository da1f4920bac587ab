"""Checks on a portfolio's delegation file before it is registered.

``driftd portfolio add`` refuses a delegation file that would not work or that grants more than
least authority (DESIGN.md §4.6, issue 11): each delegation must come from the portfolio's smart
account, name this daemon's signer as delegate, pin targets, methods and calldata, expire, carry
``ValueLteEnforcer(0)`` and a NonceEnforcer caveat (one-step revocation), and (the swap
delegation) the oracle guard over exactly the portfolio's tokens and the quote token, each at
its registered feed, with bounds no weaker than ``[guard]``;
on chain, the smart account must accept its signature (ERC-1271, the check the DelegationManager
makes when the daemon redeems it), the DelegationManager must not have disabled it, its
NonceEnforcer nonce must still be the account's current one (not revoked), and each
guard feed's ``decimals()`` must match the terms. The check always runs: there is no path that
registers an unverified delegation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import trio

from daemon.chain import ChainClient, ChainError, Reverted, TxSigner, encode_call
from daemon.cli_db import VerifierUnavailable
from daemon.config import Config
from daemon.delegation import (
    Delegation,
    DelegationDomain,
    DelegationFormatError,
    delegation_from_json,
    is_disabled_on_chain,
    kind_of,
    least_authority_problems,
    nonce_problems,
    signature_is_valid_on_chain,
)
from daemon.guard import GuardTermsError, guard_terms_of

if TYPE_CHECKING:
    from daemon.db import Token


def verify_portfolio_delegations(
    delegations: list[dict[str, Any]],
    smart_account: str,
    config: Config,
    tokens: Sequence[Token],
) -> None:
    """Raise ``ValueError`` naming every problem with a portfolio's signed delegations.

    ``tokens``: the portfolio's registered tokens, then the quote token (the guard's set).
    """
    if config.secrets.signer_key is None:
        raise ValueError(
            "the signer key is not configured, so the delegate cannot be checked "
            "(set signer.key_file or DRIFTD_SIGNER_KEY)"
        )
    delegate = TxSigner(key=config.secrets.signer_key).address
    try:
        parsed = [delegation_from_json(item, f"[{i}]") for i, item in enumerate(delegations)]
    except DelegationFormatError as exc:
        raise ValueError(str(exc)) from None
    no_feed = [token.symbol for token in tokens if not token.price_feed]
    if no_feed:
        raise ValueError(
            f"no price feed registered for {', '.join(no_feed)} (the oracle guard needs one per "
            "token: `driftd token add … --feed 0xFEED`)"
        )
    feeds = {token.address: str(token.price_feed) for token in tokens}
    decimals = {token.address: token.decimals for token in tokens}
    problems: list[str] = []
    for index, delegation in enumerate(parsed):
        problems += [
            f"[{index}]: {problem}"
            for problem in least_authority_problems(
                delegation,
                account=smart_account,
                delegate=delegate,
                router=config.chain.router,
                enforcers=config.delegation,
                guard=config.guard,
                guard_feeds=feeds,
                token_decimals=decimals,
            )
        ]
    kinds = {kind_of(d, config.delegation) for d in parsed}
    problems += [f"no {kind} delegation" for kind in ("approve", "swap") if kind not in kinds]
    if problems:
        raise ValueError("; ".join(problems))
    try:
        onchain = trio.run(_onchain_problems, config, parsed)
    except ChainError as exc:
        raise VerifierUnavailable(f"cannot check the signatures on chain: {exc}") from None
    if onchain:
        raise ValueError("; ".join(onchain))


async def _onchain_problems(config: Config, delegations: Sequence[Delegation]) -> list[str]:
    domain = DelegationDomain(chain_id=config.chain.chain_id, manager=config.delegation.manager)
    problems: list[str] = []
    async with ChainClient(config.chain) as client:
        for index, delegation in enumerate(delegations):
            if not await client.get_code(delegation.delegator):
                problems.append(f"[{index}]: the smart account has no code on chain")
            elif not await signature_is_valid_on_chain(client, delegation, domain):
                problems.append(f"[{index}]: signature rejected by the smart account (ERC-1271)")
            elif await is_disabled_on_chain(client, delegation, domain):
                problems.append(f"[{index}]: disabled on the DelegationManager")
            problems += [
                f"[{index}]: {problem}"
                for problem in await nonce_problems(client, delegation, config.delegation)
            ]
            feeds = await feed_decimal_problems(client, delegation, config.guard.enforcer)
            problems += [f"[{index}]: {problem}" for problem in feeds]
    return problems


async def feed_decimal_problems(
    client: ChainClient, delegation: Delegation, guard: str
) -> list[str]:
    """Each guard feed's ``decimals()`` on chain against the decimals in the guard's terms."""
    if not guard:
        return []
    try:
        found = guard_terms_of(delegation, guard)
    except GuardTermsError:
        return []  # reported by least_authority_problems
    problems: list[str] = []
    for terms in found:
        for token in terms.tokens:
            try:
                raw = await client.call(token.feed, encode_call("decimals()"))
            except Reverted:
                problems.append(f"swap: guard feed {token.feed} has no decimals() (not a feed)")
                continue
            actual = int.from_bytes(raw[:32], "big") if len(raw) >= 32 else None
            if actual != token.feed_decimals:
                problems.append(
                    f"swap: guard feed {token.feed} has {actual} decimals, the terms say "
                    f"{token.feed_decimals}"
                )
    return problems

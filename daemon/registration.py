"""Checks on a portfolio's delegation file before it is registered.

``driftd portfolio add`` refuses a delegation file that would not work or that grants more than
least authority (DESIGN.md §4.6, issue 11): each delegation must come from the portfolio's smart
account, name this daemon's signer as delegate, pin its targets, expire and carry a NonceEnforcer
caveat (one-step revocation); the approve delegation its method, spender and
``ValueLteEnforcer(0)``; the swap delegation the oracle guard (which checks method, recipient
and value itself) over exactly the portfolio's tokens and the quote token, each at
its registered feed, with bounds no weaker than ``[guard]``;
on chain, the smart account must accept its signature (ERC-1271, the check the DelegationManager
makes when the daemon redeems it), the DelegationManager must not have disabled it, its
NonceEnforcer nonce must still be the account's current one (not revoked), and each
guard feed's ``decimals()`` must match the terms. The check always runs: there is no path that
registers an unverified delegation.

What is registered must be what is on chain (issue 12): the smart account must be deployed (a
counterfactual account cannot validate a signature; the devnet and the demo deploy theirs
before registering), the approve delegation must cover every token of the portfolio (else
every rebalance selling a token it misses fails), and ``token add`` checks the token's code,
``decimals()`` and ``symbol()`` (:func:`check_token_on_chain`).

The running daemon holds back, with a reason, what it must not trade even if the database has
it (:func:`portfolios_to_hold`, called by each reconcile): a second active portfolio on one
account (rows written before migration 0005, or wallet-mode portfolios, which all trade from
the signer's own address), a portfolio with a token whose registered decimals differ from the
token's ``decimals()`` on chain (read once per token, in one batched ``eth_call``), and one
whose approve delegation misses a token.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any, Final

import attrs
import trio
from eth_abi.abi import decode as abi_decode
from eth_abi.exceptions import DecodingError

from daemon.abi import encode_call, hex_bytes, hex_of
from daemon.address import to_address
from daemon.authority import (
    authority_of,
    kind_of,
    least_authority_problems,
    nonce_problems,
)
from daemon.chain import ChainClient
from daemon.chain_errors import ChainError, Reverted, RpcTransportError
from daemon.config import Config, DelegationConfig
from daemon.delegation import (
    Delegation,
    DelegationDomain,
    DelegationFormatError,
    delegation_from_json,
    is_disabled_on_chain,
    signature_is_valid_on_chain,
)
from daemon.guard import GuardTermsError, guard_terms_of
from daemon.logs import get_logger
from daemon.signer import TxSigner

if TYPE_CHECKING:
    from daemon.db import Portfolio, TokenRecord

_DECIMALS_CALL: Final = encode_call("decimals()")
_SYMBOL_CALL: Final = encode_call("symbol()")

MAX_DECIMALS: Final = 77
"""Most decimals a token may declare (10^77 base units still fit in a uint256)."""


class InputError(ValueError):
    """A command-line value or input file is wrong (exit 65)."""


class VerifierUnavailable(Exception):
    """The delegation verifier could not reach what it checks against (exit 69)."""


def verify_portfolio_delegations(
    delegations: list[dict[str, Any]],
    smart_account: str,
    config: Config,
    tokens: Sequence[TokenRecord],
    targets: Collection[str],
) -> None:
    """Raise ``ValueError`` naming every problem with a portfolio's signed delegations
    (:class:`InputError` naming ``--account`` when the smart account is not deployed).

    ``tokens``: the portfolio's registered tokens, then the quote token (the guard's set);
    ``targets``: the symbols of the portfolio's own tokens (what the approve delegation must
    cover, and no more).
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
    problems = _offline_problems(parsed, smart_account, delegate, config, tokens, targets)
    if problems:
        raise ValueError("; ".join(problems))
    try:
        onchain = trio.run(_onchain_problems, config, smart_account, parsed)
    except ChainError as exc:
        raise VerifierUnavailable(f"cannot check the signatures on chain: {exc}") from None
    if onchain:
        raise ValueError("; ".join(onchain))


def _offline_problems(
    parsed: Sequence[Delegation],
    smart_account: str,
    delegate: str,
    config: Config,
    tokens: Sequence[TokenRecord],
    targets: Collection[str],
) -> list[str]:
    """What least authority and the approve coverage find wrong in each delegation, and the
    kinds (approve, swap) that are missing: everything checked without the chain."""
    feeds = {token.address: str(token.price_feed) for token in tokens}
    decimals = {token.address: token.decimals for token in tokens}
    own = [token for token in tokens if token.symbol in targets]
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
                tokens=[token.address for token in own],
                guard_feeds=feeds,
                token_decimals=decimals,
            )
        ]
        problems += [
            f"[{index}]: {problem}"
            for problem in approve_coverage_problems(delegation, own, config.delegation)
        ]
    kinds = {kind_of(d, config.delegation) for d in parsed}
    problems += [f"no {kind} delegation" for kind in ("approve", "swap") if kind not in kinds]
    return problems


def approve_coverage_problems(
    delegation: Delegation, tokens: Sequence[TokenRecord], enforcers: DelegationConfig
) -> list[str]:
    """Why an approve delegation cannot approve every token of the portfolio for the router
    (each missing one would make every rebalance that sells it fail). The guard's token set is
    checked by :func:`daemon.delegation.guard_problems`; a missing AllowedTargets caveat by
    :func:`daemon.delegation.least_authority_problems`."""
    if kind_of(delegation, enforcers) != "approve":
        return []
    allowed = authority_of(delegation, enforcers).targets
    if allowed is None:
        return []
    missing = [t.symbol for t in tokens if to_address(t.address) not in allowed]
    if not missing:
        return []
    return [
        f"approve: does not cover the portfolio's token(s) {', '.join(missing)} (its "
        f"AllowedTargets are {sorted(allowed)}): the daemon could not approve them for the "
        "router, so every rebalance selling them would fail; have the owner sign delegations "
        "for every target token (driftd delegation build --token …)"
    ]


async def _onchain_problems(
    config: Config, smart_account: str, delegations: Sequence[Delegation]
) -> list[str]:
    domain = DelegationDomain(chain_id=config.chain.chain_id, manager=config.delegation.manager)
    problems: list[str] = []
    async with ChainClient(config.chain) as client:
        if not await client.get_code(smart_account):
            raise InputError(
                f"--account {smart_account}: has no code on chain {config.chain.chain_id}: "
                "the smart account must be deployed before its portfolio is registered (an "
                "undeployed, counterfactual account cannot validate its owner's signature, so "
                "no delegation from it can be redeemed)"
            )
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


# ============================================================================ tokens on chain


@attrs.frozen
class CheckedToken:
    """What ``token add`` registers: the decimals (given and equal to the chain's, or read from
    it), and the warnings to show."""

    decimals: int
    warnings: tuple[str, ...] = ()


async def check_token_on_chain(
    config: Config,
    *,
    symbol: str,
    address: str,
    decimals: int | None,
    feed: str | None,
    allow_symbol_mismatch: bool = False,
) -> CheckedToken:
    """``token add``'s chain checks, in one batched round trip: the token has code, its
    ``decimals()`` answers and equals ``decimals`` (when given), its ``symbol()`` is ``symbol``
    (case-insensitive; a mismatch usually means a wrong address, so it is refused unless
    ``allow_symbol_mismatch``; a token without a readable ``symbol()`` is only warned about),
    and the feed has code. Raises :class:`InputError` naming the argument; a node that cannot be
    reached raises :class:`ChainError`."""
    chain_id = config.chain.chain_id
    calls: list[tuple[str, list[Any]]] = [
        ("eth_getCode", [address, "latest"]),
        ("eth_call", [{"to": address, "data": hex_of(_DECIMALS_CALL)}, "latest"]),
        ("eth_call", [{"to": address, "data": hex_of(_SYMBOL_CALL)}, "latest"]),
    ]
    if feed is not None:
        calls.append(("eth_getCode", [feed, "latest"]))
    async with ChainClient(config.chain) as client:
        outcomes = await client.batch_outcomes(calls)
    code, raw_decimals, raw_symbol, *feed_code = outcomes
    if not _bytes_result(code, "eth_getCode"):
        raise InputError(
            f"ADDRESS: {address} has no code on chain {chain_id} (no contract there): a token "
            "must be a deployed ERC-20 contract (a wrong address, or one on another chain?)"
        )
    found = _checked_decimals(raw_decimals, address=address, symbol=symbol, given=decimals)
    warnings = _symbol_warnings(
        raw_symbol, address=address, symbol=symbol, allow_mismatch=allow_symbol_mismatch
    )
    if feed is not None:
        (answer,) = feed_code
        if not _bytes_result(answer, "eth_getCode"):
            raise InputError(
                f"--feed: {feed} has no code on chain {chain_id} (no contract there): a price "
                "feed must be a deployed AggregatorV3 contract"
            )
    return CheckedToken(decimals=found, warnings=tuple(warnings))


def _checked_decimals(raw: Any, *, address: str, symbol: str, given: int | None) -> int:
    """The token's ``decimals()`` from its ``eth_call`` outcome, or :class:`InputError` when
    it does not answer, answers more than :data:`MAX_DECIMALS`, or differs from ``given``."""
    found = _uint_result(raw)
    if found is None:
        raise InputError(
            f"ADDRESS: the contract at {address} does not answer decimals() (it reverted or "
            "returned nothing): not an ERC-20 token?"
        )
    if found > MAX_DECIMALS:
        raise InputError(
            f"ADDRESS: decimals() of the contract at {address} is {found}, more than "
            f"{MAX_DECIMALS}: not an ERC-20 token?"
        )
    if given is not None and given != found:
        raise InputError(
            f"--decimals: {given}, but decimals() of the token at {address} is {found} (a "
            f"wrong --decimals scales every valuation of {symbol} by 10^{abs(found - given)}; "
            "omit --decimals to take the chain's)"
        )
    return found


def _symbol_warnings(raw: Any, *, address: str, symbol: str, allow_mismatch: bool) -> list[str]:
    """``symbol()`` from its ``eth_call`` outcome against ``symbol``: a warning when it cannot
    be read; a mismatch is an :class:`InputError` unless ``allow_mismatch`` (then a warning)."""
    warnings: list[str] = []
    onchain = _symbol_result(raw)
    if onchain is None:
        warnings.append(
            f"the token at {address} has no readable symbol(), so SYMBOL {symbol} was not "
            "compared with it"
        )
    elif onchain.strip().lower() != symbol.lower():
        mismatch = (
            f"SYMBOL: {symbol}, but symbol() of the contract at {address} is {onchain[:40]!r}"
        )
        if not allow_mismatch:
            raise InputError(
                f"{mismatch}: a symbol mismatch usually means a wrong address; if the name is "
                "intended, add --allow-symbol-mismatch"
            )
        warnings.append(f"{mismatch} (registered anyway: --allow-symbol-mismatch)")
    return warnings


def _bytes_result(outcome: Any, method: str) -> bytes:
    """A batch outcome's bytes; the call's error, or :class:`RpcTransportError` for a reply
    that is not ``0x`` hex, is raised."""
    if isinstance(outcome, ChainError):
        raise outcome
    try:
        return hex_bytes(outcome)
    except (TypeError, ValueError, AttributeError):
        raise RpcTransportError(f"{method}: the node's reply is not 0x hex") from None


def _uint_result(outcome: Any) -> int | None:
    """An ``eth_call`` outcome as one uint word, or None (reverted, nothing, not a uint8)."""
    if isinstance(outcome, Reverted):
        return None
    raw = _bytes_result(outcome, "eth_call")
    if len(raw) < 32:
        return None
    value = int.from_bytes(raw[:32], "big")
    return value if value < 256 else None


def _symbol_result(outcome: Any) -> str | None:
    """``symbol()``'s answer: an ABI string, or a bytes32 (older tokens such as MKR)."""
    if isinstance(outcome, Reverted):
        return None
    raw = _bytes_result(outcome, "eth_call")
    try:
        (text,) = abi_decode(["string"], raw)
        return str(text) or None
    except (DecodingError, ValueError, OverflowError):
        pass
    if len(raw) == 32:
        return raw.rstrip(b"\0").decode("utf-8", errors="replace") or None
    return None


# ============================================================================ the running daemon


def one_actor_per_account(
    portfolios: Sequence[Portfolio], *, wallet_signer: str | None = None
) -> dict[str, str]:
    """Active portfolios that must not run because an older one (lower id) already trades the
    same account on the same chain, by name with the reason. In wallet mode every portfolio
    trades from ``wallet_signer``'s address, whatever its ``smart_account``."""
    groups: dict[tuple[int, str], list[Portfolio]] = {}
    for portfolio in portfolios:
        account = wallet_signer or portfolio.smart_account
        groups.setdefault((portfolio.chain_id, account.lower()), []).append(portfolio)
    held: dict[str, str] = {}
    for (chain_id, _), group in groups.items():
        first, *later = sorted(group, key=lambda p: p.id)
        for portfolio in later:
            account = wallet_signer or portfolio.smart_account
            held[portfolio.name] = (
                f"account {account} on chain {chain_id} already runs portfolio {first.name!r} "
                f"(id {first.id}): one account runs one portfolio, two would trade against each "
                f"other (driftd portfolio deactivate {portfolio.name})"
            )
    return held


async def token_decimal_problems(
    client: ChainClient, tokens: Sequence[TokenRecord], onchain: dict[str, int]
) -> dict[str, str]:
    """Registered tokens (by address) whose decimals are not the token's ``decimals()`` on
    chain, with the reason. ``onchain`` caches what was read (address → decimals): tokens not
    in it are read in one batched ``eth_call``, the others not again. A node that cannot be
    reached raises :class:`ChainError` (what was read stays cached)."""
    unread = sorted({t.address for t in tokens if t.address not in onchain})
    if unread:
        outcomes = await client.batch_outcomes(
            [
                ("eth_call", [{"to": address, "data": hex_of(_DECIMALS_CALL)}, "latest"])
                for address in unread
            ]
        )
        for address, outcome in zip(unread, outcomes, strict=True):
            found = _uint_result(outcome)  # raises a transport-level ChainError
            if found is not None:
                onchain[address] = found
    problems: dict[str, str] = {}
    for token in tokens:
        found = onchain.get(token.address)
        if found is None:
            problems[token.address] = (
                f"token {token.symbol} ({token.address}) does not answer decimals() on chain: "
                "not an ERC-20 contract at this address"
            )
        elif found != token.decimals:
            problems[token.address] = (
                f"token {token.symbol} is registered with {token.decimals} decimals but its "
                f"decimals() on chain is {found}: its valuations would be off by "
                f"10^{abs(found - token.decimals)}; register it again with the right decimals"
            )
    return problems


async def portfolios_to_hold(
    client: ChainClient,
    portfolios: Sequence[Portfolio],
    tokens: Sequence[TokenRecord],
    *,
    enforcers: DelegationConfig,
    wallet_signer: str | None,
    onchain_decimals: dict[str, int],
) -> dict[str, str]:
    """Active portfolios the daemon must not trade although the database has them, by name
    with the reason (each reconcile; the others keep trading): a second portfolio on one
    account (:func:`one_actor_per_account`), a token whose registered decimals are not its
    ``decimals()`` on chain (the quote token's hold every portfolio: router prices are quoted
    in it), an approve delegation that misses a token. If the node cannot answer the decimals
    read, tokens never read are not held back this time (logged; the next reconcile retries):
    the same trade-off as the revocation check."""
    held = one_actor_per_account(portfolios, wallet_signer=wallet_signer)
    try:
        bad = await token_decimal_problems(client, tokens, onchain_decimals)
    except ChainError as exc:
        get_logger(actor="app").warning("token_decimals_check_failed", error=str(exc))
        bad = {}
    quote_problem = next((bad[t.address] for t in tokens if t.is_quote and t.address in bad), None)
    for portfolio in portfolios:
        if portfolio.name in held:
            continue
        reasons = [bad[a.token.address] for a in portfolio.allocations if a.token.address in bad]
        if quote_problem is not None and quote_problem not in reasons:
            reasons.append(f"the quote token: {quote_problem}")
        if wallet_signer is None:
            reasons += _coverage_of(portfolio, enforcers)
        if reasons:
            held[portfolio.name] = "; ".join(reasons)
    return held


def _coverage_of(portfolio: Portfolio, enforcers: DelegationConfig) -> list[str]:
    tokens = [a.token for a in portfolio.allocations]
    problems: list[str] = []
    for index, item in enumerate(portfolio.delegation):
        try:
            delegation = delegation_from_json(item, f"delegation[{index}]")
        except DelegationFormatError:
            continue  # build_mode reports it
        problems += approve_coverage_problems(delegation, tokens, enforcers)
    return problems

"""``driftd delegation build|verify``: what an owner signs, and checking what they signed.

``build`` prints a JSON array of ``eth_signTypedData_v4`` documents (one per delegation the daemon
needs: approve and swap, see :mod:`daemon.delegation`) so the owner can sign in any wallet.
``verify FILE`` checks a delegation file (the signed delegations, Delegation Toolkit shape)
against least authority and, unless ``--offline``, asks the smart account on chain whether it
accepts each signature and the DelegationManager whether it was disabled.

Tokens are given as ``SYMBOL=0xADDRESS`` or as a plain ``SYMBOL`` resolved through a lookup
(the token registry, injected by the caller of :func:`register`). The oracle guard on the swap
delegation (issue 11) lists the portfolio's tokens and the quote token, each with its USD feed:
feeds and the quote token come from the token registry (``driftd token add … --feed``), feed
decimals from the feeds on chain. Both delegations expire after ``guard.valid_days`` and carry a
NonceEnforcer caveat with the account's current nonce (read on chain), so the owner revokes
everything they signed for driftd with one ``incrementNonce``; ``verify`` refuses a delegation
whose nonce is no longer the current one. The approve delegation carries ``ValueLteEnforcer(0)``;
the swap delegation needs no stock method, recipient or value pin: the guard enforces those.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import trio

from daemon import exitcodes
from daemon.abi import encode_call
from daemon.address import checked_address, to_address
from daemon.authority import (
    kind_of,
    least_authority_problems,
    nonce_problems,
)
from daemon.chain import ChainClient
from daemon.chain_errors import ChainError, ChainIdMismatch, Reverted
from daemon.config import Config, GuardConfig
from daemon.delegation import (
    Caveat,
    Delegation,
    DelegationDomain,
    DelegationFormatError,
    build_portfolio_delegations,
    current_nonce,
    is_disabled_on_chain,
    parse_delegation_file,
    signature_is_valid_on_chain,
)
from daemon.guard import GuardTerms, GuardToken, guard_caveat, usd
from daemon.registration import feed_decimal_problems
from daemon.signer import TxSigner

TokenLookup = Callable[[str], str | None]
"""Symbol → token address, or None when unknown."""


@attrs.frozen
class GuardEntry:
    """A registered token as the guard needs it."""

    address: str
    decimals: int
    feed: str | None
    is_quote: bool


GuardRegistry = Callable[[Config], Sequence[GuardEntry]]
"""The token registry's tokens of the configured chain (feeds and the quote token)."""


def _database_registry(config: Config) -> Sequence[GuardEntry]:
    from daemon.db import DatabaseError, open_database

    async def read() -> list[GuardEntry]:
        async with open_database(config.database) as database:
            return [
                GuardEntry(t.address, t.decimals, t.price_feed, t.is_quote)
                for t in await database.tokens(config.chain.chain_id)
            ]

    try:
        return trio.run(read)
    except DatabaseError as exc:
        raise RegistryUnavailable(f"token registry unavailable: {exc}") from None


class RegistryUnavailable(RuntimeError):
    """The token registry (database) could not be read (exit 69)."""


def guard_terms(guard: GuardConfig, tokens: Sequence[GuardToken]) -> GuardTerms:
    """The configured bounds over ``tokens`` (each with its feed and both decimals)."""
    return GuardTerms(
        tokens=tuple(tokens),
        max_loss_bps=guard.max_loss_bps,
        max_staleness=guard.max_staleness,
        period=guard.period,
        period_cap=usd(guard.period_cap_usd),
    )


def guard_feeds(
    portfolio: Sequence[str], registry: Sequence[GuardEntry]
) -> tuple[dict[str, GuardEntry], list[str]]:
    """The guard's token set (``portfolio`` + the quote token) → registry entries, and problems."""
    by_address = {to_address(entry.address): entry for entry in registry}
    wanted = [to_address(token) for token in portfolio]
    wanted += [to_address(e.address) for e in registry if e.is_quote and e.address not in wanted]
    problems: list[str] = []
    found: dict[str, GuardEntry] = {}
    for address in wanted:
        entry = by_address.get(address)
        if entry is None:
            problems.append(f"token {address} is not registered (driftd token add … --feed)")
        elif not entry.feed:
            problems.append(f"token {address} has no price feed registered (token add --feed)")
        else:
            found[address] = entry
    return found, problems


async def read_feed_decimals(client: ChainClient, feeds: Sequence[str]) -> list[int]:
    """``decimals()`` of each feed."""
    results = []
    for feed in feeds:
        try:
            raw = await client.call(feed, encode_call("decimals()"))
        except Reverted:
            raise ValueError(f"feed {feed} has no decimals() (not a price feed)") from None
        results.append(int.from_bytes(raw[:32], "big"))
    return results


def build_guard_caveat(
    config: Config, entries: Mapping[str, GuardEntry], feed_decimals: Sequence[int]
) -> Caveat:
    tokens = [
        GuardToken(address, str(entry.feed), entry.decimals, decimals)
        for (address, entry), decimals in zip(entries.items(), feed_decimals, strict=True)
    ]
    return guard_caveat(config.guard.enforcer, guard_terms(config.guard, tokens))


class UsageError(ValueError):
    """A command-line argument is wrong (exit 64)."""


def _no_registry(symbol: str) -> str | None:
    return None


def register(
    subparsers: Any,
    *,
    token_lookup: TokenLookup | None = None,
    registry: GuardRegistry | None = None,
) -> None:
    """Add ``delegation build`` and ``delegation verify``."""
    lookup = token_lookup or _no_registry
    guard_registry = registry or _database_registry
    delegation = subparsers.add_parser(
        "delegation", help="build the delegations an owner signs, or verify signed ones"
    )
    actions = delegation.add_subparsers(dest="delegation_action", metavar="ACTION", required=True)

    build = actions.add_parser(
        "build", help="print the EIP-712 documents (eth_signTypedData_v4) the owner signs"
    )
    build.add_argument("--account", required=True, help="the owner's smart account (delegator)")
    _add_token_argument(build, required=True)
    build.add_argument(
        "--delegate", help="the daemon's signer address (default: from the configured signer key)"
    )
    build.add_argument(
        "--salt", type=_uint256, help="delegation salt (default: random; makes each unique)"
    )
    build.set_defaults(func=build_command, token_lookup=lookup, guard_registry=guard_registry)

    verify = actions.add_parser("verify", help="check a file of signed delegations")
    verify.add_argument("file", help="JSON array of signed delegations")
    verify.add_argument("--account", required=True, help="the smart account they must come from")
    _add_token_argument(verify, required=False)
    verify.add_argument(
        "--delegate", help="the daemon's signer address (default: from the configured signer key)"
    )
    verify.add_argument(
        "--offline", action="store_true", help="skip the on-chain signature and disabled checks"
    )
    verify.set_defaults(func=verify_command, token_lookup=lookup, guard_registry=guard_registry)


def _add_token_argument(parser: argparse.ArgumentParser, *, required: bool) -> None:
    parser.add_argument(
        "--token",
        action="append",
        required=required,
        default=[],
        metavar="SYMBOL[=ADDRESS]",
        help="a portfolio token (repeat); a plain SYMBOL is looked up in the token registry",
    )


def _uint256(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 0 <= value < 2**256:
        raise argparse.ArgumentTypeError("must fit in uint256")
    return value


def resolve_tokens(specs: Sequence[str], lookup: TokenLookup) -> dict[str, str]:
    """``SYMBOL=0xADDRESS`` or ``SYMBOL`` (through ``lookup``) → {symbol: address}."""
    tokens: dict[str, str] = {}
    for spec in specs:
        symbol, _, address = spec.partition("=")
        symbol = symbol.strip()
        if not symbol:
            raise UsageError(f"--token {spec!r}: missing symbol")
        if address:
            try:
                tokens[symbol] = checked_address(address)
            except ValueError as exc:
                raise UsageError(f"--token {spec!r}: {exc}") from None
            continue
        found = lookup(symbol)
        if found is None:
            raise UsageError(
                f"--token {symbol}: unknown token (register it with `driftd token add` or pass "
                f"{symbol}=0xADDRESS)"
            )
        tokens[symbol] = to_address(found)
    return tokens


def _address_argument(value: str, what: str) -> str:
    try:
        return checked_address(value)
    except ValueError as exc:
        raise UsageError(f"{what}: {exc}") from None


def _delegate(args: argparse.Namespace, config: Config) -> str | None:
    if args.delegate:
        return _address_argument(args.delegate, "--delegate")
    if config.secrets.signer_key is None:
        return None
    return TxSigner(key=config.secrets.signer_key).address


def _domain(config: Config) -> DelegationDomain:
    return DelegationDomain(chain_id=config.chain.chain_id, manager=config.delegation.manager)


def build_command(args: argparse.Namespace, config: Config) -> int:
    try:
        account = _address_argument(args.account, "--account")
        tokens = resolve_tokens(args.token, args.token_lookup)
        delegate = _delegate(args, config)
    except UsageError as exc:
        print(f"driftd delegation build: {exc}", file=sys.stderr)
        return exitcodes.USAGE
    except ValueError as exc:  # the configured signer key is not a key
        print(f"driftd delegation build: {exc}", file=sys.stderr)
        return exitcodes.CONFIG_ERROR
    if delegate is None:
        print(
            "driftd delegation build: no --delegate and no signer key configured "
            "(signer.key_file or DRIFTD_SIGNER_KEY)",
            file=sys.stderr,
        )
        return exitcodes.CONFIG_ERROR
    if not config.guard.enforcer:
        print(
            "driftd delegation build: guard.enforcer is not configured (the DriftGuardEnforcer "
            "every swap delegation must carry)",
            file=sys.stderr,
        )
        return exitcodes.CONFIG_ERROR
    entries = _guard_entries("build", list(tokens.values()), args, config)
    if isinstance(entries, int):
        return entries
    try:
        feed_decimals, nonce = trio.run(
            _read_chain, config, [str(e.feed) for e in entries.values()], account
        )
    except ChainError as exc:
        print(f"driftd delegation build: chain unavailable: {exc}", file=sys.stderr)
        return exitcodes.UNAVAILABLE
    except ValueError as exc:
        print(f"driftd delegation build: {exc}", file=sys.stderr)
        return exitcodes.DATA_ERROR
    salt = args.salt if args.salt is not None else secrets.randbits(64)
    delegations = build_portfolio_delegations(
        account=account,
        delegate=delegate,
        router=config.chain.router,
        tokens=list(tokens.values()),
        enforcers=config.delegation,
        salt=salt,
        guard=build_guard_caveat(config, entries, feed_decimals),
        expires_at=int(time.time()) + config.guard.valid_days * 86_400,
        nonce=nonce,
    )
    domain = _domain(config)
    documents = [delegation.typed_data(domain) for delegation in delegations.as_list()]
    print(json.dumps(documents, indent=2))
    return exitcodes.OK


async def _read_chain(config: Config, feeds: Sequence[str], account: str) -> tuple[list[int], int]:
    """The feeds' decimals and the account's current NonceEnforcer nonce."""
    async with ChainClient(config.chain) as client:
        decimals = await read_feed_decimals(client, feeds)
        try:
            nonce = await current_nonce(client, config.delegation, account)
        except Reverted:
            raise ValueError(
                f"delegation.nonce {config.delegation.nonce} is not a NonceEnforcer "
                "(currentNonce reverted)"
            ) from None
        return decimals, nonce


def _guard_entries(
    command: str, tokens: Sequence[str], args: argparse.Namespace, config: Config
) -> dict[str, GuardEntry] | int:
    """The guard's registry entries for ``tokens`` (+ the quote token), or the exit status
    after saying why they cannot be had."""
    try:
        entries, problems = guard_feeds(tokens, args.guard_registry(config))
    except RegistryUnavailable as exc:
        print(f"driftd delegation {command}: {exc}", file=sys.stderr)
        return exitcodes.UNAVAILABLE
    if problems:
        print(f"driftd delegation {command}: {'; '.join(problems)}", file=sys.stderr)
        return exitcodes.DATA_ERROR
    return entries


def verify_command(args: argparse.Namespace, config: Config) -> int:
    try:
        account = _address_argument(args.account, "--account")
        tokens = resolve_tokens(args.token, args.token_lookup) if args.token else None
        delegate = _delegate(args, config)
    except UsageError as exc:
        print(f"driftd delegation verify: {exc}", file=sys.stderr)
        return exitcodes.USAGE
    except ValueError as exc:
        print(f"driftd delegation verify: {exc}", file=sys.stderr)
        return exitcodes.CONFIG_ERROR
    if delegate is None:
        print(
            "driftd delegation verify: no --delegate and no signer key configured",
            file=sys.stderr,
        )
        return exitcodes.CONFIG_ERROR
    delegations = _read_delegations(args.file)
    if isinstance(delegations, int):
        return delegations

    feeds: dict[str, str] | None = None
    decimals: dict[str, int] | None = None
    if tokens is not None:
        entries = _guard_entries("verify", list(tokens.values()), args, config)
        if isinstance(entries, int):
            return entries
        feeds = {address: str(entry.feed) for address, entry in entries.items()}
        decimals = {address: entry.decimals for address, entry in entries.items()}
    reports = _offline_reports(
        delegations,
        config,
        account=account,
        delegate=delegate,
        tokens=list(tokens.values()) if tokens is not None else None,
        feeds=feeds,
        decimals=decimals,
    )
    kinds = {report["kind"] for report in reports}
    missing = [kind for kind in ("approve", "swap") if kind not in kinds]

    if not args.offline:
        try:
            onchain = trio.run(_onchain_problems, config, delegations)
        except ChainIdMismatch as exc:
            print(f"driftd delegation verify: {exc}", file=sys.stderr)
            return exitcodes.CONFIG_ERROR
        except ChainError as exc:
            print(f"driftd delegation verify: chain unavailable: {exc}", file=sys.stderr)
            return exitcodes.UNAVAILABLE
        for report, problems in zip(reports, onchain, strict=True):
            report["problems"].extend(problems)

    ok = not missing and all(not report["problems"] for report in reports)
    print(json.dumps({"ok": ok, "missing": missing, "delegations": reports}, indent=2))
    return exitcodes.OK if ok else exitcodes.DATA_ERROR


def _read_delegations(path: str) -> list[Delegation] | int:
    """The delegations in ``path``, or the exit status after saying why they cannot be read."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        print(f"driftd delegation verify: cannot read {path}: {exc.strerror}", file=sys.stderr)
        return exitcodes.DATA_ERROR
    try:
        return parse_delegation_file(text)
    except DelegationFormatError as exc:
        print(f"driftd delegation verify: {path}: {exc}", file=sys.stderr)
        return exitcodes.DATA_ERROR


def _offline_reports(
    delegations: Sequence[Delegation],
    config: Config,
    *,
    account: str,
    delegate: str,
    tokens: list[str] | None,
    feeds: dict[str, str] | None,
    decimals: dict[str, int] | None,
) -> list[dict[str, Any]]:
    """One report per delegation: its hash, its kind and what least authority finds wrong."""
    return [
        {
            "index": index,
            "hash": "0x" + delegation.struct_hash().hex(),
            "kind": kind_of(delegation, config.delegation),
            "problems": least_authority_problems(
                delegation,
                account=account,
                delegate=delegate,
                router=config.chain.router,
                enforcers=config.delegation,
                guard=config.guard,
                tokens=tokens,
                guard_feeds=feeds,
                token_decimals=decimals,
            ),
        }
        for index, delegation in enumerate(delegations)
    ]


async def _onchain_problems(config: Config, delegations: Sequence[Delegation]) -> list[list[str]]:
    domain = _domain(config)
    results: list[list[str]] = []
    async with ChainClient(config.chain) as client:
        for delegation in delegations:
            problems: list[str] = []
            if not await client.get_code(delegation.delegator):
                problems.append("delegator has no code on chain (not a deployed smart account)")
            elif not await signature_is_valid_on_chain(client, delegation, domain):
                problems.append("signature rejected by the smart account (ERC-1271)")
            if await is_disabled_on_chain(client, delegation, domain):
                problems.append("disabled on the DelegationManager")
            problems += await nonce_problems(client, delegation, config.delegation)
            problems += await feed_decimal_problems(client, delegation, config.guard.enforcer)
            results.append(problems)
    return results

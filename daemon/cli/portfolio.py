"""``driftd portfolio add|list|show|deactivate``: register and inspect portfolios.

Input is validated before any I/O and every problem names what is wrong (exit 65); how the
commands run and fail is :mod:`daemon.cli.db_common`. ``portfolio add`` refuses a second active
portfolio on one account (the database refuses it too: migration 0005).

The delegation file is checked for *shape* here (a JSON array of signed delegations in the
MetaMask Delegation Toolkit form). Its signatures and caveats are checked by a verifier passed to
:func:`register_portfolio` (``verify_delegation``, :mod:`daemon.registration`); without one a
delegated portfolio is refused: unverified delegations are never registered.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import trio

from daemon import exitcodes
from daemon.cli.db_common import fail, parse_address, print_json, table, with_database
from daemon.config import Config
from daemon.db import ConstraintViolation, Database, Portfolio, TokenRecord
from daemon.registration import InputError, VerifierUnavailable

if TYPE_CHECKING:
    from daemon.cli.main import Subparsers

DelegationVerifier = Callable[
    [list[dict[str, Any]], str, Config, Sequence[TokenRecord], Collection[str]], None
]
"""``verify(delegations, smart_account, config, tokens, targets)``: raise ``ValueError`` naming
the problem (an :class:`InputError` is shown as it is, any other ``ValueError`` after
``--delegation FILE:``), or :class:`VerifierUnavailable` when it cannot check (the chain is
unreachable). ``tokens`` are the registered tokens the guard must list: the portfolio's, then
the quote token (if registered and not already among them); ``targets`` the symbols of the
portfolio's own tokens (the ones the approve delegation must cover)."""


WEIGHT_TOLERANCE: Final = Decimal("1e-9")
MAX_DELEGATION_FILE_BYTES: Final = 1 << 20
"""A signed-delegation file is a few kilobytes; a larger one is not read."""
MAX_DELEGATION_NESTING: Final = 16
"""Deepest ``[``/``{`` nesting read (the Toolkit's shape needs 3): deeper input is refused
before ``json.loads``, whose C decoder can overflow the stack once py_ecc has raised the
recursion limit."""
_HEX_RE: Final = re.compile(r"^0x([0-9a-fA-F]{2})*$")
_BYTES32_RE: Final = re.compile(r"^0x[0-9a-fA-F]{64}$")
_SALT_RE: Final = re.compile(r"^(0x[0-9a-fA-F]+|[0-9]+)$")


# ============================================================================ registration


def register_portfolio(
    subparsers: Subparsers, *, verify_delegation: DelegationVerifier | None = None
) -> None:
    """Add ``portfolio`` to the ``driftd`` command line."""
    portfolio = subparsers.add_parser("portfolio", help="register and inspect portfolios")
    actions = portfolio.add_subparsers(dest="portfolio_action", metavar="ACTION", required=True)
    add = actions.add_parser("add", help="register a portfolio")
    add.add_argument("name", metavar="NAME")
    add.add_argument("--account", required=True, metavar="0xSMART_ACCOUNT")
    add.add_argument(
        "--target",
        required=True,
        action="extend",
        nargs="+",
        metavar="SYMBOL=WEIGHT",
        help="target weights in (0, 1], summing to 1",
    )
    add.add_argument(
        "--delegation",
        metavar="FILE",
        help="JSON array of the owner's signed delegations (required unless execution.mode is "
        "wallet)",
    )
    add.add_argument("--owner", metavar="0xADDRESS", help="the owner's address (informational)")
    add.set_defaults(func=functools.partial(cmd_portfolio_add, verify=verify_delegation))
    listing = actions.add_parser("list", help="list portfolios")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=cmd_portfolio_list)
    show = actions.add_parser("show", help="show one portfolio")
    show.add_argument("name", metavar="NAME")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=cmd_portfolio_show)
    deactivate = actions.add_parser("deactivate", help="stop rebalancing a portfolio")
    deactivate.add_argument("name", metavar="NAME")
    deactivate.set_defaults(func=cmd_portfolio_deactivate)


# ============================================================================ validation


def parse_targets(items: Sequence[str]) -> dict[str, Decimal]:
    """``SYMBOL=WEIGHT`` items → weights; each in (0, 1], no duplicates, summing to 1 ± 1e-9."""
    targets: dict[str, Decimal] = {}
    for item in items:
        symbol, sep, raw = item.partition("=")
        symbol = symbol.strip()
        if not sep or not symbol or not raw.strip():
            raise InputError(f"--target {item!r}: expected SYMBOL=WEIGHT, e.g. WETH=0.6")
        try:
            weight = Decimal(raw.strip())
        except InvalidOperation:
            raise InputError(f"--target {item!r}: weight {raw!r} is not a number") from None
        if not weight.is_finite() or not 0 < weight <= 1:
            raise InputError(f"--target {item!r}: weight must be in (0, 1], got {raw}")
        if symbol in targets:
            raise InputError(f"--target: duplicate symbol {symbol}")
        targets[symbol] = weight
    if not targets:
        raise InputError("--target: at least one SYMBOL=WEIGHT is required")
    total = sum(targets.values(), Decimal(0))
    if abs(total - 1) > WEIGHT_TOLERANCE:
        raise InputError(f"--target: weights sum to {total}, not 1")
    return targets


def _require_hex(value: Any, where: str, pattern: re.Pattern[str], what: str) -> None:
    if not isinstance(value, str) or not pattern.match(value):
        raise InputError(f"{where}: must be {what}, got {value!r}")


def validate_delegations(document: Any, smart_account: str) -> list[dict[str, Any]]:
    """Check the shape of a signed-delegation array; errors name the field
    (``delegation[0].caveats[1].enforcer: …``)."""
    if not isinstance(document, list) or not document:
        raise InputError("delegation: must be a non-empty JSON array of signed delegations")
    for i, item in enumerate(document):
        where = f"delegation[{i}]"
        if not isinstance(item, dict):
            raise InputError(f"{where}: must be an object")
        for key in ("delegate", "delegator", "authority", "caveats", "salt", "signature"):
            if key not in item:
                raise InputError(f"{where}.{key}: missing")
        parse_address(item["delegate"], f"{where}.delegate")
        parse_address(item["delegator"], f"{where}.delegator")
        _require_hex(item["authority"], f"{where}.authority", _BYTES32_RE, "a 0x 32-byte hex")
        _require_hex(item["signature"], f"{where}.signature", _HEX_RE, "0x-prefixed hex bytes")
        if item["signature"] == "0x":
            raise InputError(f"{where}.signature: is empty (the delegation is not signed)")
        salt = item["salt"]
        if not isinstance(salt, str) or not _SALT_RE.match(salt):
            raise InputError(f"{where}.salt: must be a decimal or 0x hex string, got {salt!r}")
        if i == 0 and item["delegator"].lower() != smart_account.lower():
            raise InputError(
                f"{where}.delegator: {item['delegator']} is not the smart account {smart_account}"
            )
        caveats = item["caveats"]
        if not isinstance(caveats, list):
            raise InputError(f"{where}.caveats: must be an array")
        for j, caveat in enumerate(caveats):
            cwhere = f"{where}.caveats[{j}]"
            if not isinstance(caveat, dict):
                raise InputError(f"{cwhere}: must be an object")
            for key in ("enforcer", "terms", "args"):
                if key not in caveat:
                    raise InputError(f"{cwhere}.{key}: missing")
            parse_address(caveat["enforcer"], f"{cwhere}.enforcer")
            _require_hex(caveat["terms"], f"{cwhere}.terms", _HEX_RE, "0x-prefixed hex bytes")
            _require_hex(caveat["args"], f"{cwhere}.args", _HEX_RE, "0x-prefixed hex bytes")
    return document


def read_delegation_file(path: str, smart_account: str) -> list[dict[str, Any]]:
    """Read and shape-check ``--delegation FILE``."""
    try:
        with Path(path).open("rb") as handle:
            data = handle.read(MAX_DELEGATION_FILE_BYTES + 1)
    except OSError as exc:
        raise InputError(f"--delegation {path}: cannot read: {exc.strerror}") from None
    if len(data) > MAX_DELEGATION_FILE_BYTES:
        raise InputError(
            f"--delegation {path}: larger than {MAX_DELEGATION_FILE_BYTES} bytes "
            "(a signed-delegation file is a few kilobytes)"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"--delegation {path}: not UTF-8 text") from None
    if _nesting(text) > MAX_DELEGATION_NESTING:
        raise InputError(
            f"--delegation {path}: not valid JSON: nested deeper than {MAX_DELEGATION_NESTING}"
        )
    try:
        document = json.loads(text)
    except ValueError as exc:  # JSONDecodeError, and integers beyond Python's digit limit
        raise InputError(f"--delegation {path}: not valid JSON: {exc}") from None
    return validate_delegations(document, smart_account)


def _nesting(text: str) -> int:
    """The deepest nesting of JSON arrays and objects in ``text`` (brackets in strings skipped)."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


# ============================================================================ handlers


def _portfolio_dict(portfolio: Portfolio) -> dict[str, Any]:
    return {
        "id": portfolio.id,
        "name": portfolio.name,
        "smart_account": portfolio.smart_account,
        "chain_id": portfolio.chain_id,
        "owner": portfolio.owner,
        "is_active": portfolio.is_active,
        "targets": {a.token.symbol: a.weight for a in portfolio.allocations},
        "delegations": len(portfolio.delegation),
        "created_at": portfolio.created_at.isoformat(),
        "updated_at": portfolio.updated_at.isoformat(),
    }


def cmd_portfolio_add(
    args: argparse.Namespace, config: Config, *, verify: DelegationVerifier | None = None
) -> int:
    """``driftd portfolio add NAME --account 0x… --target SYMBOL=WEIGHT … --delegation FILE``."""
    try:
        account, owner, targets, delegations = _portfolio_input(args, config)
    except InputError as exc:
        return fail(exc, exitcodes.DATA_ERROR)

    async def work(db: Database) -> int:
        registry = await db.tokens(config.chain.chain_id)
        known = {t.symbol for t in registry}
        unknown = [s for s in targets if s not in known]
        if unknown:
            raise InputError(
                f"--target: unknown token symbol(s) {', '.join(unknown)} "
                f"(known: {', '.join(sorted(known)) or 'none'}); add them with `driftd token add`"
            )
        # One account, one portfolio: two would be two actors trading the same balances
        # towards different targets, each undoing the other's trades (issue 12).
        existing = await db.active_portfolio_on(config.chain.chain_id, account)
        if existing is not None:
            raise InputError(_account_taken(account, existing, config.chain.chain_id))
        if delegations and verify is None:
            raise InputError(
                f"--delegation {args.delegation}: no delegation verifier available; "
                "unverified delegations are never registered"
            )
        if delegations and verify is not None:
            tokens = [t for t in registry if t.symbol in targets]
            tokens += [t for t in registry if t.is_quote and t.symbol not in targets]
            try:
                await trio.to_thread.run_sync(
                    verify, delegations, account, config, tokens, frozenset(targets)
                )
            except InputError:
                raise
            except ValueError as exc:
                raise InputError(f"--delegation {args.delegation}: {exc}") from None
            except VerifierUnavailable as exc:
                return fail(exc, exitcodes.UNAVAILABLE)
        portfolio = await _add_portfolio(
            db, args.name, account, config, targets, delegations, owner
        )
        print(f"added portfolio {portfolio.name} (id {portfolio.id}) for {portfolio.smart_account}")
        return exitcodes.OK

    return with_database(config, work)


def _portfolio_input(
    args: argparse.Namespace, config: Config
) -> tuple[str, str | None, dict[str, Decimal], list[dict[str, Any]]]:
    """``portfolio add``'s arguments, checked before any I/O: (account, owner, targets,
    delegations), or :class:`InputError`."""
    if not 1 <= len(args.name) <= 100:
        raise InputError("NAME: must be 1-100 characters")
    account = parse_address(args.account, "--account")
    owner = parse_address(args.owner, "--owner") if args.owner else None
    targets = parse_targets(args.target)
    if config.execution.mode == "wallet":
        # The signer's own address holds the funds: there is nothing to delegate.
        if args.delegation:
            raise InputError("--delegation: not used when execution.mode is wallet")
        delegations: list[dict[str, Any]] = []
    elif not args.delegation:
        raise InputError("--delegation FILE is required when execution.mode is delegation")
    else:
        delegations = read_delegation_file(args.delegation, account)
    return account, owner, targets, delegations


async def _add_portfolio(
    db: Database,
    name: str,
    account: str,
    config: Config,
    targets: dict[str, Decimal],
    delegations: list[dict[str, Any]],
    owner: str | None,
) -> Portfolio:
    """Store the portfolio; losing the race for its account to another ``portfolio add`` is
    the same :class:`InputError` as finding the account taken."""
    try:
        return await db.add_portfolio(
            name,
            account,
            chain_id=config.chain.chain_id,
            targets=targets,
            delegation=delegations,
            owner=owner,
        )
    except ConstraintViolation as exc:
        if exc.constraint != ONE_PORTFOLIO_PER_ACCOUNT:
            raise
        # Another `portfolio add` for this account committed since the check above.
        raced = await db.active_portfolio_on(config.chain.chain_id, account)
        if raced is None:
            raise
        raise InputError(_account_taken(account, raced, config.chain.chain_id)) from None


ONE_PORTFOLIO_PER_ACCOUNT: Final = "portfolio_one_active_per_account"
"""The unique index behind the rule (migration 0005)."""


def _account_taken(account: str, existing: Portfolio, chain_id: int) -> str:
    return (
        f"--account {account}: already has the active portfolio {existing.name!r} (id "
        f"{existing.id}) on chain {chain_id}; one account runs one portfolio (two would trade "
        f"against each other). Deactivate it first: driftd portfolio deactivate {existing.name}"
    )


def cmd_portfolio_list(args: argparse.Namespace, config: Config) -> int:
    """``driftd portfolio list [--json]``."""

    async def work(db: Database) -> int:
        portfolios = await db.portfolios()
        if args.json:
            print_json([_portfolio_dict(p) for p in portfolios])
            return exitcodes.OK
        rows = [
            (
                p.name,
                p.smart_account,
                "active" if p.is_active else "inactive",
                " ".join(f"{a.token.symbol}={a.weight}" for a in p.allocations),
            )
            for p in portfolios
        ]
        print(table(("NAME", "ACCOUNT", "STATUS", "TARGETS"), rows))
        return exitcodes.OK

    return with_database(config, work)


def cmd_portfolio_show(args: argparse.Namespace, config: Config) -> int:
    """``driftd portfolio show NAME [--json]``."""

    async def work(db: Database) -> int:
        portfolio = await db.portfolio(args.name)
        last = await db.last_successful_rebalance(portfolio.id)
        info = _portfolio_dict(portfolio)
        info["last_successful_rebalance"] = (
            last.finished_at.isoformat() if last and last.finished_at else None
        )
        if args.json:
            info["delegation"] = portfolio.delegation
            print_json(info)
            return exitcodes.OK
        fields: Mapping[str, object] = {
            "name": portfolio.name,
            "id": portfolio.id,
            "smart account": portfolio.smart_account,
            "chain id": portfolio.chain_id,
            "owner": portfolio.owner or "-",
            "status": "active" if portfolio.is_active else "inactive",
            "delegations": len(portfolio.delegation),
            "last rebalance": info["last_successful_rebalance"] or "never",
            "created": info["created_at"],
            "updated": info["updated_at"],
        }
        width = max(len(k) for k in fields)
        for key, value in fields.items():
            print(f"{key.ljust(width)}  {value}")
        print()
        rows = [(a.token.symbol, a.weight, a.token.address) for a in portfolio.allocations]
        print(table(("TOKEN", "TARGET", "ADDRESS"), rows))
        return exitcodes.OK

    return with_database(config, work)


def cmd_portfolio_deactivate(args: argparse.Namespace, config: Config) -> int:
    """``driftd portfolio deactivate NAME``."""

    async def work(db: Database) -> int:
        portfolio = await db.set_portfolio_active(args.name, False)
        print(f"deactivated portfolio {portfolio.name}")
        return exitcodes.OK

    return with_database(config, work)

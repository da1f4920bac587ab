"""``driftd migrate``, ``driftd token add|list`` and ``driftd portfolio add|list|show|deactivate``.

The commands that work on the registry live here, next to nothing else, so the CLI core stays
small. Input is validated before any I/O and every problem names what is wrong (exit 65); an
unreachable database or chain exits 69; a schema older than this driftd (``driftd migrate`` not
run) or newer, or a node on another chain, exits 78.

What is registered must be what is on chain (issue 12): addresses with a wrong EIP-55 checksum
and the zero address are refused; ``token add`` reads the token's code, ``decimals()`` and
``symbol()`` (and the feed's code) and refuses a contract that is not there or disagrees
(:func:`daemon.registration.check_token_on_chain`); ``portfolio add`` refuses a second active
portfolio on one account (the database refuses it too: migration 0005).

The delegation file is checked for *shape* here (a JSON array of signed delegations in the
MetaMask Delegation Toolkit form). Its signatures and caveats are checked by a verifier passed to
:func:`register` (``verify_delegation``, :mod:`daemon.registration`); without one a delegated
portfolio is refused: unverified delegations are never registered.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import sys
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import trio

from daemon import exitcodes
from daemon.address import checked_address
from daemon.chain import ChainError, ChainIdMismatch
from daemon.config import Config
from daemon.db import (
    ConstraintViolation,
    Database,
    DatabaseError,
    DatabaseUnavailable,
    MigrationError,
    NotFound,
    Portfolio,
    Token,
    load_migrations,
    open_database,
)
from daemon.registration import (
    MAX_DECIMALS,
    InputError,
    VerifierUnavailable,
    check_token_on_chain,
)

if TYPE_CHECKING:
    from daemon.cli import Subparsers

DelegationVerifier = Callable[
    [list[dict[str, Any]], str, Config, Sequence[Token], Collection[str]], None
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
_SYMBOL_RE: Final = re.compile(r"^[A-Za-z0-9._+-]{1,32}$")
_SALT_RE: Final = re.compile(r"^(0x[0-9a-fA-F]+|[0-9]+)$")


# ============================================================================ registration


def register(
    subparsers: Subparsers, *, verify_delegation: DelegationVerifier | None = None
) -> None:
    """Add ``migrate``, ``token`` and ``portfolio`` to the ``driftd`` command line."""
    migrate = subparsers.add_parser(
        "migrate", help="apply pending database schema migrations (safe to run concurrently)"
    )
    migrate.add_argument("--json", action="store_true", help="print the result as JSON")
    migrate.set_defaults(func=cmd_migrate)

    token = subparsers.add_parser("token", help="register and list tokens")
    token_actions = token.add_subparsers(dest="token_action", metavar="ACTION", required=True)
    token_add = token_actions.add_parser("add", help="register a token")
    token_add.add_argument("symbol", metavar="SYMBOL")
    token_add.add_argument("address", metavar="ADDRESS", help="0x token contract address")
    token_add.add_argument(
        "--decimals",
        metavar="N",
        help="the token's decimals; read from the chain when omitted, refused when it differs",
    )
    token_add.add_argument("--coingecko-id", metavar="ID", help="CoinGecko coin id (oracle)")
    token_add.add_argument(
        "--quote", action="store_true", help="the stablecoin router prices are quoted in"
    )
    token_add.add_argument(
        "--feed",
        metavar="0xFEED",
        help="the token's Chainlink-compatible USD price feed (the oracle guard values it there)",
    )
    token_add.add_argument(
        "--allow-symbol-mismatch",
        action="store_true",
        help="register SYMBOL although the contract's symbol() says otherwise",
    )
    token_add.set_defaults(func=cmd_token_add)
    token_list = token_actions.add_parser("list", help="list tokens")
    token_list.add_argument("--json", action="store_true")
    token_list.set_defaults(func=cmd_token_list)

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


def parse_address(value: object, what: str) -> str:
    """A checksummed address, or :class:`InputError` naming ``what``: not an address, a wrong
    EIP-55 checksum (never silently re-checksummed) or the zero address
    (:func:`daemon.address.checked_address`)."""
    try:
        return checked_address(value)
    except ValueError as exc:
        raise InputError(f"{what}: {exc}") from None


def parse_decimals(value: str | None) -> int | None:
    """``--decimals N``: an integer in 0..:data:`MAX_DECIMALS`, or None (read from the chain)."""
    if value is None:
        return None
    text = value.strip()
    if not text.isascii() or not text.isdigit() or len(text) > 3:
        raise InputError(f"--decimals: must be an integer in 0..{MAX_DECIMALS}, got {value[:40]!r}")
    decimals = int(text)
    if not 0 <= decimals <= MAX_DECIMALS:
        raise InputError(f"--decimals: must be in 0..{MAX_DECIMALS}, got {decimals}")
    return decimals


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


# ============================================================================ running


def _fail(message: object, code: int) -> int:
    print(f"driftd: {message}", file=sys.stderr)
    return code


def _with_database(
    config: Config, work: Callable[[Database], Awaitable[int]], *, check_schema: bool = True
) -> int:
    """Open the database, run ``work``, map errors to exit codes."""

    async def main() -> int:
        async with open_database(config.database) as db:
            if check_schema:
                have = await db.schema_version()
                want = max((m.version for m in load_migrations()), default=0)
                if have < want:
                    return _fail(
                        f"the database schema is at version {have}, this driftd needs {want}: "
                        "run `driftd migrate`",
                        exitcodes.CONFIG_ERROR,
                    )
            return await work(db)

    try:
        return trio.run(main)
    except DatabaseUnavailable as exc:
        return _fail(exc, exitcodes.UNAVAILABLE)
    except (ConstraintViolation, NotFound, InputError) as exc:
        return _fail(exc, exitcodes.DATA_ERROR)
    except MigrationError as exc:
        return _fail(exc, exitcodes.CONFIG_ERROR)
    except DatabaseError as exc:
        return _fail(exc, exitcodes.UNAVAILABLE)
    except ChainIdMismatch as exc:
        return _fail(f"chain.rpc_url: {exc}", exitcodes.CONFIG_ERROR)
    except ChainError as exc:
        return _fail(f"cannot read the chain: {exc}", exitcodes.UNAVAILABLE)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table with left-aligned columns."""
    cells = [[str(h) for h in headers], *[["" if c is None else str(c) for c in r] for r in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _json_default(value: object) -> str:
    return str(value)  # Decimal and datetime: exact strings


def _print_json(value: object) -> None:
    print(json.dumps(value, indent=2, default=_json_default))


def _token_dict(token: Token) -> dict[str, Any]:
    return {
        "symbol": token.symbol,
        "address": token.address,
        "chain_id": token.chain_id,
        "decimals": token.decimals,
        "coingecko_id": token.coingecko_id,
        "is_quote": token.is_quote,
        "price_feed": token.price_feed,
    }


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


# ============================================================================ handlers


def cmd_migrate(args: argparse.Namespace, config: Config) -> int:
    """``driftd migrate``."""

    async def work(db: Database) -> int:
        applied = await db.migrate()
        version = await db.schema_version()
        if getattr(args, "json", False):
            _print_json(
                {"applied": [f"{m.version:04d}_{m.name}" for m in applied], "version": version}
            )
        elif applied:
            for m in applied:
                print(f"applied {m.version:04d}_{m.name}")
        else:
            print(f"schema up to date (version {version})")
        return exitcodes.OK

    return _with_database(config, work, check_schema=False)


def cmd_token_add(args: argparse.Namespace, config: Config) -> int:
    """``driftd token add SYMBOL ADDRESS [--decimals N] [--coingecko-id ID] [--quote] [--feed
    0xFEED] [--allow-symbol-mismatch]``: checked against the chain before it is stored."""
    try:
        if not _SYMBOL_RE.match(args.symbol):
            raise InputError(f"SYMBOL: must be 1-32 of A-Z a-z 0-9 . _ + -, got {args.symbol!r}")
        address = parse_address(args.address, "ADDRESS")
        decimals = parse_decimals(args.decimals)
        feed = parse_address(args.feed, "--feed") if args.feed else None
    except InputError as exc:
        return _fail(exc, exitcodes.DATA_ERROR)

    async def work(db: Database) -> int:

        checked = await check_token_on_chain(
            config,
            symbol=args.symbol,
            address=address,
            decimals=decimals,
            feed=feed,
            allow_symbol_mismatch=getattr(args, "allow_symbol_mismatch", False),
        )
        for warning in checked.warnings:
            print(f"driftd: warning: {warning}", file=sys.stderr)
        token = await db.add_token(
            args.symbol,
            address,
            chain_id=config.chain.chain_id,
            decimals=checked.decimals,
            coingecko_id=args.coingecko_id or None,
            is_quote=args.quote,
            price_feed=feed,
        )
        source = "as given, matches the chain" if decimals is not None else "read from the chain"
        print(f"added token {token.symbol} {token.address} (decimals {token.decimals}, {source})")
        return exitcodes.OK

    return _with_database(config, work)


def cmd_token_list(args: argparse.Namespace, config: Config) -> int:
    """``driftd token list [--json]``."""

    async def work(db: Database) -> int:
        tokens = await db.tokens()
        if args.json:
            _print_json([_token_dict(t) for t in tokens])
        else:
            rows = [
                (
                    t.symbol,
                    t.address,
                    t.decimals,
                    t.coingecko_id or "-",
                    t.price_feed or "-",
                    "yes" if t.is_quote else "",
                )
                for t in tokens
            ]
            print(table(("SYMBOL", "ADDRESS", "DECIMALS", "COINGECKO", "FEED", "QUOTE"), rows))
        return exitcodes.OK

    return _with_database(config, work)


def cmd_portfolio_add(
    args: argparse.Namespace, config: Config, *, verify: DelegationVerifier | None = None
) -> int:
    """``driftd portfolio add NAME --account 0x… --target SYMBOL=WEIGHT … --delegation FILE``."""
    try:
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
    except InputError as exc:
        return _fail(exc, exitcodes.DATA_ERROR)

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
                return _fail(exc, exitcodes.UNAVAILABLE)
        try:
            portfolio = await db.add_portfolio(
                args.name,
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
        print(f"added portfolio {portfolio.name} (id {portfolio.id}) for {portfolio.smart_account}")
        return exitcodes.OK

    return _with_database(config, work)


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
            _print_json([_portfolio_dict(p) for p in portfolios])
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

    return _with_database(config, work)


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
            _print_json(info)
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

    return _with_database(config, work)


def cmd_portfolio_deactivate(args: argparse.Namespace, config: Config) -> int:
    """``driftd portfolio deactivate NAME``."""

    async def work(db: Database) -> int:
        portfolio = await db.set_portfolio_active(args.name, False)
        print(f"deactivated portfolio {portfolio.name}")
        return exitcodes.OK

    return _with_database(config, work)

"""``driftd migrate``, ``driftd token add|list``, and the ``driftd portfolio`` commands.

The commands that work on the registry live here and in :mod:`daemon.cli.portfolio` (the
portfolio commands), next to nothing else, so the CLI core stays small. Input is validated
before any I/O and every problem names what is wrong (exit 65); an unreachable database or chain
exits 69; a schema older than this driftd (``driftd migrate`` not run) or newer, or a node on
another chain, exits 78 (:mod:`daemon.cli.db_common`).

What is registered must be what is on chain (issue 12): addresses with a wrong EIP-55 checksum
and the zero address are refused; ``token add`` reads the token's code, ``decimals()`` and
``symbol()`` (and the feed's code) and refuses a contract that is not there or disagrees
(:func:`daemon.registration.check_token_on_chain`); ``portfolio add`` refuses a second active
portfolio on one account (the database refuses it too: migration 0005).

The delegation file's signatures and caveats are checked by a verifier passed to
:func:`register` (``verify_delegation``, :mod:`daemon.registration`); without one a delegated
portfolio is refused: unverified delegations are never registered.
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import TYPE_CHECKING, Any, Final

from daemon import exitcodes
from daemon.cli.db_common import fail, parse_address, print_json, table, with_database
from daemon.cli.portfolio import DelegationVerifier, register_portfolio
from daemon.config import Config
from daemon.db import Database, TokenRecord
from daemon.registration import MAX_DECIMALS, InputError, check_token_on_chain

if TYPE_CHECKING:
    from daemon.cli.main import Subparsers

_SYMBOL_RE: Final = re.compile(r"^[A-Za-z0-9._+-]{1,32}$")


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
    _register_token(subparsers)
    register_portfolio(subparsers, verify_delegation=verify_delegation)


def _register_token(subparsers: Subparsers) -> None:
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


# ============================================================================ validation


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


def _token_dict(token: TokenRecord) -> dict[str, Any]:
    return {
        "symbol": token.symbol,
        "address": token.address,
        "chain_id": token.chain_id,
        "decimals": token.decimals,
        "coingecko_id": token.coingecko_id,
        "is_quote": token.is_quote,
        "price_feed": token.price_feed,
    }


# ============================================================================ handlers


def cmd_migrate(args: argparse.Namespace, config: Config) -> int:
    """``driftd migrate``."""

    async def work(db: Database) -> int:
        applied = await db.migrate()
        version = await db.schema_version()
        if getattr(args, "json", False):
            print_json(
                {"applied": [f"{m.version:04d}_{m.name}" for m in applied], "version": version}
            )
        elif applied:
            for m in applied:
                print(f"applied {m.version:04d}_{m.name}")
        else:
            print(f"schema up to date (version {version})")
        return exitcodes.OK

    return with_database(config, work, check_schema=False)


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
        return fail(exc, exitcodes.DATA_ERROR)

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

    return with_database(config, work)


def cmd_token_list(args: argparse.Namespace, config: Config) -> int:
    """``driftd token list [--json]``."""

    async def work(db: Database) -> int:
        tokens = await db.tokens()
        if args.json:
            print_json([_token_dict(t) for t in tokens])
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

    return with_database(config, work)

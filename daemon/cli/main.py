"""The ``driftd`` command line: argument parsing and dispatch to subcommands.

Each subcommand is a handler ``(args, config) -> exit code``. Modules that own a subsystem
register their own subcommands (``register(subparsers)``), so this module stays small.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NoReturn, TypeAlias

from daemon import exitcodes, package_version
from daemon.config import Config, ConfigError, effective_config, load_config, resolve_config_path

Handler = Callable[[argparse.Namespace, Config], int]
if TYPE_CHECKING:
    # argparse has no public name for the object add_subparsers() returns.
    Subparsers: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]


def _check_config(args: argparse.Namespace, config: Config) -> int:
    print(json.dumps(effective_config(config), indent=2, sort_keys=False))
    return exitcodes.OK


def _run(args: argparse.Namespace, config: Config) -> int:
    # Imported here so that `driftd --help` and check-config stay fast.
    import trio

    from daemon.app import StartupError, leaf_exceptions, serve
    from daemon.chain_errors import ChainError
    from daemon.db import DatabaseUnavailable
    from daemon.logs import configure_logging, get_logger

    configure_logging(config.log.level, config.log.format)
    log = get_logger(actor="main")
    try:
        env = dict(os.environ)
        path = resolve_config_path(args.config, env)
        # SIGHUP re-reads the same file and the environment the process started with.
        trio.run(functools.partial(serve, config, load=lambda: load_config(path, env), env=env))
    except BaseException as exc:  # mapped to exit codes below, else re-raised
        leaves = leaf_exceptions(exc)
        if all(isinstance(leaf, StartupError) for leaf in leaves):
            log.error("startup_failed", error="; ".join(map(str, leaves)))
            return exitcodes.CONFIG_ERROR
        if all(isinstance(leaf, DatabaseUnavailable | ChainError) for leaf in leaves):
            errors = "; ".join(f"{type(leaf).__name__}: {leaf}" for leaf in leaves)
            log.error("service_unavailable", error=errors)
            return exitcodes.UNAVAILABLE
        if all(isinstance(leaf, Exception) for leaf in leaves):
            # A crash is one JSON log line too (no locals, URLs masked), then exit 1.
            log.critical("daemon_crashed", exc_info=exc)
            return 1
        raise
    return exitcodes.OK


class UsageExitParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors exit 64 (sysexits EX_USAGE), not argparse's 2.

    Subcommand parsers inherit the class (``add_subparsers`` uses ``type(parent)``), so every
    usage error of the CLI, at any depth, exits 64.
    """

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(exitcodes.USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = UsageExitParser(
        prog="driftd",
        description="Keeps crypto portfolios in smart accounts at their target allocations.",
    )
    parser.add_argument("--version", action="version", version=f"driftd {package_version()}")
    parser.add_argument(
        "--config",
        metavar="PATH",
        help="TOML config file (default: $DRIFTD_CONFIG, else /etc/driftd/config.toml if it "
        "exists, else the environment alone)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")

    check = subparsers.add_parser(
        "check-config", help="validate the configuration and print it (secrets masked)"
    )
    check.set_defaults(func=_check_config)

    run = subparsers.add_parser("run", help="run the daemon (price feed, portfolios, executor)")
    run.set_defaults(func=_run)

    for register in _registrars():
        register(subparsers)
    _accept_config_everywhere(parser)
    return parser


def _accept_config_everywhere(parser: argparse.ArgumentParser) -> None:
    """Let ``--config`` also follow the subcommand (``driftd check-config --config PATH``)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for subparser in action.choices.values():
                if "--config" not in subparser._option_string_actions:
                    # SUPPRESS keeps a value given before the subcommand from being reset.
                    subparser.add_argument(
                        "--config", metavar="PATH", default=argparse.SUPPRESS, help="config file"
                    )
                _accept_config_everywhere(subparser)


def _registrars() -> list[Callable[[Subparsers], None]]:
    """Subsystems that add subcommands."""
    from daemon.cli import backtest as cli_backtest
    from daemon.cli import control as cli_control
    from daemon.cli import db as cli_db
    from daemon.cli import delegation as cli_delegation
    from daemon.cli import demo as cli_demo
    from daemon.cli import guard as cli_guard
    from daemon.cli import report as cli_report
    from daemon.registration import verify_portfolio_delegations

    return [
        functools.partial(cli_db.register, verify_delegation=verify_portfolio_delegations),
        cli_delegation.register,
        cli_control.register,
        cli_demo.register,
        cli_guard.register,
        cli_backtest.register,
        cli_report.register,
    ]


def _registry_lookup(config: Config) -> Callable[[str], str | None]:
    """Token symbol → address from the database, read once on first use."""
    cache: dict[str, str] = {}

    def lookup(symbol: str) -> str | None:
        if not cache:
            import trio

            from daemon.db import DatabaseError, open_database

            async def read() -> dict[str, str]:
                async with open_database(config.database) as database:
                    return {token.symbol: token.address for token in await database.tokens()}

            try:
                cache.update(trio.run(read))
            except DatabaseError:
                return None
        return cache.get(symbol)

    return lookup


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return exitcodes.USAGE
    env = dict(os.environ)
    try:
        config = load_config(resolve_config_path(args.config, env), env)
    except ConfigError as exc:
        # One problem, one line (e.g. a malformed signer key: what is wrong, never the key).
        if len(exc.problems) == 1:
            print(f"driftd: invalid configuration: {exc.problems[0]}", file=sys.stderr)
        else:
            print(f"driftd: {exc}", file=sys.stderr)
        return exitcodes.CONFIG_ERROR
    if getattr(args, "token_lookup", None) is not None:
        # `delegation build --token SYMBOL` resolves symbols through the registry.
        args.token_lookup = _registry_lookup(config)
    handler: Handler = args.func
    return handler(args, config)

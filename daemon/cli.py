"""The ``driftd`` command line: argument parsing and dispatch to subcommands.

Each subcommand is a handler ``(args, config) -> exit code``. Modules that own a subsystem
register their own subcommands (``register(subparsers)``), so this module stays small.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeAlias

from daemon import exitcodes, package_version
from daemon.config import Config, ConfigError, effective_config, load_config, resolve_config_path

Handler = Callable[[argparse.Namespace, Config], int]
if TYPE_CHECKING:
    # argparse has no public name for the object add_subparsers() returns.
    Subparsers: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]


def _check_config(args: argparse.Namespace, config: Config) -> int:
    print(json.dumps(effective_config(config), indent=2, sort_keys=False))
    return exitcodes.OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
    """Subsystems that add subcommands. Imported lazily so ``--help`` stays fast."""
    registrars: list[Callable[[Subparsers], None]] = []
    return registrars


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
        print(f"driftd: {exc}", file=sys.stderr)
        return exitcodes.CONFIG_ERROR
    handler: Handler = args.func
    return handler(args, config)

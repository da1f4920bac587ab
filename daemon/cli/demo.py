"""``driftd demo``: the self-contained demo's command line.

The demo itself is :mod:`daemon.devtools.demo`, imported only when the command runs, so the rest
of the CLI and the daemon load none of the demo tooling.

``python -m daemon.cli.demo [options]`` runs the same handler without the rest of the CLI.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from daemon.config import Config

if TYPE_CHECKING:
    from daemon.cli.main import Subparsers

MAX_DURATION = 24 * 3600.0


def _portfolio_count(raw: str) -> int:
    from daemon.devtools.demo_setup import MAX_PORTFOLIOS

    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {raw!r}") from None
    if not 1 <= value <= MAX_PORTFOLIOS:
        raise argparse.ArgumentTypeError(f"must be in 1..{MAX_PORTFOLIOS}, got {value}")
    return value


def _duration(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {raw!r}") from None
    if not 0 < value <= MAX_DURATION:
        raise argparse.ArgumentTypeError(f"must be in (0, {MAX_DURATION:.0f}], got {raw}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--portfolios",
        type=_portfolio_count,
        default=3,
        metavar="N",
        help="smart accounts with different targets (default 3)",
    )
    parser.add_argument(
        "--duration",
        type=_duration,
        default=120.0,
        metavar="SECONDS",
        help="how long the daemon and the market run, setup not included (default 120)",
    )
    parser.add_argument(
        "--seed", type=int, default=None, help="seed of the market's random walk (default: random)"
    )
    parser.add_argument(
        "--headless",
        action="store_true",
        help="print JSON lines (started, price_move, rebalance, summary) instead of the live view",
    )
    parser.add_argument(
        "--report",
        type=Path,
        metavar="DIR",
        help="before cleaning up, write each portfolio's `driftd report --format html` to DIR",
    )


DESCRIPTION = (
    "Run driftd against a throwaway local chain and database: a throwaway PostgreSQL and anvil "
    "with Uniswap V2 and the MetaMask Delegation Framework, N smart accounts with different "
    "targets registered through the CLI, a market that moves prices by real swaps, and the "
    "real daemon rebalancing them. Ends after --duration or Ctrl-C with a summary and leaves "
    "nothing behind. Needs the source checkout (npm packages) and PostgreSQL server binaries."
)


def register(subparsers: Subparsers) -> None:
    demo = subparsers.add_parser(
        "demo",
        help="run a self-contained demo (local chain, database, market and the daemon)",
        description=DESCRIPTION,
    )
    add_arguments(demo)
    demo.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace, config: Config) -> int:
    """The demo builds its own configuration; ``config`` is not used."""
    from daemon.devtools.demo import DemoOptions, run

    options = DemoOptions(
        portfolios=args.portfolios,
        duration=args.duration,
        seed=args.seed,
        headless=args.headless,
        report_dir=args.report,
    )
    return run(options)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m daemon.cli.demo``: the demo without the rest of the CLI."""
    parser = argparse.ArgumentParser(prog="driftd demo", description=DESCRIPTION)
    add_arguments(parser)
    args = parser.parse_args(argv)
    return cmd_demo(args, Config())


if __name__ == "__main__":
    sys.exit(main())

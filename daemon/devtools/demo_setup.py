"""Setting up ``driftd demo``: prerequisites, throwaway services, funded smart accounts, and
registration through the operator's CLI (see :mod:`daemon.devtools.demo` for the whole story).

Every resource is entered on the caller's exit stack as soon as it exists, so whatever fails or
is interrupted later, the caller's shielded ``finally`` stops and deletes it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

import attrs
import structlog
import trio

from daemon import exitcodes
from daemon.chain import ChainClient
from daemon.cli.delegation import guard_terms
from daemon.config import Config, ConfigError, parse_config
from daemon.db import Database, open_database
from daemon.delegation import (
    DelegationDomain,
    build_portfolio_delegations,
    current_nonce,
    dump_delegation_file,
    sign_delegation,
)
from daemon.devtools import pgserver
from daemon.devtools.demo_stats import DemoPortfolio
from daemon.devtools.demo_view import Reporter
from daemon.devtools.devnet import open_devnet
from daemon.devtools.devnet_artifacts import NpmPackagesMissing, anvil_executable, load_artifacts
from daemon.devtools.devnet_deploy import create_smart_account, fund
from daemon.devtools.devnet_records import Devnet, devnet_key
from daemon.devtools.market import Trader
from daemon.guard import guard_caveat
from daemon.logs import configure_logging

PRESETS: Final = (
    # name, targets (USDC / WETH / WBTC): different weights trade differently on the same market.
    ("balanced", {"USDC": "0.5", "WETH": "0.3", "WBTC": "0.2"}),
    ("eth-tilt", {"USDC": "0.4", "WETH": "0.4", "WBTC": "0.2"}),
    ("conservative", {"USDC": "0.6", "WETH": "0.2", "WBTC": "0.2"}),
    ("btc-tilt", {"USDC": "0.4", "WETH": "0.2", "WBTC": "0.4"}),
    ("growth", {"USDC": "0.2", "WETH": "0.4", "WBTC": "0.4"}),
    ("even", {"USDC": "0.34", "WETH": "0.33", "WBTC": "0.33"}),
)
MAX_PORTFOLIOS: Final = 20
PORTFOLIO_USD: Final = Decimal(100_000)
"""What each smart account is funded with, split by its targets."""
COINGECKO_IDS: Final = {"USDC": "usd-coin", "WETH": "weth", "WBTC": "wrapped-bitcoin"}
COOLDOWN_MINUTES: Final = Decimal("0.25")
"""15 s instead of 15 min, so a two-minute demo shows several rebalances per portfolio."""
PRICE_POLL_SECONDS: Final = 1.0
MAX_TRADE_USD: Final = Decimal(50_000)
TRADER_LABEL: Final = "demo market trader"


class PrerequisiteMissing(Exception):
    """Something the demo needs is not installed; the message says how to get it."""


class SetupFailed(Exception):
    """A setup step failed (a CLI command refused, a service would not start)."""


def portfolio_plans(count: int) -> list[tuple[str, dict[str, Decimal]]]:
    """``count`` portfolio names and targets, cycling through :data:`PRESETS`."""
    plans = []
    for index in range(count):
        name, targets = PRESETS[index % len(PRESETS)]
        if index >= len(PRESETS):
            name = f"{name}-{index // len(PRESETS) + 1}"
        plans.append((name, {symbol: Decimal(weight) for symbol, weight in targets.items()}))
    return plans


# --- prerequisites --------------------------------------------------------------------------


async def ensure_npm_packages(root: Path, reporter: Reporter) -> None:
    """``npm ci`` in the checkout when node_modules is missing or older than the lock file."""
    if not (root / "package.json").is_file():
        raise PrerequisiteMissing(
            f"no package.json in {root}: the demo needs the driftd source checkout (it pins the "
            "local chain and the contracts); run it there with ./dev demo"
        )
    installed = root / "node_modules" / ".package-lock.json"
    lock = root / "package-lock.json"
    if installed.is_file() and (
        not lock.is_file() or lock.stat().st_mtime <= installed.stat().st_mtime
    ):
        return
    npm = shutil.which("npm")
    if npm is None:
        raise PrerequisiteMissing(
            "Node.js 20+ with npm is needed to install the local chain (apt-get install nodejs "
            "npm), then run ./dev setup"
        )
    reporter.progress(
        "installing the pinned npm packages with npm ci (anvil, Uniswap V2 and Delegation "
        "Framework bytecode, solc) — first run only, may take a minute"
    )
    done = await trio.run_process(
        [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=root,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    if done.returncode != 0:
        tail = done.stderr.decode(errors="replace")[-1500:]
        raise PrerequisiteMissing(f"npm ci failed (exit {done.returncode}): {tail}")


async def check_prerequisites(root: Path, reporter: Reporter) -> Path:
    """Install or find what the demo needs; the PostgreSQL bin directory."""
    reporter.progress("checking prerequisites (npm packages, PostgreSQL binaries)")
    await ensure_npm_packages(root, reporter)
    try:
        anvil_executable(root)
        # Compiles DevnetToken on first use (cached in .driftd-cache/).
        await trio.to_thread.run_sync(load_artifacts, root)
    except NpmPackagesMissing as exc:
        raise PrerequisiteMissing(str(exc)) from None
    try:
        return pgserver.find_bindir()
    except pgserver.PostgresServerError:
        raise PrerequisiteMissing(
            "no PostgreSQL server binaries found (looked at pg_config, $PATH and "
            "/usr/lib/postgresql/*/bin): install Debian's postgresql package "
            "(sudo apt-get install postgresql) or run ./dev setup"
        ) from None


# --- setup ------------------------------------------------------------------------------------


@attrs.define(eq=False)
class DemoEnvironment:
    """Everything the run phase uses; all of it is closed by the exit stack."""

    temp_dir: Path
    log_path: Path
    postgres: pgserver.PostgresServer
    devnet: Devnet
    chain: ChainClient
    db: Database
    config: Config
    config_path: Path
    portfolios: tuple[DemoPortfolio, ...]
    trader: Trader


def write_toml(path: Path, document: Mapping[str, Mapping[str, Any]]) -> None:
    """The demo's configuration as a file (`driftd --config PATH status` works during a run)."""
    lines: list[str] = []
    for section, values in document.items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            if isinstance(value, bool):
                lines.append(f"{key} = {'true' if value else 'false'}")
            elif isinstance(value, int | float | Decimal):
                lines.append(f"{key} = {value}")
            else:
                lines.append(f"{key} = {json.dumps(str(value))}")
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")


def demo_document(
    devnet: Devnet, database_url: str, key_file: Path, socket: Path
) -> dict[str, dict[str, Any]]:
    """The daemon's configuration for this devnet: router prices, fast polls, short cooldown."""
    return {
        **devnet.config_overrides(),
        "database": {"url": database_url, "max_connections": 5},
        "signer": {"key_file": str(key_file)},
        # The devnet mines only when the market or the daemon trades: its head is often old.
        "prices": {
            "source": "router",
            "poll_interval": PRICE_POLL_SECONDS,
            "max_age": 30.0,
            "max_head_age": 0,
        },
        "rebalance": {"cooldown_minutes": COOLDOWN_MINUTES, "max_trade_usd": MAX_TRADE_USD},
        "execution": {"receipt_timeout": 15.0},
        "supervisor": {"backoff_initial": 0.5, "backoff_max": 5.0},
        "health": {"socket": str(socket)},
        "log": {"level": "info", "format": "json"},
        # A demo lasts minutes (a price move stands for about a day): value often, for reports.
        "report": {"valuation_interval": PRICE_POLL_SECONDS},
        # The devnet's feeds are posted at set-up; a long demo must not see them go stale.
        "guard": {**devnet.config_overrides()["guard"], "max_staleness": 7 * 86_400},
    }


async def run_cli(argv: Sequence[str], config_path: Path) -> str:
    """One ``driftd`` subcommand run as an operator runs it: a child process on the demo's
    configuration file, with a minimal environment (the user's ``DRIFTD_*`` variables must not
    point the demo elsewhere). Returns what it printed; raises :class:`SetupFailed` if it exits
    non-zero."""
    command = [sys.executable, "-m", "daemon", "--config", str(config_path), *argv]
    env = {name: os.environ[name] for name in ("PATH", "HOME", "PYTHONPATH") if name in os.environ}
    result = await trio.run_process(
        command, capture_stdout=True, capture_stderr=True, check=False, env=env
    )
    output = (result.stdout + result.stderr).decode("utf-8", "replace").strip()
    if result.returncode != exitcodes.OK:
        raise SetupFailed(f"`driftd {' '.join(argv)}` exited {result.returncode}: {output}")
    return output


async def _run_into(outputs: list[str], index: int, argv: list[str], config_path: Path) -> None:
    outputs[index] = await run_cli(argv, config_path)


async def spot_prices(trader: Trader) -> dict[str, Decimal]:
    return {token.symbol: await trader.price(token.symbol) for token in trader.devnet.tokens}


async def fund_to_targets(
    chain: ChainClient,
    devnet: Devnet,
    account: str,
    targets: Mapping[str, Decimal],
    prices: Mapping[str, Decimal],
) -> None:
    """Mint/wrap tokens into ``account`` so each is worth its target share of the total."""
    amounts = {}
    for symbol, weight in targets.items():
        token = devnet.token(symbol)
        amounts[symbol] = int(PORTFOLIO_USD * weight / prices[symbol] * 10**token.decimals)
    await fund(chain, devnet, account, amounts)


async def setup(
    stack: contextlib.AsyncExitStack,
    portfolio_count: int,
    reporter: Reporter,
    root: Path,
    bindir: Path,
    temp_dir: Path,
) -> DemoEnvironment:
    log_path = _log_to_file(stack, temp_dir)
    postgres = await _start_postgres(stack, reporter, bindir)

    reporter.progress(
        "starting anvil and deploying Uniswap V2, WETH9/USDC/WBTC and the Delegation Framework"
    )
    devnet = await stack.enter_async_context(open_devnet(owners=0, root=root))
    chain = await stack.enter_async_context(ChainClient(devnet.chain_config()))
    trader = Trader(chain, devnet, devnet_key(TRADER_LABEL))
    prices = await spot_prices(trader)

    plans = portfolio_plans(portfolio_count)
    reporter.progress(
        f"creating {len(plans)} smart accounts, funding each with {PORTFOLIO_USD:,} USD at "
        "its targets, signing their delegations"
    )
    config, config_path = _write_config(devnet, postgres, temp_dir)
    domain = DelegationDomain(chain_id=devnet.chain_id, manager=devnet.manager)
    site = _PortfolioSite(chain, devnet, config, domain, root, temp_dir)
    portfolios: list[DemoPortfolio] = []
    delegation_files: list[Path] = []
    for index, (name, targets) in enumerate(plans):
        portfolio, path = await _open_portfolio(site, index, name, targets, prices)
        delegation_files.append(path)
        portfolios.append(portfolio)

    reporter.progress("registering tokens and portfolios with the driftd CLI")
    await _register(reporter, devnet, portfolios, delegation_files, config_path)

    db = await stack.enter_async_context(open_database(config.database))
    reporter.progress("funding the market's trader account")
    await _fund_trader(trader, devnet)
    return DemoEnvironment(
        temp_dir=temp_dir,
        log_path=log_path,
        postgres=postgres,
        devnet=devnet,
        chain=chain,
        db=db,
        config=config,
        config_path=config_path,
        portfolios=tuple(portfolios),
        trader=trader,
    )


async def _fund_trader(trader: Trader, devnet: Devnet) -> None:
    await trader.prepare(
        {
            # As deep as the pools: enough for any move the walk's bounds allow.
            "USDC": devnet.token("USDC").units(9_000_000),
            "WETH": devnet.token("WETH").units(3_000),
            "WBTC": devnet.token("WBTC").units(150),
        }
    )


def _log_to_file(stack: contextlib.AsyncExitStack, temp_dir: Path) -> Path:
    """Send the daemon's logs to ``driftd.log`` in ``temp_dir`` (not over the live view)."""
    log_path = temp_dir / "driftd.log"
    log_file = log_path.open("a", encoding="utf-8")
    stack.callback(log_file.close)
    stack.callback(structlog.reset_defaults)
    # Libraries that log through the standard library (asyncpg) are routed there too, as JSON,
    # not over the live view.
    configure_logging("info", "json", stream=log_file)
    return log_path


async def _start_postgres(
    stack: contextlib.AsyncExitStack, reporter: Reporter, bindir: Path
) -> pgserver.PostgresServer:
    reporter.progress("starting a throwaway PostgreSQL on a free loopback port")
    postgres = pgserver.PostgresServer(
        bindir=bindir, root=Path(tempfile.mkdtemp(prefix="driftd-pg-"))
    )
    stack.callback(postgres.remove)
    await trio.to_thread.run_sync(postgres.init)
    # In this (the main) thread: the server's parent-death signal is tied to the starting thread.
    postgres.start()
    return postgres


def _write_config(
    devnet: Devnet, postgres: pgserver.PostgresServer, temp_dir: Path
) -> tuple[Config, Path]:
    """The signer's key file and the daemon's configuration file in ``temp_dir``; the parsed
    configuration and the file's path."""
    key_file = temp_dir / "signer.key"
    key_file.touch(mode=0o600)
    key_file.write_text(devnet.signer_key.reveal() + "\n", encoding="utf-8")
    document = demo_document(devnet, postgres.url(), key_file, temp_dir / "driftd.sock")
    config_path = temp_dir / "config.toml"
    write_toml(config_path, document)
    try:
        config = parse_config(document, {}, source=str(config_path))
    except ConfigError as exc:  # pragma: no cover - the document is ours
        raise SetupFailed(str(exc)) from None
    return config, config_path


@attrs.frozen
class _PortfolioSite:
    """Where the demo's portfolios are opened: the same for each of them."""

    chain: ChainClient
    devnet: Devnet
    config: Config
    domain: DelegationDomain
    root: Path
    temp_dir: Path


async def _open_portfolio(
    site: _PortfolioSite,
    index: int,
    name: str,
    targets: Mapping[str, Decimal],
    prices: Mapping[str, Decimal],
) -> tuple[DemoPortfolio, Path]:
    """Smart account number ``index``, funded at ``targets``, and its signed delegations in a
    file; the portfolio and the file's path."""
    chain, devnet, config = site.chain, site.devnet, site.config
    owner_key = devnet_key(f"demo owner {index}")
    account = await create_smart_account(chain, devnet, owner_key, salt=index, root=site.root)
    await fund_to_targets(chain, devnet, account.address, targets, prices)
    terms = guard_terms(config.guard, devnet.guarded_tokens(targets))
    built = build_portfolio_delegations(
        account=account.address,
        delegate=devnet.signer,
        router=devnet.router,
        tokens=[devnet.token(symbol).address for symbol in targets],
        enforcers=devnet.delegation_config(),
        salt=index + 1,
        guard=guard_caveat(config.guard.enforcer, terms),
        expires_at=int(time.time()) + config.guard.valid_days * 86_400,
        nonce=await current_nonce(chain, devnet.delegation_config(), account.address),
    )
    signed = [sign_delegation(d, site.domain, owner_key) for d in built.as_list()]
    path = site.temp_dir / f"{name}-delegations.json"
    path.write_text(dump_delegation_file(signed), encoding="utf-8")
    return DemoPortfolio(name=name, account=account.address, targets=targets), path


async def _register(
    reporter: Reporter,
    devnet: Devnet,
    portfolios: Sequence[DemoPortfolio],
    delegation_files: Sequence[Path],
    config_path: Path,
) -> None:
    """Register the tokens and the portfolios through the driftd CLI, as an operator does."""
    tokens: list[list[str]] = []
    for token in devnet.tokens:
        argv = ["token", "add", token.symbol, token.address, "--decimals", str(token.decimals)]
        argv += ["--coingecko-id", COINGECKO_IDS[token.symbol]]
        if token.symbol == devnet.quote_symbol:
            argv.append("--quote")
        if token.symbol in devnet.feeds:
            argv += ["--feed", devnet.feeds[token.symbol]]
        tokens.append(argv)
    adds: list[list[str]] = []
    for portfolio, path in zip(portfolios, delegation_files, strict=True):
        argv = ["portfolio", "add", portfolio.name, "--account", portfolio.account]
        argv += ["--target", *[f"{s}={w}" for s, w in portfolio.targets.items()]]
        argv += ["--delegation", str(path)]
        adds.append(argv)
    # Each step's commands are independent of each other: run them side by side (a child
    # process each), and show them in order.
    for step in ([["migrate"]], tokens, adds):
        outputs: list[str] = [""] * len(step)

        async with trio.open_nursery() as nursery:
            for index, argv in enumerate(step):
                nursery.start_soon(_run_into, outputs, index, argv, config_path)
        for argv, output in zip(step, outputs, strict=True):
            shown = " ".join(a if len(a) < 24 else f"{a[:10]}…" for a in argv)
            said = output.splitlines()[-1][:48] if output else ""
            reporter.progress(f"  $ driftd {shown}" + (f"  →  {said}" if said else ""))

"""Building blocks for end-to-end daemon tests: real PostgreSQL, real anvil, real contracts.

A scenario registers tokens and a portfolio through the operator's CLI, funds a smart account to
its targets, signs the minimal delegations as the owner would, then runs the real daemon (in
process, or as a `driftd run` subprocess) and moves the market with real swaps.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import attrs
import trio
from eth_utils.crypto import keccak
from fixtures_chain import send_call

from daemon.amm import deadline_from
from daemon.chain import ChainClient
from daemon.cli.delegation import guard_terms
from daemon.cli.main import main as cli_main
from daemon.config import Config, DatabaseConfig, GuardConfig, parse_config
from daemon.delegation import (
    ROOT_AUTHORITY,
    Caveat,
    Delegation,
    DelegationDomain,
    Execution,
    allowed_methods_terms,
    allowed_targets_terms,
    build_portfolio_delegations,
    current_nonce,
    dump_delegation_file,
    encode_redeem_delegations,
    increment_nonce_call,
    sign_delegation,
)
from daemon.devtools.demo_setup import write_toml as write_demo_toml
from daemon.devtools.devnet_anvil import set_eth_balance
from daemon.devtools.devnet_deploy import fund
from daemon.devtools.devnet_records import Devnet, SmartAccount, devnet_key
from daemon.drift import EngineParams, Holding, evaluate
from daemon.guard import guard_caveat
from daemon.txbuild import Call, SwapLeg, WalletMode
from daemon.uniswap import UniswapV2

TRADER = devnet_key("market trader")
_salts = itertools.count(1000)
GUARD_DOCUMENT: dict[str, Any] = {
    # Feeds go stale after max_staleness of *chain* time, and tests move chain time: generous.
    "max_staleness": 30 * 86_400,
    # One account's period loss is shared by every test that rebalances it on the same day.
    "period_cap_usd": 1_000_000,
}


@attrs.define
class Clock:
    """Wall clock with an offset the test can move (cooldowns without waiting)."""

    offset: timedelta = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


def daemon_document(devnet: Devnet, db_config: DatabaseConfig, **overrides: Any) -> dict[str, Any]:
    """A TOML-shaped config for this devnet and database, with fast test timings."""
    document: dict[str, Any] = {
        **devnet.config_overrides(),
        "database": {"url": db_config.url},
        # anvil mines only on transactions, and tests move the daemon's clock: heads look old.
        "prices": {"source": "router", "poll_interval": 0.2, "max_age": 60, "max_head_age": 0},
        "execution": {"receipt_timeout": 10.0},
        "supervisor": {"backoff_initial": 0.05, "backoff_max": 0.2},
        "health": {"socket": ""},
    }
    document["guard"] = {**document.get("guard", {}), **GUARD_DOCUMENT}
    for section, values in overrides.items():
        document.setdefault(section, {}).update(values)
    return document


def daemon_config(devnet: Devnet, db_config: DatabaseConfig, **overrides: Any) -> Config:
    return parse_config(
        daemon_document(devnet, db_config, **overrides),
        {"DRIFTD_SIGNER_KEY": devnet.signer_key.reveal()},
    )


def write_toml(path: Path, document: Mapping[str, Any]) -> Path:
    """The demo's TOML writer (one implementation), returning the path for chaining."""
    write_demo_toml(path, document)
    return path


@asynccontextmanager
async def driftd_process(
    config_path: Path, env: Mapping[str, str], log_file: Path
) -> AsyncIterator[trio.Process]:
    """`driftd run` as a real process, output in ``log_file``; on leaving the block a process
    still running is stopped (SIGTERM, then SIGKILL), so no test leaves a daemon behind."""
    with log_file.open("wb") as output:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "daemon", "--config", str(config_path), "run"],
            env=dict(env),
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        try:
            yield process
        finally:
            if process.returncode is None:
                process.terminate()
                with trio.CancelScope(shield=True):
                    with trio.move_on_after(10):
                        await process.wait()
                    if process.returncode is None:
                        process.kill()
                        await process.wait()


async def run_cli(argv: list[str], config_path: Path, env: Mapping[str, str]) -> int:
    """The operator's CLI, in a worker thread (it runs its own trio.run); its exit code, as the
    shell would see it (argparse's usage errors exit through SystemExit)."""

    def call() -> int:
        import os

        saved = dict(os.environ)
        os.environ.update(env)
        try:
            return cli_main(["--config", str(config_path), *argv])
        except SystemExit as exc:
            return int(exc.code or 0)
        finally:
            os.environ.clear()
            os.environ.update(saved)

    return await trio.to_thread.run_sync(call)


async def register_tokens(devnet: Devnet, config_path: Path, env: Mapping[str, str]) -> None:
    coingecko = {"USDC": "usd-coin", "WETH": "weth", "WBTC": "wrapped-bitcoin"}
    for token in devnet.tokens:
        argv = ["token", "add", token.symbol, token.address, "--decimals", str(token.decimals)]
        argv += ["--coingecko-id", coingecko[token.symbol]]
        if token.symbol == devnet.quote_symbol:
            argv.append("--quote")
        if token.symbol in devnet.feeds:
            argv += ["--feed", devnet.feeds[token.symbol]]
        assert await run_cli(argv, config_path, env) == 0


def guarded_delegations(
    devnet: Devnet,
    account: SmartAccount,
    symbols: Any,
    *,
    delegate: str | None = None,
    salt: int | None = None,
    guard: GuardConfig | None = None,
    expires_at: int | None = None,
    nonce: int | None = 0,
) -> list[Delegation]:
    """The delegations `driftd delegation build` makes for ``symbols``, signed by the owner:
    the swap delegation under the oracle guard (the portfolio's tokens and the quote token, at
    the devnet's feeds), both expiring after ``valid_days`` and carrying ValueLte(0) and the
    NonceEnforcer caveat at ``nonce`` (the account's current nonce: 0 until its owner revokes
    with ``incrementNonce``; :func:`daemon.delegation.current_nonce` reads it)."""
    guard = guard or GuardConfig(**GUARD_DOCUMENT)
    if not guard.enforcer:
        guard = devnet.guard_config(guard)
    terms = guard_terms(guard, devnet.guarded_tokens(symbols))
    built = build_portfolio_delegations(
        account=account.address,
        delegate=delegate or devnet.signer,
        router=devnet.router,
        tokens=[devnet.token(symbol).address for symbol in symbols],
        enforcers=devnet.delegation_config(),
        salt=next(_salts) if salt is None else salt,
        guard=guard_caveat(guard.enforcer, terms),
        expires_at=(
            int(datetime.now(UTC).timestamp()) + guard.valid_days * 86_400
            if expires_at is None
            else expires_at
        ),
        nonce=nonce,
    )
    domain = DelegationDomain(chain_id=devnet.chain_id, manager=devnet.manager)
    return [sign_delegation(d, domain, account.owner_key) for d in built.as_list()]


async def owner_increments_nonce(chain: ChainClient, devnet: Devnet, account: SmartAccount) -> None:
    """The owner revokes everything in one step: the smart account calls
    ``incrementNonce(manager)`` on the NonceEnforcer. The owner's EOA drives the account through
    a delegation to itself that allows exactly that call, redeemed on the DelegationManager."""
    enforcers = devnet.delegation_config()
    to_self = Delegation(
        delegate=account.owner,
        delegator=account.address,
        authority=ROOT_AUTHORITY,
        caveats=(
            Caveat(enforcers.allowed_targets, allowed_targets_terms([enforcers.nonce])),
            Caveat(
                enforcers.allowed_methods,
                allowed_methods_terms([keccak(text="incrementNonce(address)")[:4]]),
            ),
        ),
        salt=1,
    )
    domain = DelegationDomain(chain_id=devnet.chain_id, manager=devnet.manager)
    signed = sign_delegation(to_self, domain, account.owner_key)
    await set_eth_balance(chain, account.owner, 10**20)
    call = Call(
        to=devnet.manager,
        data=encode_redeem_delegations(
            [(signed, Execution(enforcers.nonce, increment_nonce_call(devnet.manager)))]
        ),
    )
    receipt = await send_call(chain, account.owner_key, call)
    assert receipt.succeeded


async def register_portfolio(
    devnet: Devnet,
    account: SmartAccount,
    name: str,
    targets: Mapping[str, str],
    config_path: Path,
    env: Mapping[str, str],
    tmp_path: Path,
    *,
    guard: GuardConfig | None = None,
    expires_at: int | None = None,
) -> None:
    """Sign the guarded delegations (at the account's current nonce; ``guard`` and
    ``expires_at`` as :func:`guarded_delegations` takes them) as the owner, then
    `driftd portfolio add`."""
    async with ChainClient(devnet.chain_config()) as chain:
        nonce = await current_nonce(chain, devnet.delegation_config(), account.address)
    signed = guarded_delegations(
        devnet, account, list(targets), nonce=nonce, guard=guard, expires_at=expires_at
    )
    file = tmp_path / f"{name}-delegations.json"
    file.write_text(dump_delegation_file(signed))
    argv = ["portfolio", "add", name, "--account", account.address, "--delegation", str(file)]
    argv += ["--target", *[f"{symbol}={weight}" for symbol, weight in targets.items()]]
    assert await run_cli(argv, config_path, env) == 0


async def fund_to_targets(
    chain: ChainClient,
    devnet: Devnet,
    account: str,
    targets: Mapping[str, str],
    total_usd: Decimal,
) -> None:
    """Top the account up so each token is worth its target share of ``total_usd`` (approx.)."""
    uniswap = UniswapV2(chain, devnet.router, devnet.quote.address)
    balances = await chain.balances(account, [t.address for t in devnet.tokens])
    amounts: dict[str, int] = {}
    for symbol, weight in targets.items():
        token = devnet.token(symbol)
        price = (
            Decimal(1)
            if symbol == devnet.quote_symbol
            else await uniswap.spot_price(
                token.address, token.decimals, devnet.quote.address, devnet.quote.decimals
            )
        )
        wanted = int(total_usd * Decimal(weight) / price * 10**token.decimals)
        if wanted > balances[token.address]:
            amounts[symbol] = wanted - balances[token.address]
    if amounts:
        await fund(chain, devnet, account, amounts)


async def move_price(chain: ChainClient, devnet: Devnet, symbol: str, factor: Decimal) -> None:
    """Trade the ``symbol``/quote pool until ``symbol``'s price is about ``factor`` × today's."""
    uniswap = UniswapV2(chain, devnet.router, devnet.quote.address)
    token, quote = devnet.token(symbol), devnet.quote
    trader = WalletMode(router=devnet.router, signer=_trader_address())
    (((reserve_token, reserve_quote),), _) = await uniswap.reserves([token.address, quote.address])
    # Constant product: price × factor needs the quote reserve × sqrt(factor).
    root = factor.sqrt()
    if factor > 1:
        amount, token_in, token_out = int(reserve_quote * (root - 1)), quote, token
    else:
        amount, token_in, token_out = int(reserve_token * (1 / root - 1)), token, quote
    await set_eth_balance(chain, trader.signer, 10**20)
    await fund(chain, devnet, trader.signer, {token_in.symbol: amount})
    block = await chain.latest_block()
    leg = SwapLeg(
        token_in=token_in.address,
        token_out=token_out.address,
        amount_in=amount,
        amount_out_min=1,
        path=(token_in.address, token_out.address),
        deadline=deadline_from(block.timestamp, 600),
    )
    for call in trader.calls([leg]):
        receipt = await send_call(chain, TRADER, call)
        assert receipt.succeeded


def _trader_address() -> str:
    from daemon.signer import TxSigner

    return TxSigner(key=TRADER).address


async def portfolio_drift(
    chain: ChainClient, devnet: Devnet, account: str, targets: Mapping[str, str]
) -> Decimal:
    """The portfolio's max drift at the pools' current prices (an independent check)."""
    uniswap = UniswapV2(chain, devnet.router, devnet.quote.address)
    tokens = [devnet.token(symbol) for symbol in targets]
    balances = await chain.balances(account, [t.address for t in tokens])
    prices = {}
    for token in tokens:
        prices[token.symbol] = (
            Decimal(1)
            if token.symbol == devnet.quote_symbol
            else await uniswap.spot_price(
                token.address, token.decimals, devnet.quote.address, devnet.quote.decimals
            )
        )
    holdings = [Holding(t.symbol, balances[t.address], t.decimals) for t in tokens]
    weights = {s: Decimal(w) for s, w in targets.items()}
    decision = evaluate(holdings, weights, prices, params=EngineParams.from_config(Config()))
    assert decision.max_drift is not None
    return decision.max_drift

"""Shared set-up of the capacity benchmarks that need a chain and a database.

Not a benchmark itself: :mod:`bench_executor` and :mod:`capacity_burst` use it. It builds what
the demo builds (``daemon/devtools/demo_setup.py``), but in bulk and without the CLI, so a
thousand portfolios take seconds rather than minutes:

- :class:`Bench` — one throwaway PostgreSQL server (a fresh migrated database per phase, so
  one phase's portfolios never run in another) and one devnet (anvil + Uniswap V2 + the
  MetaMask Delegation Framework + the oracle guard);
- :func:`open_portfolios` — N HybridDeleGator smart accounts created through the framework's
  SimpleFactory, funded with real mints and transfers, each owner signing the two
  least-authority delegations (under the oracle guard) exactly as ``driftd delegation build``
  makes them; registered in the database with the tokens and their feeds;
- :func:`bench_document` — the daemon's configuration for the devnet, the demo's
  (:func:`daemon.devtools.demo_setup.demo_document`) with the overrides a phase needs.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any, Final, TypeVar

import attrs
import trio
from eth_abi.abi import encode as abi_encode
from eth_account import Account

from daemon.abi import encode_call, hex_int, hex_of
from daemon.address import to_address
from daemon.chain import ChainClient
from daemon.cli.delegation import guard_terms
from daemon.config import Config, DatabaseConfig, parse_config
from daemon.db import Database, create_database, migrate
from daemon.delegation import (
    DelegationDomain,
    build_portfolio_delegations,
    sign_delegation,
)
from daemon.devtools.demo_setup import COINGECKO_IDS, demo_document
from daemon.devtools.devnet_artifacts import framework_code, load_artifacts
from daemon.devtools.devnet_deploy import create2_address
from daemon.devtools.devnet_records import Devnet, devnet_key
from daemon.guard import guard_caveat

ACCOUNT_GAS: Final = 3_000_000
"""Gas limit of one smart-account deployment (uses ~300k; no estimate round trip)."""
MINT_GAS: Final = 200_000
SEND_BATCH: Final = 200
"""eth_sendTransaction requests per JSON-RPC batch."""
MAX_FEE: Final = 1_000 * 10**9
PRIORITY_FEE: Final = 10**9
"""Explicit fees: anvil's defaults bid just above the current base fee, and a few hundred
set-up transactions fill blocks and raise it past the later ones' bid (they would queue)."""
"""eth_sendTransaction requests per JSON-RPC batch."""
MINED_TIMEOUT: Final = 300.0

T = TypeVar("T")


async def until(read: Callable[[], Awaitable[T]], done: Callable[[T], bool], interval: float) -> T:
    """Read every ``interval`` seconds until ``done`` says so (another process's state: anvil
    or PostgreSQL, with no event to wait on); the last value read."""
    while True:
        value = await read()
        if done(value):
            return value
        await trio.sleep(interval)


@attrs.frozen
class Bench:
    """The chain and the database server every chain phase shares."""

    devnet: Devnet
    chain: ChainClient
    admin_url: str
    """A PostgreSQL URL on which databases may be created."""
    workdir: Path
    """Temporary files (the signer's key file)."""

    @property
    def key_file(self) -> Path:
        path = self.workdir / "signer.key"
        if not path.exists():
            path.touch(mode=0o600)
            path.write_text(self.devnet.signer_key.reveal() + "\n", encoding="utf-8")
        return path

    async def fresh_database(self, label: str) -> str:
        """A new, migrated database of its own for one phase; its URL."""
        name = f"driftd_bench_{label}_{uuid.uuid4().hex[:8]}"
        url = await create_database(self.admin_url, name)
        await migrate(DatabaseConfig(url=url))
        return url


def bench_document(bench: Bench, db_url: str, **overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The demo's configuration for this devnet and database (router prices, 1 s price polls,
    the guard on the devnet's feeds), no health socket, with ``overrides`` per section."""
    document: dict[str, Any] = demo_document(bench.devnet, db_url, bench.key_file, Path(""))
    document["health"] = {"socket": ""}
    document["log"] = {"level": "warning", "format": "json"}
    for section, values in overrides.items():
        document[section] = {**document.get(section, {}), **values}
    return document


def bench_config(document: Mapping[str, Any]) -> Config:
    return parse_config(document, {}, source="benchmark")


# --- sending from the devnet's unlocked deployer in bulk ---------------------------------------


class BulkSender:
    """Sends many transactions from anvil's unlocked deployer in JSON-RPC batches, then waits
    until all are mined and checks that every one succeeded."""

    def __init__(self, chain: ChainClient, sender: str, nonce: int) -> None:
        self.chain = chain
        self.sender = sender
        self.nonce = nonce
        self.pending: list[dict[str, str]] = []
        self.hashes: list[str] = []

    @classmethod
    async def of(cls, chain: ChainClient, devnet: Devnet) -> BulkSender:
        return cls(chain, devnet.deployer, await chain.get_transaction_count(devnet.deployer))

    def add(self, to: str, data: bytes, *, gas: int = MINT_GAS, value: int = 0) -> None:
        self.pending.append(
            {
                "from": self.sender,
                "to": to,
                "data": hex_of(data),
                "gas": hex(gas),
                "nonce": hex(self.nonce),
                "value": hex(value),
                "maxFeePerGas": hex(MAX_FEE),
                "maxPriorityFeePerGas": hex(PRIORITY_FEE),
            }
        )
        self.nonce += 1

    async def wait_mined(self) -> None:
        """Send what was added with automine off, one batch at a time, each mined (evm_mine)
        before the next is sent.

        With automine on, anvil mines while it is still taking a batch, and a transaction
        that arrives while its predecessor is pending can stay queued for ever; with several
        batches in its pool, it dropped the first transaction of the second one (and every
        later nonce with it) when mining. One batch at a time does neither."""
        await self.chain.request("evm_setAutomine", [False])
        try:
            while self.pending:
                chunk, self.pending = self.pending[:SEND_BATCH], self.pending[SEND_BATCH:]
                sent = await self.chain.batch([("eth_sendTransaction", [tx]) for tx in chunk])
                self.hashes.extend(str(h) for h in sent)
                await self._mine_until(int(chunk[-1]["nonce"], 16) + 1)
        finally:
            await self.chain.request("evm_setAutomine", [True])
        for start in range(0, len(self.hashes), SEND_BATCH):
            hashes = self.hashes[start : start + SEND_BATCH]
            receipts = await self.chain.batch(
                [("eth_getTransactionReceipt", [tx_hash]) for tx_hash in hashes]
            )
            for tx_hash, receipt in zip(hashes, receipts, strict=True):
                if not isinstance(receipt, dict) or hex_int(receipt["status"]) != 1:
                    raise RuntimeError(f"set-up transaction {tx_hash} failed: {receipt}")
        self.hashes.clear()

    async def _mine_until(self, nonce: int) -> None:
        mined = await self.chain.get_transaction_count(self.sender, "latest")
        with trio.fail_after(MINED_TIMEOUT):
            while mined < nonce:
                await self.chain.request("evm_mine")
                before, mined = mined, await self.chain.get_transaction_count(self.sender, "latest")
                if mined == before:
                    status = await self.chain.request("txpool_status")
                    raise RuntimeError(
                        f"set-up stuck at nonce {mined} of {nonce}: anvil's pool {status}"
                    )


# --- portfolios -------------------------------------------------------------------------------


@attrs.frozen
class BenchPortfolio:
    """One registered portfolio and what its account holds (base units by symbol)."""

    id: int
    name: str
    account: str
    targets: Mapping[str, Decimal]
    holdings: Mapping[str, int]


async def register_tokens(db: Database, devnet: Devnet) -> None:
    for token in devnet.tokens:
        await db.add_token(
            token.symbol,
            token.address,
            chain_id=devnet.chain_id,
            decimals=token.decimals,
            coingecko_id=COINGECKO_IDS[token.symbol],
            is_quote=token.symbol == devnet.quote_symbol,
            price_feed=devnet.feeds.get(token.symbol),
        )


async def open_portfolios(
    bench: Bench,
    db: Database,
    config: Config,
    label: str,
    funding: Sequence[tuple[Mapping[str, Decimal], Mapping[str, Decimal]]],
    prices: Mapping[str, Decimal],
    usd_each: Decimal,
) -> list[BenchPortfolio]:
    """One smart account per ``(targets, held weights)`` in ``funding``: created, funded with
    ``usd_each`` split by the held weights at ``prices``, its delegations signed by its owner
    and registered with ``targets``. Owner keys and salts derive from ``label``."""
    chain, devnet = bench.chain, bench.devnet
    artifacts = await trio.to_thread.run_sync(load_artifacts)
    proxy_code = framework_code(artifacts, "ERC1967Proxy")
    sender = await BulkSender.of(chain, devnet)
    owners = [devnet_key(f"bench owner {label} {i}") for i in range(len(funding))]
    accounts: list[str] = []
    holdings: list[dict[str, int]] = []
    weth_total = 0
    for index, (owner_key, (_targets, held)) in enumerate(zip(owners, funding, strict=True)):
        owner = to_address(Account.from_key(owner_key.reveal()).address)
        initialize = encode_call(
            "initialize(address,string[],uint256[],uint256[])", owner, [], [], []
        )
        init_code = proxy_code + abi_encode(
            ["address", "bytes"], [devnet.hybrid_implementation, initialize]
        )
        salt = (uuid.uuid5(uuid.NAMESPACE_OID, f"{label} {index}").int).to_bytes(32, "big")
        sender.add(
            devnet.simple_factory,
            encode_call("deploy(bytes,bytes32)", init_code, salt),
            gas=ACCOUNT_GAS,
        )
        account = create2_address(devnet.simple_factory, salt, init_code)
        accounts.append(account)
        amounts = {
            symbol: int(usd_each * weight / prices[symbol] * 10 ** devnet.token(symbol).decimals)
            for symbol, weight in held.items()
        }
        holdings.append(amounts)
        weth_total += amounts.get("WETH", 0)
    if weth_total:
        sender.add(devnet.weth, encode_call("deposit()"), value=weth_total)
    for account, amounts in zip(accounts, holdings, strict=True):
        for symbol, amount in amounts.items():
            token = devnet.token(symbol)
            if symbol == "WETH":
                call = encode_call("transfer(address,uint256)", account, amount)
            else:
                call = encode_call("mint(address,uint256)", account, amount)
            sender.add(token.address, call)
    await sender.wait_mined()
    return await _register(bench, db, config, label, funding, owners, accounts, holdings)


async def _register(
    bench: Bench,
    db: Database,
    config: Config,
    label: str,
    funding: Sequence[tuple[Mapping[str, Decimal], Mapping[str, Decimal]]],
    owners: Sequence[Any],
    accounts: Sequence[str],
    holdings: Sequence[Mapping[str, int]],
) -> list[BenchPortfolio]:
    """Each owner signs the delegations `driftd delegation build` makes; `portfolio add`'s
    write (the CLI's on-chain verification is what the executor's mode book re-checks)."""
    devnet = bench.devnet
    domain = DelegationDomain(chain_id=devnet.chain_id, manager=devnet.manager)
    expires_at = int(time.time()) + config.guard.valid_days * 86_400
    out: list[BenchPortfolio] = []
    for index, (owner_key, (targets, _held), account, held) in enumerate(
        zip(owners, funding, accounts, holdings, strict=True)
    ):
        terms = guard_terms(config.guard, devnet.guarded_tokens(targets))
        built = build_portfolio_delegations(
            account=account,
            delegate=devnet.signer,
            router=devnet.router,
            tokens=[devnet.token(symbol).address for symbol in targets],
            enforcers=devnet.delegation_config(),
            salt=index + 1,
            guard=guard_caveat(config.guard.enforcer, terms),
            expires_at=expires_at,
            nonce=0,
        )
        signed = [sign_delegation(d, domain, owner_key) for d in built.as_list()]
        name = f"{label}-{index}"
        row = await db.add_portfolio(
            name,
            account,
            chain_id=devnet.chain_id,
            targets=targets,
            delegation=[d.to_json() for d in signed],
        )
        out.append(BenchPortfolio(row.id, name, account, targets, held))
    return out


def seconds(started: float) -> float:
    return time.perf_counter() - started

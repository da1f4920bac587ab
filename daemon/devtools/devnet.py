"""A local chain with the real contracts: anvil, Uniswap V2 and the MetaMask Delegation Framework.

Tests, the demo and the benchmarks need a chain that behaves like mainnet where driftd touches it
— the real router's arithmetic and revert reasons, the real DelegationManager and caveat enforcers
— without a network. So this module starts the anvil binary from npm (``@foundry-rs/anvil``) and
deploys creation bytecode shipped in npm packages, read from ``node_modules`` at run time (never
committed): WETH9, UniswapV2Factory and Router02 (``@uniswap/v2-core``/``v2-periphery``), the
Delegation Framework v1.3.0 (``@metamask/delegation-abis``: DelegationManager, EntryPoint,
SimpleFactory, HybridDeleGator linked to SCL_RIP7212, the caveat enforcers) and our own
:file:`contracts/DevnetToken.sol` (OpenZeppelin ERC20 with chosen decimals and open mint),
compiled with the pinned solc-js by :mod:`daemon.solidity` (cached in ``.driftd-cache/``). With
them, driftd's oracle guard (:file:`contracts/DriftGuardEnforcer.sol`, see :mod:`daemon.guard`),
deployed through the deterministic-deployment proxy with the production salt
(:mod:`daemon.create2`) so it sits at the address ``driftd guard address`` prints, and one mock
Chainlink feed per token (:file:`contracts/DevnetAggregator.sol`) at the pools' reference prices.

Lifetime: anvil runs in its own session (process group) and, on Linux, with a parent-death signal,
and :meth:`Anvil.stop` kills the group; :func:`running_devnet` (sync, for pytest's session
fixture) and :func:`open_devnet` (async, for the demo) stop it on every exit path, including
Ctrl-C and failing tests. Nothing here runs at import time.

Deployment sends ~40 transactions from anvil's unlocked first account with explicit gas (no
estimation round trips), then waits until all of them are mined and checks every receipt. anvil
answers ``eth_sendTransaction`` as soon as the transaction is in its pool; even with automine the
block is mined a moment later by anvil's miner task, so a receipt (or state) read straight after
sending may not show it yet — everything here that sends waits for the receipts before returning.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from decimal import ROUND_FLOOR, Decimal
from pathlib import Path
from typing import Any, Final

import attrs
import trio
from eth_abi.abi import encode as abi_encode
from eth_account import Account
from eth_utils.crypto import keccak

from daemon import create2
from daemon.address import to_address
from daemon.chain import ChainClient, encode_call, hex_bytes, hex_int, hex_of
from daemon.config import ChainConfig, DelegationConfig, GuardConfig, Secret
from daemon.create2 import GUARD_CONTRACT, GUARD_SALT
from daemon.solidity import SETUP_HINT, CompilerMissing, SolidityError, compile_contracts

DEVNET_CHAIN_ID: Final = 31337
NPM_HINT: Final = SETUP_HINT
_LISTENING_RE: Final = re.compile(rb"Listening on 127\.0\.0\.1:(\d+)")
_LINK_PLACEHOLDER_RE: Final = re.compile(r"__\$[0-9a-fA-F]{34}\$__")
_DEPLOY_GAS: Final = 25_000_000
FEED_DECIMALS: Final = 8
"""Decimals of the devnet's mock feeds, as Chainlink's USD feeds."""
_CALL_GAS: Final = 3_000_000
_RECEIPT_POLL_SECONDS: Final = 0.005
_MINED_TIMEOUT_SECONDS: Final = 30.0
_ANVIL_PACKAGES: Final = {
    ("linux", "x86_64"): "anvil-linux-amd64",
    ("linux", "amd64"): "anvil-linux-amd64",
    ("linux", "aarch64"): "anvil-linux-arm64",
    ("linux", "arm64"): "anvil-linux-arm64",
    ("darwin", "x86_64"): "anvil-darwin-amd64",
    ("darwin", "arm64"): "anvil-darwin-arm64",
    ("win32", "amd64"): "anvil-win32-amd64",
}
ENFORCER_CONTRACTS: Final = {
    # DelegationConfig field → contract name in @metamask/delegation-abis
    "allowed_targets": "AllowedTargetsEnforcer",
    "allowed_methods": "AllowedMethodsEnforcer",
    "allowed_calldata": "AllowedCalldataEnforcer",
    "limited_calls": "LimitedCallsEnforcer",
    "redeemer": "RedeemerEnforcer",
    "timestamp": "TimestampEnforcer",
    "value_lte": "ValueLteEnforcer",
    "nonce": "NonceEnforcer",
}
_FRAMEWORK_CONTRACTS: Final = (
    "DelegationManager",
    "EntryPoint",
    "SimpleFactory",
    "SCL_RIP7212",
    "HybridDeleGator",
    "ERC1967Proxy",
    *ENFORCER_CONTRACTS.values(),
)


class DevnetError(RuntimeError):
    """The devnet could not be started or deployed."""


class NpmPackagesMissing(DevnetError):
    """node_modules lacks a pinned package."""


# --- where things are -----------------------------------------------------------------------


def project_root() -> Path:
    """The checkout holding package.json and node_modules (this file is
    daemon/devtools/devnet.py, two levels below it)."""
    return Path(__file__).resolve().parents[2]


def anvil_executable(root: Path) -> Path:
    """The anvil ELF from its per-platform npm package (not the node wrapper: no orphans)."""
    system = sys.platform if sys.platform in ("darwin", "win32") else platform.system().lower()
    package = _ANVIL_PACKAGES.get((system, platform.machine().lower()))
    if package is None:
        raise NpmPackagesMissing(f"no anvil npm package for {system}/{platform.machine()}")
    name = "anvil.exe" if system == "win32" else "anvil"
    path = root / "node_modules" / "@foundry-rs" / package / "bin" / name
    if not path.is_file():
        raise NpmPackagesMissing(f"anvil not found at {path}: {NPM_HINT}")
    return path


def _require_package(root: Path, package: str) -> Path:
    path = root / "node_modules" / package
    if not (path / "package.json").is_file():
        raise NpmPackagesMissing(f"npm package {package} is not installed: {NPM_HINT}")
    return path


# --- anvil ----------------------------------------------------------------------------------


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    if sys.platform == "linux":
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)


@attrs.define(eq=False)
class Anvil:
    """A running anvil process (own process group) and where it listens."""

    process: subprocess.Popen[bytes]
    log_path: Path
    port: int | None = None

    @property
    def rpc_url(self) -> str:
        if self.port is None:
            raise DevnetError("anvil is not listening yet")
        return f"http://127.0.0.1:{self.port}"

    def poll_port(self) -> int | None:
        """The port once anvil printed it; raises if anvil died."""
        if self.port is None:
            match = _LISTENING_RE.search(self.log_path.read_bytes())
            if match:
                self.port = int(match.group(1))
            elif self.process.poll() is not None:
                raise DevnetError(
                    f"anvil exited with status {self.process.returncode}; see {self.log_path}"
                )
        return self.port

    def wait_ready(self, timeout: float = 10.0) -> int:
        """Block until anvil listens (for sync callers such as pytest session fixtures)."""
        deadline = time.monotonic() + timeout
        while (port := self.poll_port()) is None:
            if time.monotonic() > deadline:
                raise DevnetError(f"anvil did not start within {timeout} s; see {self.log_path}")
            time.sleep(0.005)
        return port

    async def wait_ready_async(self) -> int:
        """Wait until anvil listens; bound it with the caller's cancel scope."""
        # anvil announces its port only in its log, so this polls the file.
        while (port := self.poll_port()) is None:  # noqa: ASYNC110
            await trio.sleep(0.005)
        return port

    def stop(self) -> None:
        """Kill anvil's whole process group and reap it. Idempotent."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                if sys.platform == "win32":  # pragma: no cover
                    self.process.kill()
                else:
                    os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
        with contextlib.suppress(OSError):
            self.log_path.unlink()


def launch_anvil(
    root: Path | None = None, *, chain_id: int = DEVNET_CHAIN_ID, extra_args: Sequence[str] = ()
) -> Anvil:
    """Start anvil on a free loopback port; call :meth:`Anvil.wait_ready` next."""
    executable = anvil_executable(root or project_root())
    log_fd, log_name = tempfile.mkstemp(prefix="driftd-anvil-", suffix=".log")
    try:
        process = subprocess.Popen(
            [
                str(executable),
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--chain-id",
                str(chain_id),
                "--accounts",
                "1",
                "--balance",
                "1000000",
                *extra_args,
            ],
            stdin=subprocess.DEVNULL,
            stdout=log_fd,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
    finally:
        os.close(log_fd)
    return Anvil(process=process, log_path=Path(log_name))


# --- artifacts ------------------------------------------------------------------------------

_FRAMEWORK_SCRIPT: Final = r"""
const fs = require('fs');
const request = JSON.parse(fs.readFileSync(0, 'utf8'));
const bytecode = require('@metamask/delegation-abis/bytecode');
const out = {framework: {}};
for (const name of request.framework) {
  if (typeof bytecode[name] !== 'string') throw new Error('no bytecode for ' + name);
  out.framework[name] = bytecode[name];
}
process.stdout.write(JSON.stringify(out));
"""


@attrs.frozen
class Artifacts:
    """Creation bytecode of everything the devnet deploys."""

    weth9: bytes
    uniswap_factory: bytes
    uniswap_router: bytes
    framework: Mapping[str, str]
    """Contract name → hex creation code (HybridDeleGator still has its library placeholder)."""
    devnet_token: bytes
    guard_enforcer: bytes = b""
    """DriftGuardEnforcer (:file:`contracts/DriftGuardEnforcer.sol`), the oracle-bounded caveat."""
    devnet_aggregator: bytes = b""
    """DevnetAggregator: a Chainlink-compatible mock price feed (devnet only)."""


def load_artifacts(root: Path | None = None) -> Artifacts:
    """Read bytecode from node_modules; compile :file:`contracts/*.sol` (:mod:`daemon.solidity`).

    Both are cached in ``.driftd-cache/`` (the framework's by lock file, ours by source hash).
    """
    root = root or project_root()
    core = _require_package(root, "@uniswap/v2-core")
    periphery = _require_package(root, "@uniswap/v2-periphery")
    for package in ("@metamask/delegation-abis", "solc", "@openzeppelin/contracts"):
        _require_package(root, package)
    try:
        contracts = compile_contracts(root)
    except CompilerMissing as exc:
        raise NpmPackagesMissing(str(exc)) from None
    except SolidityError as exc:
        raise DevnetError(str(exc)) from None
    lock = (
        (root / "package-lock.json").read_bytes() if (root / "package-lock.json").is_file() else b""
    )
    request = {"framework": list(_FRAMEWORK_CONTRACTS)}
    cache_key = hashlib.sha256(
        json.dumps(request).encode() + lock + _FRAMEWORK_SCRIPT.encode()
    ).hexdigest()[:16]
    cache = root / ".driftd-cache" / f"devnet-framework-{cache_key}.json"
    if cache.is_file():
        framework = json.loads(cache.read_text(encoding="utf-8"))
    else:
        try:
            done = subprocess.run(
                ["node", "-e", _FRAMEWORK_SCRIPT],
                input=json.dumps(request).encode(),
                capture_output=True,
                cwd=root,
                check=False,
                timeout=120,
            )
        except FileNotFoundError:
            raise NpmPackagesMissing(f"node is not installed: {NPM_HINT}") from None
        if done.returncode != 0:
            raise DevnetError(f"reading contract artifacts failed:\n{done.stderr.decode()[-2000:]}")
        framework = json.loads(done.stdout)
        cache.parent.mkdir(exist_ok=True)
        temporary = cache.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps(framework), encoding="utf-8")
        temporary.replace(cache)

    def build_json(path: Path) -> bytes:
        raw = json.loads(path.read_text(encoding="utf-8"))["bytecode"]
        return hex_bytes(raw if raw.startswith("0x") else "0x" + raw)

    return Artifacts(
        weth9=build_json(periphery / "build" / "WETH9.json"),
        uniswap_factory=build_json(core / "build" / "UniswapV2Factory.json"),
        uniswap_router=build_json(periphery / "build" / "UniswapV2Router02.json"),
        framework=dict(framework["framework"]),
        devnet_token=contracts["DevnetToken"],
        guard_enforcer=contracts[GUARD_CONTRACT],
        devnet_aggregator=contracts["DevnetAggregator"],
    )


def _code(artifacts: Artifacts, name: str) -> bytes:
    code = artifacts.framework[name]
    if _LINK_PLACEHOLDER_RE.search(code):
        raise DevnetError(f"{name} needs library linking")
    return hex_bytes(code)


def link_library(code: str, library: str) -> bytes:
    """Replace the (single) library placeholder in hex creation code with ``library``."""
    placeholders = set(_LINK_PLACEHOLDER_RE.findall(code))
    if len(placeholders) != 1:
        raise DevnetError(f"expected one library placeholder, found {len(placeholders)}")
    return hex_bytes(code.replace(placeholders.pop(), library[2:].lower()))


def create_address(sender: str, nonce: int) -> str:
    """Address of the contract ``sender`` creates with ``nonce``: keccak(rlp([sender, nonce]))."""
    if nonce == 0:
        encoded_nonce = b"\x80"
    elif nonce < 0x80:
        encoded_nonce = bytes([nonce])
    else:
        raw = nonce.to_bytes((nonce.bit_length() + 7) // 8, "big")
        encoded_nonce = bytes([0x80 + len(raw)]) + raw
    payload = b"\x94" + bytes.fromhex(sender[2:]) + encoded_nonce
    return to_address(keccak(bytes([0xC0 + len(payload)]) + payload)[12:])


def create2_address(deployer: str, salt: bytes, init_code: bytes) -> str:
    """Address of a CREATE2 deployment by ``deployer`` (:func:`daemon.create2.create2_address`)."""
    return create2.create2_address(salt, init_code, deployer)


# --- the deployed devnet --------------------------------------------------------------------


@attrs.frozen
class DevnetToken:
    """One ERC20 on the devnet."""

    symbol: str
    address: str
    decimals: int

    def units(self, amount: Decimal | int | str) -> int:
        """Whole tokens → base units (exact; raises if not representable)."""
        value = Decimal(amount) * (Decimal(10) ** self.decimals)
        if value != value.to_integral_value():
            raise ValueError(f"{amount} {self.symbol} is not a whole number of base units")
        return int(value)


@attrs.frozen
class SmartAccount:
    """A HybridDeleGator smart account (ERC1967 proxy) and its owner's key."""

    address: str
    owner: str
    owner_key: Secret = attrs.field(repr=False)


@attrs.frozen
class Devnet:
    """Addresses of everything deployed, and the keys the devnet made up for tests and the demo.

    The keys are derived from fixed labels: they are public test keys, never real funds.
    """

    rpc_url: str
    chain_id: int
    deployer: str
    """anvil's unlocked first account: deploys, mints and funds."""
    weth: str
    factory: str
    router: str
    tokens: tuple[DevnetToken, ...]
    quote_symbol: str
    """The token prices are quoted in (USDC)."""
    manager: str
    entry_point: str
    simple_factory: str
    hybrid_implementation: str
    enforcers: Mapping[str, str]
    """DelegationConfig field name → enforcer address."""
    signer: str
    """The daemon's signer (the delegate), funded with ETH for gas."""
    signer_key: Secret = attrs.field(repr=False)
    accounts: tuple[SmartAccount, ...] = ()
    deploy_seconds: float = 0.0
    guard: str = ""
    """DriftGuardEnforcer, the oracle-bounded caveat enforcer (:mod:`daemon.guard`), at its
    CREATE2 address through the proxy (:func:`daemon.create2.create2_address`, ``GUARD_SALT``)."""
    feeds: Mapping[str, str] = attrs.field(factory=dict)
    """Token symbol → its mock Chainlink USD feed (:data:`FEED_DECIMALS` decimals)."""
    reference_usd: Mapping[str, Decimal] = attrs.field(factory=dict)
    """Token symbol → the USD price the pools were created at (and the feeds start at)."""

    def token(self, symbol: str) -> DevnetToken:
        for token in self.tokens:
            if token.symbol == symbol:
                return token
        raise KeyError(f"no devnet token {symbol}")

    @property
    def quote(self) -> DevnetToken:
        return self.token(self.quote_symbol)

    def chain_config(self, base: ChainConfig | None = None) -> ChainConfig:
        """``[chain]`` for this devnet (other keys from ``base``)."""
        return attrs.evolve(
            base or ChainConfig(), rpc_url=self.rpc_url, chain_id=self.chain_id, router=self.router
        )

    def delegation_config(self) -> DelegationConfig:
        """``[delegation]`` pointing at this devnet's DelegationManager and enforcers."""
        return DelegationConfig(manager=self.manager, **self.enforcers)

    def guard_config(self, base: GuardConfig | None = None) -> GuardConfig:
        """``[guard]`` pointing at this devnet's DriftGuardEnforcer (other keys from ``base``)."""
        return attrs.evolve(base or GuardConfig(), enforcer=self.guard)

    def config_overrides(self) -> dict[str, dict[str, Any]]:
        """The TOML keys a config for this devnet needs (``[chain]``, ``[delegation]``, and
        ``[guard]``'s enforcer)."""
        return {
            "chain": {"rpc_url": self.rpc_url, "chain_id": self.chain_id, "router": self.router},
            "delegation": {"manager": self.manager, **self.enforcers},
            "guard": {"enforcer": self.guard},
        }


def devnet_key(label: str) -> Secret:
    """A deterministic test key (public by construction: never hold real funds with it)."""
    return Secret("0x" + keccak(text=f"driftd devnet key: {label}").hex())


@attrs.frozen
class PoolSpec:
    """A pool to create: ``amount_a`` of ``symbol_a`` against ``amount_b`` of ``symbol_b``."""

    symbol_a: str
    amount_a: Decimal
    symbol_b: str
    amount_b: Decimal


DEFAULT_POOLS: Final = (
    # ~$20M deep each side, near real prices; no WETH/WBTC pair, so that route hops via USDC.
    PoolSpec("WETH", Decimal(3_000), "USDC", Decimal(9_000_000)),
    PoolSpec("WBTC", Decimal(150), "USDC", Decimal(9_000_000)),
)
DEFAULT_TOKENS: Final = (("USDC", "USD Coin", 6), ("WBTC", "Wrapped BTC", 8))


class _Deployer:
    """Sends transactions from anvil's unlocked first account and tracks its nonce."""

    def __init__(self, client: ChainClient, address: str, nonce: int) -> None:
        self.client = client
        self.address = address
        self.nonce = nonce
        self.tx_hashes: list[str] = []

    async def send(
        self, to: str | None, data: bytes, *, value: int = 0, gas: int = _CALL_GAS
    ) -> str:
        tx: dict[str, Any] = {
            "from": self.address,
            "data": hex_of(data),
            "gas": hex(gas),
            "nonce": hex(self.nonce),
            "value": hex(value),
        }
        if to is not None:
            tx["to"] = to
        tx_hash = await self.client.request("eth_sendTransaction", [tx])
        self.tx_hashes.append(str(tx_hash))
        self.nonce += 1
        return str(tx_hash)

    async def deploy(self, code: bytes, constructor_args: bytes = b"") -> str:
        address = create_address(self.address, self.nonce)
        await self.send(None, code + constructor_args, gas=_DEPLOY_GAS)
        return address

    async def wait_mined(self) -> None:
        """Wait until every transaction sent so far is mined, then require that each succeeded.

        ``eth_sendTransaction`` returns once anvil has the transaction in its pool, not once it
        is mined (automine mines it a moment later, in anvil's miner task), so a receipt read
        right after sending can still be null. The receipts still missing are polled in one
        batch per round until all are there.
        """
        receipts: dict[str, Any] = {}
        with trio.move_on_after(_MINED_TIMEOUT_SECONDS):
            while True:
                missing = [tx_hash for tx_hash in self.tx_hashes if tx_hash not in receipts]
                if not missing:
                    break
                found = await self.client.batch(
                    [("eth_getTransactionReceipt", [tx_hash]) for tx_hash in missing]
                )
                receipts.update(
                    (tx_hash, receipt)
                    for tx_hash, receipt in zip(missing, found, strict=True)
                    if receipt is not None
                )
                if len(receipts) < len(self.tx_hashes):
                    await trio.sleep(_RECEIPT_POLL_SECONDS)
        for tx_hash in self.tx_hashes:
            receipt = receipts.get(tx_hash)
            if receipt is None:
                raise DevnetError(
                    f"devnet transaction {tx_hash} was not mined within {_MINED_TIMEOUT_SECONDS} s"
                )
            if hex_int(receipt["status"]) != 1:
                raise DevnetError(f"devnet deployment transaction {tx_hash} failed")
        self.tx_hashes.clear()


async def deploy_devnet(
    client: ChainClient,
    *,
    owners: int = 2,
    artifacts: Artifacts | None = None,
    pools: Sequence[PoolSpec] = DEFAULT_POOLS,
    account_funding: Mapping[str, Decimal] | None = None,
) -> Devnet:
    """Deploy every contract on a fresh anvil and create ``owners`` funded smart accounts."""
    started = time.perf_counter()
    artifacts = artifacts or load_artifacts()
    (deployer_address,) = [to_address(a) for a in await client.request("eth_accounts")]
    deployer = _Deployer(
        client, deployer_address, await client.get_transaction_count(deployer_address)
    )

    # Tokens: WETH9 is the router's WETH and the portfolio's WETH; the others are DevnetTokens.
    weth = await deployer.deploy(artifacts.weth9)
    tokens = [DevnetToken("WETH", weth, 18)]
    for symbol, name, decimals in DEFAULT_TOKENS:
        address = await deployer.deploy(
            artifacts.devnet_token,
            abi_encode(["string", "string", "uint8"], [name, symbol, decimals]),
        )
        tokens.append(DevnetToken(symbol, address, decimals))
    by_symbol = {token.symbol: token for token in tokens}

    factory = await deployer.deploy(
        artifacts.uniswap_factory, abi_encode(["address"], [deployer_address])
    )
    router = await deployer.deploy(
        artifacts.uniswap_router, abi_encode(["address", "address"], [factory, weth])
    )

    entry_point = await deployer.deploy(_code(artifacts, "EntryPoint"))
    manager = await deployer.deploy(
        _code(artifacts, "DelegationManager"), abi_encode(["address"], [deployer_address])
    )
    scl = await deployer.deploy(_code(artifacts, "SCL_RIP7212"))
    hybrid = await deployer.deploy(
        link_library(artifacts.framework["HybridDeleGator"], scl),
        abi_encode(["address", "address"], [manager, entry_point]),
    )
    simple_factory = await deployer.deploy(_code(artifacts, "SimpleFactory"))
    enforcers = {
        field: await deployer.deploy(_code(artifacts, contract))
        for field, contract in ENFORCER_CONTRACTS.items()
    }
    # The guard goes through the deterministic-deployment proxy with the production salt, so
    # it sits where `driftd guard address` says it does on every chain.
    await ensure_create2_proxy(client)
    guard = create2.create2_address(GUARD_SALT, artifacts.guard_enforcer)
    await deployer.send(create2.PROXY, GUARD_SALT + artifacts.guard_enforcer, gas=_DEPLOY_GAS)
    reference_usd = reference_prices(pools, quote_symbol="USDC")
    feeds = {
        token.symbol: await deployer.deploy(
            artifacts.devnet_aggregator,
            abi_encode(
                ["uint8", "int256", "string"],
                [FEED_DECIMALS, feed_answer(reference_usd[token.symbol]), f"{token.symbol} / USD"],
            ),
        )
        for token in tokens
        if token.symbol in reference_usd
    }

    # Liquidity.
    funder = _Funder(deployer, by_symbol)
    for pool in pools:
        token_a, token_b = by_symbol[pool.symbol_a], by_symbol[pool.symbol_b]
        amount_a, amount_b = token_a.units(pool.amount_a), token_b.units(pool.amount_b)
        await funder.fund(deployer_address, {pool.symbol_a: amount_a, pool.symbol_b: amount_b})
        for token, amount in ((token_a, amount_a), (token_b, amount_b)):
            await deployer.send(
                token.address, encode_call("approve(address,uint256)", router, amount)
            )
        await deployer.send(
            router,
            encode_call(
                "addLiquidity(address,address,uint256,uint256,uint256,uint256,address,uint256)",
                token_a.address,
                token_b.address,
                amount_a,
                amount_b,
                amount_a,
                amount_b,
                deployer_address,
                2**64,
            ),
            gas=_DEPLOY_GAS,
        )

    # The daemon's signer pays gas; the owners only sign.
    signer_key = devnet_key("signer")
    signer = to_address(Account.from_key(signer_key.reveal()).address)
    await client.request("anvil_setBalance", [signer, hex(10**22)])

    funding = account_funding or {"USDC": Decimal(60_000), "WETH": Decimal(10), "WBTC": Decimal(1)}
    accounts = []
    for index in range(owners):
        owner_key = devnet_key(f"owner {index}")
        account = await _create_smart_account(
            deployer, artifacts, simple_factory, hybrid, owner_key, salt=index
        )
        await funder.fund(
            account.address,
            {symbol: by_symbol[symbol].units(amount) for symbol, amount in funding.items()},
        )
        accounts.append(account)
    await deployer.wait_mined()

    return Devnet(
        rpc_url=client.rpc_url,
        chain_id=client.chain_id,
        deployer=deployer_address,
        weth=weth,
        factory=factory,
        router=router,
        tokens=tuple(tokens),
        quote_symbol="USDC",
        manager=manager,
        entry_point=entry_point,
        simple_factory=simple_factory,
        hybrid_implementation=hybrid,
        enforcers=enforcers,
        signer=signer,
        signer_key=signer_key,
        accounts=tuple(accounts),
        deploy_seconds=time.perf_counter() - started,
        guard=guard,
        feeds=feeds,
        reference_usd=reference_usd,
    )


async def ensure_create2_proxy(client: ChainClient) -> None:
    """Make sure the deterministic-deployment proxy is there (anvil predeploys it; else set it)."""
    if await client.get_code(create2.PROXY) != create2.PROXY_RUNTIME_CODE:
        await client.request("anvil_setCode", [create2.PROXY, hex_of(create2.PROXY_RUNTIME_CODE)])


class _Funder:
    def __init__(self, deployer: _Deployer, tokens: Mapping[str, DevnetToken]) -> None:
        self.deployer = deployer
        self.tokens = tokens

    async def fund(self, recipient: str, amounts: Mapping[str, int]) -> None:
        for symbol, amount in amounts.items():
            token = self.tokens[symbol]
            if symbol == "WETH":
                await self.deployer.send(token.address, encode_call("deposit()"), value=amount)
                if recipient != self.deployer.address:
                    await self.deployer.send(
                        token.address, encode_call("transfer(address,uint256)", recipient, amount)
                    )
            else:
                await self.deployer.send(
                    token.address, encode_call("mint(address,uint256)", recipient, amount)
                )


async def fund(
    client: ChainClient, devnet: Devnet, recipient: str, amounts: Mapping[str, int]
) -> None:
    """Give ``recipient`` ``amounts`` (symbol → base units) of devnet tokens, from the deployer.

    Returns once the transfers are mined (raises :class:`DevnetError` if one failed).
    """
    deployer = _Deployer(
        client, devnet.deployer, await client.get_transaction_count(devnet.deployer)
    )
    await _Funder(deployer, {token.symbol: token for token in devnet.tokens}).fund(
        recipient, amounts
    )
    await deployer.wait_mined()


async def _create_smart_account(
    deployer: _Deployer,
    artifacts: Artifacts,
    simple_factory: str,
    implementation: str,
    owner_key: Secret,
    *,
    salt: int,
) -> SmartAccount:
    owner = to_address(Account.from_key(owner_key.reveal()).address)
    initialize = encode_call("initialize(address,string[],uint256[],uint256[])", owner, [], [], [])
    init_code = _code(artifacts, "ERC1967Proxy") + abi_encode(
        ["address", "bytes"], [implementation, initialize]
    )
    salt_bytes = salt.to_bytes(32, "big")
    await deployer.send(
        simple_factory, encode_call("deploy(bytes,bytes32)", init_code, salt_bytes), gas=_DEPLOY_GAS
    )
    address = create2_address(simple_factory, salt_bytes, init_code)
    return SmartAccount(address=address, owner=owner, owner_key=owner_key)


async def create_smart_account(
    client: ChainClient, devnet: Devnet, owner_key: Secret, *, salt: int, root: Path | None = None
) -> SmartAccount:
    """One more HybridDeleGator account for ``owner_key`` (unfunded)."""
    deployer = _Deployer(
        client, devnet.deployer, await client.get_transaction_count(devnet.deployer)
    )
    account = await _create_smart_account(
        deployer,
        load_artifacts(root),
        devnet.simple_factory,
        devnet.hybrid_implementation,
        owner_key,
        salt=salt,
    )
    await deployer.wait_mined()
    return account


# --- oracle feeds ---------------------------------------------------------------------------


def reference_prices(pools: Sequence[PoolSpec], *, quote_symbol: str) -> dict[str, Decimal]:
    """USD per token implied by the pools against the quote token (taken as $1)."""
    prices = {quote_symbol: Decimal(1)}
    for pool in pools:
        if pool.symbol_b == quote_symbol:
            prices[pool.symbol_a] = pool.amount_b / pool.amount_a
        elif pool.symbol_a == quote_symbol:
            prices[pool.symbol_b] = pool.amount_a / pool.amount_b
    return prices


def feed_answer(usd: Decimal | int | str) -> int:
    """A USD price as a feed's ``answer`` (:data:`FEED_DECIMALS` decimals, rounded down)."""
    return int(Decimal(usd).scaleb(FEED_DECIMALS).to_integral_value(rounding=ROUND_FLOOR))


async def set_feed_price(
    client: ChainClient,
    devnet: Devnet,
    symbol: str,
    usd: Decimal | int | str,
    *,
    updated_at: int | None = None,
) -> None:
    """Post ``usd`` (may be zero or negative) to ``symbol``'s mock feed as a new round.

    ``updated_at`` (unix seconds) backdates the round, making the feed stale; by default it is
    the block's timestamp. Returns once mined.
    """
    feed = devnet.feeds[symbol]
    deployer = _Deployer(
        client, devnet.deployer, await client.get_transaction_count(devnet.deployer)
    )
    if updated_at is None:
        await deployer.send(feed, encode_call("updateAnswer(int256)", feed_answer(usd)))
    else:
        latest = int.from_bytes(await client.call(feed, encode_call("latestRound()")), "big")
        await deployer.send(
            feed,
            encode_call(
                "updateRoundData(uint80,int256,uint256,uint256)",
                latest + 1,
                feed_answer(usd),
                updated_at,
                updated_at,
            ),
        )
    await deployer.wait_mined()


async def refresh_feeds(client: ChainClient, devnet: Devnet) -> None:
    """Post every feed's reference price again, updated now (other tests may move chain time)."""
    deployer = _Deployer(
        client, devnet.deployer, await client.get_transaction_count(devnet.deployer)
    )
    for symbol, feed in devnet.feeds.items():
        answer = feed_answer(devnet.reference_usd[symbol])
        await deployer.send(feed, encode_call("updateAnswer(int256)", answer))
    await deployer.wait_mined()


# --- anvil test helpers ---------------------------------------------------------------------


async def evm_snapshot(client: ChainClient) -> str:
    """Snapshot the chain state; :func:`evm_revert` returns to it (once)."""
    return str(await client.request("evm_snapshot"))


async def evm_revert(client: ChainClient, snapshot_id: str) -> None:
    """Return to ``snapshot_id``'s state.

    Wait for the receipts of transactions sent before: one anvil has not mined yet is mined
    after the revert, on top of the restored state.
    """
    if not await client.request("evm_revert", [snapshot_id]):
        raise DevnetError(f"evm_revert to snapshot {snapshot_id} failed")


async def evm_mine(client: ChainClient, blocks: int = 1) -> None:
    for _ in range(blocks):
        await client.request("evm_mine")


async def evm_set_automine(client: ChainClient, enabled: bool) -> None:
    await client.request("evm_setAutomine", [enabled])


async def evm_increase_time(client: ChainClient, seconds: int) -> None:
    """Move chain time forward (takes effect in the next mined block)."""
    await client.request("evm_increaseTime", [seconds])


async def set_eth_balance(client: ChainClient, address: str, wei: int) -> None:
    await client.request("anvil_setBalance", [address, hex(wei)])


# --- lifetimes ------------------------------------------------------------------------------


@contextlib.contextmanager
def running_devnet(*, owners: int = 2, root: Path | None = None) -> Iterator[Devnet]:
    """Sync: start anvil, deploy (in its own ``trio.run``), yield, always stop anvil.

    For pytest's session fixture: pytest-trio cannot run session-scoped async fixtures.
    """
    root = root or project_root()
    artifacts = load_artifacts(root)
    anvil = launch_anvil(root)
    try:
        anvil.wait_ready()

        async def deploy() -> Devnet:
            config = ChainConfig(rpc_url=anvil.rpc_url, chain_id=DEVNET_CHAIN_ID)
            async with ChainClient(config) as client:
                return await deploy_devnet(client, owners=owners, artifacts=artifacts)

        yield trio.run(deploy)
    finally:
        anvil.stop()


@contextlib.asynccontextmanager
async def open_devnet(*, owners: int = 2, root: Path | None = None) -> AsyncIterator[Devnet]:
    """Async: the same for Trio code (demo, benchmarks). Artifacts load in a worker thread."""
    root = root or project_root()
    artifacts = await trio.to_thread.run_sync(load_artifacts, root)
    anvil = launch_anvil(root)
    try:
        with trio.fail_after(10):
            await anvil.wait_ready_async()
        config = ChainConfig(rpc_url=anvil.rpc_url, chain_id=DEVNET_CHAIN_ID)
        async with ChainClient(config) as client:
            devnet = await deploy_devnet(client, owners=owners, artifacts=artifacts)
        yield devnet
    finally:
        anvil.stop()

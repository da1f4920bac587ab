"""What the devnet takes from ``node_modules``: the anvil binary and the creation bytecode of
every contract it deploys, and the devnet tooling's errors.

Creation bytecode comes from npm packages read at run time (never committed): WETH9,
UniswapV2Factory and Router02 (``@uniswap/v2-core``/``v2-periphery``) and the Delegation
Framework v1.3.0 (``@metamask/delegation-abis``, read by a small node script), plus our own
contracts (:file:`contracts/*.sol`) compiled with the pinned solc-js by :mod:`daemon.solidity`.
Both are cached in ``.driftd-cache/``. :mod:`daemon.devtools.devnet` re-exports the public names.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import attrs

from daemon.abi import hex_bytes
from daemon.create2 import GUARD_CONTRACT
from daemon.solidity import SETUP_HINT, CompilerMissing, SolidityError, compile_contracts

NPM_HINT: Final = SETUP_HINT

_LINK_PLACEHOLDER_RE: Final = re.compile(r"__\$[0-9a-fA-F]{34}\$__")
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
    daemon/devtools/devnet_artifacts.py, two levels below it)."""
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
    framework = _framework_bytecode(root)

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


def _framework_bytecode(root: Path) -> Any:
    """The Delegation Framework's creation code, as ``{"framework": {name: hex}}``: read by
    :data:`_FRAMEWORK_SCRIPT` from ``@metamask/delegation-abis``, cached by lock file."""
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
    return framework


def framework_code(artifacts: Artifacts, name: str) -> bytes:
    """A framework contract's creation code (raises if it still needs library linking)."""
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

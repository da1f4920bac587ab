"""Compiling driftd's Solidity sources (:file:`contracts/*.sol`) with the pinned solc-js.

No bytecode is committed: the creation code of the oracle guard
(:file:`contracts/DriftGuardEnforcer.sol`) and of the devnet's mocks is compiled from source with
the npm package ``solc`` pinned in package.json/package-lock.json (``./dev setup`` installs it),
run by ``node`` in a subprocess. The result is cached in ``.driftd-cache/`` under a key that
covers every source, the lock file and the compile script, so a change to any of them recompiles.

The guard is deployed with CREATE2 (:mod:`daemon.create2`), whose address is a hash of the exact
creation code; so everything that shapes the bytes is fixed here and must not change casually:

- compiler: solc-js :data:`SOLC_VERSION` (checked against what ``node_modules`` holds);
- :data:`COMPILER_SETTINGS`: optimizer on with 200 runs, EVM version ``cancun``, everything else
  solc's default (notably the metadata hash, IPFS, appended to the code: any change to a
  source file the contract includes, comments and whitespace too, changes the code and so the
  address);
- sources keyed by their bare file name (``DriftGuardEnforcer.sol``), imports resolved from
  ``node_modules`` (e.g. ``@openzeppelin/contracts``, pinned by the lock file), all of
  :file:`contracts/*.sol` compiled together in one standard-JSON input.

Anyone with the same checkout gets the same bytes: ``driftd guard address`` prints the address
they deploy to on any chain with the deterministic-deployment proxy.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from daemon.abi import hex_bytes

SOLC_VERSION: Final = "0.8.37"
"""The solc-js release package.json pins (``solc.version()`` must start with it)."""
COMPILER_SETTINGS: Final[Mapping[str, Any]] = {
    "optimizer": {"enabled": True, "runs": 200},
    "evmVersion": "cancun",
}
"""solc standard-JSON ``settings`` (outputSelection is added per source). Part of the guard's
CREATE2 address: changing them moves it."""
SETUP_HINT: Final = "run ./dev setup (it installs the pinned npm packages with npm ci)"
CONTRACTS_DIR: Final = Path(__file__).resolve().parent / "contracts"

_COMPILE_SCRIPT: Final = r"""
const fs = require('fs');
const request = JSON.parse(fs.readFileSync(0, 'utf8'));
const solc = require('solc');
const sources = {};
const outputSelection = {};
for (const [file, content] of Object.entries(request.sources)) {
  sources[file] = {content};
  outputSelection[file] = {'*': ['evm.bytecode.object']};
}
const input = {language: 'Solidity', sources, settings: {...request.settings, outputSelection}};
const findImports = (p) => {
  try { return {contents: fs.readFileSync(require.resolve(p), 'utf8')}; }
  catch (e) { return {error: 'import not found: ' + p}; }
};
const result = JSON.parse(solc.compile(JSON.stringify(input), {import: findImports}));
const errors = (result.errors || []).filter((e) => e.severity === 'error');
if (errors.length) throw new Error(errors.map((e) => e.formattedMessage).join('\n'));
const contracts = {};
for (const file of Object.keys(request.sources)) {
  for (const [name, contract] of Object.entries(result.contracts[file] || {})) {
    if (contract.evm.bytecode.object) contracts[name] = '0x' + contract.evm.bytecode.object;
  }
}
process.stdout.write(JSON.stringify({solc: solc.version(), contracts}));
"""


class SolidityError(RuntimeError):
    """The contracts could not be compiled."""


class CompilerMissing(SolidityError):
    """node or the pinned npm packages (solc, imported sources) are not installed."""


def project_root() -> Path:
    """The checkout holding package.json and node_modules (this file is daemon/solidity.py)."""
    return Path(__file__).resolve().parent.parent


def require_npm_package(root: Path, package: str) -> Path:
    """``node_modules/<package>``, or :class:`CompilerMissing` saying how to install it."""
    path = root / "node_modules" / package
    if not (path / "package.json").is_file():
        raise CompilerMissing(f"npm package {package} is not installed in {root}: {SETUP_HINT}")
    return path


def contract_sources(directory: Path = CONTRACTS_DIR) -> dict[str, str]:
    """File name → source text of every ``*.sol`` in ``directory``, sorted by name."""
    return {path.name: path.read_text(encoding="utf-8") for path in sorted(directory.glob("*.sol"))}


def compile_contracts(root: Path | None = None) -> dict[str, bytes]:
    """Contract name → creation bytecode (no constructor arguments) of :file:`contracts/*.sol`.

    Cached in ``<root>/.driftd-cache/`` (an unwritable cache directory only costs a recompile).
    Raises :class:`CompilerMissing` without node or the npm packages, :class:`SolidityError` when
    solc rejects the sources or is not the pinned version.
    """
    root = root or project_root()
    for package in ("solc", "@openzeppelin/contracts"):
        require_npm_package(root, package)
    sources = contract_sources()
    lock_path = root / "package-lock.json"
    lock = lock_path.read_bytes() if lock_path.is_file() else b""
    key_material = json.dumps(
        {"sources": sources, "settings": COMPILER_SETTINGS, "script": _COMPILE_SCRIPT},
        sort_keys=True,
    ).encode()
    cache_key = hashlib.sha256(key_material + lock).hexdigest()[:16]
    cache = root / ".driftd-cache" / f"solidity-{cache_key}.json"
    compiled: dict[str, Any] | None = None
    if cache.is_file():
        try:
            compiled = json.loads(cache.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            compiled = None
    if compiled is None:
        compiled = _run_solc(root, sources)
        try:
            cache.parent.mkdir(exist_ok=True)
            temporary = cache.with_suffix(f".{os.getpid()}.tmp")
            temporary.write_text(json.dumps(compiled), encoding="utf-8")
            temporary.replace(cache)
        except OSError:
            pass  # a read-only checkout compiles every time
    version = str(compiled.get("solc", ""))
    if not version.startswith(SOLC_VERSION):
        raise SolidityError(
            f"solc-js is {version or 'unknown'}, expected {SOLC_VERSION}: {SETUP_HINT}"
        )
    return {name: hex_bytes(code) for name, code in compiled["contracts"].items()}


def creation_code(name: str, root: Path | None = None) -> bytes:
    """Creation bytecode of one contract of :file:`contracts/*.sol`."""
    contracts = compile_contracts(root)
    if name not in contracts:
        raise SolidityError(f"no contract {name} in {CONTRACTS_DIR}")
    return contracts[name]


def _run_solc(root: Path, sources: Mapping[str, str]) -> dict[str, Any]:
    request = {"sources": dict(sources), "settings": COMPILER_SETTINGS}
    try:
        done = subprocess.run(
            ["node", "-e", _COMPILE_SCRIPT],
            input=json.dumps(request).encode(),
            capture_output=True,
            cwd=root,
            check=False,
            timeout=120,
        )
    except FileNotFoundError:
        raise CompilerMissing(f"node is not installed: {SETUP_HINT}") from None
    except subprocess.TimeoutExpired:
        raise SolidityError("compiling the contracts took over 120 s") from None
    if done.returncode != 0:
        raise SolidityError(f"compiling the contracts failed:\n{done.stderr.decode()[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result

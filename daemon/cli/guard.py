"""``driftd guard address|deploy``: the oracle guard at one verifiable address per source.

The guard (:file:`contracts/DriftGuardEnforcer.sol`) is compiled from the checkout with the pinned
solc-js (:mod:`daemon.solidity`) and deployed with CREATE2 through the standard
deterministic-deployment proxy with :data:`~daemon.create2.GUARD_SALT` (:mod:`daemon.create2`).
So its address follows from the source alone:

- ``driftd guard address`` computes it offline and prints it — on every chain with the proxy
  this is where the guard is (or will be); an owner or operator verifies a deployment by
  comparing it with ``[guard] enforcer`` and by checking that the address has code.
- ``driftd guard deploy`` deploys it on ``[chain]`` with the daemon's signer key (which pays
  the gas), unless it is already there; idempotent, so anyone may run it.

Exit codes: 0 done; 65 the sources do not compile; 69 the chain is unreachable or the deployment
failed (no proxy on the chain, the creation reverted); 78 no or a bad signer key, a chain-id
mismatch, or the compiler is not installed (``./dev setup``).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import trio

from daemon import exitcodes
from daemon.chain import ChainClient
from daemon.chain_errors import ChainError, ChainIdMismatch
from daemon.config import Config
from daemon.create2 import GUARD_CONTRACT, GUARD_SALT, PROXY, Create2Error, create2_address, deploy
from daemon.signer import TxSigner
from daemon.solidity import CompilerMissing, SolidityError, creation_code


def register(subparsers: Any) -> None:
    """Add ``guard address`` and ``guard deploy``."""
    guard = subparsers.add_parser(
        "guard", help="the oracle guard's deterministic address, and deploying it there"
    )
    actions = guard.add_subparsers(dest="guard_action", metavar="ACTION", required=True)
    address = actions.add_parser(
        "address",
        help="print the guard's address on any chain with the CREATE2 proxy (offline, from source)",
    )
    address.set_defaults(func=address_command)
    deploy_parser = actions.add_parser(
        "deploy",
        help="deploy the guard on [chain] with the signer key (no-op when already there)",
    )
    deploy_parser.add_argument(
        "--timeout",
        type=float,
        default=180.0,
        metavar="SECONDS",
        help="how long to wait for the deployment to be mined (default 180)",
    )
    deploy_parser.set_defaults(func=deploy_command)


def _init_code(command: str) -> tuple[bytes | None, int]:
    try:
        return creation_code(GUARD_CONTRACT), exitcodes.OK
    except CompilerMissing as exc:
        print(f"driftd guard {command}: {exc}", file=sys.stderr)
        return None, exitcodes.CONFIG_ERROR
    except SolidityError as exc:
        print(f"driftd guard {command}: {exc}", file=sys.stderr)
        return None, exitcodes.DATA_ERROR


def address_command(args: argparse.Namespace, config: Config) -> int:
    init_code, status = _init_code("address")
    if init_code is None:
        return status
    print(create2_address(GUARD_SALT, init_code))
    return exitcodes.OK


def deploy_command(args: argparse.Namespace, config: Config) -> int:
    if config.secrets.signer_key is None:
        print(
            "driftd guard deploy: no signer key configured (signer.key_file or DRIFTD_SIGNER_KEY)",
            file=sys.stderr,
        )
        return exitcodes.CONFIG_ERROR
    try:
        signer = TxSigner(key=config.secrets.signer_key)
    except ValueError as exc:
        print(f"driftd guard deploy: {exc}", file=sys.stderr)
        return exitcodes.CONFIG_ERROR
    if not args.timeout > 0:
        print("driftd guard deploy: --timeout must be positive", file=sys.stderr)
        return exitcodes.USAGE
    init_code, status = _init_code("deploy")
    if init_code is None:
        return status
    address = create2_address(GUARD_SALT, init_code)

    async def run() -> bool:
        async with ChainClient(config.chain) as client:
            already = bool(await client.get_code(address))
            await deploy(client, signer, GUARD_SALT, init_code, receipt_timeout=args.timeout)
            return already

    try:
        already = trio.run(run)
    except ChainIdMismatch as exc:
        print(f"driftd guard deploy: {exc}", file=sys.stderr)
        return exitcodes.CONFIG_ERROR
    except ChainError as exc:
        print(f"driftd guard deploy: chain unavailable: {exc}", file=sys.stderr)
        return exitcodes.UNAVAILABLE
    except Create2Error as exc:
        print(f"driftd guard deploy: {exc}", file=sys.stderr)
        return exitcodes.UNAVAILABLE
    state = "already deployed" if already else f"deployed through {PROXY}"
    print(f"{address} {state} (chain {config.chain.chain_id})")
    configured = config.guard.enforcer
    if configured and configured.lower() != address.lower():
        print(
            f"driftd guard deploy: note: [guard] enforcer is {configured}, not {address}",
            file=sys.stderr,
        )
    elif not configured:
        print(f'driftd guard deploy: set [guard] enforcer = "{address}"', file=sys.stderr)
    return exitcodes.OK

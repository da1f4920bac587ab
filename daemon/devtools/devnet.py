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

Layout: :mod:`~daemon.devtools.devnet_artifacts` (what is read from ``node_modules`` and
compiled), :mod:`~daemon.devtools.devnet_anvil` (the anvil process and its test RPCs),
:mod:`~daemon.devtools.devnet_deploy` (deploying, funding and feeds; why it waits for every
receipt) and :mod:`~daemon.devtools.devnet_records` (what was deployed: :class:`Devnet`). This
module starts and stops the whole and re-exports their public names: callers import from here.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import trio

from daemon.chain import ChainClient
from daemon.config import ChainConfig
from daemon.devtools.devnet_anvil import (
    DEVNET_CHAIN_ID,
    launch_anvil,
)
from daemon.devtools.devnet_artifacts import (
    load_artifacts,
    project_root,
)
from daemon.devtools.devnet_deploy import (
    deploy_devnet,
)
from daemon.devtools.devnet_records import (
    Devnet,
)

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

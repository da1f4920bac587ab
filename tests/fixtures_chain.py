"""Chain fixtures: one devnet (anvil + contracts) per test session, a snapshot per test.

Deploying takes well under a second, but doing it per test would still dominate the chain tests'
time, so the devnet is session-scoped and each test runs between ``evm_snapshot`` and
``evm_revert``. pytest-trio cannot run session-scoped async fixtures, so the session fixture is
sync (anvil is started and contracts deployed in their own ``trio.run``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from daemon.chain import ChainClient, Receipt, RetryPolicy
from daemon.config import Secret
from daemon.devtools.devnet import running_devnet
from daemon.devtools.devnet_anvil import evm_revert, evm_snapshot
from daemon.devtools.devnet_records import Devnet
from daemon.signer import TxRequest, TxSigner
from daemon.txbuild import Call


@pytest.fixture(scope="session")
def devnet() -> Iterator[Devnet]:
    """Anvil with Uniswap V2, the Delegation Framework and two funded smart accounts."""
    with running_devnet(owners=2) as deployed:
        yield deployed


@pytest.fixture
async def chain(devnet: Devnet) -> AsyncIterator[ChainClient]:
    """A client on the devnet; every change a test makes is reverted after it."""
    retry = RetryPolicy(max_retries=0)  # a local anvil has no transient failures to hide
    async with ChainClient(devnet.chain_config(), retry=retry) as client:
        snapshot = await evm_snapshot(client)
        try:
            yield client
        finally:
            await evm_revert(client, snapshot)
            # anvil keeps its next base fee across a revert: a test that spiked it would make
            # the next test's transactions "below the base fee". Back to the snapshot's.
            latest = await client.latest_block()
            await client.request("anvil_setNextBlockBaseFeePerGas", [hex(latest.base_fee)])


async def send_call(
    client: ChainClient, key: Secret, call: Call, *, gas: int | None = None
) -> Receipt:
    """Sign and send one call from ``key`` and wait for its receipt (reverts are not raised).

    With ``gas`` given there is no estimate, so a call that reverts is mined with status 0 —
    the real attempt, not a simulation.
    """
    signer = TxSigner(key=key)
    nonce = await client.get_transaction_count(signer.address)
    fees = await client.fee_data()
    if gas is None:
        gas = await client.estimate_gas(call.to, call.data, sender=signer.address) * 2
    signed = signer.sign(
        TxRequest(
            to=call.to,
            data=call.data,
            nonce=nonce,
            gas=gas,
            max_fee_per_gas=fees.max_fee(),
            max_priority_fee_per_gas=fees.priority_fee,
            chain_id=client.chain_id,
            value=call.value,
        )
    )
    tx_hash = await client.send_raw_transaction(signed)
    return await client.wait_for_receipt(tx_hash, poll_interval=0.01)

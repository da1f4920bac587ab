"""Deploying the devnet: every contract in dependency order on a fresh anvil, pools with
liquidity, the guard through the deterministic-deployment proxy, mock feeds and funded smart
accounts (what was deployed is recorded in :class:`~daemon.devtools.devnet_records.Devnet`); and
later changes to it: funding, more smart accounts, feed prices.

Deployment sends ~40 transactions from anvil's unlocked first account with explicit gas (no
estimation round trips), then waits until all of them are mined and checks every receipt. anvil
answers ``eth_sendTransaction`` as soon as the transaction is in its pool; even with automine the
block is mined a moment later by anvil's miner task, so a receipt (or state) read straight after
sending may not show it yet — everything here that sends waits for the receipts before returning.
:mod:`daemon.devtools.devnet` re-exports the public names.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

import attrs
import trio
from eth_abi.abi import encode as abi_encode
from eth_account import Account
from eth_utils.crypto import keccak

from daemon import create2
from daemon.abi import encode_call, hex_int, hex_of
from daemon.address import to_address
from daemon.chain import ChainClient
from daemon.config import Secret
from daemon.create2 import GUARD_SALT
from daemon.devtools.devnet_artifacts import (
    ENFORCER_CONTRACTS,
    Artifacts,
    DevnetError,
    framework_code,
    link_library,
    load_artifacts,
)
from daemon.devtools.devnet_records import (
    DEFAULT_POOLS,
    DEFAULT_TOKENS,
    FEED_DECIMALS,
    Devnet,
    DevnetToken,
    PoolSpec,
    SmartAccount,
    devnet_key,
    feed_answer,
    reference_prices,
)

_DEPLOY_GAS: Final = 25_000_000
_CALL_GAS: Final = 3_000_000
_RECEIPT_POLL_SECONDS: Final = 0.005
_MINED_TIMEOUT_SECONDS: Final = 30.0


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
    """Deploy every contract on a fresh anvil and create ``owners`` funded smart accounts (in
    a fixed order: the deployer's nonces decide every address)."""
    started = time.perf_counter()
    artifacts = artifacts or load_artifacts()
    (deployer_address,) = [to_address(a) for a in await client.request("eth_accounts")]
    deployer = _Deployer(
        client, deployer_address, await client.get_transaction_count(deployer_address)
    )
    tokens = await _deploy_tokens(deployer, artifacts)
    weth = tokens[0].address
    by_symbol = {token.symbol: token for token in tokens}
    factory, router = await _deploy_uniswap(deployer, artifacts, weth)
    framework = await _deploy_framework(deployer, artifacts)
    guard = await _deploy_guard(client, deployer, artifacts)
    reference_usd = reference_prices(pools, quote_symbol="USDC")
    feeds = await _deploy_feeds(deployer, artifacts, tokens, reference_usd)
    funder = _Funder(deployer, by_symbol)
    for pool in pools:
        await _add_liquidity(deployer, funder, router, by_symbol, pool)
    signer, signer_key = await _fund_signer(client)
    funding = account_funding or {"USDC": Decimal(60_000), "WETH": Decimal(10), "WBTC": Decimal(1)}
    accounts = [
        await _create_funded_account(deployer, funder, artifacts, framework, index, funding)
        for index in range(owners)
    ]
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
        manager=framework.manager,
        entry_point=framework.entry_point,
        simple_factory=framework.simple_factory,
        hybrid_implementation=framework.hybrid,
        enforcers=framework.enforcers,
        signer=signer,
        signer_key=signer_key,
        accounts=tuple(accounts),
        deploy_seconds=time.perf_counter() - started,
        guard=guard,
        feeds=feeds,
        reference_usd=reference_usd,
    )


async def _fund_signer(client: ChainClient) -> tuple[str, Secret]:
    """The daemon's signer and its key: it pays gas (the owners only sign)."""
    signer_key = devnet_key("signer")
    signer = to_address(Account.from_key(signer_key.reveal()).address)
    await client.request("anvil_setBalance", [signer, hex(10**22)])
    return signer, signer_key


async def _deploy_tokens(deployer: _Deployer, artifacts: Artifacts) -> list[DevnetToken]:
    """WETH9 (the router's WETH and the portfolios' WETH) first, then the DevnetTokens."""
    weth = await deployer.deploy(artifacts.weth9)
    tokens = [DevnetToken("WETH", weth, 18)]
    for symbol, name, decimals in DEFAULT_TOKENS:
        address = await deployer.deploy(
            artifacts.devnet_token,
            abi_encode(["string", "string", "uint8"], [name, symbol, decimals]),
        )
        tokens.append(DevnetToken(symbol, address, decimals))
    return tokens


async def _deploy_uniswap(deployer: _Deployer, artifacts: Artifacts, weth: str) -> tuple[str, str]:
    """UniswapV2Factory (fees to the deployer) and Router02 on ``weth``: their addresses."""
    factory = await deployer.deploy(
        artifacts.uniswap_factory, abi_encode(["address"], [deployer.address])
    )
    router = await deployer.deploy(
        artifacts.uniswap_router, abi_encode(["address", "address"], [factory, weth])
    )
    return factory, router


@attrs.frozen
class _Framework:
    """Where the Delegation Framework's contracts were deployed."""

    entry_point: str
    manager: str
    hybrid: str
    """The HybridDeleGator implementation (linked to SCL_RIP7212)."""
    simple_factory: str
    enforcers: dict[str, str]
    """DelegationConfig field name → enforcer address."""


async def _deploy_framework(deployer: _Deployer, artifacts: Artifacts) -> _Framework:
    entry_point = await deployer.deploy(framework_code(artifacts, "EntryPoint"))
    manager = await deployer.deploy(
        framework_code(artifacts, "DelegationManager"), abi_encode(["address"], [deployer.address])
    )
    scl = await deployer.deploy(framework_code(artifacts, "SCL_RIP7212"))
    hybrid = await deployer.deploy(
        link_library(artifacts.framework["HybridDeleGator"], scl),
        abi_encode(["address", "address"], [manager, entry_point]),
    )
    simple_factory = await deployer.deploy(framework_code(artifacts, "SimpleFactory"))
    enforcers = {
        field: await deployer.deploy(framework_code(artifacts, contract))
        for field, contract in ENFORCER_CONTRACTS.items()
    }
    return _Framework(entry_point, manager, hybrid, simple_factory, enforcers)


async def _deploy_guard(client: ChainClient, deployer: _Deployer, artifacts: Artifacts) -> str:
    """The guard goes through the deterministic-deployment proxy with the production salt, so
    it sits where `driftd guard address` says it does on every chain."""
    await ensure_create2_proxy(client)
    guard = create2.create2_address(GUARD_SALT, artifacts.guard_enforcer)
    await deployer.send(create2.PROXY, GUARD_SALT + artifacts.guard_enforcer, gas=_DEPLOY_GAS)
    return guard


async def _deploy_feeds(
    deployer: _Deployer,
    artifacts: Artifacts,
    tokens: Sequence[DevnetToken],
    reference_usd: Mapping[str, Decimal],
) -> dict[str, str]:
    """A mock Chainlink USD feed per token with a reference price, starting at that price."""
    return {
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


async def _create_funded_account(
    deployer: _Deployer,
    funder: _Funder,
    artifacts: Artifacts,
    framework: _Framework,
    index: int,
    funding: Mapping[str, Decimal],
) -> SmartAccount:
    """Smart account number ``index`` (owner key and salt from it), funded with ``funding``."""
    owner_key = devnet_key(f"owner {index}")
    account = await _create_smart_account(
        deployer, artifacts, framework.simple_factory, framework.hybrid, owner_key, salt=index
    )
    await funder.fund(
        account.address,
        {symbol: funder.tokens[symbol].units(amount) for symbol, amount in funding.items()},
    )
    return account


async def _add_liquidity(
    deployer: _Deployer,
    funder: _Funder,
    router: str,
    by_symbol: Mapping[str, DevnetToken],
    pool: PoolSpec,
) -> None:
    token_a, token_b = by_symbol[pool.symbol_a], by_symbol[pool.symbol_b]
    amount_a, amount_b = token_a.units(pool.amount_a), token_b.units(pool.amount_b)
    await funder.fund(deployer.address, {pool.symbol_a: amount_a, pool.symbol_b: amount_b})
    for token, amount in ((token_a, amount_a), (token_b, amount_b)):
        await deployer.send(token.address, encode_call("approve(address,uint256)", router, amount))
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
            deployer.address,
            2**64,
        ),
        gas=_DEPLOY_GAS,
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
    init_code = framework_code(artifacts, "ERC1967Proxy") + abi_encode(
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

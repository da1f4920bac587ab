"""Packing and pipelining on the real devnet: several portfolios' rebalances in one
redeemDelegations, or in consecutive nonces mined in one block.

The executor runs against the real contracts (Uniswap V2, the Delegation Framework, the oracle
guard) and a real PostgreSQL; the smart accounts are the devnet's, each with its owner's signed
guarded delegations. What must hold:

- a pack trades every member and charges each its share of the gas, which is less than the
  member would pay alone;
- a member whose own call would revert never joins a pack (the others trade);
- a pack that reverts when mined (a front-runner pushed one member's pool) costs the others
  nothing: each is re-planned and trades alone, within its one attempt;
- the signer's nonces stay contiguous (every nonce we signed is mined, no gap), and a trade of a
  portfolio carried as the second member of a pack still refuses a plan on older balances.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

import attrs
import pytest
import trio
from daemon_harness import daemon_config, guarded_delegations
from fixtures_chain import send_call

from daemon.chain import ChainClient
from daemon.config import DatabaseConfig
from daemon.db import Database, FinishedAttempt, TxIntent
from daemon.delegation import current_nonce
from daemon.devtools.devnet_anvil import set_eth_balance
from daemon.devtools.devnet_deploy import create_smart_account, fund
from daemon.devtools.devnet_records import Devnet, SmartAccount, devnet_key
from daemon.drift import Leg, Rebalance, to_base_units
from daemon.executor import Executor
from daemon.faults import Faults, InjectedFault
from daemon.live_config import ConfigHolder
from daemon.messages import RebalanceOutcome, RebalanceRequest, Token
from daemon.signer import TxRequest, TxSigner
from daemon.txbuild import DelegationMode, ExecutionMode, SwapLeg, WalletMode
from daemon.uniswap import UniswapV2

pytestmark = pytest.mark.usefixtures("devnet")

PACK_MAX_GAS = 5_000_000


@attrs.define(eq=False)
class Desk:
    """The executor on the devnet, and what it asks of the daemon."""

    chain: ChainClient
    devnet: Devnet
    db: Database
    executor: Executor = attrs.field(init=False)
    modes: dict[int, ExecutionMode] = attrs.Factory(dict)
    finished: list[tuple[str, FinishedAttempt]] = attrs.Factory(list)
    config: ConfigHolder = attrs.field(init=False)

    def by_symbol(self) -> Mapping[str, Token]:
        return {t.symbol: Token(t.symbol, t.address, t.decimals) for t in self.devnet.tokens}

    def mode_for(self, request: RebalanceRequest) -> ExecutionMode:
        return self.modes[request.portfolio_id]

    def delegation_problem(self, portfolio_id: int) -> str | None:
        return None

    def fire(self, kind: str, fields: Mapping[str, object]) -> bool:
        return True

    def rebalance_finished(
        self, portfolio_id: int, portfolio: str, result: FinishedAttempt
    ) -> None:
        self.finished.append((portfolio, result))


async def make_desk(
    chain: ChainClient,
    devnet: Devnet,
    db: Database,
    db_config: DatabaseConfig,
    pack_max_gas: int,
    *,
    tokens: bool = True,
    faults: Faults | None = None,
    workers: int = 1,
) -> Desk:
    desk = Desk(chain, devnet, db)
    desk.config = ConfigHolder(
        daemon_config(
            devnet,
            db_config,
            execution={"pack_max_gas": pack_max_gas, "poll_interval": 0.1},
        )
    )
    desk.executor = Executor(
        chain=chain,
        uniswap=UniswapV2(chain, devnet.router, devnet.quote.address),
        signer=TxSigner(key=devnet.signer_key),
        db=db,
        tokens=desk,
        modes=desk,
        config=desk.config,
        alerts=desk,  # type: ignore[arg-type]
        outcomes=desk,
        max_in_flight=workers,
        faults=faults or Faults(),
    )
    for token in devnet.tokens if tokens else ():
        await db.add_token(
            token.symbol,
            token.address,
            chain_id=devnet.chain_id,
            decimals=token.decimals,
            is_quote=token.symbol == devnet.quote_symbol,
        )
    return desk


@pytest.fixture
async def accounts(chain: ChainClient, devnet: Devnet) -> list[SmartAccount]:
    """The devnet's two funded accounts and a third, funded here (reverted after the test)."""
    third = await create_smart_account(chain, devnet, devnet_key("packing owner 3"), salt=9_003)
    await fund(
        chain, devnet, third.address, {"USDC": 60_000 * 10**6, "WETH": 10 * 10**18, "WBTC": 10**8}
    )
    return [*devnet.accounts, third]


async def add_portfolio(desk: Desk, account: SmartAccount, name: str) -> int:
    devnet = desk.devnet
    nonce = await current_nonce(desk.chain, devnet.delegation_config(), account.address)
    signed = guarded_delegations(devnet, account, ["USDC", "WETH", "WBTC"], nonce=nonce)
    row = await desk.db.add_portfolio(
        name,
        account.address,
        chain_id=devnet.chain_id,
        targets={"USDC": Decimal("0.4"), "WETH": Decimal("0.4"), "WBTC": Decimal("0.2")},
        delegation=[d.to_json() for d in signed],
    )
    desk.modes[row.id] = DelegationMode.from_signed(
        signed,
        router=devnet.router,
        enforcers=devnet.delegation_config(),
        guard=devnet.guard,
    )
    return row.id


async def spot(desk: Desk, symbol: str) -> Decimal:
    if symbol == desk.devnet.quote_symbol:
        return Decimal(1)
    token, quote = desk.devnet.token(symbol), desk.devnet.quote
    return await desk.executor.uniswap.spot_price(
        token.address, token.decimals, quote.address, quote.decimals
    )


async def request(
    desk: Desk, portfolio_id: int, name: str, account: str, sell: str, buy: str, usd: int
) -> RebalanceRequest:
    """A one-leg plan at the pools' current prices, as an actor would send it (its answer goes
    to a reply channel nobody reads: the tests read the rows)."""
    prices = {s: await spot(desk, s) for s in ("USDC", "WETH", "WBTC")}
    tokens = desk.by_symbol()
    size = Decimal(usd)
    leg = Leg(
        sell=sell,
        buy=buy,
        usd=size,
        amount_in=to_base_units(size / prices[sell], tokens[sell].decimals),
        expected_out=to_base_units(size / prices[buy], tokens[buy].decimals),
        capped=False,
    )
    reply, _ = trio.open_memory_channel[RebalanceOutcome](1)
    head = await desk.chain.latest_block()
    plan = Rebalance(max_drift=Decimal("0.2"), drifts=(), legs=(leg,), total_usd=size * 10)
    return RebalanceRequest(
        portfolio_id=portfolio_id,
        portfolio_name=name,
        account=account,
        plan=plan,
        prices=prices,
        reply=reply,
        requested_at=trio.current_time(),
        balances_block=head.number,
    )


async def each_buys_weth(
    desk: Desk, portfolios: Sequence[tuple[int, str, str]]
) -> list[RebalanceRequest]:
    """Every portfolio's request to buy 1 000 USD of WETH with USDC."""
    return [
        await request(desk, pid, name, account, "USDC", "WETH", 1_000)
        for pid, name, account in portfolios
    ]


@asynccontextmanager
async def one_block_held(chain: ChainClient) -> AsyncIterator[None]:
    """No block is mined inside; on leaving, what waits in the pool is mined in one block and
    each transaction is mined as it comes again."""
    await chain.request("evm_setAutomine", [False])
    try:
        yield
        await chain.request("evm_mine", [])
    finally:
        await chain.request("evm_setAutomine", [True])


async def carry_out(desk: Desk, batch: Sequence[RebalanceRequest], *, recovering: int = 0) -> None:
    """Queue the requests, then run the executor (lease, recovery, one worker) until every
    one is answered (and ``recovering`` recovered attempts finished): the worker takes the
    first request and the others waiting with it."""
    send, receive = trio.open_memory_channel[RebalanceRequest](max(1, len(batch)))
    for item in batch:
        send.send_nowait(item)
    before = len(desk.finished)
    async with trio.open_nursery() as nursery:
        await nursery.start(desk.executor.run, receive)
        while len(desk.finished) < before + len(batch) + recovering:
            await trio.sleep(0.02)
        nursery.cancel_scope.cancel()


async def intents(db: Database) -> list[TxIntent]:
    rows = await db.fetch("SELECT id FROM tx_intent ORDER BY id")
    found: dict[int, TxIntent] = {}
    for rebalance in await db.fetch("SELECT id FROM rebalance_log"):
        for intent in await db.intents_for_rebalance(rebalance["id"]):
            found[intent.id] = intent
    assert sorted(found) == [r["id"] for r in rows]
    return [found[i] for i in sorted(found)]


async def assert_no_nonce_gap(desk: Desk) -> None:
    """Every nonce the executor signed was consumed on chain, in order, with nothing missing."""
    recorded = sorted({i.nonce for i in await intents(desk.db)})
    mined = await desk.chain.get_transaction_count(desk.executor.signer.address)
    assert recorded == list(range(recorded[0], recorded[0] + len(recorded)))
    assert mined == recorded[-1] + 1


async def rows(db: Database) -> dict[str, dict[str, Any]]:
    found = await db.fetch(
        "SELECT p.name, r.status, r.transaction_hash, r.gas_used, r.error FROM rebalance_log r"
        " JOIN portfolio p ON p.id = r.portfolio_id ORDER BY r.id"
    )
    return {row["name"]: dict(row) for row in found}


async def three_portfolios(
    desk: Desk, accounts: Sequence[SmartAccount]
) -> list[tuple[int, str, str]]:
    out = []
    for index, account in enumerate(accounts[:3]):
        name = f"p{index}"
        out.append((await add_portfolio(desk, account, name), name, account.address))
    return out


async def test_a_pack_trades_every_member_and_charges_each_its_share(
    chain: ChainClient,
    devnet: Devnet,
    db: Database,
    db_config: DatabaseConfig,
    accounts: list[SmartAccount],
) -> None:
    with trio.fail_after(60):
        desk = await make_desk(chain, devnet, db, db_config, PACK_MAX_GAS)
        portfolios = await three_portfolios(desk, accounts)
        # Each trades alone twice: the first sets the standing allowance and warms storage, the
        # second is what the same trade costs alone from then on.
        alone: dict[str, int] = {}
        for _ in range(2):
            for pid, name, account in portfolios:
                single = await request(desk, pid, name, account, "USDC", "WETH", 1_000)
                await carry_out(desk, [single])
                row = (await rows(db))[name]
                assert row["status"] == "SUCCESS"
                alone[name] = int(row["gas_used"])
        batch = await each_buys_weth(desk, portfolios)
        nonce_before = await chain.get_transaction_count(desk.executor.signer.address)
        await carry_out(desk, batch)
        found = await rows(db)
        assert {name: row["status"] for name, row in found.items()} == {
            "p0": "SUCCESS",
            "p1": "SUCCESS",
            "p2": "SUCCESS",
        }
        hashes = {row["transaction_hash"] for row in found.values()}
        assert len(hashes) == 1, "one transaction carried all three"
        packed = (await intents(db))[-1]
        assert packed.status == "CONFIRMED"
        assert len(packed.packed_rebalance_ids) == 3
        assert packed.gas_used is not None
        shares = {name: int(row["gas_used"]) for name, row in found.items()}
        assert sum(shares.values()) <= packed.gas_used
        assert all(share >= packed.gas_used // 3 - 1 for share in shares.values())
        assert await chain.get_transaction_count(desk.executor.signer.address) == nonce_before + 1
        for name, share in shares.items():
            assert share < alone[name], (name, share, alone[name])
        await assert_no_nonce_gap(desk)

        # Every member's trade counts as that portfolio's trade: a plan of any of them made on
        # balances read before the pack was mined is refused (not only the first member's).
        assert packed.block_number is not None
        for pid, name, account in portfolios:
            stale = await request(desk, pid, name, account, "USDC", "WETH", 1_000)
            stale = attrs.evolve(stale, balances_block=packed.block_number - 1)
            await carry_out(desk, [stale])
            row = (await rows(db))[name]
            assert row["status"] == "SKIPPED", (name, row)


async def test_a_member_that_would_revert_alone_is_not_packed(
    chain: ChainClient,
    devnet: Devnet,
    db: Database,
    db_config: DatabaseConfig,
    accounts: list[SmartAccount],
) -> None:
    with trio.fail_after(60):
        desk = await make_desk(chain, devnet, db, db_config, PACK_MAX_GAS)
        portfolios = await three_portfolios(desk, accounts)
        batch = []
        for index, (pid, name, account) in enumerate(portfolios):
            # p1 sells more USDC than it holds: its own call reverts in the token transfer.
            usd = 500_000 if index == 1 else 1_000
            batch.append(await request(desk, pid, name, account, "USDC", "WETH", usd))
        await carry_out(desk, batch)
        found = await rows(db)
        assert found["p0"]["status"] == "SUCCESS"
        assert found["p2"]["status"] == "SUCCESS"
        assert found["p0"]["transaction_hash"] == found["p2"]["transaction_hash"]
        assert found["p1"]["status"] in ("FAILED", "SKIPPED")
        assert found["p1"]["transaction_hash"] is None, "nothing of p1 was sent"
        await assert_no_nonce_gap(desk)


async def test_a_pack_reverted_by_a_front_runner_costs_the_others_nothing(
    chain: ChainClient,
    devnet: Devnet,
    db: Database,
    db_config: DatabaseConfig,
    accounts: list[SmartAccount],
) -> None:
    with trio.fail_after(90):
        desk = await make_desk(chain, devnet, db, db_config, PACK_MAX_GAS)
        portfolios = await three_portfolios(desk, accounts)
        # p0 sells WBTC into the WBTC/USDC pool; p1 and p2 buy WETH in another pool.
        legs = [("WBTC", "USDC", 20_000), ("USDC", "WETH", 1_000), ("USDC", "WETH", 1_000)]
        batch = [
            await request(desk, pid, name, account, *leg)
            for (pid, name, account), leg in zip(portfolios, legs, strict=True)
        ]
        await arm_front_runner(chain, devnet)
        async with trio.open_nursery() as nursery, one_block_held(chain):
            nursery.start_soon(carry_out, desk, batch)
            while not await db.fetch("SELECT id FROM tx_intent WHERE status = 'BROADCAST'"):
                await trio.sleep(0.05)
            # A front-runner dumps WBTC into p0's pool, outbidding the pack: p0's swap now
            # pays less than its amountOutMin, and redeemDelegations reverts as a whole.
            await front_run(chain, devnet)
        found = await rows(db)
        assert found["p1"]["status"] == "SUCCESS"
        assert found["p2"]["status"] == "SUCCESS"
        assert found["p1"]["transaction_hash"] != found["p2"]["transaction_hash"], "each alone"
        # p0's pool moved 44 %: alone, at fresh quotes, it is refused (quote deviation).
        assert found["p0"]["status"] == "FAILED"
        assert "not sent alone after the pack reverted" in found["p0"]["error"]
        recorded = await intents(db)
        pack = recorded[0]
        assert pack.status == "REVERTED"
        assert len(pack.packed_rebalance_ids) == 3
        # Each of the others paid its share of the reverted pack and its own transaction.
        assert found["p1"]["gas_used"] > (pack.gas_used or 0) // 3
        await assert_no_nonce_gap(desk)


FRONT_RUNNER = devnet_key("packing front-runner")
FRONT_RUN_WBTC = 50 * 10**8


async def arm_front_runner(chain: ChainClient, devnet: Devnet) -> None:
    """Fund the front-runner and approve the router (mined now, while blocks still come)."""
    trader = TxSigner(key=FRONT_RUNNER).address
    await set_eth_balance(chain, trader, 10**20)
    await fund(chain, devnet, trader, {"WBTC": FRONT_RUN_WBTC})
    approve = WalletMode(router=devnet.router, signer=trader).calls([front_run_leg(devnet, 2**40)])
    assert (await send_call(chain, FRONT_RUNNER, approve[0])).succeeded


def front_run_leg(devnet: Devnet, deadline: int) -> SwapLeg:
    wbtc, usdc = devnet.token("WBTC"), devnet.quote
    return SwapLeg(
        token_in=wbtc.address,
        token_out=usdc.address,
        amount_in=FRONT_RUN_WBTC,
        amount_out_min=1,
        path=(wbtc.address, usdc.address),
        deadline=deadline,
    )


async def front_run(chain: ChainClient, devnet: Devnet) -> None:
    """Dump WBTC into the WBTC/USDC pool with a tip far above the pack's, so it goes first."""
    signer = TxSigner(key=FRONT_RUNNER)
    head = await chain.latest_block()
    (swap,) = WalletMode(router=devnet.router, signer=signer.address).calls(
        [front_run_leg(devnet, head.timestamp + 600)], {devnet.token("WBTC").address: 2**255}
    )
    fees = await chain.fee_data()
    tip = 100 * 10**9
    signed = signer.sign(
        TxRequest(
            to=swap.to,
            data=swap.data,
            nonce=await chain.get_transaction_count(signer.address),
            gas=300_000,
            max_fee_per_gas=fees.max_fee() + tip,
            max_priority_fee_per_gas=tip,
            chain_id=chain.chain_id,
        )
    )
    await chain.send_raw_transaction(signed)


async def test_a_pack_recorded_before_a_crash_is_settled_once_for_all_its_attempts(
    chain: ChainClient,
    devnet: Devnet,
    db: Database,
    db_config: DatabaseConfig,
    accounts: list[SmartAccount],
) -> None:
    with trio.fail_after(60):
        # The process dies between recording the signed pack and broadcasting it.
        desk = await make_desk(
            chain, devnet, db, db_config, PACK_MAX_GAS, faults=Faults({"after_intent": "raise"})
        )
        portfolios = await three_portfolios(desk, accounts)
        batch = await each_buys_weth(desk, portfolios)
        with pytest.RaisesGroup(InjectedFault, flatten_subgroups=True):
            await carry_out(desk, batch)
        assert {row["status"] for row in (await rows(db)).values()} == {"PENDING"}
        (recorded,) = await intents(db)
        assert recorded.status == "SIGNED"

        # The next start recovers it: one broadcast, and every attempt it carries finished.
        restarted = await make_desk(chain, devnet, db, db_config, PACK_MAX_GAS, tokens=False)
        await carry_out(restarted, [], recovering=3)
        found = await rows(db)
        assert {row["status"] for row in found.values()} == {"SUCCESS"}
        assert {row["transaction_hash"] for row in found.values()} == {recorded.tx_hash}
        (mined,) = await intents(db)
        assert mined.status == "CONFIRMED"
        assert mined.gas_used is not None
        assert sum(int(row["gas_used"]) for row in found.values()) <= mined.gas_used
        await assert_no_nonce_gap(restarted)


async def test_without_packing_the_workers_pipeline_consecutive_nonces_into_one_block(
    chain: ChainClient,
    devnet: Devnet,
    db: Database,
    db_config: DatabaseConfig,
    accounts: list[SmartAccount],
) -> None:
    """Three workers, packing off, blocks held back: the three rebalances are signed with
    consecutive nonces and wait in the node's pool together (none waits for another's
    receipt), then all three are mined in one block."""
    with trio.fail_after(60):
        desk = await make_desk(chain, devnet, db, db_config, 0, workers=3)
        portfolios = await three_portfolios(desk, accounts)
        batch = await each_buys_weth(desk, portfolios)
        async with trio.open_nursery() as nursery, one_block_held(chain):
            nursery.start_soon(carry_out, desk, batch)
            while len(await db.fetch("SELECT id FROM tx_intent WHERE status = 'BROADCAST'")) < 3:
                await trio.sleep(0.05)
        found = await rows(db)
        assert {row["status"] for row in found.values()} == {"SUCCESS"}
        recorded = await intents(db)
        assert len(recorded) == 3
        assert not any(intent.packed_rebalance_ids for intent in recorded)
        assert len({intent.block_number for intent in recorded}) == 1, "one block"
        await assert_no_nonce_gap(desk)

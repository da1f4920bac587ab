"""Burst and price-move latency on the devnet (issue 15, figures 3 and 4).

Not a test; :mod:`bench_executor` runs these on its devnet and :mod:`bench_capacity` prints
them. Each phase has a fresh database of its own.

- **burst** (:func:`burst`): N delegation-mode portfolios (real HybridDeleGator smart accounts,
  real signed delegations under the oracle guard) all fall due at once. Half hold too much
  WETH and half too little (so the pools end near where they started and no plan is refused
  for the market running away); each is a 3-token portfolio of 2 000 USD, 50/30/20
  USDC/WETH/WBTC, held at 40/40/20 or 60/20/20 (drift ±33 %). Their N
  :class:`~daemon.messages.RebalanceRequest` messages (plans from the engine at the pools'
  prices, as a portfolio actor makes them) are handed at once to the real
  :class:`~daemon.executor.Executor` (durable intents in PostgreSQL, the signer's lease,
  recovery), wired as ``daemon/app.py`` wires it, on anvil mining a block every 2 seconds.
  Figure: blocks from the head at the hand-over until the block holding the last of the
  signer's transactions; reference: ``ceil(gas used by those transactions / block gas
  limit)``, the fewest blocks that gas fits in.
- **move → mined** (:func:`move_to_mined`): the real daemon (:func:`daemon.app.run_daemon`,
  the demo's configuration: router prices polled every second, 15 % threshold; cooldown 0 so
  the moves need not wait for it) runs one portfolio of 100 000 USD at its targets; the demo's
  market trader moves the WETH pool by ×1.5 or ÷1.5 (alternately: the engine trades only
  part of the way back, so a smaller move may stay inside the 15 % band) with a real swap and
  posts the new price to the WETH feed (``daemon/devtools/market.py``). Figure: seconds from
  the start of the move until the signer's rebalance transaction is mined (seen by polling the
  signer's mined nonce every 10 ms), p50/p99 over the moves; each is checked to be a SUCCESS
  row.
"""

from __future__ import annotations

import math
import os
import resource
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Final, TypeVar

import attrs
import trio
from capacity_setup import (
    Bench,
    BenchPortfolio,
    bench_config,
    bench_document,
    open_portfolios,
    register_tokens,
    seconds,
    until,
)

from daemon import db as dbm
from daemon.app import run_daemon
from daemon.chain import ChainClient
from daemon.config import Config
from daemon.db import open_database
from daemon.devtools.devnet_records import devnet_key
from daemon.devtools.market import Step, Trader
from daemon.drift import EngineParams, Holding, Rebalance, evaluate
from daemon.executor import Executor
from daemon.live_config import ConfigHolder
from daemon.messages import RebalanceOutcome, RebalanceRequest
from daemon.modes import ExecutionModeBook
from daemon.retry import OutageLog
from daemon.signer import TxSigner
from daemon.tokens import TokenBook
from daemon.uniswap import UniswapV2

TARGETS: Final = {"USDC": Decimal("0.5"), "WETH": Decimal("0.3"), "WBTC": Decimal("0.2")}
HELD_HIGH: Final = {"USDC": Decimal("0.4"), "WETH": Decimal("0.4"), "WBTC": Decimal("0.2")}
HELD_LOW: Final = {"USDC": Decimal("0.6"), "WETH": Decimal("0.2"), "WBTC": Decimal("0.2")}
BURST_USD: Final = Decimal(2_000)
MOVE_USD: Final = Decimal(100_000)
BLOCK_TIME: Final = 2
BURST_TIMEOUT: Final = 900.0
MOVE_FACTOR: Final = Decimal("1.5")
MOVE_TIMEOUT: Final = 60.0
NONCE_POLL: Final = 0.01

T = TypeVar("T")


def packing_available() -> bool:
    """Whether the configuration schema knows ``execution.pack_max_gas``."""
    return "pack_max_gas" in attrs.fields_dict(type(Config().execution))


async def spot_prices(bench: Bench) -> dict[str, Decimal]:
    trader = Trader(bench.chain, bench.devnet, devnet_key("bench price reader"))
    return {token.symbol: await trader.price(token.symbol) for token in bench.devnet.tokens}


# --- the executor, wired as daemon/app.py wires it ----------------------------------------------


@attrs.define
class CountingAlerts:
    """Alerts are counted, not sent."""

    fired: Counter[str] = attrs.Factory(Counter)

    def fire(self, kind: str, fields: Mapping[str, Any]) -> bool:
        self.fired[kind] += 1
        return True


@attrs.define
class Outcomes:
    """The executor's outcome listener (the portfolio supervisor in the daemon)."""

    finished: Counter[str] = attrs.Factory(Counter)

    def rebalance_finished(
        self, portfolio_id: int, portfolio: str, result: dbm.FinishedAttempt
    ) -> None:
        self.finished[result.status] += 1


async def build_executor(
    config: Config, db: dbm.Database, chain: ChainClient, alerts: CountingAlerts
) -> Executor:
    """The executor with the services ``daemon.app._services`` gives it, every registered
    portfolio's execution mode built and checked by the mode book."""
    holder = ConfigHolder(base=config)
    tokens = TokenBook(db, holder, OutageLog())
    await tokens.refresh()
    quote = tokens.quote()
    assert config.secrets.signer_key is not None
    signer = TxSigner(key=config.secrets.signer_key)
    modes = ExecutionModeBook(holder, signer.address, tokens, lambda: datetime.now(UTC))
    for portfolio in await db.active_portfolios(config.chain.chain_id):
        modes.use(portfolio.id, modes.build(portfolio))
    return Executor(
        chain=chain,
        uniswap=UniswapV2(chain, config.chain.router, quote.address if quote else None),
        signer=signer,
        db=db,
        tokens=tokens,
        modes=modes,
        config=holder,
        alerts=alerts,
        outcomes=Outcomes(),
        max_in_flight=config.execution.max_in_flight,
    )


def request_for(
    portfolio: BenchPortfolio,
    prices: Mapping[str, Decimal],
    decimals: Mapping[str, int],
    params: EngineParams,
    block: int,
) -> tuple[RebalanceRequest, trio.MemoryReceiveChannel[RebalanceOutcome]]:
    """The request a portfolio actor sends for this portfolio at ``prices``."""
    holdings = [Holding(s, amount, decimals[s]) for s, amount in portfolio.holdings.items()]
    plan = evaluate(holdings, portfolio.targets, prices, params=params)
    if not isinstance(plan, Rebalance):
        raise RuntimeError(f"{portfolio.name} is not due: {plan}")
    reply, answers = trio.open_memory_channel[RebalanceOutcome](1)
    request = RebalanceRequest(
        portfolio_id=portfolio.id,
        portfolio_name=portfolio.name,
        account=portfolio.account,
        plan=plan,
        prices=prices,
        reply=reply,
        requested_at=trio.current_time(),
        balances_block=block,
        prices_observed_at=datetime.now(UTC),
    )
    return request, answers


# --- burst ----------------------------------------------------------------------------------


@attrs.frozen
class BurstResult:
    portfolios: int
    max_in_flight: int
    pack_max_gas: int | None
    blocks: int
    min_blocks: int
    gas_used: int
    transactions: int
    block_gas_limit: int
    seconds: float
    statuses: Mapping[str, int]
    alerts: Mapping[str, int]
    gas_per_block: Sequence[int]
    cpu_seconds: Mapping[str, float]
    """CPU time during the burst: this process (executor, asyncpg's thread) and anvil."""

    def as_json(self) -> dict[str, Any]:
        return {
            "portfolios": self.portfolios,
            "max_in_flight": self.max_in_flight,
            "pack_max_gas": self.pack_max_gas,
            "blocks": self.blocks,
            "min_blocks": self.min_blocks,
            "ratio": round(self.blocks / self.min_blocks, 2) if self.min_blocks else None,
            "gas_used": self.gas_used,
            "gas_per_portfolio": self.gas_used // max(1, self.portfolios),
            "transactions": self.transactions,
            "block_gas_limit": self.block_gas_limit,
            "seconds": round(self.seconds, 1),
            "statuses": dict(self.statuses),
            "alerts": dict(self.alerts),
            "signer_gas_per_block": list(self.gas_per_block),
            "cpu_seconds": {k: round(v, 1) for k, v in self.cpu_seconds.items()},
        }


async def burst(
    bench: Bench, count: int, max_in_flight: int, pack_max_gas: int | None
) -> BurstResult:
    """``count`` portfolios due at once → blocks until every rebalance is mined."""
    db_url = await bench.fresh_database("burst")
    execution: dict[str, Any] = {"max_in_flight": max_in_flight}
    if pack_max_gas is not None:
        execution["pack_max_gas"] = pack_max_gas
    document = bench_document(
        bench,
        db_url,
        execution=execution,
        # Plans are made once, up front: the last is carried out a minute or more later.
        prices={"max_age": 3600.0},
        database={"max_connections": 20},
    )
    config = bench_config(document)
    chain = bench.chain
    async with open_database(config.database) as db:
        await register_tokens(db, bench.devnet)
        prices = await spot_prices(bench)
        funding = [(TARGETS, HELD_HIGH if i % 2 == 0 else HELD_LOW) for i in range(count)]
        started = time.perf_counter()
        portfolios = await open_portfolios(
            bench, db, config, f"burst{pack_max_gas or 0}", funding, prices, BURST_USD
        )
        print(f"  {count} portfolios set up in {seconds(started):.1f} s", flush=True)
        alerts = CountingAlerts()
        async with ChainClient(config.chain) as executor_chain:
            executor = await build_executor(config, db, executor_chain, alerts)
            decimals = {t.symbol: t.decimals for t in bench.devnet.tokens}
            params = EngineParams.from_config(config)
            await chain.request("evm_setIntervalMining", [BLOCK_TIME])
            try:
                result = await _run_burst(
                    chain, executor, portfolios, prices, decimals, params, config
                )
            finally:
                await chain.request("evm_setAutomine", [True])
    return attrs.evolve(result, alerts=dict(alerts.fired))


async def _run_burst(
    chain: ChainClient,
    executor: Executor,
    portfolios: Sequence[BenchPortfolio],
    prices: Mapping[str, Decimal],
    decimals: Mapping[str, int],
    params: EngineParams,
    config: Config,
) -> BurstResult:
    count = len(portfolios)
    send, receive = trio.open_memory_channel[RebalanceRequest](count)
    with trio.fail_after(BURST_TIMEOUT):
        async with trio.open_nursery() as nursery:
            await nursery.start(executor.run, receive)
            head = (await chain.latest_block()).number
            pairs = [request_for(p, prices, decimals, params, head) for p in portfolios]
            cpu = cpu_seconds()
            started = time.perf_counter()
            for request, _answers in pairs:
                send.send_nowait(request)
            outcomes = [await answers.receive() for _request, answers in pairs]
            elapsed = seconds(started)
            cpu = {k: v - cpu.get(k, 0.0) for k, v in cpu_seconds().items()}
            nursery.cancel_scope.cancel()
    statuses = Counter[str](o.status for o in outcomes)
    blocks, gas_used, transactions, gas_limit, per_block = await _signer_blocks(
        chain, executor.signer.address, head
    )
    return BurstResult(
        portfolios=count,
        max_in_flight=config.execution.max_in_flight,
        pack_max_gas=getattr(config.execution, "pack_max_gas", None),
        blocks=blocks,
        min_blocks=math.ceil(gas_used / gas_limit),
        gas_used=gas_used,
        transactions=transactions,
        block_gas_limit=gas_limit,
        seconds=elapsed,
        statuses=dict(statuses),
        alerts={},
        gas_per_block=per_block,
        cpu_seconds=cpu,
    )


async def _signer_blocks(
    chain: ChainClient, signer: str, head: int
) -> tuple[int, int, int, int, list[int]]:
    """Blocks after ``head`` up to the last holding a transaction of ``signer``; the gas those
    transactions used, their number, the block gas limit, and the signer's gas per block."""
    latest = (await chain.latest_block()).number
    numbers = list(range(head + 1, latest + 1))
    blocks = await chain.batch([("eth_getBlockByNumber", [hex(n), True]) for n in numbers])
    ours: dict[int, list[str]] = {}
    gas_limit = 0
    for number, block in zip(numbers, blocks, strict=True):
        assert isinstance(block, dict)
        gas_limit = max(gas_limit, int(block["gasLimit"], 16))
        hashes = [
            tx["hash"] for tx in block["transactions"] if tx["from"].lower() == signer.lower()
        ]
        if hashes:
            ours[number] = hashes
    if not ours:
        raise RuntimeError("no transaction of the signer was mined during the burst")
    last = max(ours)
    per_block: list[int] = []
    total = 0
    transactions = 0
    for number in range(head + 1, last + 1):
        hashes = ours.get(number, [])
        receipts = await chain.batch([("eth_getTransactionReceipt", [h]) for h in hashes])
        used = sum(int(r["gasUsed"], 16) for r in receipts if isinstance(r, dict))
        per_block.append(used)
        total += used
        transactions += len(hashes)
    return last - head, total, transactions, gas_limit, per_block


def cpu_seconds() -> dict[str, float]:
    """CPU seconds used so far by this process and by the anvil it started (Linux /proc)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out = {"bench process": usage.ru_utime + usage.ru_stime}
    tick = os.sysconf("SC_CLK_TCK")
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        name = text[text.index("(") + 1 : text.rindex(")")]
        fields = text[text.rindex(")") + 2 :].split()
        # fields[1] is the parent's pid; fields[11], fields[12] utime and stime in ticks.
        if name == "anvil" and int(fields[1]) == os.getpid():
            out["anvil"] = (int(fields[11]) + int(fields[12])) / tick
    return out


# --- price move → mined rebalance -------------------------------------------------------------


@attrs.frozen
class MoveResult:
    samples: Sequence[float]
    statuses: Mapping[str, int]

    def percentile(self, q: float) -> float:
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    def as_json(self) -> dict[str, Any]:
        return {
            "moves": len(self.samples),
            "p50_s": round(statistics.median(self.samples), 3),
            "p99_s": round(self.percentile(0.99), 3),
            "samples_s": [round(s, 3) for s in self.samples],
            "rows": dict(self.statuses),
        }


async def move_to_mined(bench: Bench, moves: int) -> MoveResult:
    """``moves`` price moves, each followed by the daemon's mined rebalance."""
    db_url = await bench.fresh_database("move")
    config = bench_config(bench_document(bench, db_url, rebalance={"cooldown_minutes": 0}))
    chain, devnet = bench.chain, bench.devnet
    async with open_database(config.database) as db:
        await register_tokens(db, devnet)
        prices = await spot_prices(bench)
        (portfolio,) = await open_portfolios(
            bench, db, config, "move", [(TARGETS, TARGETS)], prices, MOVE_USD
        )
        trader = Trader(chain, devnet, devnet_key("bench market trader"))
        await trader.prepare(
            {
                "USDC": devnet.token("USDC").units(9_000_000),
                "WETH": devnet.token("WETH").units(3_000),
                "WBTC": devnet.token("WBTC").units(150),
            }
        )
        signer = devnet.signer
        samples: list[float] = []
        async with trio.open_nursery() as nursery:
            daemon = await nursery.start(run_daemon, config)
            with trio.fail_after(MOVE_TIMEOUT):
                await daemon.snapshots.wait_newer(0)
                await until(
                    _returns(daemon.supervisor.specs), lambda specs: portfolio.name in specs, 0.05
                )
            for index in range(moves):
                factor = MOVE_FACTOR if index % 2 == 0 else 1 / MOVE_FACTOR
                samples.append(await _one_move(chain, db, trader, signer, portfolio, factor))
                # Let the daemon see the settled portfolio before the next move.
                await trio.sleep(1.5)
            nursery.cancel_scope.cancel()
        rows = await db.rebalance_history(portfolio.id, limit=1000)
    statuses = Counter[str](row.status for row in rows)
    if statuses["SUCCESS"] < moves:
        raise RuntimeError(f"expected {moves} successful rebalances, found {dict(statuses)}")
    return MoveResult(samples, dict(statuses))


async def _one_move(
    chain: ChainClient,
    db: dbm.Database,
    trader: Trader,
    signer: str,
    portfolio: BenchPortfolio,
    factor: Decimal,
) -> float:
    """Seconds from the start of one move until the signer's next transaction is mined."""
    before = await chain.get_transaction_count(signer, "latest")
    successes = await _successes(db, portfolio.id)
    started = time.perf_counter()
    with trio.fail_after(MOVE_TIMEOUT):
        await trader.move(Step("WETH", factor, jump=False))
        await until(
            lambda: chain.get_transaction_count(signer, "latest"), lambda n: n > before, NONCE_POLL
        )
        elapsed = seconds(started)
        await until(lambda: _successes(db, portfolio.id), lambda n: n > successes, 0.05)
    return elapsed


def _returns(value: T) -> Callable[[], Awaitable[T]]:
    async def read() -> T:
        return value

    return read


async def _successes(db: dbm.Database, portfolio_id: int) -> int:
    rows = await db.rebalance_history(portfolio_id, limit=1000)
    return sum(1 for row in rows if row.status == "SUCCESS")

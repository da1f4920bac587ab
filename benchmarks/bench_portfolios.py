"""Many portfolios per tick: balance reads unbatched vs through the BalanceBatcher.

Not a test: prints tables. On a fresh devnet (anvil on loopback) it measures, for N portfolios
of 3 tokens each:

1. **Reads per tick**: N concurrent balance reads (every actor wakes on the same price snapshot),
   one ``ChainClient.balances`` each (one HTTP request per portfolio) vs ``BalanceBatcher.read``
   — wall time and HTTP requests per tick. The accounts are distinct random addresses:
   ``balanceOf`` costs the node the same for any address.
2. **Actor tick**: N real portfolio actors under the real supervisor; a price snapshot is
   published and the tick ends when every actor has finished its evaluation (read balances, run
   the engine, skip on cooldown). Accounts cycle over the devnet's funded ones so the engine
   values real holdings.
3. **Engine**: ``daemon.drift.evaluate`` per portfolio (µs) for 3 and 10 tokens, in tolerance
   and drifted (planning legs).
4. **Memory**: Python heap per idle portfolio actor (its state, spec, tasks under the
   supervisor), from tracemalloc.

Anvil is local, so a round trip is ~0.2 ms; against a hosted RPC (tens of ms, rate limits per
request) the request count is the figure that matters.

Usage: ``.venv/bin/python benchmarks/bench_portfolios.py [--sizes 100,1000,5000] [--ticks 3]``
"""

from __future__ import annotations

import argparse
import gc
import io
import statistics
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Final

import attrs
import trio
import trio.testing
from eth_account import Account

from daemon.balances import BalanceBatcher
from daemon.chain import ChainClient, RetryPolicy
from daemon.config import Config
from daemon.devtools.devnet import open_devnet
from daemon.drift import EngineParams, Holding, evaluate
from daemon.latest import Latest
from daemon.live_config import ConfigHolder
from daemon.logs import configure_logging
from daemon.messages import PricePoint, PriceSnapshot, RebalanceRequest, Token
from daemon.portfolio import (
    PortfolioDeps,
    PortfolioSpec,
    PortfolioState,
    run_portfolio_actor,
)
from daemon.supervise import RestartPolicy, Supervisor

SCHEMA: Final = Config()
"""The configuration schema's defaults (actor settings are derived from a configuration)."""

ReadFn = Callable[[str, list[str]], Awaitable[Mapping[str, int]]]


# --- 1. reads per tick --------------------------------------------------------------------------


async def read_tick(
    client: ChainClient, read: ReadFn, accounts: Sequence[str], tokens: list[str]
) -> tuple[float, int]:
    """Wall seconds and HTTP requests for one concurrent read per account."""
    sent = client.requests_sent
    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for account in accounts:
            nursery.start_soon(read, account, tokens)
    return time.perf_counter() - started, client.requests_sent - sent


async def bench_reads(
    client: ChainClient, tokens: list[str], sizes: list[int], ticks: int
) -> list[tuple[int, str, float, float]]:
    rows = []
    accounts = [Account.create().address for _ in range(max(sizes))]
    async with trio.open_nursery() as nursery:
        batcher = BalanceBatcher(client)
        await nursery.start(batcher.run)
        for size in sizes:
            for name, read in (("unbatched", client.balances), ("batched", batcher.read)):
                await read_tick(client, read, accounts[:size], tokens)  # warm up
                samples = [
                    await read_tick(client, read, accounts[:size], tokens) for _ in range(ticks)
                ]
                wall = statistics.median(s[0] for s in samples)
                requests = statistics.median(s[1] for s in samples)
                rows.append((size, name, wall, requests))
        nursery.cancel_scope.cancel()
    return rows


# --- 2. actor tick ------------------------------------------------------------------------------


def snapshot_now(prices: Mapping[str, Decimal]) -> PriceSnapshot:
    now = datetime.now(UTC)
    return PriceSnapshot(
        prices={s: PricePoint(s, usd, now, "router") for s, usd in prices.items()},
        taken_at=now,
        source="router",
    )


def specs_for(size: int, accounts: Sequence[str], tokens: Sequence[Token]) -> list[PortfolioSpec]:
    weight = Decimal(1) / len(tokens)
    return [
        PortfolioSpec(
            id=i,
            name=f"p{i}",
            account=accounts[i % len(accounts)],
            targets={t.symbol: weight for t in tokens},
            tokens=tuple(tokens),
        )
        for i in range(size)
    ]


async def actor_ticks(
    read: ReadFn, specs: list[PortfolioSpec], prices: Mapping[str, Decimal], ticks: int
) -> list[float]:
    """Seconds from a snapshot's publication until every actor has evaluated it."""
    snapshots: Latest[PriceSnapshot] = Latest()
    executor, _executor_inbox = trio.open_memory_channel[RebalanceRequest](0)

    parts = DaemonParts(read)
    config = attrs.evolve(
        SCHEMA,
        prices=attrs.evolve(SCHEMA.prices, max_age=3600.0),
        alerts=attrs.evolve(SCHEMA.alerts, high_drift=Decimal(1)),
    )
    deps = parts.deps(snapshots, executor, config)
    states = [PortfolioState(last_success_at=datetime.now(UTC)) for _ in specs]  # in cooldown
    samples = []
    async with trio.open_nursery() as nursery:
        supervisor: Supervisor[PortfolioState] = Supervisor(RestartPolicy.from_config(SCHEMA))
        await nursery.start(supervisor.run)
        for spec, state in zip(specs, states, strict=True):
            supervisor.start(spec.name, _actor(spec, deps), state)
        await trio.testing.wait_all_tasks_blocked()
        for _ in range(ticks + 1):  # the first is a warm-up
            done = [state.evaluated for state in states]
            started = time.perf_counter()
            snapshots.publish(snapshot_now(prices))
            for event in done:
                await event.wait()
            samples.append(time.perf_counter() - started)
        crashed = [e.key for e in supervisor.actors.values() if e.restart_count]
        if crashed:
            raise RuntimeError(f"actors crashed: {crashed[:3]}…")
        nursery.cancel_scope.cancel()
    return samples[1:]


@attrs.define
class DaemonParts:
    """What a portfolio actor asks of the daemon besides prices, balances aside: nothing in
    flight, a signer that can send, usable delegations, alerts dropped."""

    read: ReadFn
    in_flight: frozenset[int] = frozenset()
    accepting: bool = True

    def traded(self) -> None:
        """Balances here are read afresh every time."""

    async def read_with_block(
        self, account: str, tokens: Iterable[str]
    ) -> tuple[Mapping[str, int], int | None]:
        return await self.read(account, list(tokens)), None

    def signer_blocked(self) -> str | None:
        return None

    def delegation_problem(self, portfolio_id: int) -> str | None:
        return None

    def fire(self, kind: str, fields: Mapping[str, object]) -> bool:
        return False

    def mark_healthy(self, key: str) -> None:
        pass

    def deps(
        self,
        snapshots: Latest[PriceSnapshot],
        requests: trio.MemorySendChannel[RebalanceRequest],
        config: Config,
    ) -> PortfolioDeps:
        return PortfolioDeps(
            snapshots=snapshots,
            balances=self,
            requests=requests,
            executor=self,
            delegations=self,
            config=ConfigHolder(base=config),
            now=lambda: datetime.now(UTC),
            alerts=self,
            admission=self,
            supervisor=self,
        )


def _actor(spec: PortfolioSpec, deps: PortfolioDeps) -> Callable[[PortfolioState], Awaitable[None]]:
    async def actor(state: PortfolioState) -> None:
        await run_portfolio_actor(spec, state, deps)

    return actor


async def bench_actor_ticks(
    client: ChainClient,
    accounts: Sequence[str],
    tokens: Sequence[Token],
    prices: Mapping[str, Decimal],
    sizes: list[int],
    ticks: int,
    unbatched_max: int,
) -> list[tuple[int, str, float, float]]:
    rows = []
    async with trio.open_nursery() as nursery:
        batcher = BalanceBatcher(client)
        await nursery.start(batcher.run)
        for size in sizes:
            specs = specs_for(size, accounts, tokens)
            for name, read in (("unbatched", client.balances), ("batched", batcher.read)):
                if name == "unbatched" and size > unbatched_max:
                    continue
                sent = client.requests_sent
                samples = await actor_ticks(read, specs, prices, ticks)
                requests = (client.requests_sent - sent) / (ticks + 1)
                rows.append((size, name, statistics.median(samples), requests))
        nursery.cancel_scope.cancel()
    return rows


# --- 3. engine ----------------------------------------------------------------------------------


def bench_engine(token_count: int, drifted: bool, rounds: int = 2000) -> float:
    """µs per ``evaluate`` call."""
    symbols = [f"T{i}" for i in range(token_count)]
    prices = {s: Decimal(1 + i * 7) for i, s in enumerate(symbols)}
    weight = Decimal(1) / token_count
    targets = dict.fromkeys(symbols, weight)
    usd_each = Decimal(100_000) / token_count
    holdings = []
    for i, s in enumerate(symbols):
        usd = usd_each * (Decimal("1.6") if drifted and i == 0 else 1)
        holdings.append(Holding(s, int(usd / prices[s] * 10**18), 18))
    params = EngineParams.from_config(SCHEMA)
    kind = type(evaluate(holdings, targets, prices, {}, params=params)).__name__
    assert (kind == "Rebalance") == drifted, kind
    started = time.perf_counter()
    for _ in range(rounds):
        evaluate(holdings, targets, prices, {}, params=params)
    return (time.perf_counter() - started) / rounds * 1e6


# --- 4. memory ----------------------------------------------------------------------------------


async def bench_memory(tokens: Sequence[Token], count: int = 2000) -> tuple[float, float]:
    """Bytes per idle actor under the supervisor, and of its state + spec alone."""
    accounts = [Account.create().address for _ in range(count)]
    snapshots: Latest[PriceSnapshot] = Latest()
    executor, _inbox = trio.open_memory_channel[RebalanceRequest](0)

    async def no_read(account: str, tokens: list[str]) -> dict[str, int]:
        raise AssertionError("idle actors read nothing")

    config = attrs.evolve(
        SCHEMA,
        prices=attrs.evolve(SCHEMA.prices, max_age=60.0),
        alerts=attrs.evolve(SCHEMA.alerts, high_drift=Decimal(1)),
    )
    deps = DaemonParts(no_read).deps(snapshots, executor, config)
    async with trio.open_nursery() as nursery:
        supervisor: Supervisor[PortfolioState] = Supervisor(RestartPolicy.from_config(SCHEMA))
        await nursery.start(supervisor.run)
        await trio.testing.wait_all_tasks_blocked()
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        specs = specs_for(count, accounts, tokens)
        states = [PortfolioState() for _ in specs]
        plain = tracemalloc.take_snapshot()
        for spec, state in zip(specs, states, strict=True):
            supervisor.start(spec.name, _actor(spec, deps), state)
        await trio.testing.wait_all_tasks_blocked()
        gc.collect()
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
        nursery.cancel_scope.cancel()

    def grown(a: tracemalloc.Snapshot, b: tracemalloc.Snapshot) -> float:
        return sum(stat.size_diff for stat in b.compare_to(a, "filename")) / count

    return grown(before, after), grown(before, plain)


# --- main ---------------------------------------------------------------------------------------


def print_row(size: int, name: str, wall: float, requests: float) -> None:
    per = wall * 1e3 / size
    print(f"{size:>6} {name:>10} {wall * 1e3:>9.1f} {requests:>9.0f} {per:>9.3f}", flush=True)


async def main(sizes: list[int], ticks: int, unbatched_max: int) -> None:
    configure_logging(level="error", stream=io.StringIO())  # thousands of "skipped" lines
    async with open_devnet(owners=2) as devnet:
        config = devnet.chain_config()
        async with ChainClient(config, retry=RetryPolicy(max_retries=config.max_retries)) as client:
            tokens = [Token(t.symbol, t.address, t.decimals) for t in devnet.tokens]
            addresses = [t.address for t in tokens]
            print(f"devnet: anvil on loopback, {len(tokens)} tokens; median of {ticks} ticks\n")

            print("1. balance reads per tick (N concurrent portfolios, 3 tokens each)")
            print(f"{'N':>6} {'mode':>10} {'wall ms':>9} {'HTTP req':>9} {'ms/portf':>9}")
            for size, name, wall, requests in await bench_reads(client, addresses, sizes, ticks):
                print_row(size, name, wall, requests)

            funded = [a.address for a in devnet.accounts] + [devnet.signer, devnet.deployer]
            prices = {"WETH": Decimal(3000), "USDC": Decimal(1), "WBTC": Decimal(60000)}
            print(
                "\n2. actor tick (snapshot published → every actor evaluated; supervisor, engine)"
            )
            print(f"{'N':>6} {'mode':>10} {'wall ms':>9} {'HTTP req':>9} {'ms/portf':>9}")
            for size, name, wall, requests in await bench_actor_ticks(
                client, funded, tokens, prices, sizes, ticks, unbatched_max
            ):
                print_row(size, name, wall, requests)

    print("\n3. engine: daemon.drift.evaluate per portfolio")
    print(f"{'tokens':>6} {'in tolerance µs':>16} {'drifted µs':>11}")
    for count in (3, 10):
        print(f"{count:>6} {bench_engine(count, False):>16.1f} {bench_engine(count, True):>11.1f}")

    per_actor, per_state = await bench_memory(tokens)
    print("\n4. memory (tracemalloc, 2000 idle actors under the supervisor, 3 tokens)")
    print(f"   per actor (tasks + state + spec): {per_actor / 1024:.1f} KiB")
    print(f"   of which state + spec objects:    {per_state / 1024:.2f} KiB")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000,5000")
    parser.add_argument("--ticks", type=int, default=3)
    parser.add_argument(
        "--unbatched-actors-max",
        type=int,
        default=1000,
        help="skip the unbatched actor tick above this N (5000 takes minutes per tick)",
    )
    arguments = parser.parse_args()
    sizes = [int(s) for s in arguments.sizes.split(",")]
    trio.run(main, sizes, arguments.ticks, arguments.unbatched_actors_max)

"""Tick → every portfolio actor decided, for 1 000 to 100 000 portfolios, against a bare sketch.

Not a test: prints a table and, with ``--json PATH``, writes the figures. Each size runs in its
own process (so its peak RSS is its own):

- **actors**: N real portfolio actors (3 tokens each) under the real supervisor, the schema's
  default configuration, in cooldown, wired as the daemon wires them with
  ``chain.follow_transfers``: balances held in memory (what the balance follower hands them;
  reading them from a node is ``bench_portfolios.py``'s subject) and the tick screen
  (:mod:`daemon.tick_screen`) deciding which actors evaluate exactly. A price snapshot is
  published and the tick ends when every actor is decided: the screen has settled or woken each
  one and every woken actor has finished its evaluation. Prices move a little on every tick
  (:func:`moved`). The first tick (every actor exact: none has been accepted yet) is a warm-up.
  ``--near-threshold`` puts every portfolio just inside the screen's margin (drift 0.145
  against 0.15), so every actor is woken on every tick: the worst case, a market move that
  leaves everyone near the threshold.
- **sketch**: the reference from issue 15 — N bare Trio tasks waiting on a latest-value cell,
  each computing a Decimal drift over 5 tokens per tick.

p50 and p99 over ``--ticks`` ticks (after one warm-up); RSS is the process's peak; "woken" is
the median number of actors woken per measured tick.

Usage: ``.venv/bin/python benchmarks/bench_ticks.py [--sizes 1000,10000,100000] [--ticks 20]
[--json PATH] [--quick] [--near-threshold]``
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import attrs
import trio
import trio.testing

from daemon.latest import Latest
from daemon.live_config import ConfigHolder
from daemon.logs import configure_logging
from daemon.messages import PriceSnapshot, RebalanceRequest, Token
from daemon.portfolio import PortfolioDeps, PortfolioSpec, PortfolioState, run_portfolio_actor
from daemon.supervise import RestartPolicy, Supervisor
from daemon.tick_screen import TickScreen

HERE = Path(__file__).resolve().parent
TOKENS = [
    Token("USDC", "0x" + "11" * 20, 6),
    Token("WETH", "0x" + "22" * 20, 18),
    Token("WBTC", "0x" + "33" * 20, 8),
]
PRICES = {"USDC": Decimal(1), "WETH": Decimal(3000), "WBTC": Decimal(60000)}
BALANCES = {  # 1 000 USD of each: on target
    TOKENS[0].address: 1000 * 10**6,
    TOKENS[1].address: 10**18 // 3,
    TOKENS[2].address: 10**8 // 60,
}
NEAR_THRESHOLD = {  # 1 145, 1 000 and 855 USD: drift 0.145, inside the screen's margin of 0.15
    TOKENS[0].address: 1145 * 10**6,
    TOKENS[1].address: 10**18 // 3,
    TOKENS[2].address: 1_425_000,
}


def moved(tick: int) -> dict[str, Decimal]:
    """PRICES after ``tick`` ticks of a small move (WETH up, WBTC down, 0.01 % a tick): every
    tick's drift is new, as in a live market, and stays on its side of the margin."""
    step = Decimal("0.0001") * tick
    return {
        "USDC": PRICES["USDC"],
        "WETH": PRICES["WETH"] * (1 + step),
        "WBTC": PRICES["WBTC"] * (1 - step),
    }


@attrs.define(eq=False)
class Counted:
    """Counts the actors' completed evaluations (``mark_healthy`` follows each one)."""

    done: int = 0
    _target: int = 0
    _reached: trio.Event = attrs.Factory(trio.Event)

    def mark_healthy(self, key: str) -> None:
        self.done += 1
        if self.done >= self._target:
            self._reached.set()

    async def until(self, target: int) -> None:
        self._target, self._reached = target, trio.Event()
        if self.done < target:
            await self._reached.wait()


async def actors(size: int, ticks: int, near: bool) -> tuple[list[float], list[int]]:
    """Seconds from a snapshot's publication until every actor is decided, and the actors
    woken per tick."""
    sys.path.insert(0, str(HERE))
    from bench_portfolios import SCHEMA, DaemonParts, snapshot_now, specs_for

    balances = NEAR_THRESHOLD if near else BALANCES

    async def read(account: str, addresses: list[str]) -> Mapping[str, int]:
        return {address: balances[address] for address in addresses}

    @attrs.define
    class HeldInMemory(DaemonParts):
        """DaemonParts with the balance follower's in-memory view."""

        async def refresh(self) -> None:
            await trio.lowlevel.checkpoint()

        def held(self, account: str, tokens: Sequence[str]) -> list[int] | None:
            return [balances[token] for token in tokens]

    specs = specs_for(size, [f"0x{i:040x}" for i in range(size)], TOKENS)
    snapshots: Latest[PriceSnapshot] = Latest()
    executor, _executor_inbox = trio.open_memory_channel[RebalanceRequest](0)
    parts = HeldInMemory(read)
    config = attrs.evolve(
        SCHEMA,
        prices=attrs.evolve(SCHEMA.prices, max_age=3600.0),
        alerts=attrs.evolve(SCHEMA.alerts, high_drift=Decimal(1)),
    )
    counted = Counted()
    screen = TickScreen(
        snapshots, parts, ConfigHolder(base=config), lambda: datetime.now(UTC), False
    )
    deps = attrs.evolve(parts.deps(snapshots, executor, config), turns=screen, supervisor=counted)
    states = [PortfolioState(last_success_at=datetime.now(UTC)) for _ in specs]  # in cooldown
    samples, woken = [], []
    async with trio.open_nursery() as nursery:
        await nursery.start(screen.run)
        supervisor: Supervisor[PortfolioState] = Supervisor(RestartPolicy.from_config(SCHEMA))
        await nursery.start(supervisor.run)
        for spec, state in zip(specs, states, strict=True):
            supervisor.start(spec.name, _actor(spec, deps), state)
        await trio.testing.wait_all_tasks_blocked()
        for tick_number in range(ticks + 1):  # the first is a warm-up
            # Ticks come tens of seconds apart: the last one's actors are all waiting again.
            await trio.testing.wait_all_tasks_blocked()
            done, passes = counted.done, screen.ticks.version
            started = time.perf_counter()
            snapshots.publish(snapshot_now(moved(tick_number)))
            _, tick = await screen.ticks.wait_newer(passes)
            await counted.until(done + tick.woken)
            samples.append(time.perf_counter() - started)
            woken.append(tick.woken)
        crashed = [e.key for e in supervisor.actors.values() if e.restart_count]
        if crashed:
            raise RuntimeError(f"actors crashed: {crashed[:3]}…")
        nursery.cancel_scope.cancel()
    return samples[1:], woken[1:]


def _actor(spec: PortfolioSpec, deps: PortfolioDeps) -> Callable[[PortfolioState], Awaitable[None]]:
    async def actor(state: PortfolioState) -> None:
        await run_portfolio_actor(spec, state, deps)

    return actor


async def sketch(size: int, ticks: int, near: bool) -> tuple[list[float], list[int]]:
    """The bare reference: tasks on a latest-value cell, Decimal drift over 5 tokens."""
    cell: Latest[dict[str, Decimal]] = Latest()
    symbols = [f"T{i}" for i in range(5)]
    balances = {s: Decimal(10 + i) for i, s in enumerate(symbols)}
    remaining = 0
    all_done = trio.Event()

    async def task() -> None:
        nonlocal remaining, all_done
        seen = 0
        while True:
            seen, prices = await cell.wait_newer(seen)
            values = {s: balances[s] * prices[s] for s in symbols}
            total = sum(values.values())
            max(abs(v / (total / 5) - 1) for v in values.values())
            remaining -= 1
            if remaining == 0:
                all_done.set()

    samples = []
    async with trio.open_nursery() as nursery:
        for _ in range(size):
            nursery.start_soon(task)
        await trio.testing.wait_all_tasks_blocked()
        for tick in range(ticks + 1):
            remaining, all_done = size, trio.Event()
            started = time.perf_counter()
            cell.publish({s: Decimal(100 + tick + i) for i, s in enumerate(symbols)})
            await all_done.wait()
            samples.append(time.perf_counter() - started)
        nursery.cancel_scope.cancel()
    return samples[1:], [size] * ticks


def one(kind: str, size: int, ticks: int, near: bool) -> dict[str, Any]:
    configure_logging(level="error", stream=io.StringIO())
    samples, woken = trio.run(actors if kind == "actors" else sketch, size, ticks, near)
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {
        "p50_ms": statistics.median(samples) * 1e3,
        "p99_ms": p99 * 1e3,
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "woken": statistics.median(woken),
    }


def run_child(kind: str, size: int, ticks: int, near: bool) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--one", kind, str(size), str(ticks), str(int(near))],
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--one":
        print(json.dumps(one(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "1")))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--ticks", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="1 000 and 10 000, 5 ticks")
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument(
        "--near-threshold",
        action="store_true",
        help="every portfolio just inside the screen's margin: every actor woken every tick",
    )
    args = parser.parse_args()
    sizes = [1000, 10000] if args.quick else [int(s) for s in args.sizes.split(",")]
    ticks = 5 if args.quick else args.ticks
    figures: dict[str, dict[str, float]] = {
        "tick_p50_ms": {},
        "tick_p99_ms": {},
        "rss_mb": {},
        "sketch_tick_p99_ms": {},
        "sketch_rss_mb": {},
        "woken_per_tick": {},
    }
    print(f"tick → every actor decided; p50/p99 of {ticks} ticks; peak RSS of the process")
    header = ("N", "woken", "p50 ms", "p99 ms", "RSS MB", "sketch p99", "ratio", "sketch RSS")
    widths = (7, 7, 9, 9, 8, 11, 6, 11)
    print(" ".join(f"{title:>{w}}" for title, w in zip(header, widths, strict=True)))
    for size in sizes:
        mine = run_child("actors", size, ticks, args.near_threshold)
        reference = run_child("sketch", size, ticks, args.near_threshold)
        key = str(size)
        figures["tick_p50_ms"][key] = round(mine["p50_ms"], 1)
        figures["tick_p99_ms"][key] = round(mine["p99_ms"], 1)
        figures["rss_mb"][key] = round(mine["rss_mb"], 1)
        figures["sketch_tick_p99_ms"][key] = round(reference["p99_ms"], 1)
        figures["sketch_rss_mb"][key] = round(reference["rss_mb"], 1)
        figures["woken_per_tick"][key] = mine["woken"]
        ratio = mine["p99_ms"] / reference["p99_ms"]
        print(
            f"{size:>7} {mine['woken']:>7.0f} {mine['p50_ms']:>9.1f} {mine['p99_ms']:>9.1f}"
            f" {mine['rss_mb']:>8.1f} {reference['p99_ms']:>11.1f} {ratio:>6.2f}"
            f" {reference['rss_mb']:>11.1f}",
            flush=True,
        )
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()

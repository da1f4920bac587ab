"""Tick → every portfolio actor decided, for 1 000 to 100 000 portfolios, against a bare sketch.

Not a test: prints a table and, with ``--json PATH``, writes the figures. Each size runs in its
own process (so its peak RSS is its own):

- **actors**: N real portfolio actors (3 tokens each) under the real supervisor, the schema's
  default configuration, in cooldown; a price snapshot is published and the tick ends when
  every actor has finished its evaluation. Balances come from memory — what issue 15's balance
  follower (not built yet) would hand them; reading them from a node is
  ``bench_portfolios.py``'s subject.
- **sketch**: the reference from issue 15 — N bare Trio tasks waiting on a latest-value cell,
  each computing a Decimal drift over 5 tokens per tick.

p50 and p99 over ``--ticks`` ticks (after one warm-up); RSS is the process's peak.

Usage: ``.venv/bin/python benchmarks/bench_ticks.py [--sizes 1000,10000,100000] [--ticks 20]
[--json PATH] [--quick]``
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
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import trio
import trio.testing

from daemon.latest import Latest
from daemon.logs import configure_logging
from daemon.messages import Token

HERE = Path(__file__).resolve().parent
TOKENS = [
    Token("USDC", "0x" + "11" * 20, 6),
    Token("WETH", "0x" + "22" * 20, 18),
    Token("WBTC", "0x" + "33" * 20, 8),
]
PRICES = {"USDC": Decimal(1), "WETH": Decimal(3000), "WBTC": Decimal(60000)}
BALANCES = {
    TOKENS[0].address: 1000 * 10**6,
    TOKENS[1].address: 10**18 // 3,
    TOKENS[2].address: 10**8 // 60,
}


async def actors(size: int, ticks: int) -> list[float]:
    sys.path.insert(0, str(HERE))
    from bench_portfolios import actor_ticks, specs_for

    async def read(account: str, addresses: list[str]) -> Mapping[str, int]:
        return {address: BALANCES[address] for address in addresses}

    accounts = [f"0x{i:040x}" for i in range(size)]
    return await actor_ticks(read, specs_for(size, accounts, TOKENS), PRICES, ticks)


async def sketch(size: int, ticks: int) -> list[float]:
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
    return samples[1:]


def one(kind: str, size: int, ticks: int) -> dict[str, Any]:
    configure_logging(level="error", stream=io.StringIO())
    samples = trio.run(actors if kind == "actors" else sketch, size, ticks)
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {
        "p50_ms": statistics.median(samples) * 1e3,
        "p99_ms": p99 * 1e3,
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def run_child(kind: str, size: int, ticks: int) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--one", kind, str(size), str(ticks)],
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--one":
        print(json.dumps(one(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--ticks", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="1 000 and 10 000, 5 ticks")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args()
    sizes = [1000, 10000] if args.quick else [int(s) for s in args.sizes.split(",")]
    ticks = 5 if args.quick else args.ticks
    figures: dict[str, dict[str, float]] = {
        "tick_p50_ms": {},
        "tick_p99_ms": {},
        "rss_mb": {},
        "sketch_tick_p99_ms": {},
        "sketch_rss_mb": {},
    }
    print(f"tick → every actor decided; p50/p99 of {ticks} ticks; peak RSS of the process")
    header = ("N", "p50 ms", "p99 ms", "RSS MB", "sketch p99", "ratio", "sketch RSS")
    print(
        " ".join(f"{title:>{w}}" for title, w in zip(header, (7, 9, 9, 8, 11, 6, 11), strict=True))
    )
    for size in sizes:
        mine = run_child("actors", size, ticks)
        reference = run_child("sketch", size, ticks)
        key = str(size)
        figures["tick_p50_ms"][key] = round(mine["p50_ms"], 1)
        figures["tick_p99_ms"][key] = round(mine["p99_ms"], 1)
        figures["rss_mb"][key] = round(mine["rss_mb"], 1)
        figures["sketch_tick_p99_ms"][key] = round(reference["p99_ms"], 1)
        figures["sketch_rss_mb"][key] = round(reference["rss_mb"], 1)
        ratio = mine["p99_ms"] / reference["p99_ms"]
        print(
            f"{size:>7} {mine['p50_ms']:>9.1f} {mine['p99_ms']:>9.1f} {mine['rss_mb']:>8.1f}"
            f" {reference['p99_ms']:>11.1f} {ratio:>6.2f} {reference['rss_mb']:>11.1f}",
            flush=True,
        )
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()

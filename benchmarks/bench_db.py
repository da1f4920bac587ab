"""Benchmark: asyncpg from Trio — the thread bridge of daemon.db, trio-asyncio, plain asyncio.

Why: daemon/db.py chose its bridge from these figures (its docstring records them). Run this after
changing the bridge or upgrading trio/asyncpg/Python, and compare. Not a test: it prints.

Every scenario runs on the same throwaway server (daemon.devtools.pgserver, or
$BENCH_DATABASE_URL), in the same process, one after the other: a pool of 10 connections, 100
concurrent tasks each running ``SELECT $1::int`` in a loop for ``--seconds``. "CPU-busy" adds
one task on the caller's loop that burns CPU in 2 ms slices with a checkpoint between slices (the
shape of many portfolio actors computing drift). Printed: queries/s, p50 and p99 latency per query.

trio-asyncio is not a dependency of driftd; its rows appear when it is importable
(``pip install trio-asyncio==0.16.0`` in a throwaway virtualenv).

This file imports asyncpg directly (the plain-asyncio reference and trio-asyncio need it); the
product only does so in daemon/db.py.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.util
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trio.lowlevel

from daemon.config import DatabaseConfig
from daemon.db import open_database
from daemon.devtools.pgserver import running_server

POOL = 10
TASKS = 100
BUSY_SLICE = 0.002
DEFAULT_SWITCH = 0.005
LOWERED_SWITCHES = (0.0005, 0.0001)


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def _report(name: str, latencies: list[float], seconds: float) -> None:
    if not latencies:
        print(f"{name:<44} no queries completed")
        return
    latencies.sort()
    p50 = statistics.median(latencies) * 1000
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000
    rate = len(latencies) / seconds
    print(f"{name:<44} {rate:>9,.0f} q/s   p50 {p50:>8.1f} ms   p99 {p99:>8.1f} ms")


# --- plain asyncio ---


async def _asyncio_run(url: str, seconds: float, busy: bool) -> list[float]:
    pool = await asyncpg.create_pool(url, min_size=POOL, max_size=POOL)
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def worker(i: int) -> None:
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            await pool.fetchval("SELECT $1::int", i)
            latencies.append(time.perf_counter() - start)

    async def burner() -> None:
        while time.perf_counter() < deadline:
            _spin(BUSY_SLICE)
            await asyncio.sleep(0)

    jobs = [worker(i) for i in range(TASKS)] + ([burner()] if busy else [])
    await asyncio.gather(*jobs)
    await pool.close()
    return latencies


# --- Trio: shared driver ---


async def _trio_drive(
    query: Callable[[int], Awaitable[Any]], seconds: float, busy: bool
) -> list[float]:
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def worker(i: int) -> None:
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            await query(i)
            latencies.append(time.perf_counter() - start)

    async def burner() -> None:
        while time.perf_counter() < deadline:
            _spin(BUSY_SLICE)
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        for i in range(TASKS):
            nursery.start_soon(worker, i)
        if busy:
            nursery.start_soon(burner)
    return latencies


async def _bridge_run(url: str, seconds: float, busy: bool) -> list[float]:
    config = DatabaseConfig(url=url, min_connections=POOL, max_connections=POOL)
    async with open_database(config, switch_interval=None) as db:

        async def query(i: int) -> Any:
            return await db.fetchval("SELECT $1::int", i)

        return await _trio_drive(query, seconds, busy)


async def _trio_asyncio_run(url: str, seconds: float, busy: bool) -> list[float]:
    trio_asyncio: Any = importlib.import_module("trio_asyncio")
    async with trio_asyncio.open_loop():
        pool = await trio_asyncio.aio_as_trio(asyncpg.create_pool)(
            url, min_size=POOL, max_size=POOL
        )

        async def query(i: int) -> Any:
            return await trio_asyncio.aio_as_trio(pool.fetchval)("SELECT $1::int", i)

        try:
            return await _trio_drive(query, seconds, busy)
        finally:
            await trio_asyncio.aio_as_trio(pool.close)()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per scenario (default 3)")
    args = parser.parse_args()

    # Only look: importing trio_asyncio installs its event-loop policy, which slows plain asyncio
    # (~4x here), so it is imported by its own scenarios, which run last.
    have_trio_asyncio = importlib.util.find_spec("trio_asyncio") is not None

    def scenarios(url: str) -> None:
        seconds = args.seconds
        print(
            f"pool {POOL}, {TASKS} concurrent tasks, {seconds:g} s per scenario, "
            f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}"
        )
        sys.setswitchinterval(DEFAULT_SWITCH)
        _report("plain asyncio, idle", asyncio.run(_asyncio_run(url, seconds, False)), seconds)
        _report("plain asyncio, CPU-busy", asyncio.run(_asyncio_run(url, seconds, True)), seconds)
        for switch in (DEFAULT_SWITCH, *LOWERED_SWITCHES):
            sys.setswitchinterval(switch)
            label = f"thread bridge, switch {switch * 1000:g} ms"
            _report(f"{label}, idle", trio.run(_bridge_run, url, seconds, False), seconds)
            _report(f"{label}, CPU-busy", trio.run(_bridge_run, url, seconds, True), seconds)
        sys.setswitchinterval(DEFAULT_SWITCH)
        if have_trio_asyncio:
            for busy in (False, True):
                name = f"trio-asyncio, {'CPU-busy' if busy else 'idle'}"
                _report(name, trio.run(_trio_asyncio_run, url, seconds, busy), seconds)
        else:
            print("trio-asyncio: not installed, skipped (pip install trio-asyncio==0.16.0)")

    external = os.environ.get("BENCH_DATABASE_URL", "").strip()
    if external:
        scenarios(external)
    else:
        with running_server() as server:
            scenarios(server.url())


if __name__ == "__main__":
    main()

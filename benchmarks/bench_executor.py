"""The executor and the chain client on a devnet: throughput, burst, move → mined, eth_call.

Not a test: prints figures and, with ``--json PATH``, writes them (``bench_capacity.py`` runs
this and prints every figure beside its reference). One throwaway PostgreSQL server and one
devnet (anvil on loopback with the real contracts) serve every phase; each phase that writes
has a fresh database. Phases, in order:

1. **eth_call**: mean latency of ``ChainClient.call`` (``balanceOf``) against the same request
   pre-encoded and posted with httpx (the client's own transport library), sequential calls
   after a warm-up; ratio client / raw.
2. **throughput** (anvil automine): the real transaction lifecycle
   (:class:`daemon.transactions.SignerTransactions`: the signer's lease, nonce allocation,
   signing, the intent written to PostgreSQL before the broadcast, the broadcast marked, the
   receipt recorded) with W concurrent workers, each submitting a 21 000-gas transfer and
   settling it, for a fixed time; transactions settled per second, in the window after a
   warm-up. Three settings: the schema's ``max_in_flight`` and ``poll_interval``, then
   ``--max-in-flight`` (32) at that poll and at 0.05 s (a worker waits at least one poll per
   transaction, so W / poll_interval bounds the rate). Reference: pre-signed transactions of
   the same kind sent raw with ``eth_sendRawTransaction`` over httpx by ``--max-in-flight``
   concurrent senders, until all are mined.
3. **move → mined** and 4. **burst**: see :mod:`capacity_burst`.

Usage: ``.venv/bin/python benchmarks/bench_executor.py [--quick] [--json PATH]
[--burst N] [--moves N] [--max-in-flight N] [--only eth_call,throughput,move,burst]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Final

import attrs
import httpx
import trio
from bench_chain import eth_call_samples
from capacity_burst import burst, move_to_mined, packing_available
from capacity_setup import Bench, bench_config, bench_document, until

from daemon.app import leaf_exceptions
from daemon.chain import ChainClient
from daemon.config import Config
from daemon.db import open_database
from daemon.devtools.devnet import open_devnet
from daemon.devtools.devnet_anvil import set_eth_balance
from daemon.devtools.devnet_records import devnet_key
from daemon.devtools.pgserver import running_server
from daemon.executor_settings import ExecutorSettings
from daemon.lease import InstanceIdentity, SignerLeaseHolder
from daemon.logs import configure_logging
from daemon.signer import TxRequest, TxSigner
from daemon.transactions import SignerTransactions
from daemon.transactions_io import ChainNode
from daemon.transactions_values import TxPlan

TRANSFER_GAS: Final = 21_000
SINK: Final = "0x000000000000000000000000000000000000dEaD"
PACK_MAX_GAS: Final = 10_000_000
DEFAULT_POLL: Final = Config().execution.poll_interval
DEFAULT_WORKERS: Final = Config().execution.max_in_flight


def mean_ms(samples: list[float]) -> float:
    return statistics.fmean(samples) * 1e3


# --- 1. eth_call ----------------------------------------------------------------------------


async def eth_call(bench: Bench, calls: int) -> dict[str, Any]:
    client_samples, raw_samples = await eth_call_samples(bench.devnet, calls)
    client_ms, raw_ms = mean_ms(client_samples), mean_ms(raw_samples)
    return {
        "calls": calls,
        "client_mean_ms": round(client_ms, 4),
        "raw_mean_ms": round(raw_ms, 4),
        "client_p50_ms": round(statistics.median(client_samples) * 1e3, 4),
        "raw_p50_ms": round(statistics.median(raw_samples) * 1e3, 4),
        "ratio": round(client_ms / raw_ms, 3),
    }


# --- 2. throughput --------------------------------------------------------------------------


async def raw_throughput(bench: Bench, count: int, senders: int) -> dict[str, Any]:
    """Pre-signed transfers sent raw by ``senders`` concurrent tasks; per second until mined."""
    chain = bench.chain
    signer = TxSigner(key=devnet_key("bench raw sender"))
    await set_eth_balance(chain, signer.address, 10**22)
    first = await chain.get_transaction_count(signer.address, "latest")
    fees = await chain.fee_data()
    bodies = [
        json.dumps(
            {
                "jsonrpc": "2.0",
                "id": i,
                "method": "eth_sendRawTransaction",
                "params": [
                    "0x"
                    + signer.sign(
                        TxRequest(
                            to=SINK,
                            data=b"",
                            nonce=first + i,
                            gas=TRANSFER_GAS,
                            max_fee_per_gas=fees.max_fee(4),
                            max_priority_fee_per_gas=fees.priority_fee,
                            chain_id=chain.chain_id,
                            value=1,
                        )
                    ).raw.hex()
                ],
            }
        ).encode()
        for i in range(count)
    ]
    queue = iter(bodies)
    limits = httpx.Limits(max_connections=16, max_keepalive_connections=16)
    async with httpx.AsyncClient(
        headers={"content-type": "application/json"}, limits=limits
    ) as http:

        async def sender() -> None:
            for body in queue:
                reply = (await http.post(bench.devnet.rpc_url, content=body)).json()
                if "error" in reply:
                    raise RuntimeError(f"raw send refused: {reply['error']}")

        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(senders):
                nursery.start_soon(sender)
        sent = time.perf_counter() - started
        await until(
            lambda: chain.get_transaction_count(signer.address, "latest"),
            lambda mined: mined >= first + count,
            0.002,
        )
        elapsed = time.perf_counter() - started
    return {
        "transactions": count,
        "senders": senders,
        "send_seconds": round(sent, 3),
        "seconds": round(elapsed, 3),
        "tx_per_s": round(count / elapsed, 1),
    }


@attrs.frozen
class LifecycleRun:
    workers: int
    poll_interval: float
    seconds: float
    settled: int
    tx_per_s: float

    def as_json(self) -> dict[str, Any]:
        return {
            "workers": self.workers,
            "poll_interval": self.poll_interval,
            "seconds": self.seconds,
            "settled": self.settled,
            "tx_per_s": self.tx_per_s,
        }


async def lifecycle_throughput(
    bench: Bench, workers: int, poll_interval: float, duration: float, warmup: float
) -> LifecycleRun:
    """W workers submit and settle 21 000-gas transfers through the real lifecycle, with
    intents in a fresh PostgreSQL database, for ``warmup + duration`` seconds."""
    db_url = await bench.fresh_database("throughput")
    config = bench_config(bench_document(bench, db_url, database={"max_connections": 20}))
    chain = bench.chain
    lifecycle = attrs.evolve(
        ExecutorSettings.from_config(config).lifecycle, poll_interval=poll_interval
    )
    assert config.secrets.signer_key is not None
    signer = TxSigner(key=config.secrets.signer_key)
    async with open_database(config.database) as db, ChainClient(config.chain) as client:
        holder = SignerLeaseHolder(
            db=db,
            chain_id=chain.chain_id,
            signer=signer.address,
            identity=InstanceIdentity.current(),
        )
        lease = await holder.acquire()
        transactions = SignerTransactions(
            node=ChainNode(client),
            store=db,
            signer=signer,
            settings=lambda: lifecycle,
            fencing_token=lease.fencing_token,
        )
        window_start = trio.current_time() + warmup
        window_end = window_start + duration
        settled: list[float] = []

        async def worker() -> None:
            while trio.current_time() < window_end:
                slot = await transactions.submit(
                    TxPlan(to=SINK, data=b"", gas=TRANSFER_GAS, purpose="swap", value=1)
                )
                done = await transactions.settle(slot)
                if done.outcome != "mined":
                    raise RuntimeError(f"nonce {done.nonce}: {done.outcome}")
                settled.append(trio.current_time())

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(holder.keep, lease)
                async with trio.open_nursery() as pool:
                    for _ in range(workers):
                        pool.start_soon(worker)
                nursery.cancel_scope.cancel()
        finally:
            await holder.release(lease)
    in_window = sum(1 for t in settled if window_start <= t <= window_end)
    return LifecycleRun(workers, poll_interval, duration, in_window, round(in_window / duration, 1))


# --- the run ----------------------------------------------------------------------------------


@attrs.frozen
class Options:
    quick: bool
    burst: int
    moves: int
    max_in_flight: int
    calls: int
    raw_transactions: int
    duration: float
    only: frozenset[str]


PHASES: Final = ("eth_call", "throughput", "move", "burst")


async def run_phases(admin_url: str, options: Options, workdir: Path) -> dict[str, Any]:
    figures: dict[str, Any] = {"errors": {}}
    async with open_devnet(owners=0) as devnet, ChainClient(devnet.chain_config()) as chain:
        bench = Bench(devnet, chain, admin_url, workdir)
        for phase in PHASES:
            if phase not in options.only:
                continue
            print(f"[{phase}]", flush=True)
            started = time.perf_counter()
            try:
                figures[phase] = await _phase(bench, phase, options)
            except Exception as exc:  # noqa: BLE001 - a phase that fails is reported, not faked
                traceback.print_exc(file=sys.stderr)
                figures["errors"][phase] = "; ".join(
                    f"{type(leaf).__name__}: {leaf}" for leaf in leaf_exceptions(exc)
                )
                print(f"  FAILED: {figures['errors'][phase]}", flush=True)
            print(f"  ({time.perf_counter() - started:.0f} s)", flush=True)
    return figures


async def _phase(bench: Bench, phase: str, options: Options) -> Any:
    if phase == "eth_call":
        result = await eth_call(bench, options.calls)
        print(f"  {result}", flush=True)
        return result
    if phase == "throughput":
        return await _throughput(bench, options)
    if phase == "move":
        moved = await move_to_mined(bench, options.moves)
        print(f"  {moved.as_json()}", flush=True)
        return moved.as_json()
    runs: dict[str, Any] = {}
    # Packing off is 0 (the schema's default may pack).
    packs: list[int | None] = [0, PACK_MAX_GAS] if packing_available() else [None]
    if not packing_available():
        runs["packing"] = "execution.pack_max_gas is not in the configuration schema yet"
        print(f"  {runs['packing']}: burst without packing only", flush=True)
    for pack in packs:
        burst_result = await burst(bench, options.burst, options.max_in_flight, pack)
        runs["packed" if pack else "unpacked"] = burst_result.as_json()
        print(f"  {burst_result.as_json()}", flush=True)
    return runs


async def _throughput(bench: Bench, options: Options) -> dict[str, Any]:
    out: dict[str, Any] = {"lifecycle": []}
    rows = [
        (DEFAULT_WORKERS, DEFAULT_POLL),
        (options.max_in_flight, DEFAULT_POLL),
        (options.max_in_flight, 0.05),
    ]
    for workers, poll in rows:
        run = await lifecycle_throughput(bench, workers, poll, options.duration, warmup=1.0)
        out["lifecycle"].append(run.as_json())
        print(f"  lifecycle {run.as_json()}", flush=True)
    raw = await raw_throughput(bench, options.raw_transactions, options.max_in_flight)
    out["raw"] = raw
    print(f"  raw {raw}", flush=True)
    return out


def parse_options(argv: list[str] | None = None) -> tuple[Options, str | None]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller burst, fewer moves/calls")
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--burst", type=int, help="portfolios due at once (1000; quick 200)")
    parser.add_argument("--moves", type=int, help="price moves (10; quick 4)")
    parser.add_argument("--max-in-flight", type=int, default=32)
    parser.add_argument("--only", default=",".join(PHASES))
    args = parser.parse_args(argv)
    quick = bool(args.quick)
    only = frozenset(args.only.split(","))
    unknown = only - set(PHASES)
    if unknown:
        parser.error(f"--only: unknown phases {sorted(unknown)}")
    options = Options(
        quick=quick,
        burst=args.burst or (200 if quick else 1000),
        moves=args.moves or (4 if quick else 10),
        max_in_flight=args.max_in_flight,
        calls=500 if quick else 2000,
        raw_transactions=1000 if quick else 3000,
        duration=5.0 if quick else 15.0,
        only=only,
    )
    return options, args.json


def main() -> None:
    options, json_path = parse_options()
    with tempfile.TemporaryDirectory(prefix="driftd-bench-") as workdir:
        log_path = Path(workdir) / "driftd.log"
        with log_path.open("a", encoding="utf-8") as log:
            configure_logging("warning", "json", stream=log)
            with running_server() as postgres:
                figures = trio.run(run_phases, postgres.url(), options, Path(workdir))
        figures["options"] = {
            **attrs.asdict(options, filter=lambda a, _v: a.name != "only"),
            "only": sorted(options.only),
            "pack_max_gas": PACK_MAX_GAS if packing_available() else None,
        }
        if figures["errors"]:
            tail = log_path.read_text(encoding="utf-8").splitlines()[-20:]
            figures["log_tail"] = tail
    if json_path:
        Path(json_path).write_text(json.dumps(figures, indent=2, default=str))
    else:
        json.dump(figures, sys.stdout, indent=2, default=str)
        print()


if __name__ == "__main__":
    main()

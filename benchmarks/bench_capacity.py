"""Issue 15's capacity benchmarks, all of them: one table, each figure beside its reference.

Not a test (nothing here passes or fails): it runs, one after the other so they do not share
the CPU,

1. ``bench_ticks.py`` — tick → every portfolio actor decided, with peak RSS, against the bare
   Trio sketch, for 1 000, 10 000 and 100 000 portfolios (``--quick``: 1 000 and 10 000);
2. ``bench_executor.py`` — on one devnet and a throwaway PostgreSQL: the chain client's
   ``eth_call`` against raw JSON-RPC over httpx; the transaction lifecycle's sustained
   throughput with durable intents against raw ``eth_sendRawTransaction`` of pre-signed
   transactions; price move → mined rebalance with the real daemon; and a burst of N
   portfolios due at once on 2-second blocks against the fewest blocks the block gas limit
   allows (``--quick``: 200 portfolios instead of 1 000), without packing and, when the
   configuration schema has ``execution.pack_max_gas``, with packing.

Then it prints every figure with its reference and their ratio and, with ``--json PATH``,
writes them as one JSON object (the keys issue 15 names, plus details). ``executor_tx_per_s``
is the fastest of the lifecycle's three settings (``executor_settings`` names it; every run is
in the table); ``burst_blocks`` is the packed burst when packing exists (the unpacked one is
``burst_unpacked_blocks``). A phase that fails is reported as not measured, never filled in.

Usage: ``.venv/bin/python benchmarks/bench_capacity.py [--quick] [--json PATH]
[--burst N] [--max-in-flight N]``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

HERE: Final = Path(__file__).resolve().parent
TARGETS: Final = {
    "tick": "10 000: p99 ≤ 150 ms and ≤ sketch; RSS ≤ 300 MB",
    "tick_100k": "100 000: p99 ≤ 2.5 s",
    "executor": "≥ 0.5× raw",
    "burst": "≤ 1.25× the minimum",
    "eth_call": "≤ 2×",
}


def run_child(script: str, arguments: Sequence[str], json_path: Path) -> dict[str, Any] | str:
    """Run a benchmark script with ``--json``, its output passed through; its figures, or
    why there are none."""
    command = [sys.executable, str(HERE / script), *arguments, "--json", str(json_path)]
    print(f"$ {' '.join(command[1:])}", flush=True)
    done = subprocess.run(command, check=False)
    if done.returncode != 0:
        return f"{script} exited {done.returncode}"
    try:
        figures: dict[str, Any] = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return f"{script} wrote no figures: {exc}"
    return figures


def ratio(mine: float | None, reference: float | None) -> float | None:
    if mine is None or reference is None or reference == 0:
        return None
    return round(mine / reference, 2)


# --- figures ----------------------------------------------------------------------------------


def tick_figures(ticks: Mapping[str, Any]) -> dict[str, Any]:
    """bench_ticks.py's figures as they are (its keys are issue 15's)."""
    return dict(ticks)


def executor_figures(chain: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    eth_call = chain.get("eth_call")
    if isinstance(eth_call, Mapping):
        out["eth_call_ratio"] = eth_call["ratio"]
        out["eth_call_client_mean_ms"] = eth_call["client_mean_ms"]
        out["eth_call_raw_mean_ms"] = eth_call["raw_mean_ms"]
    throughput = chain.get("throughput")
    if isinstance(throughput, Mapping):
        runs = throughput["lifecycle"]
        best = max(runs, key=lambda run: run["tx_per_s"])
        out["executor_tx_per_s"] = best["tx_per_s"]
        out["executor_settings"] = {
            "max_in_flight": best["workers"],
            "poll_interval": best["poll_interval"],
        }
        out["executor_runs"] = runs
        out["raw_tx_per_s"] = throughput["raw"]["tx_per_s"]
        out["raw_senders"] = throughput["raw"]["senders"]
    move = chain.get("move")
    if isinstance(move, Mapping):
        out["move_to_mined_p50_s"] = move["p50_s"]
        out["move_to_mined_p99_s"] = move["p99_s"]
        out["move_to_mined_samples_s"] = move["samples_s"]
    burst = chain.get("burst")
    if isinstance(burst, Mapping):
        headline = burst.get("packed") or burst.get("unpacked")
        if isinstance(headline, Mapping):
            out["burst_blocks"] = headline["blocks"]
            out["burst_min_blocks"] = headline["min_blocks"]
            out["burst_portfolios"] = headline["portfolios"]
            out["burst_max_in_flight"] = headline["max_in_flight"]
            out["burst_pack_max_gas"] = headline["pack_max_gas"]
        unpacked = burst.get("unpacked")
        if "packed" in burst and isinstance(unpacked, Mapping):
            out["burst_unpacked_blocks"] = unpacked["blocks"]
            out["burst_unpacked_min_blocks"] = unpacked["min_blocks"]
        if isinstance(burst.get("packing"), str):
            out["burst_packing"] = burst["packing"]
        out["burst_runs"] = {k: v for k, v in burst.items() if isinstance(v, Mapping)}
    return out


# --- the table ------------------------------------------------------------------------------


def rows(figures: Mapping[str, Any], move_reference: float) -> list[tuple[str, ...]]:
    """(figure, measured, reference, ratio, target) per line of the table."""

    def num(value: Any, unit: str, digits: int = 1) -> str:
        return "—" if value is None else f"{value:,.{digits}f} {unit}".strip()

    def r(mine: Any, reference: Any) -> str:
        value = ratio(mine, reference)
        return "—" if value is None else f"{value:.2f}"

    out: list[tuple[str, ...]] = []
    for size in figures.get("tick_p99_ms", {}):
        p50, p99 = figures["tick_p50_ms"][size], figures["tick_p99_ms"][size]
        sketch = figures.get("sketch_tick_p99_ms", {}).get(size)
        rss = figures.get("rss_mb", {}).get(size)
        target = TARGETS["tick"] if size == "10000" else ""
        target = TARGETS["tick_100k"] if size == "100000" else target
        out.append(
            (
                f"tick → decided, {int(size):,} (p99; p50 {p50:,.1f} ms, RSS {rss:,.0f} MB)",
                num(p99, "ms"),
                f"sketch p99 {num(sketch, 'ms')}",
                r(p99, sketch),
                target,
            )
        )
    executor, raw = figures.get("executor_tx_per_s"), figures.get("raw_tx_per_s")
    settings = figures.get("executor_settings", {})
    for run in figures.get("executor_runs", []):
        best = run["tx_per_s"] == executor and run["workers"] == settings.get("max_in_flight")
        out.append(
            (
                f"executor tx/s, {run['workers']} in flight, poll {run['poll_interval']} s"
                + (" (headline)" if best else ""),
                num(run["tx_per_s"], "tx/s"),
                f"raw sends {num(raw, 'tx/s')}",
                r(run["tx_per_s"], raw),
                TARGETS["executor"] if best else "",
            )
        )
    portfolios = figures.get("burst_portfolios")
    for label, blocks_key, min_key in (
        ("unpacked", "burst_unpacked_blocks", "burst_unpacked_min_blocks"),
        ("headline", "burst_blocks", "burst_min_blocks"),
    ):
        if blocks_key not in figures:
            continue
        pack = figures.get("burst_pack_max_gas") if label == "headline" else 0
        how = f"pack_max_gas {pack:,}" if pack else "no packing"
        out.append(
            (
                f"burst, {portfolios:,} due at once, {how}, "
                f"{figures.get('burst_max_in_flight')} in flight (blocks)",
                num(figures[blocks_key], "", 0),
                f"gas-limit minimum {num(figures[min_key], '', 0)}",
                r(figures[blocks_key], figures[min_key]),
                TARGETS["burst"],
            )
        )
    for q in ("p50", "p99"):
        value = figures.get(f"move_to_mined_{q}_s")
        if value is not None:
            out.append(
                (
                    f"price move → mined rebalance, {q}",
                    num(value, "s", 2),
                    f"price poll {num(move_reference, 's', 1)}",
                    r(value, move_reference),
                    "",
                )
            )
    if "eth_call_ratio" in figures:
        out.append(
            (
                "ChainClient.call (mean)",
                num(figures["eth_call_client_mean_ms"], "ms", 3),
                f"raw httpx {num(figures['eth_call_raw_mean_ms'], 'ms', 3)}",
                f"{figures['eth_call_ratio']:.2f}",
                TARGETS["eth_call"],
            )
        )
    return out


def print_table(lines: list[tuple[str, ...]]) -> None:
    header = ("figure", "measured", "reference", "ratio", "target")
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(len(header))]
    for index, line in enumerate([header, *lines]):
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))
        if index == 0:
            print("  ".join("-" * width for width in widths))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="about five minutes on 2 cores")
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--burst", type=int, help="portfolios due at once (1000; quick 200)")
    parser.add_argument("--max-in-flight", type=int, default=32)
    args = parser.parse_args()
    started = time.perf_counter()
    quick = ["--quick"] if args.quick else []
    chain_args = [*quick, "--max-in-flight", str(args.max_in_flight)]
    if args.burst:
        chain_args += ["--burst", str(args.burst)]
    figures: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "quick": bool(args.quick),
        "errors": {},
    }
    with tempfile.TemporaryDirectory(prefix="driftd-capacity-") as workdir:
        ticks = run_child("bench_ticks.py", quick, Path(workdir) / "ticks.json")
        chain = run_child("bench_executor.py", chain_args, Path(workdir) / "chain.json")
    if isinstance(ticks, str):
        figures["errors"]["ticks"] = ticks
    else:
        figures.update(tick_figures(ticks))
    if isinstance(chain, str):
        figures["errors"]["chain"] = chain
    else:
        figures.update(executor_figures(chain))
        figures["errors"].update(chain.get("errors", {}))
    move_reference = _price_poll_interval()
    figures["seconds"] = round(time.perf_counter() - started, 1)
    print()
    print_table(rows(figures, move_reference))
    if figures.get("burst_portfolios") not in (None, 1000):
        print(f"(burst of {figures['burst_portfolios']} portfolios, not 1 000: --quick)")
    for what, why in figures["errors"].items():
        print(f"NOT MEASURED: {what}: {why}")
    print(f"wall time {figures['seconds']:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")


def _price_poll_interval() -> float:
    """The demo's price poll (the move → mined phase runs the demo's configuration)."""
    from daemon.devtools.demo_setup import PRICE_POLL_SECONDS

    return PRICE_POLL_SECONDS


if __name__ == "__main__":
    main()

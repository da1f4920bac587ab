"""The capacity benchmark's report (``benchmarks/bench_capacity.py``): from the figures its
children write to the JSON keys issue 15 names and a table where each figure has its reference
and ratio. The benchmark itself is not run here (minutes on a devnet); this is its contract."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
bench_capacity: Any = importlib.import_module("bench_capacity")

REQUIRED = (
    "tick_p50_ms",
    "tick_p99_ms",
    "rss_mb",
    "sketch_tick_p99_ms",
    "executor_tx_per_s",
    "raw_tx_per_s",
    "burst_blocks",
    "burst_min_blocks",
    "move_to_mined_p50_s",
    "move_to_mined_p99_s",
    "eth_call_ratio",
)
TICKS = {
    "tick_p50_ms": {"1000": 14.0, "10000": 118.3},
    "tick_p99_ms": {"1000": 14.5, "10000": 131.7},
    "rss_mb": {"1000": 79.8, "10000": 182.0},
    "sketch_tick_p99_ms": {"1000": 33.8, "10000": 304.1},
}


def burst_run(pack: int, blocks: int, min_blocks: int) -> dict[str, Any]:
    return {
        "portfolios": 200,
        "max_in_flight": 32,
        "pack_max_gas": pack,
        "blocks": blocks,
        "min_blocks": min_blocks,
    }


CHAIN = {
    "errors": {},
    "eth_call": {"client_mean_ms": 2.28, "raw_mean_ms": 1.82, "ratio": 1.25},
    "throughput": {
        "lifecycle": [
            {"workers": 4, "poll_interval": 1.0, "tx_per_s": 4.0},
            {"workers": 32, "poll_interval": 0.05, "tx_per_s": 45.8},
        ],
        "raw": {"tx_per_s": 234.9, "senders": 32},
    },
    "move": {"p50_s": 0.56, "p99_s": 1.14, "samples_s": [0.56, 1.14]},
    "burst": {"unpacked": burst_run(0, 13, 4), "packed": burst_run(10_000_000, 12, 3)},
}


def test_every_figure_of_issue_15_has_its_key_and_a_ratio_in_the_table() -> None:
    figures = {**bench_capacity.tick_figures(TICKS), **bench_capacity.executor_figures(CHAIN)}
    assert set(REQUIRED) <= set(figures)
    assert figures["tick_p99_ms"]["10000"] == 131.7
    assert figures["executor_tx_per_s"] == 45.8  # the best run, named in executor_settings
    assert figures["executor_settings"] == {"max_in_flight": 32, "poll_interval": 0.05}
    assert (figures["burst_blocks"], figures["burst_min_blocks"]) == (12, 3)  # packed
    assert (figures["burst_unpacked_blocks"], figures["burst_unpacked_min_blocks"]) == (13, 4)
    rows = bench_capacity.rows(figures, move_reference=1.0)
    # 2 tick sizes, 2 executor runs, 2 bursts, move p50 and p99, eth_call.
    assert len(rows) == 9
    for figure, measured, reference, ratio, _target in rows:
        assert measured != "—", figure
        assert reference, figure
        assert ratio != "—", figure
    assert rows[4][:2] == ("burst, 200 due at once, no packing, 32 in flight (blocks)", "13")


def test_a_phase_that_did_not_run_leaves_its_keys_out() -> None:
    figures = bench_capacity.executor_figures({"errors": {"burst": "TooSlowError"}})
    assert figures == {}
    assert bench_capacity.rows(figures, move_reference=1.0) == []

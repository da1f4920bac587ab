"""The rebalancing-quality benchmark: strategies side by side over many simulated years.

Not a test: prints a table per scenario (the mean over the seeds of each figure) and, with
``--json``, the same numbers as JSON. Scenarios (``daemon.backtest.scenarios``): small ($5k,
3 tokens, deep pools: gas dominates), medium ($100k, 5 tokens, $5M pools: fees dominate), large
($5M, 5 tokens, $5M pools: price impact dominates); one year of 5-minute prices at 55–90 %
volatility, correlation 0.65, about three market-wide crashes a year; gas 20 gwei.

The strategies are the daemon's defaults (``default``, from the configuration schema's
``[rebalance]``), the seed's original logic, buy-and-hold, calendar rebalancing, both of the
daemon's modes, and a frontier of thresholds and band widths. Runs are spread over the
machine's cores; the same seeds give the same table.

Usage: ``.venv/bin/python benchmarks/bench_backtest.py [--seeds 5] [--scenarios small,medium,large]
[--days 365] [--json PATH]``
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from daemon.backtest.figures import Figures
from daemon.backtest.output import table
from daemon.backtest.scenarios import SCENARIOS, strategy
from daemon.backtest.series import generate
from daemon.backtest.session import backtest
from daemon.backtest.simulate import Rules
from daemon.config import load_config
from daemon.drift import EngineParams

STRATEGIES = (
    "hold",
    "seed",
    "monthly",
    "weekly",
    "target",
    "band",
    "engine",  # the defaults
    "band:band_fraction=0.3",
    "band:band_fraction=0.7",
    "target:drift_threshold=0.1",
    "band:drift_threshold=0.1",
    "target:drift_threshold=0.2",
    "band:drift_threshold=0.2",
)


def one_seed(name: str, seed: int, days: float, specs: Sequence[str]) -> list[Figures]:
    config = load_config(None, {})
    base = EngineParams.from_config(config)
    chosen = SCENARIOS[name]
    strategies = [
        strategy(
            spec, base, config.rebalance.cooldown_minutes, "default" if spec == "engine" else None
        )
        for spec in specs
    ]
    series = generate(chosen.market_model(days=days), seed)
    rules = Rules(price_impact_threshold=config.rebalance.price_impact_threshold)
    return list(backtest(series, chosen.portfolio(), chosen.market(), strategies, rules).rows)


def mean_rows(runs: Sequence[Sequence[Figures]]) -> list[Figures]:
    rows = []
    for group in zip(*runs, strict=True):
        values: dict[str, Any] = {"strategy": group[0].strategy}
        for field in Figures.__attrs_attrs__:
            if field.name == "strategy":
                continue
            items = [getattr(row, field.name) for row in group]
            known = [v for v in items if v is not None]
            if not known:
                values[field.name] = None
            elif isinstance(known[0], int):
                values[field.name] = round(sum(known) / len(known))
            else:
                values[field.name] = sum(known) / len(known)
        rows.append(Figures(**values))
    return rows


def ratio(value: float, reference: float) -> str:
    return f"{value / reference:.2f}" if reference else "inf"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--scenarios", default="small,medium,large")
    parser.add_argument("--days", type=float, default=365.0)
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args()
    names = args.scenarios.split(",")
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        jobs = {
            name: [
                pool.submit(one_seed, name, seed, args.days, STRATEGIES)
                for seed in range(1, args.seeds + 1)
            ]
            for name in names
        }
        results = {name: [job.result() for job in batch] for name, batch in jobs.items()}
    report: dict[str, Any] = {"seeds": args.seeds, "days": args.days, "scenarios": {}}
    for name in names:
        rows = mean_rows(results[name])
        print(f"\n{name}: {SCENARIOS[name].summary}; mean of {args.seeds} seeds")
        print(table(rows))
        by_name = {row.strategy: row for row in rows}
        seed_logic, default, target = by_name["seed"], by_name["default"], by_name["target"]
        print(
            f"default vs seed: RMS drift {default.rms_drift_pct:.2f} vs "
            f"{seed_logic.rms_drift_pct:.2f} %,"
            f" cost ×{ratio(default.cost_usd, seed_logic.cost_usd)},"
            f" stuck {default.stuck_pct:.2f} vs {seed_logic.stuck_pct:.2f} %;"
            f" vs target: cost ×{ratio(default.cost_usd, target.cost_usd)}, RMS drift "
            f"{default.rms_drift_pct:.2f} vs {target.rms_drift_pct:.2f} %"
        )
        report["scenarios"][name] = [row.as_json() for row in rows]
    print(f"\n{time.perf_counter() - started:.0f} s")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=2)


if __name__ == "__main__":
    main()

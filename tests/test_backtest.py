"""The backtester: series input, the pool model, strategies, figures and the command."""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
from array import array
from decimal import Decimal as D
from pathlib import Path

import pytest

from daemon.amm import get_amounts_out
from daemon.backtest.figures import figures, max_drawdown, stuck_share, volatility_and_sharpe
from daemon.backtest.pools import Market
from daemon.backtest.scenarios import SCENARIOS, ScenarioError, strategy
from daemon.backtest.series import (
    MarketModel,
    PriceSeries,
    SeriesError,
    TokenModel,
    generate,
    read_csv,
    write_csv,
)
from daemon.backtest.session import backtest
from daemon.backtest.simulate import Rules, RunResult
from daemon.backtest.strategies import SeedStrategy
from daemon.config import load_config
from daemon.drift import EngineParams, Holding, evaluate

CONFIG = load_config(None, {})
BASE = EngineParams.from_config(CONFIG)
TOKENS = (TokenModel("USDC", 1.0, 0.0), TokenModel("WETH", 3000.0, 0.7))


def small_series(seed: int = 7, days: float = 3.0) -> PriceSeries:
    return generate(MarketModel(tokens=TOKENS, days=days, step=300), seed)


# --- series ---------------------------------------------------------------------------------


def test_the_same_seed_gives_the_same_series_and_another_seed_another() -> None:
    a, b, c = small_series(1), small_series(1), small_series(2)
    assert list(a.prices["WETH"]) == list(b.prices["WETH"])
    assert list(a.prices["WETH"]) != list(c.prices["WETH"])
    assert set(a.prices["USDC"]) == {1.0}  # a stablecoin stays put
    assert a.length == 3 * 288 + 1


def test_generated_volatility_matches_the_model() -> None:
    model = MarketModel(tokens=TOKENS, days=365, step=3600, jumps_per_year=0)
    prices = generate(model, 3).prices["WETH"]
    logs = [math.log(b / a) for a, b in itertools.pairwise(prices)]
    mean = sum(logs) / len(logs)
    deviation = math.sqrt(sum((x - mean) ** 2 for x in logs) / (len(logs) - 1))
    assert deviation * math.sqrt(365 * 24) == pytest.approx(0.7, rel=0.05)


def test_csv_round_trip(tmp_path: Path) -> None:
    series = small_series()
    path = tmp_path / "prices.csv"
    write_csv(series, path)
    again = read_csv(path)
    assert again.start == series.start
    assert again.step == series.step
    assert list(again.prices["WETH"]) == list(series.prices["WETH"])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("time,symbol,price\n", "header must be timestamp,symbol,price_usd"),
        ("timestamp,symbol,price_usd\n0,WETH,1\n", "two timestamps at least"),
        ("timestamp,symbol,price_usd\n0,WETH,1\n300,WETH,x\n", ":3: price_usd 'x' is not a number"),
        ("timestamp,symbol,price_usd\n0,WETH,1\n300,WETH,-2\n", ":3: price_usd must be a positive"),
        ("timestamp,symbol,price_usd\n0,WETH,1\n300,WETH\n", ":3: expected 3 fields, got 2"),
        ("timestamp,symbol,price_usd\nnoon,WETH,1\n", ":2: timestamp 'noon' is neither"),
        ("timestamp,symbol,price_usd\n0,WETH,1\n0,WETH,2\n", ":3: a second price for WETH"),
        (
            "timestamp,symbol,price_usd\n0,WETH,1\n300,WETH,1\n900,WETH,1\n",
            "evenly spaced (300 s); 300 is followed by 900",
        ),
        (
            "timestamp,symbol,price_usd\n0,WETH,1\n0,USDC,1\n300,WETH,1\n",
            "no price for USDC at 300",
        ),
    ],
)
def test_a_bad_csv_names_the_problem(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(SeriesError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_csv(path)


def test_iso_timestamps_are_read(tmp_path: Path) -> None:
    path = tmp_path / "iso.csv"
    path.write_text(
        "timestamp,symbol,price_usd\n2024-01-01T00:00:00Z,WETH,3000\n2024-01-01T00:05:00Z,WETH,3001.5\n"
    )
    series = read_csv(path)
    assert series.start == 1_704_067_200
    assert series.step == 300
    assert list(series.prices["WETH"]) == [3000.0, 3001.5]


# --- pools ----------------------------------------------------------------------------------


def market() -> Market:
    return Market.create(
        {"USDC": 6, "WETH": 18, "WBTC": 8},
        "USDC",
        [("USDC", "WETH"), ("USDC", "WBTC")],
        2_000_000.0,
        {"USDC": 1.0, "WETH": 3000.0, "WBTC": 60000.0},
    )


def test_pools_route_like_the_executor_and_swap_with_the_router_math() -> None:
    pools = market()
    assert pools.route("WETH", "USDC") == ("WETH", "USDC")
    assert pools.route("WETH", "WBTC") == ("WETH", "USDC", "WBTC")  # no direct pair
    weth = pools.pool("USDC", "WETH")
    wbtc = pools.pool("USDC", "WBTC")
    assert weth is not None
    assert wbtc is not None
    hops = [weth.reserves_for("WETH"), wbtc.reserves_for("USDC")]
    swap = pools.quote_path(("WETH", "USDC", "WBTC"), 10**18)
    assert list(swap.amounts) == get_amounts_out(10**18, hops)
    k = weth.reserve0 * weth.reserve1
    pools.execute(swap)
    assert weth.reserve0 * weth.reserve1 > k  # the fee stays in the pool


def test_arbitrage_brings_a_pool_back_to_the_reference_price_keeping_k() -> None:
    pools = market()
    pools.execute(pools.quote_path(("WETH", "USDC"), 50 * 10**18))  # push WETH down
    pool = pools.pool("USDC", "WETH")
    assert pool is not None
    k = pool.reserve0 * pool.reserve1
    pools.arbitrage({"USDC": 1.0, "WETH": 3300.0, "WBTC": 60000.0})
    price = (pool.reserve0 / 1e6) / (pool.reserve1 / 1e18)  # USDC per WETH
    assert price == pytest.approx(3300.0, rel=1e-9)
    assert pool.reserve0 * pool.reserve1 == pytest.approx(k, rel=1e-12)


# --- strategies -----------------------------------------------------------------------------


def holdings(values: dict[str, int]) -> list[Holding]:
    return [Holding(symbol, usd * 10**6, 6) for symbol, usd in values.items()]


def test_the_seed_logic_is_stuck_where_driftd_trades() -> None:
    """+14 % / +14 % / −28 % with a 15 % threshold: only one token is beyond it."""
    targets = {"A": D(1) / 3, "B": D(1) / 3, "C": 1 - 2 * (D(1) / 3)}
    prices = {"A": D(1), "B": D(1), "C": D(1)}
    held = holdings({"A": 3800, "B": 3800, "C": 2400})
    assert SeedStrategy(BASE).plan(held, targets, prices) == []
    decision = strategy("target", BASE, D(15)).plan(held, targets, prices)
    assert {leg.buy for leg in decision} == {"C"}
    assert len(decision) == 2


def test_engine_strategy_is_the_daemons_evaluate() -> None:
    targets = {"A": D("0.5"), "B": D("0.5")}
    prices = {"A": D(1), "B": D(1)}
    held = holdings({"A": 7000, "B": 3000})
    planned = strategy("engine", BASE, D(15)).plan(held, targets, prices)
    decided = evaluate(held, targets, prices, params=BASE)
    assert planned == list(getattr(decided, "legs", ()))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nonsense", "unknown strategy 'nonsense'"),
        ("target:drift=0.1", "expected KEY=VALUE with KEY one of"),
        ("target:drift_threshold=x", "drift_threshold: 'x' is not a number"),
        ("band:drift_threshold=2", "drift_threshold must be in"),
    ],
)
def test_a_bad_strategy_names_the_problem(spec: str, message: str) -> None:
    with pytest.raises(ScenarioError, match=message):
        strategy(spec, BASE, D(15))


def test_cooldown_and_threshold_shape_the_rebalances() -> None:
    scenario = SCENARIOS["medium"]
    series = generate(scenario.market_model(days=60), 5)
    specs = ["target", "target:cooldown_minutes=10080", "target:drift_threshold=0.3"]
    rows = backtest(
        series,
        scenario.portfolio(),
        scenario.market(),
        [strategy(s, BASE, D(15)) for s in specs],
        Rules(),
    ).rows
    base, weekly_cooldown, wide = rows
    assert base.rebalances > 0
    assert weekly_cooldown.rebalances <= 60 // 7 + 1 < base.rebalances or base.rebalances <= 9
    assert wide.rebalances < base.rebalances
    assert wide.rms_drift_pct > base.rms_drift_pct


# --- figures --------------------------------------------------------------------------------


def test_figures_by_hand() -> None:
    assert max_drawdown([100, 120, 90, 130, 65]) == pytest.approx(0.5)
    volatility, sharpe = volatility_and_sharpe([100, 110, 99], 0.0)
    returns = [0.1, -0.1]
    deviation = math.sqrt(sum(r * r for r in returns))  # mean 0, n − 1 = 1
    assert volatility == pytest.approx(deviation * math.sqrt(365))
    assert sharpe == pytest.approx(0.0, abs=1e-12)
    # 300 s steps: a day is 288 steps; a stretch of 289 above counts, one of 288 does not.
    drifts = array("d", [0.2] * 289 + [0.0] * 11 + [0.2] * 288 + [0.0] * 12)
    assert stuck_share(drifts, 300, 0.15) == pytest.approx(289 / 600)


def test_figures_split_costs_and_compare_with_hold() -> None:
    result = RunResult(
        strategy="x",
        step=86400,
        start=0,
        net_value=array("d", [100.0, 104.0, 102.0]),
        max_drift=array("d", [0.0, 0.1, 0.2]),
    )
    result.costs.gas_usd, result.costs.fees_usd, result.costs.impact_usd = 1.0, 2.0, 0.5
    row = figures(result, 0.15, hold_return=0.01)
    assert row.return_pct == pytest.approx(2.0)
    assert row.return_vs_hold_pct == pytest.approx(1.0)
    assert row.cost_usd == pytest.approx(3.5)
    assert row.max_drawdown_pct == pytest.approx(100 * (1 - 102 / 104))
    assert row.rms_drift_pct == pytest.approx(100 * math.sqrt(0.05 / 3))


# --- the command ----------------------------------------------------------------------------


def backtest_cli(*args: str) -> tuple[int, str, str]:
    command = [sys.executable, "-m", "daemon", "backtest", "--days", "5", "--no-progress", *args]
    env = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    return result.returncode, result.stdout, result.stderr


def test_the_same_seed_gives_the_same_output_and_json_matches_the_table() -> None:
    code, first, _ = backtest_cli("--seed", "4", "--format", "json")
    assert code == 0
    assert backtest_cli("--seed", "4", "--format", "json")[1] == first
    assert backtest_cli("--seed", "5", "--format", "json")[1] != first
    document = json.loads(first)
    names = [row["strategy"] for row in document["strategies"]]
    assert names == ["hold", "seed", "daily", "weekly", "monthly", "target", "band"]
    code, text, _ = backtest_cli("--seed", "4")
    assert code == 0
    for row in document["strategies"]:
        line = next(x for x in text.splitlines() if x.split()[0] == row["strategy"])
        assert line.split()[4] == str(row["rebalances"])


def test_a_csv_backtest_and_charts(tmp_path: Path) -> None:
    series = generate(SCENARIOS["small"].market_model(days=3), 9)
    path = tmp_path / "prices.csv"
    write_csv(series, path)
    charts = tmp_path / "charts"
    code, text, err = backtest_cli(
        "--csv", str(path), "--scenario", "small", "--strategy", "target", "--charts", str(charts)
    )
    assert code == 0, err
    assert str(path) in text
    assert "target" in text
    for name in ("value", "drift", "costs"):
        svg = (charts / f"{name}.svg").read_text()
        assert svg.startswith("<?xml")
        assert "<path" in svg


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--scenario", "huge"], "unknown scenario 'huge'"),
        (["--strategy", "magic"], "unknown strategy 'magic'"),
        (["--targets", "USDC=0.5,WETH=0.6"], "weights must sum to 1"),
        (["--targets", "USDC=0.5,DOGE=0.5"], "no price model for DOGE"),
        (["--csv", "/nonexistent/prices.csv"], "cannot read"),
    ],
)
def test_bad_input_is_a_usage_error(args: list[str], message: str) -> None:
    code, _, err = backtest_cli(*args)
    assert code == 64
    assert message in err
    assert "Traceback" not in err

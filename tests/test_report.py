"""``driftd report``: figures against values computed by hand on a fixture history stored in the
real test PostgreSQL, every format showing the same numbers, and a clear "no data" exit.

The fixture (portfolio "main", 50 % USDC / 50 % WETH, threshold 0.15), one valuation a day at
midnight UTC for four days, WETH at 1000, 1200, 1000, 1100 USD:

    day 0 00:00  interval          5000 USDC + 5 WETH    = 10 000   drift 0.00
    day 1 00:00  before_rebalance  5000 USDC + 5 WETH    = 11 000   drift 0.20
    day 1 00:01  SUCCESS: sell 0.5 WETH (600 USD) for USDC, gas 3 USD, quoted 598.2 USDC,
                 received 597.9, price impact 0.0035, one pool
    day 1 00:02  after_rebalance   5598 USDC + 4.5 WETH  = 10 998   drift 0.02
    day 2 00:00  interval                                = 10 098   drift 0.05
    day 2 06:00  FAILED (reverted), gas 1 USD; day 2 07:00 SKIPPED
    day 3 00:00  interval                                = 10 548   drift 0.10

Buy-and-hold keeps 5000 USDC + 5 WETH: 10 000, 11 000, 11 000, 10 000, 10 500.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from decimal import Decimal
from pathlib import Path

import pytest
import trio

from daemon import exitcodes
from daemon.cli.main import main as cli_main
from daemon.config import DatabaseConfig
from daemon.db import (
    Database,
    FinishedAttempt,
    HoldingValue,
    PortfolioSnapshot,
    open_database,
)

pytestmark = [pytest.mark.db, pytest.mark.timeout(60)]

WETH = "0x" + "11" * 20
USDC = "0x" + "22" * 20
ACCOUNT = "0x" + "33" * 20
SIGNER = "0x" + "55" * 20
DELEGATION = [
    {
        "delegate": SIGNER,
        "delegator": ACCOUNT,
        "authority": "0x" + "ff" * 32,
        "caveats": [],
        "salt": "1",
        "signature": "0x" + "ab" * 65,
    }
]
DAY0 = dt.datetime(2025, 3, 1, tzinfo=dt.UTC)
TX = "0x" + "ab" * 32


def _at(day: int, minutes: int = 0) -> dt.datetime:
    return DAY0 + dt.timedelta(days=day, minutes=minutes)


async def _seed(config: DatabaseConfig, *, valuations: bool = True) -> None:
    async with open_database(config) as db:
        weth = await db.add_token("WETH", WETH, chain_id=1, decimals=18)
        usdc = await db.add_token("USDC", USDC, chain_id=1, decimals=6, is_quote=True)
        portfolio = await db.add_portfolio(
            "main",
            ACCOUNT,
            chain_id=1,
            targets={"WETH": Decimal("0.5"), "USDC": Decimal("0.5")},
            delegation=DELEGATION,
        )

        def valuation(
            at: dt.datetime, kind: str, usdc_amount: str, weth_amount: str, price: int, drift: str
        ) -> PortfolioSnapshot:
            usdc_usd, weth_usd = Decimal(usdc_amount), Decimal(weth_amount) * price
            total = usdc_usd + weth_usd
            return PortfolioSnapshot(
                portfolio_id=portfolio.id,
                total_usd=total,
                max_drift=Decimal(drift),
                price_source="router",
                taken_at=at,
                kind=kind,  # type: ignore[arg-type]
                holdings=(
                    HoldingValue(
                        usdc.id,
                        int(Decimal(usdc_amount) * 10**6),
                        usdc_usd,
                        usdc_usd / total,
                        price_usd=Decimal(1),
                        target=Decimal("0.5"),
                    ),
                    HoldingValue(
                        weth.id,
                        int(Decimal(weth_amount) * 10**18),
                        weth_usd,
                        weth_usd / total,
                        price_usd=Decimal(price),
                        target=Decimal("0.5"),
                    ),
                ),
            )

        if valuations:
            await db.insert_snapshots(
                [
                    valuation(_at(0), "interval", "5000", "5", 1000, "0"),
                    valuation(_at(1), "before_rebalance", "5000", "5", 1200, "0.20"),
                    valuation(_at(1, 2), "after_rebalance", "5598", "4.5", 1200, "0.02"),
                    valuation(_at(2), "interval", "5598", "4.5", 1000, "0.05"),
                    valuation(_at(3), "interval", "5598", "4.5", 1100, "0.10"),
                ]
            )
        await _attempt(
            db,
            portfolio.id,
            _at(1, 1),
            FinishedAttempt(
                status="SUCCESS",
                transaction_hash=TX,
                gas_used=300_000,
                gas_cost_usd=Decimal(3),
                token_amounts=[
                    {
                        "sell": "WETH",
                        "buy": "USDC",
                        "usd": "600",
                        "amount_in": str(5 * 10**17),
                        "expected_out_at_prices": str(600 * 10**6),
                        "capped": False,
                    }
                ],
                swap_path=[[WETH, USDC]],
                expected_outputs=[
                    {
                        "sell": "WETH",
                        "buy": "USDC",
                        "amount_in": str(5 * 10**17),
                        "quoted_out": "598200000",
                        "amount_out_min": "592218000",
                        "price_impact": "0.0035",
                        "actual_out": "597900000",
                    }
                ],
                actual_outputs=["597900000"],
            ),
        )
        await _attempt(
            db,
            portfolio.id,
            _at(2, 360),
            FinishedAttempt(status="FAILED", error="transaction reverted", gas_cost_usd=Decimal(1)),
        )
        await _attempt(
            db,
            portfolio.id,
            _at(2, 420),
            FinishedAttempt(status="SKIPPED", skip_reason="No trade: cooldown"),
        )


async def _attempt(db: Database, portfolio_id: int, at: dt.datetime, row: FinishedAttempt) -> None:
    """A finished attempt started at ``at`` (the repository stamps now(); rows are final)."""
    await db.execute(
        'INSERT INTO rebalance_log (portfolio_id, "timestamp", finished_at, status, skip_reason,'
        " error, transaction_hash, gas_used, gas_cost_usd, drift_percentage, token_amounts,"
        " swap_path, expected_outputs, actual_outputs)"
        " VALUES ($1, $2, $2, $3, $4, $5, $6, $7, $8, 0.2, $9, $10, $11, $12)",
        portfolio_id,
        at,
        row.status,
        row.skip_reason,
        row.error,
        row.transaction_hash,
        row.gas_used,
        row.gas_cost_usd,
        row.token_amounts,
        row.swap_path,
        row.expected_outputs,
        row.actual_outputs,
    )


def _config_file(tmp_path: Path, config: DatabaseConfig) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(f'[database]\nurl = "{config.url}"\n')
    return path


def _report(
    tmp_path: Path, config: DatabaseConfig, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, str, str]:
    period = ["--since", "2025-03-01", "--until", "2025-03-04T00:00"]
    code = cli_main(["--config", str(_config_file(tmp_path, config)), "report", *period, *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def history(db_config: DatabaseConfig) -> DatabaseConfig:
    trio.run(_seed, db_config)
    return db_config


def test_figures_match_the_hand_computed_values(
    history: DatabaseConfig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _report(tmp_path, history, capsys, "--portfolio", "main", "--format", "json")
    assert code == exitcodes.OK, err
    document = json.loads(out)
    figures = document["figures"]

    def number(key: str) -> float:
        return float(figures[key])

    assert document["valuations"] == 5
    assert document["sampling"] == "day"
    # Attribution: 10 548 against buy-and-hold's 10 500, from 10 000.
    assert Decimal(figures["start_value_usd"]) == Decimal("10000.00")
    assert Decimal(figures["end_value_usd"]) == Decimal("10548.00")
    assert Decimal(figures["benchmark_end_value_usd"]) == Decimal("10500.00")
    assert Decimal(figures["portfolio_return_pct"]) == Decimal("5.4800")
    assert Decimal(figures["benchmark_return_pct"]) == Decimal("5.0000")
    assert Decimal(figures["rebalancing_alpha_pct"]) == Decimal("0.4800")
    assert Decimal(figures["rebalancing_alpha_usd"]) == Decimal("48.00")
    # Costs: fee 600 × 0.003 = 1.80; impact 600 × 0.0035 − 1.80 = 0.30; slippage 0.3 USDC at
    # 1 USD = 0.30; gas 3 + 1 (the reverted attempt paid too).
    assert Decimal(figures["fees_usd"]) == Decimal("1.80")
    assert Decimal(figures["price_impact_usd"]) == Decimal("0.30")
    assert Decimal(figures["slippage_usd"]) == Decimal("0.30")
    assert Decimal(figures["gas_usd"]) == Decimal("4.00")
    assert Decimal(figures["traded_usd"]) == Decimal("600.00")
    assert Decimal(figures["gas_per_dollar"]) == Decimal("0.006667")  # 4 / 600
    assert Decimal(figures["total_cost_usd"]) == Decimal("6.40")
    assert Decimal(figures["alpha_before_costs_usd"]) == Decimal("50.40")  # 48 + 2.40
    assert Decimal(figures["alpha_after_all_costs_usd"]) == Decimal("44.00")  # 48 − 4
    assert Decimal(figures["costs_taken_back_pct"]) == Decimal("12.70")  # 6.40 / 50.40
    assert number("slippage_mean_pct") == pytest.approx(0.3 / 598.2 * 100, abs=1e-4)
    assert number("slippage_worst_pct") == pytest.approx(0.3 / 598.2 * 100, abs=1e-4)
    assert (figures["attempts"], figures["successes"], figures["failed"]) == (3, 1, 1)
    assert number("success_rate_pct") == 50.0  # SUCCESS over SUCCESS + PARTIAL + FAILED
    # Drift: 0.20 held 2 minutes, 0.02 for 23 h 58 min, 0.05 for 24 h, over 72 h.
    weighted = (0.20 * 120 + 0.02 * (86400 - 120) + 0.05 * 86400) / (3 * 86400)
    assert number("avg_drift_pct") == pytest.approx(weighted * 100, abs=1e-4)
    assert number("max_drift_pct") == 20.0
    assert number("time_above_threshold_hours") == pytest.approx(120 / 3600, abs=1e-4)
    # Risk from daily samples (the last value of each day): 10 000, 10 998, 10 098, 10 548.
    returns = [10998 / 10000 - 1, 10098 / 10998 - 1, 10548 / 10098 - 1]
    mean = sum(returns) / 3
    deviation = math.sqrt(sum((r - mean) ** 2 for r in returns) / 2)
    assert number("portfolio_volatility_pct") == pytest.approx(
        deviation * math.sqrt(365) * 100, abs=1e-4
    )
    assert number("portfolio_sharpe") == pytest.approx(mean / deviation * math.sqrt(365), abs=1e-4)
    assert number("portfolio_max_drawdown_pct") == pytest.approx(
        (1 - 10098 / 11000) * 100, abs=1e-4
    )
    hold = [11000 / 10000 - 1, 10000 / 11000 - 1, 10500 / 10000 - 1]
    hold_mean = sum(hold) / 3
    hold_deviation = math.sqrt(sum((r - hold_mean) ** 2 for r in hold) / 2)
    assert number("benchmark_sharpe") == pytest.approx(
        hold_mean / hold_deviation * math.sqrt(365), abs=1e-4
    )
    assert number("benchmark_max_drawdown_pct") == pytest.approx(
        (1 - 10000 / 11000) * 100, abs=1e-4
    )
    # The seed's per-day trend.
    days = {d["date"]: d for d in document["daily"]}
    assert days["2025-03-02"]["rebalances"] == 1
    assert Decimal(days["2025-03-02"]["avg_drift_pct"]) == Decimal("11.0000")  # (20 + 2) / 2
    assert Decimal(days["2025-03-02"]["gas_usd"]) == Decimal("3.00")
    assert days["2025-03-03"]["failed"] == 1


def test_a_risk_free_rate_lowers_the_sharpe_ratio(
    history: DatabaseConfig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _report(tmp_path, history, capsys, "--format", "json", "--risk-free", "0.05")
    assert code == exitcodes.OK, err  # the only portfolio needs no --portfolio
    returns = [10998 / 10000 - 1, 10098 / 10998 - 1, 10548 / 10098 - 1]
    mean = sum(returns) / 3
    deviation = math.sqrt(sum((r - mean) ** 2 for r in returns) / 2)
    expected = (mean - 0.05 / 365) / deviation * math.sqrt(365)
    assert json.loads(out)["figures"]["portfolio_sharpe"] == pytest.approx(expected, abs=1e-4)


def test_the_table_shows_the_numbers_of_the_json(
    history: DatabaseConfig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from daemon.report.figures import Report

    code, out, err = _report(tmp_path, history, capsys, "--format", "json")
    assert code == exitcodes.OK, err
    figures = json.loads(out)["figures"]
    code, table, err = _report(tmp_path, history, capsys, "--format", "table")
    assert code == exitcodes.OK, err
    labels = _labels_by_key(Report)
    lines = table.splitlines()
    for key, value in figures.items():
        shown = "n/a" if value is None else (f"{value}" if not isinstance(value, float) else None)
        matching = [line for line in lines if line.strip().startswith(labels[key])]
        assert matching, key
        cells = {re.split(r"\s{2,}", line.strip())[1].split(" ")[0] for line in matching}
        if shown is None:
            assert any(c != "n/a" and float(c) == value for c in cells), (key, value, cells)
        else:
            assert shown in cells, (key, value, cells)
    assert "2025-03-02" in table


def _labels_by_key(report_type: type) -> dict[str, str]:
    """Each JSON key's label, from a report of a two-valuation history."""
    from daemon.report.figures import build_report
    from daemon.report.history import History, Position, Valuation

    def valuation(day: int) -> Valuation:
        return Valuation(
            _at(day),
            "interval",
            Decimal(1),
            Decimal(0),
            (Position("A", Decimal(1), Decimal(1), Decimal(1), None, Decimal(1)),),
        )

    history = History("x", _at(0), _at(1), Decimal("0.15"), {}, (valuation(0), valuation(1)), ())
    report = build_report(history, 0.0)
    assert isinstance(report, report_type)
    return {f.key: f.label for f in report.figures}


def test_an_empty_history_says_what_is_missing_and_exits_65(
    db_config: DatabaseConfig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trio.run(lambda: _seed(db_config, valuations=False))
    code, out, err = _report(tmp_path, db_config, capsys, "--portfolio", "main")
    assert code == exitcodes.DATA_ERROR
    assert out == ""
    assert "no data for portfolio 'main'" in err
    assert "no valuations recorded; 3 rebalance attempt(s)" in err
    assert "report.valuation_interval" in err
    assert "Traceback" not in err


def test_one_valuation_is_too_short_and_an_unknown_portfolio_is_named(
    history: DatabaseConfig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config_file(tmp_path, history)
    code = cli_main(
        ["--config", str(config), "report", "--since", "2025-03-01", "--until", "2025-03-01T12:00"]
    )
    err = capsys.readouterr().err
    assert code == exitcodes.DATA_ERROR
    assert "only one valuation" in err
    code = cli_main(["--config", str(config), "report", "--portfolio", "nope"])
    assert code == exitcodes.DATA_ERROR
    assert "nope" in capsys.readouterr().err


def test_a_single_chart_as_png(
    history: DatabaseConfig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "drift.png"
    code, _, err = _report(
        tmp_path, history, capsys, "--format", "png", "--chart", "drift", "--output", str(path)
    )
    assert code == exitcodes.OK, err
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert path.stat().st_size > 5000

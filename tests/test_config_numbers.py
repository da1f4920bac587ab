"""Numbers and addresses in the configuration: non-finite, overflowing and huge values, wrong
EIP-55 checksums and the zero address are refused with the key named (issue 12).

Each bad input is a row of :data:`CASES` ``(name, input, exit code, message fragment)``; the
input is one of ``{"env": {...}}`` (environment variables), ``{"toml": "..."}`` (the config
file) or ``{"runtime": "..."}`` (the JSON of ``system_config.REBALANCING_PARAMS``, which the
running daemon refuses as a whole, keeping its parameters and logging the configuration error;
78 is the code the same values get from the file). File and environment rows run through
``driftd check-config``, the real command line.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from reliability import BadInput

from daemon import exitcodes
from daemon.cli.main import main
from daemon.config import ConfigError, apply_runtime_params, parse_config

ROUTER = "0x7a250d5630B4cF539739dF2C5dAcb4c659F2488D"  # Uniswap V2 Router02, checksummed
ROUTER_TYPO = "0x7a250d5630B4cF539739dF2C5dAcb4c659F2488d"  # last letter's case flipped
HUGE_INT = "1" * 5000  # beyond Python's 4 300-digit conversion limit
BIGINT_OVERFLOW = str(2**63)  # one more than PostgreSQL's bigint holds (chain ids are bigint)

Case = tuple[str, dict[str, Any], int, str]
CONFIG: int = exitcodes.CONFIG_ERROR

CASES: tuple[Case, ...] = (
    # --- floats (seconds): 1e999 is a finite Decimal but inf as a float ---
    (
        "env float overflowing to inf",
        {"env": {"DRIFTD_DATABASE_COMMAND_TIMEOUT": "1e999"}},
        CONFIG,
        "database.command_timeout (from $DRIFTD_DATABASE_COMMAND_TIMEOUT): must be at most",
    ),
    (
        "env float inf",
        {"env": {"DRIFTD_DATABASE_COMMAND_TIMEOUT": "inf"}},
        CONFIG,
        "database.command_timeout (from $DRIFTD_DATABASE_COMMAND_TIMEOUT): must be a finite",
    ),
    (
        "env float -inf",
        {"env": {"DRIFTD_CHAIN_REQUEST_TIMEOUT": "-inf"}},
        CONFIG,
        "chain.request_timeout (from $DRIFTD_CHAIN_REQUEST_TIMEOUT): must be a finite",
    ),
    (
        "env float nan",
        {"env": {"DRIFTD_PRICES_POLL_INTERVAL": "nan"}},
        CONFIG,
        "prices.poll_interval (from $DRIFTD_PRICES_POLL_INTERVAL): must be a finite",
    ),
    (
        "env float Infinity spelled out",
        {"env": {"DRIFTD_SUPERVISOR_RESTART_WINDOW": "Infinity"}},
        CONFIG,
        "supervisor.restart_window (from $DRIFTD_SUPERVISOR_RESTART_WINDOW): must be a finite",
    ),
    (
        "env float huge but finite",
        {"env": {"DRIFTD_EXECUTION_RECEIPT_TIMEOUT": "1e300"}},
        CONFIG,
        "execution.receipt_timeout (from $DRIFTD_EXECUTION_RECEIPT_TIMEOUT): must be at most",
    ),
    (
        "file float 1e999",
        {"toml": "[database]\ncommand_timeout = 1e999\n"},
        CONFIG,
        "database.command_timeout: must be at most",
    ),
    ("file float inf", {"toml": "[prices]\nmax_age = inf\n"}, CONFIG, "prices.max_age: must be a"),
    (
        "file float -inf",
        {"toml": "[alerts]\nrepeat_window = -inf\n"},
        CONFIG,
        "alerts.repeat_window: must be a finite",
    ),
    (
        "file float nan",
        {"toml": "[execution]\nstuck_after = nan\n"},
        CONFIG,
        "execution.stuck_after: must be a finite",
    ),
    # --- decimals (money, fractions, minutes) ---
    (
        "env decimal 1e999",
        {"env": {"DRIFTD_REBALANCE_MAX_TRADE_USD": "1e999"}},
        CONFIG,
        "rebalance.max_trade_usd (from $DRIFTD_REBALANCE_MAX_TRADE_USD): must be at most",
    ),
    (
        "env decimal nan through the seed's alias",
        {"env": {"DRIFT_THRESHOLD": "nan"}},
        CONFIG,
        "rebalance.drift_threshold (from $DRIFT_THRESHOLD): must be a finite",
    ),
    (
        "env cooldown beyond the calendar",
        {"env": {"DRIFTD_REBALANCE_COOLDOWN_MINUTES": "1e12"}},
        CONFIG,
        "rebalance.cooldown_minutes (from $DRIFTD_REBALANCE_COOLDOWN_MINUTES): must be at most",
    ),
    (
        "env gas ceiling 1e999 gwei",
        {"env": {"DRIFTD_EXECUTION_MAX_FEE_GWEI": "1e999"}},
        CONFIG,
        "execution.max_fee_gwei (from $DRIFTD_EXECUTION_MAX_FEE_GWEI): must be at most",
    ),
    (
        "file guard cap inf",
        {"toml": "[guard]\nperiod_cap_usd = inf\n"},
        CONFIG,
        "guard.period_cap_usd: must be a finite",
    ),
    (
        "file guard cap 1e999",
        {"toml": "[guard]\nperiod_cap_usd = 1e999\n"},
        CONFIG,
        "guard.period_cap_usd: must be at most",
    ),
    (
        "file decimal -inf",
        {"toml": "[rebalance]\nmin_trade_usd = -inf\n"},
        CONFIG,
        "rebalance.min_trade_usd: must be a finite",
    ),
    # --- integers ---
    (
        "env integer beyond bigint",
        {"env": {"DRIFTD_CHAIN_CHAIN_ID": BIGINT_OVERFLOW}},
        CONFIG,
        "chain.chain_id (from $DRIFTD_CHAIN_CHAIN_ID): must be at most 9223372036854775807",
    ),
    (
        "env integer of 5000 digits",
        {"env": {"DRIFTD_CHAIN_MAX_RETRIES": HUGE_INT}},
        CONFIG,
        "chain.max_retries (from $DRIFTD_CHAIN_MAX_RETRIES): must be at most",
    ),
    (
        "env integer inf",
        {"env": {"DRIFTD_GUARD_MAX_STALENESS": "inf"}},
        CONFIG,
        "guard.max_staleness (from $DRIFTD_GUARD_MAX_STALENESS): must be an integer",
    ),
    (
        "env integer 1e999",
        {"env": {"DRIFTD_EXECUTION_DEADLINE_SECONDS": "1e999"}},
        CONFIG,
        "execution.deadline_seconds (from $DRIFTD_EXECUTION_DEADLINE_SECONDS): must be an integer",
    ),
    (
        "file integer beyond bigint",
        {"toml": f"[chain]\nchain_id = {2**70}\n"},
        CONFIG,
        "chain.chain_id: must be at most 9223372036854775807",
    ),
    (
        "file integer of 5000 digits",
        {"toml": f"[chain]\nchain_id = {HUGE_INT}\n"},
        CONFIG,
        "not valid TOML: a number is too large",
    ),
    ("file integer nan", {"toml": "[guard]\nperiod = nan\n"}, CONFIG, "guard.period: must be an"),
    # --- addresses ---
    (
        "env address with a wrong EIP-55 checksum",
        {"env": {"DRIFTD_CHAIN_ROUTER": ROUTER_TYPO}},
        CONFIG,
        "chain.router (from $DRIFTD_CHAIN_ROUTER): "
        f"{ROUTER_TYPO} does not match its EIP-55 checksum",
    ),
    (
        "env zero address",
        {"env": {"UNISWAP_V2_ROUTER": "0x" + "0" * 40}},
        CONFIG,
        "chain.router (from $UNISWAP_V2_ROUTER): is the zero address",
    ),
    (
        "file address with a wrong EIP-55 checksum",
        {"toml": f'[delegation]\nmanager = "{ROUTER_TYPO}"\n'},
        CONFIG,
        "delegation.manager: 0x7a250d5630B4cF539739dF2C5dAcb4c659F2488d does not match",
    ),
    (
        "file guard enforcer is the zero address",
        {"toml": f'[guard]\nenforcer = "0x{"0" * 40}"\n'},
        CONFIG,
        "guard.enforcer: is the zero address",
    ),
    # --- REBALANCING_PARAMS in the database (JSON numbers are read as Decimal) ---
    (
        "runtime cooldown 1e999",
        {"runtime": '{"cooldownMinutes": 1e999}'},
        CONFIG,
        "system_config.REBALANCING_PARAMS.cooldownMinutes: must be at most",
    ),
    (
        "runtime max trade NaN",
        {"runtime": '{"maxTradeSizeUsd": "NaN"}'},
        CONFIG,
        "system_config.REBALANCING_PARAMS.maxTradeSizeUsd: must be a finite",
    ),
    (
        "runtime slippage Infinity",
        {"runtime": '{"slippage_tolerance": "Infinity"}'},
        CONFIG,
        "system_config.REBALANCING_PARAMS.slippage_tolerance: must be a finite",
    ),
)


def _isolated_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    """Only this case's variables: none of the caller's DRIFTD_* (or seed alias) leak in."""
    import os

    for name in list(os.environ):
        if name.startswith(("DRIFTD_", "DRIFT_", "UNISWAP_", "PRICE_", "COOLDOWN", "MAX_", "MIN_")):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", "/nonexistent")
    for name, value in env.items():
        monkeypatch.setenv(name, value)


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("name", "given", "code", "message"), CASES, ids=[c[0] for c in CASES])
@pytest.mark.bad_input
def test_bad_number_or_address_is_refused_naming_the_key(
    name: str,
    given: dict[str, Any],
    code: int,
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    bad_input: BadInput,
) -> None:
    bad_input.area = (
        "runtime params" if "runtime" in given else "env" if "env" in given else "config"
    )
    shown = json.dumps(given, ensure_ascii=False)
    bad_input.given = f"{name}: {shown[:80]}{'…' if len(shown) > 80 else ''}"
    bad_input.expected = f"exit {code}: “{message}”"
    bad_input.unharmed = "nothing running or stored is read or written by check-config"
    if "runtime" in given:
        # The JSON text as stored, decoded with Decimal for non-integers as db.py does.
        params = json.loads(given["runtime"], parse_float=Decimal)
        with pytest.raises(ConfigError) as info:
            apply_runtime_params(parse_config({}, {}), params)
        bad_input.observed = "ConfigError: " + "; ".join(info.value.problems)
        assert code == exitcodes.CONFIG_ERROR
        assert any(message in problem for problem in info.value.problems), info.value.problems
        return
    _isolated_env(monkeypatch, given.get("env", {}))
    argv = ["check-config"]
    if "toml" in given:
        path = tmp_path / "config.toml"
        path.write_text(given["toml"])
        argv = ["--config", str(path), *argv]
    exit_code = main(argv)
    err = capsys.readouterr().err
    bad_input.observed = f"exit {exit_code}: {err.strip().splitlines()[0] if err.strip() else ''}"
    assert exit_code == code, name
    assert message in err, err
    assert "Traceback" not in err


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "address",
    [
        ROUTER,  # the right checksum
        ROUTER.lower(),  # no checksum (EIP-55: all lowercase)
        "0x" + ROUTER[2:].upper(),  # no checksum (all uppercase)
    ],
)
def test_addresses_without_or_with_the_right_checksum_are_accepted(address: str) -> None:
    config = parse_config({"chain": {"router": address}}, {})
    assert config.chain.router == ROUTER


@pytest.mark.timeout(30)
def test_largest_allowed_values_still_parse() -> None:
    config = parse_config(
        {
            "chain": {"chain_id": 2**63 - 1},
            "database": {"command_timeout": Decimal("1e9")},
            "rebalance": {"max_trade_usd": "1000000000", "cooldown_minutes": "1e9"},
        },
        {},
    )
    assert config.chain.chain_id == 2**63 - 1
    assert config.database.command_timeout == 1e9
    assert config.rebalance.cooldown_minutes == Decimal("1e9")

"""Configuration: TOML < environment, validation naming the key, secrets, generated docs."""

from __future__ import annotations

import json
import tomllib
from decimal import Decimal
from pathlib import Path

import pytest
from eth_utils import is_checksum_address

from daemon import configdoc
from daemon.cli.main import main
from daemon.config import (
    Config,
    ConfigError,
    apply_runtime_params,
    changed_keys,
    effective_config,
    keep_restart_keys,
    key_specs,
    load_config,
    parse_config,
    resolve_config_path,
)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config.toml.example"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def problems_of(text: str, tmp_path: Path, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), env or {})
    return info.value.problems


def test_defaults_match_the_seed() -> None:
    config = parse_config({}, {})
    assert config.rebalance.drift_threshold == Decimal("0.15")
    assert config.rebalance.cooldown_minutes == 15
    assert config.rebalance.slippage_tolerance == Decimal("0.01")
    assert config.rebalance.max_trade_usd == 10000
    assert config.rebalance.min_trade_usd == 50
    assert config.rebalance.price_impact_threshold == Decimal("0.05")
    assert config.alerts.high_drift == Decimal("0.25")
    assert config.alerts.gas_cost_factor == 2
    assert config.rebalance.rebalance_to == "band"


def test_toml_values_are_exact_decimals(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "[rebalance]\ndrift_threshold = 0.1\n"), {})
    assert config.rebalance.drift_threshold == Decimal("0.1")  # not 0.1000000000000000055…


def test_environment_overrides_file_with_seed_names(tmp_path: Path) -> None:
    path = write(tmp_path, '[rebalance]\ndrift_threshold = 0.2\n[prices]\nsource = "oracle"\n')
    env = {
        "DRIFT_THRESHOLD": "0.3",
        "COOLDOWN_MINUTES": "5",
        "SLIPPAGE_TOLERANCE": "0.02",
        "MAX_TRADE_SIZE_USD": "5000",
        "MIN_TRADE_SIZE_USD": "10",
        "UNISWAP_V2_ROUTER": "0x" + "ab" * 20,
        "PRICE_IMPACT_THRESHOLD": "0.03",
        "PRICE_SOURCE": "ROUTER",
    }
    config = load_config(path, env)
    assert config.rebalance.drift_threshold == Decimal("0.3")
    assert config.rebalance.cooldown_minutes == 5
    assert config.rebalance.slippage_tolerance == Decimal("0.02")
    assert config.rebalance.max_trade_usd == 5000
    assert config.rebalance.min_trade_usd == 10
    assert config.chain.router.lower() == "0x" + "ab" * 20
    assert is_checksum_address(config.chain.router)
    assert config.rebalance.price_impact_threshold == Decimal("0.03")
    assert config.prices.source == "router"


def test_driftd_prefixed_variable_wins_over_seed_alias() -> None:
    config = parse_config({}, {"DRIFT_THRESHOLD": "0.3", "DRIFTD_REBALANCE_DRIFT_THRESHOLD": "0.4"})
    assert config.rebalance.drift_threshold == Decimal("0.4")


def test_every_key_has_a_driftd_variable() -> None:
    config = parse_config(
        {},
        {
            "DRIFTD_DATABASE_URL": "postgresql://u@h/db",
            "DRIFTD_CHAIN_RPC_URL": "http://127.0.0.1:9999",
            "DRIFTD_CHAIN_CHAIN_ID": "31337",
            "DRIFTD_HEALTH_SOCKET": "/tmp/x.sock",
            "DRIFTD_EXECUTION_DRY_RUN": "true",
        },
    )
    assert config.database.url == "postgresql://u@h/db"
    assert config.chain.rpc_url == "http://127.0.0.1:9999"
    assert config.chain.chain_id == 31337
    assert config.health.socket == "/tmp/x.sock"
    assert config.execution.dry_run is True


def test_out_of_range_value_names_the_key(tmp_path: Path) -> None:
    problems = problems_of("[rebalance]\ndrift_threshold = 1.5\n", tmp_path)
    assert problems == ["rebalance.drift_threshold: must be in (0, 1), got 1.5"]


def test_typo_key_is_an_error_with_a_hint(tmp_path: Path) -> None:
    problems = problems_of("[rebalance]\ndrift_treshold = 0.2\n", tmp_path)
    assert problems == ["rebalance.drift_treshold: unknown key (did you mean drift_threshold?)"]


def test_unknown_section_and_unknown_env_are_errors(tmp_path: Path) -> None:
    problems = problems_of("[rebalancing]\nx = 1\n", tmp_path, {"DRIFTD_REBALANCE_THRESHOLD": "1"})
    assert any(p.startswith("rebalancing: unknown section") for p in problems)
    assert any(p.startswith("DRIFTD_REBALANCE_THRESHOLD: unknown environment") for p in problems)


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    problems = problems_of(
        '[rebalance]\nslippage_tolerance = -1\nrebalance_to = "somewhere"\n'
        '[chain]\nrouter = "0x123"\nrpc_url = "ftp://x"\n',
        tmp_path,
        {"COOLDOWN_MINUTES": "soon"},
    )
    keys = sorted(p.split(":")[0].split(" ")[0] for p in problems)
    assert keys == [
        "chain.router",
        "chain.rpc_url",
        "rebalance.cooldown_minutes",
        "rebalance.rebalance_to",
        "rebalance.slippage_tolerance",
    ]
    assert any("$COOLDOWN_MINUTES" in p for p in problems)


def test_cross_key_rule_min_trade_below_max() -> None:
    with pytest.raises(ConfigError, match=r"rebalance\.min_trade_usd: must be <="):
        parse_config({"rebalance": {"min_trade_usd": 500, "max_trade_usd": 100}}, {})


def test_bad_toml_and_missing_file_are_clear(tmp_path: Path) -> None:
    assert "not valid TOML" in problems_of("[rebalance\n", tmp_path)[0]
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml", {})


def test_secrets_are_never_read_from_toml(tmp_path: Path) -> None:
    problems = problems_of('[signer]\nkey = "0xabc"\n', tmp_path)
    assert problems == [
        "signer.key: secrets are not read from the config file; use signer.key_file or the "
        "environment"
    ]


def test_secret_from_file_credentials_or_env(tmp_path: Path) -> None:
    key = "0x" + "11" * 32
    key_file = tmp_path / "signer.key"
    key_file.write_text(key + "\n")
    key_file.chmod(0o600)  # a key file open to others is refused (tests/test_secrets.py)
    from_file = parse_config({"signer": {"key_file": str(key_file)}}, {})
    assert from_file.secrets.signer_key is not None
    assert from_file.secrets.signer_key.reveal() == key

    credentials = tmp_path / "creds"
    credentials.mkdir()
    (credentials / "signer-key").write_text(key)
    (credentials / "coingecko-api-key").write_text("cg-key")
    from_creds = parse_config({}, {"CREDENTIALS_DIRECTORY": str(credentials)})
    assert from_creds.secrets.signer_key is not None
    assert from_creds.secrets.coingecko_api_key is not None
    assert from_creds.secrets.coingecko_api_key.reveal() == "cg-key"

    from_env = parse_config({}, {"DRIFTD_SIGNER_KEY": key})
    assert from_env.secrets.signer_key is not None
    assert from_env.secrets.signer_key.reveal() == key


def test_secrets_and_passwords_are_masked_everywhere(tmp_path: Path) -> None:
    key = "0x" + "22" * 32
    config = parse_config(
        {"database": {"url": "postgresql://driftd:hunter2@db.example/driftd"}},
        {"DRIFTD_SIGNER_KEY": key, "DRIFTD_COINGECKO_API_KEY": "cg-secret"},
    )
    printed = json.dumps(effective_config(config)) + repr(config) + str(config)
    assert key not in printed
    assert "cg-secret" not in printed
    assert "hunter2" not in json.dumps(effective_config(config))
    assert effective_config(config)["secrets"]["signer_key"] == "***"


def test_unreadable_key_file_names_the_key_not_the_content(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"signer": {"key_file": str(tmp_path / "missing")}}, {})
    assert info.value.problems[0].startswith("signer.key_file: cannot read signer key file")


def test_config_path_resolution(tmp_path: Path) -> None:
    assert resolve_config_path("/a.toml", {"DRIFTD_CONFIG": "/b.toml"}) == Path("/a.toml")
    assert resolve_config_path(None, {"DRIFTD_CONFIG": "/b.toml"}) == Path("/b.toml")


def test_changed_keys_split_live_and_restart() -> None:
    old = parse_config({}, {})
    new = parse_config(
        {"rebalance": {"drift_threshold": Decimal("0.2")}, "chain": {"rpc_url": "http://x:1"}}, {}
    )
    assert changed_keys(old, new) == (["rebalance.drift_threshold"], ["chain.rpc_url"])


# --- the generated documentation ---------------------------------------------------------------


def test_example_file_is_the_generated_one() -> None:
    assert EXAMPLE.read_text() == configdoc.render_example(), (
        "config.toml.example is stale: python -m daemon.configdoc example > config.toml.example"
    )


def test_example_sets_every_key_and_only_known_keys() -> None:
    document = tomllib.loads(EXAMPLE.read_text())
    in_example = {f"{section}.{key}" for section, table in document.items() for key in table}
    assert in_example == {spec.dotted for spec in key_specs()}
    assert isinstance(load_config(EXAMPLE, {}), Config)


def test_readme_reference_lists_every_key() -> None:
    readme = (ROOT / "README.md").read_text()
    assert configdoc.render_reference() in readme, (
        "README configuration reference is stale: python -m daemon.configdoc reference"
    )
    for spec in key_specs():
        assert f"`{spec.dotted}`" in readme


# --- check-config ------------------------------------------------------------------------------


def test_check_config_on_the_example_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "--config", str(EXAMPLE)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["rebalance"]["drift_threshold"] == "0.15"


def test_check_config_typo_exits_78_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "[rebalance]\ncooldown_minuts = 3\n")
    assert main(["check-config", "--config", str(path)]) == 78
    assert "rebalance.cooldown_minuts: unknown key" in capsys.readouterr().err


def test_check_config_out_of_range_exits_78(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "[rebalance]\nmax_trade_usd = -5\n")
    assert main(["--config", str(path), "check-config"]) == 78
    assert "rebalance.max_trade_usd: must be > 0, got -5" in capsys.readouterr().err


def test_version_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("driftd ")
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "check-config" in capsys.readouterr().out


def test_keep_restart_keys_applies_only_live_keys() -> None:
    running = parse_config({}, {})
    reloaded = parse_config(
        {
            "rebalance": {"drift_threshold": Decimal("0.2")},
            "database": {"url": "postgresql://elsewhere/db"},
        },
        {},
    )
    effective = keep_restart_keys(running, reloaded)
    assert effective.rebalance.drift_threshold == Decimal("0.2")
    assert effective.database.url == running.database.url


def test_runtime_params_accept_our_keys_and_the_seeds() -> None:
    base = parse_config({}, {})
    applied = apply_runtime_params(
        base, {"driftThreshold": Decimal("0.1"), "cooldown_minutes": 5, "slippageTolerance": "0.02"}
    )
    assert applied.rebalance.drift_threshold == Decimal("0.1")
    assert applied.rebalance.cooldown_minutes == 5
    assert applied.rebalance.slippage_tolerance == Decimal("0.02")
    assert applied.chain == base.chain


def test_bad_runtime_params_name_the_key() -> None:
    base = parse_config({}, {})
    with pytest.raises(ConfigError) as info:
        apply_runtime_params(base, {"driftThreshold": 3, "colour": "blue"})
    assert info.value.problems == [
        "system_config.REBALANCING_PARAMS.driftThreshold: must be in (0, 1), got 3",
        "system_config.REBALANCING_PARAMS.colour: unknown rebalancing parameter",
    ]
    with pytest.raises(ConfigError, match="must be a JSON object"):
        apply_runtime_params(base, [1, 2])

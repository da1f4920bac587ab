"""Tests of the database subcommands: migrate, token, portfolio."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from daemon import cli_db, exitcodes
from daemon.config import Config, parse_config
from daemon.db import Token, load_migrations
from daemon.pgserver import free_port

ACCOUNT = "0x" + "ab" * 20
WETH = "0xC02aaA39b223FE8D0A0e5C4F27eAD9083C756Cc2"
USDC = "0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48"
FEED = "0x5f4eC3Df9cbd43714FE2740f5E3616155c5b8419"  # Chainlink ETH / USD on mainnet


def _delegation(**overrides: object) -> dict[str, object]:
    item: dict[str, object] = {
        "delegate": "0x" + "01" * 20,
        "delegator": ACCOUNT,
        "authority": "0x" + "ff" * 32,
        "caveats": [{"enforcer": "0x" + "02" * 20, "terms": "0x1234", "args": "0x"}],
        "salt": "12345",
        "signature": "0x" + "cd" * 65,
    }
    item.update(overrides)
    return item


def _parser(**kwargs: object) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="driftd")
    cli_db.register(parser.add_subparsers(dest="command"), **kwargs)  # type: ignore[arg-type]
    return parser


def _run(config: Config, *argv: str, **kwargs: object) -> int:
    args = _parser(**kwargs).parse_args(argv)
    code: int = args.func(args, config)
    return code


@pytest.fixture
def config(db_url: str) -> Config:
    return parse_config({}, {"DRIFTD_DATABASE_URL": db_url})


@pytest.fixture
def delegation_file(tmp_path: Path) -> Path:
    path = tmp_path / "delegation.json"
    path.write_text(json.dumps([_delegation()]))
    return path


def _register_tokens(config: Config) -> None:
    assert (
        _run(
            config,
            "token",
            "add",
            "WETH",
            WETH.lower(),
            "--decimals",
            "18",
            "--coingecko-id",
            "weth",
            "--feed",
            FEED,
        )
        == exitcodes.OK
    )
    assert _run(config, "token", "add", "USDC", USDC, "--decimals", "6", "--quote") == exitcodes.OK


def test_migrate_is_idempotent(config: Config, capsys: pytest.CaptureFixture[str]) -> None:
    latest = load_migrations()[-1].version
    assert _run(config, "migrate") == exitcodes.OK
    assert f"schema up to date (version {latest})" in capsys.readouterr().out
    assert _run(config, "migrate", "--json") == exitcodes.OK
    assert json.loads(capsys.readouterr().out) == {"applied": [], "version": latest}


def test_tokens(config: Config, capsys: pytest.CaptureFixture[str]) -> None:
    _register_tokens(config)
    capsys.readouterr()
    assert _run(config, "token", "list") == exitcodes.OK
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["SYMBOL", "ADDRESS", "DECIMALS", "COINGECKO", "FEED", "QUOTE"]
    assert out[2].split() == ["USDC", USDC, "6", "-", "-", "yes"]
    assert out[3].split() == ["WETH", WETH, "18", "weth", FEED]  # stored checksummed
    assert _run(config, "token", "list", "--json") == exitcodes.OK
    listed = json.loads(capsys.readouterr().out)
    assert [t["symbol"] for t in listed] == ["USDC", "WETH"]
    assert [t["price_feed"] for t in listed] == [None, FEED]
    assert _run(config, "token", "add", "X", USDC, "--decimals", "6", "--feed", "0x12") == (
        exitcodes.DATA_ERROR
    )
    assert "--feed: must be a 0x-prefixed 20-byte hex address" in capsys.readouterr().err
    # Duplicates and bad input are data errors with a clear message.
    assert _run(config, "token", "add", "WETH", WETH, "--decimals", "18") == exitcodes.DATA_ERROR
    assert "already exists" in capsys.readouterr().err
    assert _run(config, "token", "add", "BAD", "0x1234", "--decimals", "18") == exitcodes.DATA_ERROR
    assert "ADDRESS: must be a 0x-prefixed 20-byte hex address" in capsys.readouterr().err
    assert _run(config, "token", "add", "X", WETH, "--decimals", "99") == exitcodes.DATA_ERROR
    assert "--decimals" in capsys.readouterr().err


def test_portfolio_lifecycle(
    config: Config, delegation_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _register_tokens(config)
    argv = ["portfolio", "add", "main", "--account", ACCOUNT, "--target", "WETH=0.6", "USDC=0.4"]
    argv += ["--delegation", str(delegation_file)]
    # Without a verifier, delegations are never registered.
    assert _run(config, *argv) == exitcodes.DATA_ERROR
    assert "no delegation verifier" in capsys.readouterr().err
    code = _run(config, *argv, verify_delegation=lambda d, a, c, t: None)
    assert code == exitcodes.OK
    captured = capsys.readouterr()
    assert "added portfolio main" in captured.out
    assert _run(config, "portfolio", "list") == exitcodes.OK
    out = capsys.readouterr().out.splitlines()
    assert out[2].split()[0] == "main"
    assert out[2].split()[1].lower() == ACCOUNT
    assert out[2].split()[2] == "active"
    assert "USDC=0.4 WETH=0.6" in out[2]
    assert _run(config, "portfolio", "show", "main", "--json") == exitcodes.OK
    shown = json.loads(capsys.readouterr().out)
    assert shown["targets"] == {"USDC": "0.4", "WETH": "0.6"}
    assert shown["delegation"] == [_delegation()]
    assert shown["last_successful_rebalance"] is None
    assert _run(config, "portfolio", "show", "main") == exitcodes.OK
    text = capsys.readouterr().out
    assert "active" in text
    assert "WETH" in text
    assert _run(config, "portfolio", "deactivate", "main") == exitcodes.OK
    assert _run(config, "portfolio", "list", "--json") == exitcodes.OK
    listed = capsys.readouterr().out
    assert json.loads(listed[listed.index("[") :])[0]["is_active"] is False
    assert _run(config, "portfolio", "show", "nope") == exitcodes.DATA_ERROR
    assert "no portfolio 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("targets", "message"),
    [
        (["WETH=0.6", "USDC=0.3"], "weights sum to 0.9, not 1"),
        (["WETH=0.6", "WETH=0.4"], "duplicate symbol WETH"),
        (["WETH=1.5"], "weight must be in (0, 1]"),
        (["WETH=0", "USDC=1"], "weight must be in (0, 1]"),
        (["WETH"], "expected SYMBOL=WEIGHT"),
        (["WETH=abc", "USDC=1"], "is not a number"),
        (["DOGE=0.5", "WETH=0.5"], "unknown token symbol(s) DOGE"),
    ],
)
def test_portfolio_targets_are_validated(
    config: Config,
    delegation_file: Path,
    capsys: pytest.CaptureFixture[str],
    targets: list[str],
    message: str,
) -> None:
    _register_tokens(config)
    capsys.readouterr()
    code = _run(
        config,
        "portfolio",
        "add",
        "p",
        "--account",
        ACCOUNT,
        "--target",
        *targets,
        "--delegation",
        str(delegation_file),
    )
    assert code == exitcodes.DATA_ERROR
    assert message in capsys.readouterr().err


def test_weights_within_tolerance_are_accepted() -> None:
    targets = cli_db.parse_targets(["A=0.333333333333", "B=0.333333333333", "C=0.333333333334"])
    assert sum(targets.values()) == 1
    assert cli_db.parse_targets(["A=0.5000000000005", "B=0.5"])


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({}, "delegation: must be a non-empty JSON array"),
        ([], "delegation: must be a non-empty JSON array"),
        (["x"], "delegation[0]: must be an object"),
        ([{k: v for k, v in _delegation().items() if k != "salt"}], "delegation[0].salt: missing"),
        ([_delegation(delegate="0x12")], "delegation[0].delegate: must be a 0x address"),
        ([_delegation(delegator="0x" + "99" * 20)], "delegation[0].delegator: "),
        ([_delegation(authority="0x00")], "delegation[0].authority"),
        ([_delegation(signature="0x")], "delegation[0].signature: is empty"),
        ([_delegation(salt=5)], "delegation[0].salt: must be a decimal or 0x hex string"),
        ([_delegation(caveats={})], "delegation[0].caveats: must be an array"),
        (
            [_delegation(caveats=[{"enforcer": "0x" + "02" * 20, "terms": "0x1", "args": "0x"}])],
            "delegation[0].caveats[0].terms: must be 0x-prefixed hex bytes",
        ),
        (
            [_delegation(caveats=[{"enforcer": "0x" + "02" * 20, "terms": "0x"}])],
            "delegation[0].caveats[0].args: missing",
        ),
    ],
)
def test_delegation_shape_errors_name_the_field(document: object, message: str) -> None:
    with pytest.raises(cli_db.InputError) as info:
        cli_db.validate_delegations(document, ACCOUNT)
    assert message in str(info.value)


def test_delegation_file_errors(
    config: Config, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    args = ["portfolio", "add", "p", "--account", ACCOUNT, "--target", "WETH=1"]
    assert _run(config, *args, "--delegation", str(bad)) == exitcodes.DATA_ERROR
    assert "not valid JSON" in capsys.readouterr().err
    missing = tmp_path / "missing.json"
    assert _run(config, *args, "--delegation", str(missing)) == exitcodes.DATA_ERROR
    assert "cannot read" in capsys.readouterr().err


def test_verifier_seam(
    config: Config, delegation_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _register_tokens(config)
    seen: list[tuple[int, str, list[str]]] = []

    def reject(
        delegations: list[dict[str, object]], account: str, cfg: Config, tokens: list[Token]
    ) -> None:
        seen.append((len(delegations), account, [t.symbol for t in tokens]))
        raise ValueError("signature does not recover to the delegator")

    args = [
        "portfolio",
        "add",
        "p",
        "--account",
        ACCOUNT,
        "--target",
        "WETH=1",
        "--delegation",
        str(delegation_file),
    ]
    assert _run(config, *args, verify_delegation=reject) == exitcodes.DATA_ERROR
    assert "signature does not recover" in capsys.readouterr().err
    # The guard's token set: the portfolio's tokens, then the quote token.
    assert seen == [(1, cli_db.parse_address(ACCOUNT, "x"), ["WETH", "USDC"])]
    assert _run(config, *args, verify_delegation=lambda d, a, c, t: None) == exitcodes.OK


def test_unreachable_database_exits_69(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"postgresql://driftd:s3cret@127.0.0.1:{free_port()}/driftd"
    config = parse_config({}, {"DRIFTD_DATABASE_URL": url})
    assert _run(config, "token", "list") == exitcodes.UNAVAILABLE
    err = capsys.readouterr().err
    assert "database unavailable" in err
    assert "s3cret" not in err
    assert _run(config, "migrate") == exitcodes.UNAVAILABLE


def test_unmigrated_database_exits_78(
    pg_admin_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import trio

    from daemon.db import create_database, drop_database

    url = trio.run(lambda: create_database(pg_admin_url, "driftd_cli_empty", drop_existing=True))
    try:
        config = parse_config({}, {"DRIFTD_DATABASE_URL": url})
        assert _run(config, "token", "list") == exitcodes.CONFIG_ERROR
        assert "run `driftd migrate`" in capsys.readouterr().err
        assert _run(config, "migrate") == exitcodes.OK
        assert "applied 0001_initial" in capsys.readouterr().out
        assert _run(config, "token", "list") == exitcodes.OK
    finally:
        trio.run(drop_database, pg_admin_url, "driftd_cli_empty")

"""Tests of the database subcommands: migrate, token, portfolio.

``token add`` reads the token from the chain (issue 12), so these run against the devnet's
tokens; ``portfolio add`` here uses a stand-in verifier (the real one: test_registration.py).
"""

from __future__ import annotations

import argparse
import json
from decimal import Decimal
from pathlib import Path

import pytest
import trio

from daemon import exitcodes
from daemon.cli import db as cli_db
from daemon.cli import portfolio as cli_portfolio
from daemon.cli.db_common import parse_address
from daemon.config import Config, DatabaseConfig, parse_config
from daemon.db import ConstraintViolation, TokenRecord, load_migrations
from daemon.devtools.devnet_records import Devnet
from daemon.devtools.pgserver import free_port
from daemon.registration import InputError

ACCOUNT = "0x" + "ab" * 20
OTHER_ACCOUNT = "0x" + "cd" * 20
WETH = ""
USDC = ""
FEED = ""


@pytest.fixture(autouse=True)
def _devnet_tokens(devnet: Devnet, monkeypatch: pytest.MonkeyPatch) -> None:
    """WETH, USDC and the WETH feed are the devnet's (``token add`` checks them on chain)."""
    monkeypatch.setitem(globals(), "WETH", devnet.token("WETH").address)
    monkeypatch.setitem(globals(), "USDC", devnet.token("USDC").address)
    monkeypatch.setitem(globals(), "FEED", devnet.feeds["WETH"])


def _accept(*args: object) -> None:
    """A verifier that accepts everything (the real one is tested in test_registration.py)."""


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
def config(db_url: str, devnet: Devnet) -> Config:
    return parse_config(
        {"chain": devnet.config_overrides()["chain"]}, {"DRIFTD_DATABASE_URL": db_url}
    )


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
    code = _run(config, *argv, verify_delegation=_accept)
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
    targets = cli_portfolio.parse_targets(
        ["A=0.333333333333", "B=0.333333333333", "C=0.333333333334"]
    )
    assert sum(targets.values()) == 1
    assert cli_portfolio.parse_targets(["A=0.5000000000005", "B=0.5"])


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({}, "delegation: must be a non-empty JSON array"),
        ([], "delegation: must be a non-empty JSON array"),
        (["x"], "delegation[0]: must be an object"),
        ([{k: v for k, v in _delegation().items() if k != "salt"}], "delegation[0].salt: missing"),
        (
            [_delegation(delegate="0x12")],
            "delegation[0].delegate: must be a 0x-prefixed 20-byte hex address",
        ),
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
    with pytest.raises(InputError) as info:
        cli_portfolio.validate_delegations(document, ACCOUNT)
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
    seen: list[tuple[int, str, list[str], list[str]]] = []

    def reject(
        delegations: list[dict[str, object]],
        account: str,
        cfg: Config,
        tokens: list[TokenRecord],
        targets: frozenset[str],
    ) -> None:
        seen.append((len(delegations), account, [t.symbol for t in tokens], sorted(targets)))
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
    # The guard's token set: the portfolio's tokens, then the quote token; the targets apart.
    assert seen == [(1, parse_address(ACCOUNT, "x"), ["WETH", "USDC"], ["WETH"])]
    assert _run(config, *args, verify_delegation=_accept) == exitcodes.OK


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


# --- issue 12: one active portfolio per account ------------------------------------------------


def _add(config: Config, tmp_path: Path, name: str, account: str, *targets: str) -> int:
    """``portfolio add`` with a shape-valid delegation file from ``account`` (and a verifier
    that accepts it: the one-portfolio rule comes before the delegation checks)."""
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps([_delegation(delegator=account)]))
    argv = ["portfolio", "add", name, "--account", account, "--target", *(targets or ("WETH=1",))]
    return _run(config, *argv, "--delegation", str(path), verify_delegation=_accept)


@pytest.mark.timeout(60)
def test_a_second_active_portfolio_on_one_account_is_refused(
    config: Config, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Finding: a second portfolio on an account that already has one was accepted, and the two
    actors traded against each other (31 swaps in 30 s at cooldown 0)."""
    _register_tokens(config)
    assert _add(config, tmp_path, "first", ACCOUNT, "WETH=0.5", "USDC=0.5") == exitcodes.OK
    capsys.readouterr()
    # Other targets, same account: refused, naming the portfolio that has it.
    assert _add(config, tmp_path, "second", ACCOUNT) == exitcodes.DATA_ERROR
    err = capsys.readouterr().err
    assert f"--account {parse_address(ACCOUNT, 'x')}: already has the active portfolio" in err
    assert "'first' (id 1)" in err
    assert "driftd portfolio deactivate first" in err
    # The same account spelled in upper case is the same account.
    upper = "0x" + ACCOUNT[2:].upper()
    assert _add(config, tmp_path, "third", upper) == exitcodes.DATA_ERROR
    assert "'first'" in capsys.readouterr().err
    # Another account is fine; after deactivating the first, its account is free again.
    assert _add(config, tmp_path, "other", OTHER_ACCOUNT) == exitcodes.OK
    assert _run(config, "portfolio", "deactivate", "first") == exitcodes.OK
    assert _add(config, tmp_path, "second", ACCOUNT) == exitcodes.OK
    capsys.readouterr()
    assert _run(config, "portfolio", "list", "--json") == exitcodes.OK
    listed = {p["name"]: p["is_active"] for p in json.loads(capsys.readouterr().out)}
    assert listed == {"first": False, "other": True, "second": True}


async def test_the_database_refuses_a_second_active_portfolio_on_one_account(
    db_config: DatabaseConfig,
) -> None:
    """No path around the CLI creates it: the unique index of migration 0005."""
    from daemon.db import open_database

    delegation = [_delegation()]
    with trio.fail_after(20):
        async with open_database(db_config) as db:
            await db.add_token("WETH", WETH, chain_id=1, decimals=18)
            first = await db.add_portfolio(
                "first", ACCOUNT, chain_id=1, targets={"WETH": Decimal(1)}, delegation=delegation
            )
            for spelling in (ACCOUNT, "0x" + ACCOUNT[2:].upper()):
                with pytest.raises(ConstraintViolation) as info:
                    await db.add_portfolio(
                        "second",
                        spelling,
                        chain_id=1,
                        targets={"WETH": Decimal(1)},
                        delegation=delegation,
                    )
                assert info.value.constraint == "portfolio_one_active_per_account"
            # Another chain, or once the first is deactivated: allowed.
            await db.add_portfolio(
                "elsewhere",
                ACCOUNT,
                chain_id=5,
                targets={"WETH": Decimal(1)},
                delegation=delegation,
            )
            await db.set_portfolio_active(first.id, False)
            later = await db.add_portfolio(
                "later", ACCOUNT, chain_id=1, targets={"WETH": Decimal(1)}, delegation=delegation
            )
            with pytest.raises(ConstraintViolation):  # reactivation is the same rule
                await db.set_portfolio_active(first.id, True)
            await db.set_portfolio_active(later.id, False)
            await db.set_portfolio_active(first.id, True)
            found = await db.active_portfolio_on(1, "0x" + ACCOUNT[2:].upper())
            assert found is not None
            assert found.name == "first"


async def test_migration_0005_keeps_the_oldest_of_existing_duplicates(pg_admin_url: str) -> None:
    """Rows written before the index: the first-registered portfolio of each account stays
    active, the later ones are deactivated (not deleted); then the index is in place."""
    from daemon.db import create_database, drop_database, open_database

    migrations = load_migrations()
    before = [m for m in migrations if m.version < 5]
    name = "driftd_cli_mig5"
    url = await create_database(pg_admin_url, name, drop_existing=True)
    try:
        with trio.fail_after(30):
            async with open_database(DatabaseConfig(url=url, max_connections=2)) as db:
                await db.migrate(before)
                await db.add_token("WETH", "0x" + "11" * 20, chain_id=1, decimals=18)
                delegation = [_delegation()]
                for portfolio, account in (
                    ("a-first", ACCOUNT),
                    ("b-other", OTHER_ACCOUNT),
                    ("c-second", "0x" + ACCOUNT[2:].upper()),
                    ("d-third", ACCOUNT),
                ):
                    await db.add_portfolio(
                        portfolio,
                        account,
                        chain_id=1,
                        targets={"WETH": Decimal(1)},
                        delegation=delegation,
                    )
                assert [m.version for m in await db.migrate(migrations)] == [
                    m.version for m in migrations if m.version >= 5
                ]
                active = {p.name: p.is_active for p in await db.portfolios()}
                assert active == {
                    "a-first": True,
                    "b-other": True,
                    "c-second": False,
                    "d-third": False,
                }
                with pytest.raises(ConstraintViolation):
                    await db.set_portfolio_active("d-third", True)
    finally:
        await drop_database(pg_admin_url, name)

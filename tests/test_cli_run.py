"""`driftd run` refuses to start with a clear error and the right exit code."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.cli.main import main


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_run_without_a_signer_key_exits_78(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("DRIFTD_SIGNER_KEY", raising=False)
    path = write(tmp_path, '[log]\nformat = "json"\n')
    assert main(["--config", str(path), "run"]) == 78
    assert "no signer key" in capsys.readouterr().out


def test_run_with_an_unreachable_database_exits_69(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    key = "0x" + "42" * 32
    monkeypatch.setenv("DRIFTD_SIGNER_KEY", key)
    path = write(
        tmp_path,
        '[database]\nurl = "postgresql://driftd@127.0.0.1:9/driftd"\n[log]\nformat = "json"\n',
    )
    assert main(["--config", str(path), "run"]) == 69
    out = capsys.readouterr().out
    assert "service_unavailable" in out
    assert key[2:] not in out


def test_run_with_a_bad_config_exits_78(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, '[execution]\nmode = "yolo"\n')
    assert main(["--config", str(path), "run"]) == 78
    assert "execution.mode: must be one of delegation, wallet" in capsys.readouterr().err


@pytest.fixture(autouse=True)
def _restore_standard_library_logging() -> Iterator[None]:
    """`driftd run` installs a root logging handler: take it away again after each test."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


MALFORMED_KEYS = {
    "too short": "0x" + "ab" * 31,
    "63 digits (eth-account would pad it)": "0x" + "ab" * 31 + "c",
    "too long": "0x" + "ab" * 33,
    "not hex": "0x" + "zz" * 32,
    "zero": "0x" + "00" * 32,
    "the group order": "0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141",
}


@pytest.mark.parametrize("key", MALFORMED_KEYS.values(), ids=MALFORMED_KEYS.keys())
def test_run_with_a_malformed_signer_key_exits_78_with_one_line(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    key: str,
) -> None:
    """A malformed key is a configuration error: one line naming where the key came from and
    what is wrong with it, no traceback, no key material; `check-config` reports it too."""
    monkeypatch.setenv("DRIFTD_SIGNER_KEY", key)
    path = write(tmp_path, '[log]\nformat = "json"\n')
    for command in ("run", "check-config"):
        assert main(["--config", str(path), command]) == 78
        captured = capsys.readouterr()
        output = captured.out + captured.err
        (line,) = output.splitlines()
        assert line.startswith(
            "driftd: invalid configuration: DRIFTD_SIGNER_KEY: $DRIFTD_SIGNER_KEY is not a valid "
            "secp256k1 private key: must be "
        ), line
        assert "Traceback" not in output
        digits = key[2:].lower()
        assert digits[:8] not in output.lower()
        assert digits[-8:] not in output.lower()


def test_a_malformed_key_reaching_the_daemon_is_a_startup_error_not_a_crash() -> None:
    """Defence in depth: a Config built without parse_config (tests, the demo) with a bad key
    stops `run_daemon` with a StartupError (exit 78 in `driftd run`), not a ValueError."""
    import attrs
    import trio

    from daemon.app import StartupError, run_daemon
    from daemon.config import Config, Secret, Secrets

    config = attrs.evolve(Config(), secrets=Secrets(signer_key=Secret("0x" + "ab" * 31 + "c")))

    async def start() -> None:
        with trio.fail_after(10):
            await run_daemon(config)

    with pytest.raises(StartupError, match="must be 64 hex digits") as info:
        trio.run(start)
    assert "abab" not in str(info.value)


@pytest.mark.parametrize(
    "argv",
    [
        ["--no-such-option"],
        ["no-such-command"],
        ["token", "add"],
        ["status", "--timeout", "soon"],
        ["portfolio", "add", "main", "--account"],
        ["check-config", "surplus"],
    ],
    ids=lambda argv: " ".join(argv),
)
def test_usage_errors_exit_64(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """The README promises sysexits: a usage error is 64 (EX_USAGE), at any subcommand depth,
    not argparse's 2; the message still says what is wrong, after the usage line."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 64
    err = capsys.readouterr().err
    assert err.startswith("usage: driftd")
    assert "error: " in err


def test_a_crash_of_run_is_one_json_log_line_and_exit_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unexpected error used to escape `driftd run` as a multi-line Python traceback on
    stderr; it is one JSON line (no locals, URL credentials masked), and the exit code is 1."""
    import json

    from daemon import app

    api_key = "CrashKey0123456789abcdef"

    async def crash(*args: object, **kwargs: object) -> None:
        rpc_url = f"https://eth-mainnet.g.alchemy.com/v2/{api_key}"
        raise RuntimeError(f"unexpected answer from {rpc_url}")

    monkeypatch.setattr(app, "serve", crash)
    monkeypatch.setenv("DRIFTD_SIGNER_KEY", "0x" + "42" * 32)
    path = write(tmp_path, '[log]\nformat = "json"\n')
    assert main(["--config", str(path), "run"]) == 1
    captured = capsys.readouterr()
    assert captured.err == ""
    (line,) = captured.out.splitlines()
    record = json.loads(line)
    assert record["event"] == "daemon_crashed"
    assert record["level"] == "critical"
    (error,) = record["exception"]
    assert error["exc_value"] == "unexpected answer from https://eth-mainnet.g.alchemy.com/v2/***"
    assert api_key not in captured.out
    assert all("locals" not in frame for frame in error["frames"])

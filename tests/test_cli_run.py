"""`driftd run` refuses to start with a clear error and the right exit code."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.cli import main


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

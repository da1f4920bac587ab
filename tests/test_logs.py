"""Logging: JSON lines with the required fields, console on a terminal, redaction."""

from __future__ import annotations

import io
import json
from typing import Any

import structlog
from structlog.testing import capture_logs

from daemon.config import Secret
from daemon.logs import configure_logging, get_logger, redact_secrets


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_json_line_has_timestamp_level_event_and_context() -> None:
    out = io.StringIO()
    configure_logging("info", "json", out)
    get_logger(actor="portfolio", portfolio="p1").info("drift_evaluated", max_drift="0.2")
    record = json.loads(out.getvalue().strip())
    assert record["event"] == "drift_evaluated"
    assert record["level"] == "info"
    assert record["actor"] == "portfolio"
    assert record["portfolio"] == "p1"
    assert record["timestamp"].endswith("Z")
    assert "T" in record["timestamp"]


def test_level_filters_lower_events() -> None:
    out = io.StringIO()
    configure_logging("warning", "json", out)
    log = get_logger()
    log.info("quiet")
    log.warning("loud")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["event"] for line in lines] == ["loud"]


def test_auto_format_renders_for_humans_on_a_terminal() -> None:
    terminal = FakeTerminal()
    configure_logging("info", "auto", terminal)
    get_logger().info("hello", portfolio="p1")
    text = terminal.getvalue()
    assert "hello" in text
    assert not text.lstrip().startswith("{")


def test_exceptions_become_structured_tracebacks() -> None:
    out = io.StringIO()
    configure_logging("info", "json", out)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        get_logger().exception("failed")
    record = json.loads(out.getvalue())
    assert record["exception"][0]["exc_type"] == "RuntimeError"


def test_secrets_are_redacted_in_output() -> None:
    out = io.StringIO()
    configure_logging("info", "json", out)
    key = "0x" + "ab" * 32
    get_logger().info(
        "oops",
        private_key=key,
        api_key="cg-123",
        signer=Secret(key),
        url="postgresql://driftd:hunter2@db/driftd",
        nested={"password": "hunter2", "token": "WETH"},
        token="WETH",
    )
    text = out.getvalue()
    assert key not in text
    assert "cg-123" not in text
    assert "hunter2" not in text
    record = json.loads(text)
    assert record["token"] == "WETH"
    assert record["nested"]["token"] == "WETH"
    assert record["url"] == "postgresql://driftd:***@db/driftd"


def test_redaction_processor_directly() -> None:
    event: dict[str, Any] = {"event": "x", "key": "k", "key_count": 3, "tx_hash": "0x" + "1" * 64}
    out = redact_secrets(None, "info", event)
    assert out["key"] == "***"
    assert out["key_count"] == 3
    assert out["tx_hash"] == "0x" + "1" * 64  # hashes are not secrets


def test_capture_logs_sees_bound_context() -> None:
    with capture_logs() as logs:
        structlog.get_logger().bind(actor="executor").info("nonce_allocated", nonce=7)
    assert logs == [
        {"actor": "executor", "event": "nonce_allocated", "nonce": 7, "log_level": "info"}
    ]

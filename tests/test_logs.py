"""Logging: JSON lines with the required fields, console on a terminal, redaction."""

from __future__ import annotations

import io
import json
import logging
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from eth_keys import keys
from structlog.testing import capture_logs

from daemon.config import Secret
from daemon.logs import configure_logging, get_logger, redact_secrets

KEY_HEX = "4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318"
"""A private key only these tests use."""


@pytest.fixture(autouse=True)
def _restore_standard_library_logging() -> Iterator[None]:
    """configure_logging() installs a root handler on a test's stream: take it away again."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


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


def _raise_with_a_private_key_in_a_local() -> None:
    private_key = keys.PrivateKey(bytes.fromhex(KEY_HEX))  # repr: the key itself
    rpc_url = "https://eth-mainnet.g.alchemy.com/v2/AlchemyKey1234567890abcdef"
    raise RuntimeError(f"signing failed ({type(private_key).__name__}, {len(rpc_url)})")


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_tracebacks_never_render_frame_locals(fmt: str) -> None:
    """structlog's dict_tracebacks (and the console's rich tracebacks) render every frame's
    locals by default; an eth-keys PrivateKey's repr is the key. Neither may reach a log."""
    assert KEY_HEX in repr(keys.PrivateKey(bytes.fromhex(KEY_HEX)))  # the hazard is real
    out = io.StringIO()
    configure_logging("info", fmt, out)
    try:
        _raise_with_a_private_key_in_a_local()
    except RuntimeError:
        get_logger().exception("sign_failed")
    text = out.getvalue()
    assert "signing failed" in text
    assert KEY_HEX[:16] not in text.lower()  # rich truncates a local, showing its start
    assert "AlchemyKey1234567890abcdef" not in text
    if fmt == "json":
        (frames,) = [e["frames"] for e in json.loads(text)["exception"]]
        assert frames
        assert all("locals" not in frame for frame in frames)


def test_standard_library_records_are_one_json_line_each() -> None:
    """asyncpg, asyncio, httpx, trio… log through the standard library: their records, a
    traceback included, become one JSON object per line on the same stream, redacted."""
    out = io.StringIO()
    configure_logging("info", "json", out)
    try:
        raise ConnectionResetError("connection lost to postgresql://driftd:hunter2@db/driftd")
    except ConnectionResetError:
        logging.getLogger("asyncpg.pool").error("connection lost", exc_info=True)
    logging.getLogger("asyncio").warning("Executing %s took %.3f seconds", "<Task>", 1.5)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("deprecated thing", DeprecationWarning, stacklevel=1)
    lines = out.getvalue().splitlines()
    records = [json.loads(line) for line in lines]  # every line is JSON
    assert [r.get("logger") for r in records] == ["asyncpg.pool", "asyncio", "py.warnings"]
    first = records[0]
    assert first["event"] == "connection lost"
    assert first["level"] == "error"
    assert first["timestamp"].endswith("Z")
    assert first["exception"][0]["exc_type"] == "ConnectionResetError"
    assert "hunter2" not in out.getvalue()
    assert records[1]["event"] == "Executing <Task> took 1.500 seconds"


def test_http_client_request_lines_are_not_logged() -> None:
    """httpx logs every request with its URL at INFO (an RPC URL with its key, a webhook URL
    with its token): only its warnings and errors are kept, and masked."""
    out = io.StringIO()
    configure_logging("debug", "json", out)
    webhook = "https://hooks.slack.com/services/T0AAAA1111/B0BBBB2222/SlackToken0123456789abcd"
    logging.getLogger("httpx").info('HTTP Request: POST %s "HTTP/1.1 200 OK"', webhook)
    logging.getLogger("httpx").warning("retrying %s", webhook)
    (record,) = [json.loads(line) for line in out.getvalue().splitlines()]
    assert record["event"] == "retrying https://hooks.slack.com/services/***/***/***"


def test_credentials_in_any_url_of_a_log_line_are_masked() -> None:
    """Not only passwords: API keys in RPC URL paths and query strings and webhook tokens, in
    any value (an error message quoting a URL included)."""
    out = io.StringIO()
    configure_logging("info", "json", out)
    alchemy = "AlchemyKey1234567890abcdef"
    infura = "0123456789abcdef0123456789abcdef"
    token = "SlackToken0123456789abcd"
    get_logger().error(
        "rpc_failed",
        error=f"HTTP 401 for url 'https://eth-mainnet.g.alchemy.com/v2/{alchemy}'",
        endpoints=[f"https://mainnet.infura.io/v3/{infura}", "https://rpc.example/?apikey=Q1"],
        webhook=f"https://hooks.slack.com/services/T0AAAA1111/B0BBBB2222/{token}",
        discord="https://discord.com/api/webhooks/123456789012345678/Abc-Def_0123456789xyz",
    )
    text = out.getvalue()
    for secret in (alchemy, infura, token, "Q1", "Abc-Def_0123456789xyz"):
        assert secret not in text
    record = json.loads(text)
    assert record["error"] == "HTTP 401 for url 'https://eth-mainnet.g.alchemy.com/v2/***'"
    assert record["endpoints"] == [
        "https://mainnet.infura.io/v3/***",
        "https://rpc.example/?apikey=***",
    ]

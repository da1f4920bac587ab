"""Shared pytest configuration: fixture plugins live in their own modules."""

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

pytest_plugins = ["fixtures_db", "fixtures_chain", "reliability"]


@pytest.fixture(autouse=True)
def _fresh_structlog() -> Iterator[None]:
    """Tests that configure logging (the CLI does) must not leak it into later tests.

    structlog's default renderer prints a crash with rich, frame locals included (about 2 s a
    traceback in the supervision tests); the daemon's own console format prints plain text, and
    so do the tests."""
    defaults = structlog.get_config()["processors"][:-1]
    structlog.configure(
        processors=[
            *defaults,
            structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback),
        ]
    )
    yield
    structlog.reset_defaults()


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """A directory other users can traverse (pytest's tmp_path is 0700 under root), for the
    health and control socket."""
    path = Path(tempfile.mkdtemp(prefix="driftd-socket-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)

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
    """Tests that configure logging (the CLI does) must not leak it into later tests."""
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

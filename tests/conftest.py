"""Shared pytest configuration: fixture plugins live in their own modules."""

from collections.abc import Iterator

import pytest
import structlog

pytest_plugins = ["fixtures_db", "fixtures_chain", "reliability"]


@pytest.fixture(autouse=True)
def _fresh_structlog() -> Iterator[None]:
    """Tests that configure logging (the CLI does) must not leak it into later tests."""
    yield
    structlog.reset_defaults()

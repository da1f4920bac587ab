"""A latest-value cell: the price snapshot's fan-out.

Why not memory channels: a cloned receive channel hands each item to only one clone, and a
queue would make a slow portfolio actor work through stale snapshots. Here the publisher never
blocks, every reader sees the newest value, and a slow reader simply skips the ones it missed.
"""

from __future__ import annotations

from typing import Generic, TypeVar

import trio

T = TypeVar("T")


class Latest(Generic[T]):
    """Holds the newest value and a version number that increases with every publish."""

    def __init__(self) -> None:
        self._value: T | None = None
        self._version = 0
        self._changed = trio.Event()

    @property
    def version(self) -> int:
        """0 until the first publish."""
        return self._version

    @property
    def value(self) -> T | None:
        """The newest value, or None before the first publish."""
        return self._value

    def publish(self, value: T) -> None:
        """Replace the value and wake every waiting reader. Never blocks."""
        self._value = value
        self._version += 1
        changed, self._changed = self._changed, trio.Event()
        changed.set()

    async def wait_newer(self, seen_version: int) -> tuple[int, T]:
        """Wait until a value newer than ``seen_version`` exists; return it with its version."""
        while self._version <= seen_version or self._value is None:
            await self._changed.wait()
        return self._version, self._value

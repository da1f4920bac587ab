"""Latest-value fan-out: never blocks the publisher, every reader sees the newest value."""

from __future__ import annotations

import trio
import trio.testing

from daemon.latest import Latest


async def test_every_reader_sees_the_newest_value_and_slow_ones_skip(
    autojump_clock: trio.testing.MockClock,
) -> None:
    cell: Latest[int] = Latest()
    fast_seen: list[int] = []
    slow_seen: list[int] = []

    async def reader(seen: list[int], work: float) -> None:
        version = 0
        while True:
            version, value = await cell.wait_newer(version)
            seen.append(value)
            await trio.sleep(work)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader, fast_seen, 0)
            nursery.start_soon(reader, slow_seen, 0.35)
            await trio.testing.wait_all_tasks_blocked()
            for value in range(1, 11):
                cell.publish(value)  # never blocks, whatever the readers do
                await trio.sleep(0.1)
            await trio.sleep(0.5)
            nursery.cancel_scope.cancel()
    assert fast_seen == list(range(1, 11))
    assert slow_seen[0] == 1
    assert slow_seen[-1] == 10  # the newest value always arrives
    assert len(slow_seen) < 10  # intermediate ones were skipped, not queued
    assert slow_seen == sorted(slow_seen)


async def test_wait_newer_returns_at_once_when_behind() -> None:
    cell: Latest[str] = Latest()
    cell.publish("a")
    cell.publish("b")
    with trio.fail_after(1):
        assert await cell.wait_newer(0) == (2, "b")
    with trio.move_on_after(0.05) as scope:
        await cell.wait_newer(2)
    assert scope.cancelled_caught

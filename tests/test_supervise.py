"""Supervision: restart with backoff, parking, state kept across restarts, isolation."""

from __future__ import annotations

import itertools
import random

import attrs
import pytest
import trio
import trio.testing

from daemon.supervise import RestartPolicy, Supervisor


@attrs.define
class Counter:
    runs: int = 0
    ticks: int = 0


POLICY = RestartPolicy(backoff_initial=1.0, backoff_max=8.0, max_restarts=3, restart_window=100.0)


async def crash_always(state: Counter) -> None:
    state.runs += 1
    raise RuntimeError("bad portfolio")


async def tick_forever(state: Counter) -> None:
    state.runs += 1
    while True:
        state.ticks += 1
        await trio.sleep(1)


def test_backoff_grows_exponentially_with_jitter_and_caps() -> None:
    rng = random.Random(1)
    delays = [POLICY.delay(n, rng) for n in range(1, 8)]
    for n, delay in enumerate(delays, start=1):
        base = min(8.0, 2 ** (n - 1))
        assert base * 0.5 <= delay <= base
    assert max(delays) <= 8.0


class Parking(Supervisor[Counter]):
    """A supervisor that remembers whom it parked (the daemon's alerts)."""

    def __init__(self) -> None:
        super().__init__(POLICY, rng=random.Random(0))
        self.parked: list[tuple[str, str]] = []

    def on_parked(self, key: str, error: str) -> None:
        self.parked.append((key, error))


async def test_crashing_actor_is_parked_while_others_keep_running(
    autojump_clock: trio.testing.MockClock,
) -> None:
    supervisor = Parking()
    parked = supervisor.parked
    with trio.fail_after(1000):
        async with trio.open_nursery() as nursery:
            await nursery.start(supervisor.run)
            bad = supervisor.start("bad", crash_always, Counter())
            good = supervisor.start("good", tick_forever, Counter())
            await trio.sleep(60)
            assert bad.status == "parked"
            assert bad.state.runs == POLICY.max_restarts + 1
            assert bad.restart_count == POLICY.max_restarts
            assert parked == [("bad", "RuntimeError: bad portfolio")]
            assert good.status == "running"
            assert good.state.ticks >= 59
            assert good.state.runs == 1
            nursery.cancel_scope.cancel()


async def test_state_survives_restarts(autojump_clock: trio.testing.MockClock) -> None:
    async def crash_twice(state: Counter) -> None:
        state.runs += 1
        if state.runs <= 2:
            raise ValueError("transient")
        await trio.sleep_forever()

    supervisor: Supervisor[Counter] = Supervisor(POLICY, rng=random.Random(0))
    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            await nursery.start(supervisor.run)
            entry = supervisor.start("p", crash_twice, Counter())
            await trio.sleep(10)
            assert entry.status == "running"
            assert entry.state.runs == 3  # the same state object through three incarnations
            assert entry.last_error == "ValueError: transient"
            nursery.cancel_scope.cancel()


async def test_restarts_wait_for_the_backoff(autojump_clock: trio.testing.MockClock) -> None:
    starts: list[float] = []

    async def crash(state: Counter) -> None:
        starts.append(trio.current_time())
        raise RuntimeError("x")

    policy = RestartPolicy(
        backoff_initial=2.0, backoff_max=100.0, max_restarts=4, restart_window=1000.0
    )
    supervisor: Supervisor[Counter] = Supervisor(policy, rng=random.Random(0))
    with trio.fail_after(1000):
        async with trio.open_nursery() as nursery:
            await nursery.start(supervisor.run)
            supervisor.start("p", crash, Counter())
            await trio.sleep(500)
            nursery.cancel_scope.cancel()
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert len(gaps) == 4
    for n, gap in enumerate(gaps, start=1):
        base = 2.0 * 2 ** (n - 1)
        assert base * 0.5 <= gap <= base + 1e-9


async def test_resume_unparks(autojump_clock: trio.testing.MockClock) -> None:
    supervisor: Supervisor[Counter] = Supervisor(POLICY, rng=random.Random(0))
    with trio.fail_after(1000):
        async with trio.open_nursery() as nursery:
            await nursery.start(supervisor.run)
            entry = supervisor.start("p", crash_always, Counter())
            await trio.sleep(60)
            assert entry.status == "parked"
            runs = entry.state.runs
            assert supervisor.resume("p")
            await trio.sleep(60)
            assert entry.state.runs == runs + POLICY.max_restarts + 1
            assert entry.status == "parked"
            assert not supervisor.resume("unknown")
            nursery.cancel_scope.cancel()


async def test_stop_cancels_and_restart_keeps_state(autojump_clock: trio.testing.MockClock) -> None:
    supervisor: Supervisor[Counter] = Supervisor(POLICY)
    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            await nursery.start(supervisor.run)
            entry = supervisor.start("p", tick_forever, Counter())
            await trio.sleep(5.5)
            supervisor.restart("p", tick_forever)
            await trio.sleep(5)
            restarted = supervisor.actors["p"]
            assert restarted.state is entry.state
            assert restarted.state.runs == 2
            supervisor.stop("p")
            ticks = entry.state.ticks
            await trio.sleep(5)
            assert entry.state.ticks == ticks
            assert "p" not in supervisor.actors
            nursery.cancel_scope.cancel()


async def test_cancellation_is_not_a_crash(autojump_clock: trio.testing.MockClock) -> None:
    supervisor: Supervisor[Counter] = Supervisor(POLICY)
    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            await nursery.start(supervisor.run)
            entry = supervisor.start("p", tick_forever, Counter())
            await trio.sleep(3)
            nursery.cancel_scope.cancel()
    assert entry.last_error is None
    assert entry.restart_count == 0


def test_start_before_run_is_an_error() -> None:
    supervisor: Supervisor[Counter] = Supervisor(POLICY)
    with pytest.raises(RuntimeError, match="not started"):
        supervisor.start("p", tick_forever, Counter())

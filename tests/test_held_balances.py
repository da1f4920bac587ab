""":class:`daemon.held_balances.HeldBalances` without a node: one advance per tick however many
readers, a failed advance answered to the tick's other readers without another attempt each,
and the synchronous view the tick screen reads (``tests/test_transfers.py`` covers the follower
itself on the devnet)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from daemon.address import to_address
from daemon.chain_errors import ChainError
from daemon.held_balances import FRESHNESS, HeldBalances
from daemon.latest import Latest

ACCOUNT = to_address("0x" + "ab" * 20)
TOKENS = [to_address("0x" + "11" * 20), to_address("0x" + "22" * 20)]


@attrs.define
class FakeFollower:
    """The part of a TransferFollower HeldBalances reads, with advances counted (and failing
    while ``error`` is set)."""

    accounts: frozenset[str] = frozenset({ACCOUNT})
    tokens: tuple[str, ...] = tuple(TOKENS)
    balances: dict[tuple[str, str], int] = attrs.Factory(
        lambda: {(ACCOUNT, TOKENS[0]): 5, (ACCOUNT, TOKENS[1]): 7}
    )
    block: Any = attrs.Factory(lambda: type("Block", (), {"number": 100})())
    advances: int = 0
    error: ChainError | None = None

    async def advance(self) -> None:
        self.advances += 1
        await trio.sleep(0.1)
        if self.error is not None:
            raise self.error


class NoFallback:
    async def read_with_block(
        self, account: str, tokens: Iterable[str]
    ) -> tuple[Mapping[str, int], int | None]:
        raise AssertionError("followed accounts are not read through the fallback")


def held_balances() -> tuple[HeldBalances, FakeFollower, Latest[int]]:
    ticks: Latest[int] = Latest()
    held = HeldBalances(None, NoFallback(), ticks)  # type: ignore[arg-type]
    follower = FakeFollower()
    held.follower = follower  # type: ignore[assignment]
    return held, follower, ticks


async def read_all(held: HeldBalances, readers: int) -> list[object]:
    """``readers`` concurrent reads; each one's balances, or the error it raised."""
    results: list[object] = []

    async def read() -> None:
        try:
            results.append((await held.read_with_block(ACCOUNT, TOKENS))[0])
        except ChainError as exc:
            results.append(exc)

    async with trio.open_nursery() as nursery:
        for _ in range(readers):
            nursery.start_soon(read)
    return results


async def test_one_advance_serves_every_reader_of_a_tick(
    autojump_clock: trio.testing.MockClock,
) -> None:
    held, follower, ticks = held_balances()
    ticks.publish(1)
    results = await read_all(held, 50)
    assert follower.advances == 1
    assert results == [{TOKENS[0]: 5, TOKENS[1]: 7}] * 50


async def test_a_failed_advance_is_every_reader_of_the_tick_s_answer_without_a_retry_each(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Before: each of the tick's readers tried the advance again behind the lock, one after
    the other — with 10 000 actors and a node that times out, hours of queued attempts."""
    held, follower, ticks = held_balances()
    follower.error = ChainError("node down")
    ticks.publish(1)
    results = await read_all(held, 50)
    assert follower.advances == 1
    assert all(isinstance(r, ChainError) and str(r) == "node down" for r in results)
    await trio.sleep(FRESHNESS)  # later (a rebalance-now), or at the next tick: tried again
    follower.error = None
    assert len(await read_all(held, 3)) == 3
    assert follower.advances == 2
    follower.error = ChainError("node down")
    ticks.publish(2)
    with pytest.raises(ChainError):
        await held.refresh()
    assert follower.advances == 3


async def test_after_a_trade_the_next_read_advances_within_the_same_tick(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Without it the actor's next plan, right after its own trade, is made on the balances
    from before it, and the executor refuses it (a skipped attempt per trade)."""
    held, follower, ticks = held_balances()
    ticks.publish(1)
    await read_all(held, 2)
    assert follower.advances == 1
    await read_all(held, 2)
    assert follower.advances == 1, "the same tick: no second advance"
    held.traded()
    await read_all(held, 2)
    assert follower.advances == 2


async def test_the_screen_s_view_reads_memory_only() -> None:
    held, follower, _ = held_balances()
    lower = [token.lower() for token in TOKENS]
    assert held.held(ACCOUNT.lower(), lower) == [5, 7]
    assert held.held(ACCOUNT, list(reversed(TOKENS))) == [7, 5]
    assert held.held(to_address("0x" + "cd" * 20), TOKENS) is None, "not followed"
    assert held.held(ACCOUNT, [*TOKENS, to_address("0x" + "33" * 20)]) is None
    assert follower.advances == 0
    held.follower = None
    assert held.held(ACCOUNT, TOKENS) is None

"""The portfolio actors' balances from a :class:`~daemon.transfers.TransferFollower` (issue 15).

With ``chain.follow_transfers`` the actors read their balances here instead of asking the node
every tick. An account or token not followed yet is read through the fallback (the
:class:`~daemon.balances.BalanceBatcher`) and joins the followed set at the next rebuild, a
second later. For a followed account, the first :meth:`HeldBalances.refresh` of each new price
tick (or after ``FRESHNESS`` seconds) advances the follower (a head read, a block read for the
reorg check and one ``eth_getLogs``) — the tick screen's (:mod:`daemon.tick_screen`), or an
actor's read — and every other read in the same tick waits for that advance and is answered
from memory: the cost per tick no longer depends on the number of portfolios. The screen reads
the same balances without I/O (:meth:`HeldBalances.held`).

Each answer carries the block its balances are as of, which is what the executor needs to
refuse a plan that predates a trade of the portfolio. A failed advance raises its
:class:`~daemon.chain_errors.ChainError` to every reader waiting for it, so those actors skip
the tick, as they do when a read fails. ``verify()`` runs every ``VERIFY_EVERY`` seconds. It
finds tokens whose balances change without ``Transfer`` events and reads those in full from
then on. The advance, the verify and the rebuild are serialised by one lock, so none of them
sees another half done; each replaces the balances and their block together, with no await in
between, so a read needs no lock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Final, NoReturn, Protocol

import attrs
import trio

from daemon.address import to_address
from daemon.backoff import Backoff
from daemon.chain import ChainClient
from daemon.chain_errors import ChainError
from daemon.logs import get_logger
from daemon.transfers import TransferFollower

FRESHNESS: Final = 1.0
"""Seconds one advance serves every read (a tick's reads share one)."""
VERIFY_EVERY: Final = 60.0
"""Seconds between full reads that catch balances changing without Transfer events."""
REBUILD_SETTLE: Final = 1.0
"""Seconds to gather newly seen accounts before one rebuild reads them all."""


class Ticks(Protocol):
    @property
    def version(self) -> int: ...


class FallbackReader(Protocol):
    async def read_with_block(
        self, account: str, tokens: Iterable[str]
    ) -> tuple[Mapping[str, int], int | None]: ...


@attrs.define(eq=False)
class HeldBalances:
    """Balances for the portfolio actors, followed from logs once an account is known."""

    chain: ChainClient
    fallback: FallbackReader
    ticks: Ticks
    """The price snapshots: the first read of each new tick advances the follower."""
    rebasing: frozenset[str] = frozenset()
    follower: TransferFollower | None = attrs.field(default=None, init=False)
    _accounts: set[str] = attrs.field(factory=set, init=False)
    _tokens: set[str] = attrs.field(factory=set, init=False)
    _wanted: trio.Event = attrs.field(factory=trio.Event, init=False)
    _lock: trio.Lock = attrs.field(factory=trio.Lock, init=False)
    _advanced_at: float = attrs.field(default=float("-inf"), init=False)
    _advanced_for: int = attrs.field(default=-1, init=False)
    """The snapshot version the follower last advanced for."""
    _failed: tuple[int, float, ChainError] | None = attrs.field(default=None, init=False)
    """The snapshot version whose advance failed, when, and how (its other readers skip at
    once)."""
    _addresses: dict[str, str] = attrs.field(factory=dict, init=False)
    """Addresses as given → checksummed (a cache: the same few thousand on every tick)."""

    async def read_with_block(
        self, account: str, tokens: Iterable[str]
    ) -> tuple[Mapping[str, int], int | None]:
        account = to_address(account)
        wanted = tuple(to_address(token) for token in tokens)
        follower = self.follower
        if (
            follower is None
            or account not in follower.accounts
            or not (set(wanted) <= set(follower.tokens))
        ):
            self._want(account, wanted)
            return await self.fallback.read_with_block(account, wanted)
        await self.refresh()
        # Mutations replace balances and block together, with no await in between: a read
        # here sees one consistent state without taking the lock.
        follower = self.follower
        assert follower is not None
        assert follower.block is not None
        return (
            {token: follower.balances[(account, token)] for token in wanted},
            follower.block.number,
        )

    def traded(self) -> None:
        """A trade of a followed account was mined: the next read advances first, whatever the
        tick (a plan made on balances from before the trade would only be refused by the
        executor, and logged as a skipped attempt)."""
        self._advanced_for = -1

    async def refresh(self) -> None:
        """Bring the followed balances up to the node's head, once per price tick (and at most
        ``FRESHNESS`` seconds apart otherwise): the first caller advances, the others wait for
        it. A failed advance raises its ChainError to every caller of the same tick for
        ``FRESHNESS`` seconds, without another attempt each (10 000 actors would otherwise queue
        10 000 advances behind the lock against a node that is down)."""
        if not self._stale():
            return
        async with self._lock:
            if not self._stale():
                return
            version, now = self.ticks.version, trio.current_time()
            if self._failed is not None:
                failed_for, failed_at, error = self._failed
                if failed_for == version and now - failed_at < FRESHNESS:
                    raise error.with_traceback(None)
            if self.follower is None:
                return  # nothing followed yet: every read goes through the fallback
            try:
                await self.follower.advance()
            except ChainError as exc:
                self._failed = (version, now, exc)
                raise
            self._failed = None
            self._advanced_at = trio.current_time()
            self._advanced_for = version

    def held(self, account: str, tokens: Sequence[str]) -> list[int] | None:
        """The followed balances of ``tokens`` (in that order) as of the last
        :meth:`refresh`, without I/O; None when the account or a token is not followed (its
        actor's next read asks the fallback and has it followed)."""
        follower = self.follower
        if follower is None:
            return None
        balances = follower.balances
        holder = self._address(account)
        out = []
        for token in tokens:
            balance = balances.get((holder, self._address(token)))
            if balance is None:
                return None
            out.append(balance)
        return out

    def _address(self, value: str) -> str:
        # Checksumming hashes (keccak): the tick screen asks for every portfolio on every tick.
        known = self._addresses.get(value)
        if known is None:
            known = self._addresses[value] = to_address(value)
        return known

    def _stale(self) -> bool:
        # Once per tick (a plan made on balances from before our own last trade would only be
        # refused by the executor), and at most FRESHNESS apart otherwise (rebalance-now).
        return (
            self.ticks.version != self._advanced_for
            or trio.current_time() - self._advanced_at >= FRESHNESS
        )

    def _want(self, account: str, tokens: Iterable[str]) -> None:
        self._accounts.add(account)
        self._tokens.update(tokens)
        self._wanted.set()

    async def run(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> NoReturn:
        """Rebuild the follower when new accounts or tokens are seen; verify it periodically."""
        log = get_logger(actor="balances")
        schedule = Backoff(initial=1.0, maximum=60.0)
        failures = 0
        task_status.started()
        while True:
            with trio.move_on_after(VERIFY_EVERY):
                await self._wanted.wait()
            try:
                if self._wanted.is_set():
                    await trio.sleep(REBUILD_SETTLE)
                    await self._rebuild()
                else:
                    await self._verify()
            except ChainError as exc:
                failures += 1
                log.warning("balance_follower_failed", error=str(exc), attempt=failures)
                await trio.sleep(schedule.delay(failures - 1))
                continue
            failures = 0

    async def _rebuild(self) -> None:
        self._wanted = trio.Event()
        follower = TransferFollower(
            self.chain, sorted(self._tokens), sorted(self._accounts), rebasing=self.rebasing
        )
        if self.follower is not None:
            follower.rebasing |= self.follower.rebasing  # keep what verify found
        await follower.reconcile()
        async with self._lock:
            self.follower = follower
            self._advanced_at = trio.current_time()

    async def _verify(self) -> None:
        follower = self.follower
        if follower is None:
            return
        async with self._lock:
            changed = await follower.verify()
        if changed:
            get_logger(actor="balances").warning(
                "balances_change_without_transfers",
                tokens=changed,
                action="read in full from now on",
            )

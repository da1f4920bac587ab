"""The asyncio loop thread that owns asyncpg, and how Trio tasks await it.

Why a bridge, and which one
---------------------------
asyncpg runs only on asyncio. Two ways to call it from Trio were measured on this machine (2
vCPUs, PostgreSQL 15 from :mod:`daemon.devtools.pgserver`, pool of 10, 100 concurrent tasks each
running ``SELECT $1::int`` in a loop, 4 s per row; ``benchmarks/bench_db.py`` prints these rows,
next to plain asyncio on the same server in the same run)::

                                         idle loop                    CPU-busy loop (*)
                                         q/s     p50      p99         q/s    p50       p99
    plain asyncio (reference)            4 320    3 ms    161 ms      623     22 ms    764 ms
    thread bridge, switch interval 5 ms  2 313   41 ms    197 ms       31  4 002 ms  4 026 ms
    thread bridge, switch interval 0.5ms 2 097   45 ms    187 ms      480    217 ms    424 ms
    thread bridge, switch interval 0.1ms 1 817   53 ms    226 ms      942    105 ms    295 ms
    trio-asyncio 0.16 (greenlet 3.5)       940   23 ms  1 978 ms       52    672 ms  4 059 ms

    (*) one task on the caller's loop burning CPU in 2 ms slices with a checkpoint between
        slices: the shape of many portfolio actors computing drift.

Figures vary ±15 % between runs (the machine is shared); the issue's earlier figures (asyncio
~8k/s, bridge ~4.4k/s, trio-asyncio ~2.5k/s) were taken on a quieter machine. The ranking held in
every run. Note: merely importing trio_asyncio installs its event-loop policy and slowed plain
asyncio ~4× in the same process, so the benchmark imports it last.

Chosen: (a) a **dedicated thread running an asyncio loop that owns the pool**. It is about twice
as fast as trio-asyncio on an idle loop, far better under CPU load once the switch interval is
lowered, and its cancellation is correct (tests/test_db.py); with trio-asyncio a transaction
cancelled midway left its connection *idle in transaction* and ``Pool.close()`` hung (issue 4's
finding).
No new dependency either.

Its weakness is starvation when the Trio thread is CPU-bound: the loop thread must win the GIL for
every socket event, and CPython hands the GIL over only every ``sys.getswitchinterval()`` (5 ms by
default), so a query waits many intervals — 31 q/s and 4 s latency above. The fix:
:func:`~daemon.db.database.open_database` lowers the process's switch interval to
:data:`SWITCH_INTERVAL` (0.1 ms): 30× the throughput under CPU load, ~20 % less when idle. The
interval only matters while two threads want the GIL at once, so an idle daemon pays nothing. It
is process-wide and never raised back (another open database may rely on it). Long CPU work
should still leave the Trio thread (``trio.to_thread.run_sync``) — a Trio rule anyway.

How a call works
----------------
:meth:`_Bridge.call` schedules a coroutine factory on the loop thread (``call_soon_threadsafe``),
parks the Trio task with ``trio.lowlevel.wait_task_rescheduled`` (no worker thread is blocked),
and a done-callback *on the asyncio Task itself* wakes it through the Trio token. Not on
``run_coroutine_threadsafe``'s future: that future completes when cancellation is *requested*,
before asyncpg has cancelled the server-side query, rolled back and returned the connection.

Cancellation: when Trio cancels a waiting task, the abort function cancels the asyncio Task and
returns ``Abort.FAILED``; the Trio task stays parked until the asyncio Task has really finished
(query cancelled on the server, transaction rolled back, connection back in the pool) and only
then raises ``Cancelled``. If the unit of work completed before the cancellation reached it, its
result is returned (it happened: a committed intent must not be reported as not written); the
next checkpoint raises ``Cancelled``.

See :mod:`daemon.db.pool` for how repository methods use one bridge call each.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Coroutine
from typing import Any, Final, TypeVar

import attrs
import outcome
import trio

from daemon.db.errors import DatabaseUnavailable

T = TypeVar("T")

SWITCH_INTERVAL: Final = 0.0001
"""Seconds; the GIL switch interval :func:`~daemon.db.database.open_database` sets (see above)."""
CONNECT_TIMEOUT: Final = 10.0
"""Seconds to establish one connection."""
CLOSE_TIMEOUT: Final = 10.0
"""Seconds for the pool to close gracefully before its connections are terminated."""


async def _drain(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel and await every other task of the loop, then its async generators and executor."""
    leftovers = asyncio.all_tasks(loop) - {asyncio.current_task()}
    for task in leftovers:
        task.cancel()
    await asyncio.gather(*leftovers, return_exceptions=True)
    await loop.shutdown_asyncgens()
    await loop.shutdown_default_executor()


@attrs.define(eq=False)
class _Pending:
    """A bridge call in flight: the asyncio Task once created, and a cancel request."""

    task: asyncio.Task[Any] | None = None
    cancel_requested: bool = False


@attrs.define(eq=False)
class _Bridge:
    """An asyncio event loop in a dedicated thread, and the way Trio tasks await it."""

    name: str
    token: trio.lowlevel.TrioToken
    # The selector loop directly, not the policy's: a policy installed by another library (e.g.
    # trio-asyncio's, which refuses to make loops inside Trio) must not change the bridge.
    loop: asyncio.AbstractEventLoop = attrs.field(factory=asyncio.SelectorEventLoop)
    thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        loop = self.loop
        try:
            loop.run_forever()
        finally:
            # Whatever is still running (nothing, if the owner closed things in order) is
            # cancelled and awaited, so every parked Trio task gets woken.
            loop.run_until_complete(_drain(loop))
            loop.close()

    async def stop(self) -> None:
        with contextlib.suppress(RuntimeError):  # already closed
            self.loop.call_soon_threadsafe(self.loop.stop)
        if self.thread is not None:
            await trio.to_thread.run_sync(self.thread.join)
        else:
            self.loop.close()

    async def call(self, factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Run ``factory()`` as an asyncio Task on the loop thread and await its result."""
        await trio.lowlevel.checkpoint_if_cancelled()
        trio_task = trio.lowlevel.current_task()
        token = self.token
        loop = self.loop
        pending = _Pending()

        def wake(task: asyncio.Task[T]) -> None:
            # Loop thread, after the Task has really finished (cleanup included).
            result = outcome.capture(task.result)
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(trio.lowlevel.reschedule, trio_task, outcome.Value(result))

        def begin() -> None:
            task = loop.create_task(factory())
            pending.task = task
            task.add_done_callback(wake)
            if pending.cancel_requested:
                task.cancel()

        def cancel() -> None:
            if pending.task is None:
                pending.cancel_requested = True
            else:
                pending.task.cancel()

        try:
            loop.call_soon_threadsafe(begin)
        except RuntimeError:
            raise DatabaseUnavailable("the database connection is closed") from None

        raise_cancel: list[Callable[[], object]] = []

        def abort(raise_cancel_fn: Callable[[], object]) -> trio.lowlevel.Abort:
            raise_cancel.append(raise_cancel_fn)
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(cancel)
            # Stay parked until the asyncio side has finished cancelling.
            return trio.lowlevel.Abort.FAILED

        result: outcome.Outcome[T] = await trio.lowlevel.wait_task_rescheduled(abort)
        if isinstance(result, outcome.Error):
            if raise_cancel:
                raise_cancel[0]()
            if isinstance(result.error, asyncio.CancelledError):
                raise DatabaseUnavailable("the database connection was shut down")
        return result.unwrap()

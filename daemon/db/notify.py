"""LISTEN/NOTIFY: the channels, the notification stream and the listening connection.

LISTEN/NOTIFY: :meth:`Database.listen` opens a dedicated connection (pool connections are reset
on release, which UNLISTENs). asyncpg calls back in the loop thread; the callback hands the
notification to Trio with ``TrioToken.run_sync_soon`` and a function that cannot raise (it
appends to a bounded buffer). On overflow the buffer is replaced by one ``resync`` notification
per channel ("you missed some; reload everything"), so a slow consumer loses detail, never
correctness. After a reconnect the stream also yields ``resync`` notifications.

Channels (see ``migrations/0001_initial.sql``): :data:`PORTFOLIO_CHANNEL` (payload: the portfolio
id; a portfolio or its allocations changed) and :data:`SYSTEM_CONFIG_CHANNEL` (payload: the key).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator
from typing import Final

import asyncpg
import attrs
import trio

from daemon.backoff import Backoff
from daemon.db.bridge import CLOSE_TIMEOUT, CONNECT_TIMEOUT
from daemon.db.errors import DatabaseError, _translate
from daemon.db.pool import Store

PORTFOLIO_CHANNEL: Final = "driftd_portfolio"
SYSTEM_CONFIG_CHANNEL: Final = "driftd_system_config"

LISTEN_KEEPALIVE: Final = 30.0
"""Seconds between liveness probes of an idle LISTEN connection."""
LISTEN_RETRY_INITIAL: Final = 0.2
LISTEN_RETRY_MAX: Final = 10.0
NOTIFY_BUFFER: Final = 256
"""Notifications buffered per stream before it falls back to ``resync``."""


@attrs.frozen
class Notification:
    """A NOTIFY delivered to Trio.

    ``resync`` means notifications may have been missed on ``channel`` (buffer overflow or a
    reconnect): reload everything the channel covers; ``payload`` is then empty.
    """

    channel: str
    payload: str
    resync: bool = False


@attrs.define(eq=False)
class NotificationStream:
    """Notifications for a set of channels, received by one Trio task.

    ``async for note in stream`` or ``await stream.receive()``. ``dropped`` counts notifications
    discarded on overflow (each overflow is replaced by ``resync`` notifications).
    """

    channels: tuple[str, ...]
    capacity: int = NOTIFY_BUFFER
    dropped: int = 0
    _buffer: collections.deque[Notification] = attrs.field(factory=collections.deque)
    _lot: trio.lowlevel.ParkingLot = attrs.field(factory=trio.lowlevel.ParkingLot)
    _closed: bool = False

    def _deliver(self, note: Notification) -> None:
        # Runs in the Trio thread via run_sync_soon. Must never raise: nothing here can.
        if self._closed:
            return
        if len(self._buffer) >= self.capacity:
            self.dropped += len(self._buffer) + 1
            self._buffer.clear()
            self._resync()
        else:
            self._buffer.append(note)
        self._lot.unpark_all()

    def _resync(self) -> None:
        self._buffer.extend(Notification(c, "", resync=True) for c in self.channels)
        self._lot.unpark_all()

    def _close(self) -> None:
        self._closed = True
        self._lot.unpark_all()

    async def receive(self) -> Notification:
        """The next notification; raises ``trio.EndOfChannel`` once the stream is closed."""
        await trio.lowlevel.checkpoint()
        while not self._buffer:
            if self._closed:
                raise trio.EndOfChannel
            await self._lot.park()
        return self._buffer.popleft()

    def __aiter__(self) -> NotificationStream:
        return self

    async def __anext__(self) -> Notification:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None


@attrs.define(eq=False)
class _Listener:
    """A LISTEN connection on the loop thread."""

    conn: asyncpg.Connection
    closed: asyncio.Event

    async def wait_closed(self) -> None:
        while not self.closed.is_set():
            try:
                await asyncio.wait_for(self.closed.wait(), LISTEN_KEEPALIVE)
            except TimeoutError:
                try:
                    await self.conn.execute("SELECT 1", timeout=CONNECT_TIMEOUT)
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
                    return

    async def close(self) -> None:
        if not self.conn.is_closed():
            try:
                await asyncio.wait_for(self.conn.close(), CLOSE_TIMEOUT)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
                self.conn.terminate()


class Notifications(Store):
    """Listening to NOTIFYs on a dedicated, reconnecting connection."""

    __slots__ = ()

    @contextlib.asynccontextmanager
    async def listen(
        self, *channels: str, capacity: int = NOTIFY_BUFFER
    ) -> AsyncIterator[NotificationStream]:
        """Receive NOTIFYs on ``channels`` while the block runs (reconnecting as needed)."""
        if not channels:
            raise ValueError("listen() needs at least one channel")
        if capacity < len(channels):
            raise ValueError("capacity must be at least the number of channels")
        stream = NotificationStream(channels=tuple(channels), capacity=capacity)
        async with trio.open_nursery() as nursery:
            await nursery.start(self._listen_loop, stream)
            try:
                yield stream
            finally:
                stream._close()
                nursery.cancel_scope.cancel()

    async def _listen_loop(
        self,
        stream: NotificationStream,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        started = False
        retry = Backoff(initial=LISTEN_RETRY_INITIAL, maximum=LISTEN_RETRY_MAX)
        failures = 0
        while True:
            try:
                listener = await self._bridge.call(lambda: self._open_listener(stream))
            except DatabaseError:
                # At start the caller hears why; afterwards any failure to reconnect (refused,
                # timed out on an unreachable host, a server still recovering) is retried.
                if not started:
                    raise
                await trio.sleep(retry.delay(failures))
                failures += 1
                continue
            try:
                if started:
                    stream._resync()  # changes while we were away were not announced
                else:
                    started = True
                    task_status.started()
                failures = 0
                await self._bridge.call(listener.wait_closed)
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT):
                    await self._bridge.call(listener.close)

    async def _open_listener(self, stream: NotificationStream) -> _Listener:
        # Loop thread.
        token = self._bridge.token
        try:
            conn = await asyncpg.connect(
                dsn=self._config.url,
                timeout=CONNECT_TIMEOUT,
                server_settings={"application_name": "driftd-listen"},
            )
        except Exception as exc:
            raise _translate(exc, self.where) from exc
        closed = asyncio.Event()

        def on_terminated(_conn: object) -> None:
            closed.set()

        def on_notify(_conn: object, _pid: int, channel: str, payload: object) -> None:
            note = Notification(channel=channel, payload=str(payload))
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(stream._deliver, note)

        conn.add_termination_listener(on_terminated)
        try:
            for channel in stream.channels:
                await conn.add_listener(channel, on_notify)
        except Exception as exc:
            conn.terminate()
            raise _translate(exc, self.where) from exc
        return _Listener(conn=conn, closed=closed)

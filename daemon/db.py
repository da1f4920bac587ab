"""PostgreSQL for a Trio process: the asyncpg bridge, migrations and the repositories.

This is the only module that imports asyncpg. Everything it returns is a frozen attrs record or
plain data; asyncpg ``Record`` objects never leave it.

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
:func:`open_database` lowers the process's switch interval to :data:`SWITCH_INTERVAL` (0.1 ms):
30× the throughput under CPU load, ~20 % less when idle. The interval only matters while two
threads want the GIL at once, so an idle daemon pays nothing. It is process-wide and never raised
back (another open database may rely on it). Long CPU work should still leave the Trio thread
(``trio.to_thread.run_sync``) — a Trio rule anyway.

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

Each repository method is **one unit of work** on the asyncio side (one bridge call): acquire,
transaction, statements, commit, release. A transaction never spans two bridge calls, so no
connection is ever left idle in transaction by a Trio-side cancellation.

Errors are typed: :class:`DatabaseUnavailable` (connection refused or lost; the pool's
connections are expired so the pool reconnects once the server is back), :class:`QueryTimeout`,
:class:`ConstraintViolation` (with the constraint's name), :class:`NotFound`,
:class:`MigrationError`, else :class:`DatabaseError`. Messages name the database by its URL with
the password masked.

LISTEN/NOTIFY: :meth:`Database.listen` opens a dedicated connection (pool connections are reset
on release, which UNLISTENs). asyncpg calls back in the loop thread; the callback hands the
notification to Trio with ``TrioToken.run_sync_soon`` and a function that cannot raise (it
appends to a bounded buffer). On overflow the buffer is replaced by one ``resync`` notification
per channel ("you missed some; reload everything"), so a slow consumer loses detail, never
correctness. After a reconnect the stream also yields ``resync`` notifications.

Channels (see ``migrations/0001_initial.sql``): :data:`PORTFOLIO_CHANNEL` (payload: the portfolio
id; a portfolio or its allocations changed) and :data:`SYSTEM_CONFIG_CHANNEL` (payload: the key).

JSON: ``jsonb`` values are decoded with ``Decimal`` for non-integers and encoded with
``Decimal`` written as an exact JSON number, so money never passes through float.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import hashlib
import json
import re
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any, Final, Literal, TypeVar, cast
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import attrs
import outcome
import trio

from daemon.config import DatabaseConfig, mask_url

T = TypeVar("T")

SWITCH_INTERVAL: Final = 0.0001
"""Seconds; the GIL switch interval :func:`open_database` sets (see the module docstring)."""
CONNECT_TIMEOUT: Final = 10.0
"""Seconds to establish one connection."""
CLOSE_TIMEOUT: Final = 10.0
"""Seconds for the pool to close gracefully before its connections are terminated."""
LISTEN_KEEPALIVE: Final = 30.0
"""Seconds between liveness probes of an idle LISTEN connection."""
LISTEN_RETRY_INITIAL: Final = 0.2
LISTEN_RETRY_MAX: Final = 10.0
NOTIFY_BUFFER: Final = 256
"""Notifications buffered per stream before it falls back to ``resync``."""
MIGRATION_LOCK_KEY: Final = 0x64726966_74640001
"""``pg_advisory_lock`` key held while migrating ("driftd" + 1)."""
MIGRATION_LOCK_POLL: Final = 0.05
MIGRATIONS_DIR: Final = Path(__file__).parent / "migrations"
_MIGRATION_NAME: Final = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_IDENTIFIER: Final = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

PORTFOLIO_CHANNEL: Final = "driftd_portfolio"
SYSTEM_CONFIG_CHANNEL: Final = "driftd_system_config"
REBALANCING_PARAMS: Final = "REBALANCING_PARAMS"

PriceSource = Literal["oracle", "router"]
RebalanceStatus = Literal["PENDING", "SUCCESS", "PARTIAL", "FAILED", "DRY_RUN", "SKIPPED"]
TerminalStatus = Literal["SUCCESS", "PARTIAL", "FAILED", "DRY_RUN", "SKIPPED"]
RebalanceTrigger = Literal["drift", "manual", "recovery"]
IntentStatus = Literal["SIGNED", "BROADCAST", "CONFIRMED", "REVERTED", "REPLACED", "DROPPED"]
IntentPurpose = Literal["approve", "swap", "cancel"]
"""What a transaction does: an ERC-20 approve, a swap (or a redemption of swaps), or a 0-value
self-transfer that consumes a nonce whose trade must not happen any more."""
TRADED_STATUSES: Final[tuple[str, ...]] = ("SUCCESS", "PARTIAL")
"""Attempts that moved tokens: they start the cooldown."""
LIVE_INTENT_STATUSES: Final[frozenset[str]] = frozenset({"SIGNED", "BROADCAST"})


# ============================================================================ errors


class DatabaseError(Exception):
    """A database operation failed."""


class DatabaseUnavailable(DatabaseError):
    """The server cannot be reached or the connection was lost; retry later (exit code 69)."""


class QueryTimeout(DatabaseError):
    """A statement ran longer than ``database.command_timeout`` and was cancelled."""


class NotFound(DatabaseError):
    """The named row (token, portfolio, rebalance, intent) does not exist."""


class MigrationError(DatabaseError):
    """The schema cannot be brought up to date (changed or unknown migrations)."""


class LeaseHeld(DatabaseError):
    """Another live process holds the signer's lease."""

    def __init__(self, holder: str, expires_at: dt.datetime) -> None:
        self.holder = holder
        self.expires_at = expires_at
        super().__init__(f"the signer's lease is held by {holder} until {expires_at.isoformat()}")


class LeaseLost(DatabaseError):
    """Our lease was taken over or expired: this process must stop signing."""


class RebalanceRefused(DatabaseError):
    """The database refused to start an attempt (money-safety invariant 9); ``reason`` says why:
    another attempt of the portfolio is in flight, or a trade settled after the balances the plan
    was made from."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class ConstraintViolation(DatabaseError):
    """A write broke a rule of the schema; ``constraint`` names the rule."""

    def __init__(self, constraint: str, message: str) -> None:
        self.constraint = constraint
        super().__init__(message)


_UNAVAILABLE_ERRORS: Final = (
    OSError,  # refused, reset, unreachable (TimeoutError is an OSError: excluded below)
    asyncpg.PostgresConnectionError,  # class 08
    asyncpg.CannotConnectNowError,  # starting up / shutting down
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
)


def _translate(exc: Exception, where: str) -> DatabaseError:
    """asyncpg / OS exception → our typed error. Runs on the loop thread."""
    if isinstance(exc, DatabaseError):
        return exc
    if isinstance(exc, TimeoutError | asyncpg.QueryCanceledError):
        return QueryTimeout(f"query timed out on {where}")
    if isinstance(exc, _UNAVAILABLE_ERRORS) or (
        isinstance(exc, asyncpg.InterfaceError) and "closed" in str(exc)
    ):
        return DatabaseUnavailable(f"database unavailable at {where}: {_describe(exc)}")
    if isinstance(exc, asyncpg.IntegrityConstraintViolationError):
        constraint = getattr(exc, "constraint_name", None) or type(exc).__name__
        message = getattr(exc, "message", None) or str(exc)
        if isinstance(exc, asyncpg.UniqueViolationError) and getattr(exc, "detail", None):
            message = f"{message}: {exc.detail}"
        return ConstraintViolation(constraint, message)
    if isinstance(exc, asyncpg.PostgresError):
        return DatabaseError(f"{getattr(exc, 'sqlstate', '?')}: {_describe(exc)}")
    return DatabaseError(_describe(exc))


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return mask_url(text)


# ============================================================================ records


@attrs.frozen
class Token:
    """A token the daemon can price and trade."""

    id: int
    symbol: str
    address: str
    """Checksummed 0x address."""
    chain_id: int
    decimals: int
    coingecko_id: str | None
    is_quote: bool
    """The stablecoin router prices are quoted in."""
    price_feed: str | None = None
    """Checksummed address of the token's USD price feed (AggregatorV3), if registered."""


@attrs.frozen
class Allocation:
    """One target weight of a portfolio."""

    token: Token
    weight: Decimal
    """In (0, 1]; a portfolio's weights sum to 1."""


@attrs.frozen
class Portfolio:
    """A smart account, its delegations and its target allocation."""

    id: int
    name: str
    smart_account: str
    chain_id: int
    owner: str | None
    is_active: bool
    delegation: list[dict[str, Any]]
    """The signed delegations, as stored (a JSON array)."""
    allocations: tuple[Allocation, ...]
    """Sorted by token symbol."""
    created_at: dt.datetime
    updated_at: dt.datetime
    is_paused: bool = False
    """``driftd pause``: evaluated, never traded, until resumed (survives restarts)."""


@attrs.frozen
class PriceObservation:
    """One USD price of one token from one source."""

    token_id: int
    source: PriceSource
    usd: Decimal
    observed_at: dt.datetime
    block_number: int | None = None


@attrs.frozen
class LatestPrice:
    """The newest observation per (token, source)."""

    token_id: int
    symbol: str
    source: PriceSource
    usd: Decimal
    observed_at: dt.datetime
    block_number: int | None


@attrs.frozen
class HoldingValue:
    """One token's position inside a valuation snapshot."""

    token_id: int
    amount: int
    """Base units."""
    usd: Decimal
    weight: Decimal
    drift: Decimal | None = None


@attrs.frozen
class PortfolioSnapshot:
    """A valuation of a portfolio at a moment."""

    portfolio_id: int
    total_usd: Decimal
    holdings: tuple[HoldingValue, ...]
    max_drift: Decimal | None = None
    price_source: PriceSource | None = None
    taken_at: dt.datetime | None = None
    """None on insert: the server's now()."""


@attrs.frozen
class RebalanceOutcome:
    """What a finished attempt writes (terminal status and its details)."""

    status: TerminalStatus
    skip_reason: str | None = None
    """Required when SKIPPED (e.g. 'cooldown active', 'stale price for WETH')."""
    error: str | None = None
    """Required when FAILED. Never contains secrets."""
    transaction_hash: str | None = None
    """Required when SUCCESS."""
    gas_used: int | None = None
    gas_cost_wei: int | None = None
    gas_cost_usd: Decimal | None = None
    token_amounts: Any = None
    """JSON: the legs as planned (amounts in base units)."""
    swap_path: Any = None
    expected_outputs: Any = None
    actual_outputs: Any = None
    execution_time_ms: int | None = None


@attrs.frozen
class RebalanceLogEntry:
    """One row of ``rebalance_log``: one attempt."""

    id: int
    portfolio_id: int
    timestamp: dt.datetime
    """When the attempt started."""
    finished_at: dt.datetime | None
    status: RebalanceStatus
    trigger: RebalanceTrigger
    drift_percentage: Decimal | None
    """The max drift that triggered the attempt, as a fraction (0.15 = 15 %), like the seed."""
    skip_reason: str | None
    error: str | None
    transaction_hash: str | None
    gas_used: int | None
    gas_cost_wei: int | None
    gas_cost_usd: Decimal | None
    token_amounts: Any
    swap_path: Any
    expected_outputs: Any
    actual_outputs: Any
    execution_time_ms: int | None
    chain_id: int | None = None
    signer: str | None = None
    """Lower-case address of the signer whose process owns the attempt (None: before v3)."""
    planned_txs: int | None = None
    """Transactions the attempt planned to send (None until its calls were built)."""
    planned_swap_txs: int | None = None
    """Of those, the ones that swap."""
    balances_block: int | None = None
    """The block the plan's balances were read at."""


@attrs.frozen
class NewTxIntent:
    """A signed transaction about to be broadcast for the first time, and what it was signed
    from (so it can be re-signed with other fees, or cancelled, after a restart too)."""

    chain_id: int
    signer: str
    nonce: int
    raw_tx: bytes
    tx_hash: str
    fencing_token: int
    rebalance_id: int | None = None
    max_fee_per_gas: int | None = None
    max_priority_fee_per_gas: int | None = None
    purpose: IntentPurpose = "swap"
    call_index: int | None = None
    """Position of this transaction among its attempt's planned transactions."""
    tx_to: str | None = None
    tx_data: bytes | None = None
    tx_value: int | None = None
    gas_limit: int | None = None
    deadline: int | None = None
    """Chain time (unix seconds) after which the trade is void and the nonce is cancelled."""


@attrs.frozen
class TxIntent:
    """A recorded signed transaction and what became of it."""

    id: int
    rebalance_id: int | None
    chain_id: int
    signer: str
    nonce: int
    raw_tx: bytes
    tx_hash: str
    status: IntentStatus
    fencing_token: int
    max_fee_per_gas: int | None
    max_priority_fee_per_gas: int | None
    replaces_id: int | None
    block_number: int | None
    gas_used: int | None
    effective_gas_price: int | None
    error: str | None
    created_at: dt.datetime
    updated_at: dt.datetime
    purpose: IntentPurpose = "swap"
    call_index: int | None = None
    tx_to: str | None = None
    tx_data: bytes | None = attrs.field(default=None, repr=False)
    tx_value: int | None = None
    gas_limit: int | None = None
    deadline: int | None = None

    @property
    def live(self) -> bool:
        return self.status in LIVE_INTENT_STATUSES


@attrs.frozen
class TxReceipt:
    """The parts of a mined transaction's receipt we keep."""

    block_number: int
    gas_used: int
    effective_gas_price: int
    succeeded: bool


@attrs.frozen
class DailyDriftStats:
    """One day (UTC) of the analytics report (the seed's dashboard query)."""

    date: dt.date
    avg_drift: Decimal | None
    rebalance_count: int
    """Successful rebalances."""
    attempt_count: int
    """All finished attempts (including skips, dry runs and failures)."""
    total_gas_cost_usd: Decimal


@attrs.frozen
class AppliedMigration:
    """A schema migration applied by :meth:`Database.migrate`."""

    version: int
    name: str


@attrs.frozen
class SignerLease:
    """This process's right to allocate the signer's nonces (DESIGN.md §4.1)."""

    chain_id: int
    signer: str
    holder: str
    fencing_token: int
    """Carried by every intent; the database refuses intents with a superseded token."""
    expires_at: dt.datetime


@attrs.frozen
class Notification:
    """A NOTIFY delivered to Trio.

    ``resync`` means notifications may have been missed on ``channel`` (buffer overflow or a
    reconnect): reload everything the channel covers; ``payload`` is then empty.
    """

    channel: str
    payload: str
    resync: bool = False


# ============================================================================ JSON


def _json_encode(value: Any) -> str:
    """JSON with ``Decimal`` written as an exact number (json.dumps would go through float)."""
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"cannot store non-finite number {value} in JSON")
        return str(value)
    if isinstance(value, Mapping):
        items = (f"{json.dumps(str(k))}:{_json_encode(v)}" for k, v in value.items())
        return "{" + ",".join(items) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(_json_encode(v) for v in value) + "]"
    if isinstance(value, float):
        raise TypeError("floats are not stored; use Decimal")
    return json.dumps(value)


def _json_decode(text: str) -> Any:
    return json.loads(text, parse_float=Decimal)


# ============================================================================ migrations


@attrs.frozen
class Migration:
    """One versioned SQL file."""

    version: int
    name: str
    sql: str
    checksum: str


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """The migration files in version order; file names are ``NNNN_name.sql``."""
    migrations: list[Migration] = []
    for path in sorted(directory.glob("*.sql")):
        match = _MIGRATION_NAME.match(path.name)
        if not match:
            raise MigrationError(f"{path.name}: migration files are named NNNN_name.sql")
        data = path.read_bytes()
        migrations.append(
            Migration(
                version=int(match.group(1)),
                name=match.group(2),
                sql=data.decode("utf-8"),
                checksum=hashlib.sha256(data).hexdigest(),
            )
        )
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"duplicate migration versions in {directory}")
    return migrations


_SCHEMA_MIGRATIONS_DDL: Final = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


async def _migrate(
    conn: asyncpg.Connection, migrations: Sequence[Migration]
) -> list[AppliedMigration]:
    """Apply pending migrations under the advisory lock. Runs on the loop thread."""
    # pg_try_advisory_lock in a loop rather than pg_advisory_lock: a waiting migrator stays
    # cancellable and is not cut off by command_timeout while another one works.
    while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", MIGRATION_LOCK_KEY):  # noqa: ASYNC110 - polling the server
        await asyncio.sleep(MIGRATION_LOCK_POLL)
    try:
        await conn.execute(_SCHEMA_MIGRATIONS_DDL)
        rows = await conn.fetch("SELECT version, name, checksum FROM schema_migrations")
        applied = {row["version"]: row for row in rows}
        known = {m.version for m in migrations}
        unknown = sorted(set(applied) - known)
        if unknown:
            raise MigrationError(
                f"the database has migrations this driftd does not know ({unknown}); "
                "it was migrated by a newer version"
            )
        done: list[AppliedMigration] = []
        for migration in migrations:
            row = applied.get(migration.version)
            if row is not None:
                if row["checksum"] != migration.checksum:
                    raise MigrationError(
                        f"migration {migration.version:04d}_{migration.name} was changed after "
                        "it was applied; add a new migration instead"
                    )
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    migration.version,
                    migration.name,
                    migration.checksum,
                )
            done.append(AppliedMigration(migration.version, migration.name))
        return done
    finally:
        with contextlib.suppress(Exception):
            await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)


# ============================================================================ the bridge


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


# ============================================================================ notifications


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


# ============================================================================ the database


Work = Callable[[asyncpg.Connection], Awaitable[T]]


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec(
        "jsonb", encoder=_json_encode, decoder=_json_decode, schema="pg_catalog"
    )
    await conn.set_type_codec(
        "json", encoder=_json_encode, decoder=_json_decode, schema="pg_catalog"
    )


@attrs.define(eq=False)
class Database:
    """An open connection pool and the repositories. Create with :func:`open_database`."""

    _config: DatabaseConfig
    _bridge: _Bridge
    _pool: asyncpg.Pool | None = None

    @property
    def where(self) -> str:
        """The database URL with its password masked (for logs and errors)."""
        return mask_url(self._config.url)

    # --- plumbing ---

    async def _open(self) -> None:
        async def create() -> asyncpg.Pool:
            try:
                return await asyncpg.create_pool(
                    dsn=self._config.url,
                    min_size=self._config.min_connections,
                    max_size=self._config.max_connections,
                    command_timeout=self._config.command_timeout,
                    timeout=CONNECT_TIMEOUT,
                    init=_init_connection,
                    server_settings={"application_name": "driftd"},
                )
            except Exception as exc:
                raise _translate(exc, self.where) from exc

        self._pool = await self._bridge.call(create)

    async def _close(self) -> None:
        pool = self._pool
        if pool is None:
            return
        self._pool = None

        async def close() -> None:
            try:
                await asyncio.wait_for(pool.close(), CLOSE_TIMEOUT)
            except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                pool.terminate()

        await self._bridge.call(close)

    async def _unit(self, work: Work[T], *, transaction: bool = True) -> T:
        """Run ``work(conn)`` as one unit of work (one transaction) on the loop thread."""
        pool = self._pool
        if pool is None:
            raise DatabaseUnavailable(f"database {self.where} is closed")
        where = self.where

        async def run() -> T:
            try:
                async with pool.acquire() as conn:
                    if not transaction:
                        return await work(conn)
                    async with conn.transaction():
                        return await work(conn)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                error = _translate(exc, where)
                if isinstance(error, DatabaseUnavailable):
                    # Every pooled connection may be dead: replace them all on next acquire.
                    await pool.expire_connections()
                raise error from exc

        return await self._bridge.call(run)

    # --- low level (tests, benchmarks, admin) ---

    async def fetch(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        """Rows as dicts. For tests, benchmarks and ad-hoc admin; repositories are preferred."""

        async def work(conn: asyncpg.Connection) -> list[dict[str, Any]]:
            return [dict(row) for row in await conn.fetch(sql, *args)]

        return await self._unit(work, transaction=False)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        """The first column of the first row."""

        async def work(conn: asyncpg.Connection) -> Any:
            return await conn.fetchval(sql, *args)

        return await self._unit(work, transaction=False)

    async def execute(self, sql: str, *args: Any) -> str:
        """Run a statement (or, without arguments, several); returns the status tag."""

        async def work(conn: asyncpg.Connection) -> str:
            return cast(str, await conn.execute(sql, *args))

        return await self._unit(work)

    async def transaction(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> list[str]:
        """Several statements in one transaction (one bridge call)."""

        async def work(conn: asyncpg.Connection) -> list[str]:
            return [await conn.execute(sql, *args) for sql, args in statements]

        return await self._unit(work)

    async def ping(self) -> None:
        """Raise :class:`DatabaseUnavailable` unless a round trip succeeds."""
        await self.fetchval("SELECT 1")

    # --- migrations ---

    async def migrate(
        self, migrations: Sequence[Migration] | None = None
    ) -> list[AppliedMigration]:
        """Bring the schema up to date; safe to run concurrently (advisory lock); idempotent."""
        todo = list(migrations) if migrations is not None else load_migrations()
        return await self._unit(lambda conn: _migrate(conn, todo), transaction=False)

    async def schema_version(self) -> int:
        """The highest applied migration (0 when none)."""

        async def work(conn: asyncpg.Connection) -> int:
            exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
            if not exists:
                return 0
            return int(
                await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_migrations")
            )

        return await self._unit(work, transaction=False)

    # --- tokens ---

    async def add_token(
        self,
        symbol: str,
        address: str,
        *,
        chain_id: int,
        decimals: int,
        coingecko_id: str | None = None,
        is_quote: bool = False,
        price_feed: str | None = None,
    ) -> Token:
        """Register a token; duplicate symbol or address → :class:`ConstraintViolation`."""

        async def work(conn: asyncpg.Connection) -> Token:
            row = await conn.fetchrow(
                "INSERT INTO token"
                " (symbol, address, chain_id, decimals, coingecko_id, is_quote, price_feed)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING *",
                symbol,
                address,
                chain_id,
                decimals,
                coingecko_id,
                is_quote,
                price_feed,
            )
            return _token(row)

        return await self._unit(work)

    async def tokens(self, chain_id: int | None = None) -> list[Token]:
        """All tokens (of one chain, if given), by symbol."""

        async def work(conn: asyncpg.Connection) -> list[Token]:
            rows = await conn.fetch(
                "SELECT * FROM token WHERE $1::bigint IS NULL OR chain_id = $1 ORDER BY symbol",
                chain_id,
            )
            return [_token(r) for r in rows]

        return await self._unit(work, transaction=False)

    # --- portfolios ---

    async def add_portfolio(
        self,
        name: str,
        smart_account: str,
        *,
        chain_id: int,
        targets: Mapping[str, Decimal],
        delegation: Sequence[Mapping[str, Any]],
        owner: str | None = None,
    ) -> Portfolio:
        """Insert a portfolio with its allocations (symbol → weight) in one transaction."""

        async def work(conn: asyncpg.Connection) -> Portfolio:
            portfolio_id = await conn.fetchval(
                "INSERT INTO portfolio (name, smart_account, chain_id, owner, delegation)"
                " VALUES ($1, $2, $3, $4, $5) RETURNING id",
                name,
                smart_account,
                chain_id,
                owner,
                list(delegation),
            )
            await _write_allocations(conn, portfolio_id, targets)
            # Check the deferred sum rule now, so the error names it before commit.
            await conn.execute("SET CONSTRAINTS allocation_weights_sum_to_one IMMEDIATE")
            return (await _load_portfolios(conn, "p.id = $1", portfolio_id))[0]

        return await self._unit(work)

    async def set_allocations(self, portfolio_id: int, targets: Mapping[str, Decimal]) -> Portfolio:
        """Replace a portfolio's target weights (symbol → weight) atomically."""

        async def work(conn: asyncpg.Connection) -> Portfolio:
            await conn.execute("DELETE FROM allocation WHERE portfolio_id = $1", portfolio_id)
            await _write_allocations(conn, portfolio_id, targets)
            await conn.execute("SET CONSTRAINTS allocation_weights_sum_to_one IMMEDIATE")
            found = await _load_portfolios(conn, "p.id = $1", portfolio_id)
            if not found:
                raise NotFound(f"no portfolio with id {portfolio_id}")
            return found[0]

        return await self._unit(work)

    async def portfolios(
        self, *, active_only: bool = False, chain_id: int | None = None
    ) -> list[Portfolio]:
        """Portfolios (active ones, of one chain, if asked) with allocations and tokens, by
        name."""

        async def work(conn: asyncpg.Connection) -> list[Portfolio]:
            where = "($1::bigint IS NULL OR p.chain_id = $1)"
            if active_only:
                where += " AND p.is_active"
            return await _load_portfolios(conn, where, chain_id)

        return await self._unit(work, transaction=False)

    async def active_portfolios(self, chain_id: int | None = None) -> list[Portfolio]:
        """What the supervisor runs an actor for (the daemon passes its chain id)."""
        return await self.portfolios(active_only=True, chain_id=chain_id)

    async def active_portfolio_on(self, chain_id: int, smart_account: str) -> Portfolio | None:
        """The active portfolio of ``smart_account`` (any letter case) on ``chain_id``, if any.

        At most one exists: the index ``portfolio_one_active_per_account`` (migration 0005)."""

        async def work(conn: asyncpg.Connection) -> Portfolio | None:
            found = await _load_portfolios(
                conn,
                "p.is_active AND p.chain_id = $1 AND lower(p.smart_account) = lower($2)",
                chain_id,
                smart_account,
            )
            return min(found, key=lambda p: p.id) if found else None

        return await self._unit(work, transaction=False)

    async def set_portfolio_paused(self, key: int | str, paused: bool) -> Portfolio:
        """``driftd pause`` / ``resume``: durable, announced on :data:`PORTFOLIO_CHANNEL`."""
        return await self._set_portfolio_flag(key, "is_paused", paused)

    async def portfolio(self, key: int | str) -> Portfolio:
        """One portfolio by id or name; :class:`NotFound` if there is none."""

        async def work(conn: asyncpg.Connection) -> Portfolio:
            where = "p.id = $1" if isinstance(key, int) else "p.name = $1"
            found = await _load_portfolios(conn, where, key)
            if not found:
                raise NotFound(f"no portfolio {key!r}")
            return found[0]

        return await self._unit(work, transaction=False)

    async def set_portfolio_active(self, key: int | str, active: bool) -> Portfolio:
        """Activate or deactivate a portfolio (announced on :data:`PORTFOLIO_CHANNEL`)."""
        return await self._set_portfolio_flag(key, "is_active", active)

    async def _set_portfolio_flag(
        self, key: int | str, flag: Literal["is_active", "is_paused"], value: bool
    ) -> Portfolio:
        async def work(conn: asyncpg.Connection) -> Portfolio:
            column = "id" if isinstance(key, int) else "name"
            portfolio_id = await conn.fetchval(
                f"UPDATE portfolio SET {flag} = $2 WHERE {column} = $1 RETURNING id",  # noqa: S608
                key,
                value,
            )
            if portfolio_id is None:
                raise NotFound(f"no portfolio {key!r}")
            return (await _load_portfolios(conn, "p.id = $1", portfolio_id))[0]

        return await self._unit(work)

    # --- rebalance log ---

    async def start_rebalance(
        self,
        portfolio_id: int,
        *,
        drift_percentage: Decimal | None,
        trigger: RebalanceTrigger = "drift",
        token_amounts: Any = None,
        swap_path: Any = None,
        expected_outputs: Any = None,
        chain_id: int | None = None,
        signer: str | None = None,
        balances_block: int | None = None,
    ) -> int:
        """Insert a PENDING row for an attempt that will touch the chain; returns its id.

        Refused with :class:`RebalanceRefused` (nothing written) while another attempt of the
        portfolio is PENDING (a unique index, so two processes cannot race past it), or when a
        swap of the portfolio was mined after ``balances_block`` (the plan was made from balances
        that no longer exist). The attempt must end with :meth:`finish_rebalance` (recovery
        finds leftovers with :meth:`pending_rebalances`). Attempts decided without the chain use
        :meth:`record_rebalance`.
        """

        async def work(conn: asyncpg.Connection) -> int:
            if balances_block is not None:
                mined = await conn.fetchval(
                    "SELECT max(i.block_number) FROM tx_intent i"
                    " JOIN rebalance_log r ON r.id = i.rebalance_id"
                    " WHERE r.portfolio_id = $1 AND i.status = 'CONFIRMED'"
                    " AND i.purpose = 'swap'",
                    portfolio_id,
                )
                if mined is not None and mined > balances_block:
                    raise RebalanceRefused(
                        f"the plan's balances (block {balances_block}) predate a trade of this "
                        f"portfolio mined in block {mined}"
                    )
            try:
                async with conn.transaction():
                    return int(
                        await conn.fetchval(
                            "INSERT INTO rebalance_log (portfolio_id, status, trigger,"
                            " drift_percentage, token_amounts, swap_path, expected_outputs,"
                            " chain_id, signer, balances_block)"
                            " VALUES ($1, 'PENDING', $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
                            portfolio_id,
                            trigger,
                            drift_percentage,
                            token_amounts,
                            swap_path,
                            expected_outputs,
                            chain_id,
                            None if signer is None else signer.lower(),
                            balances_block,
                        )
                    )
            except asyncpg.UniqueViolationError as exc:
                if exc.constraint_name != "rebalance_log_one_pending_per_portfolio":
                    raise
                raise RebalanceRefused("another rebalance of this portfolio is in flight") from None

        return await self._unit(work)

    async def set_rebalance_plan(
        self,
        rebalance_id: int,
        *,
        planned_txs: int,
        planned_swap_txs: int,
        swap_path: Any,
        expected_outputs: Any,
    ) -> None:
        """Record what a PENDING attempt is about to send, before its first intent: recovery
        decides SUCCESS / PARTIAL / FAILED by comparing the mined intents with this."""

        async def work(conn: asyncpg.Connection) -> None:
            status = await conn.execute(
                "UPDATE rebalance_log SET planned_txs = $2, planned_swap_txs = $3,"
                " swap_path = $4, expected_outputs = $5 WHERE id = $1 AND status = 'PENDING'",
                rebalance_id,
                planned_txs,
                planned_swap_txs,
                swap_path,
                expected_outputs,
            )
            if status != "UPDATE 1":
                raise NotFound(f"no PENDING rebalance_log row {rebalance_id}")

        await self._unit(work)

    async def finish_rebalance(
        self, rebalance_id: int, outcome_: RebalanceOutcome
    ) -> RebalanceLogEntry:
        """Give a PENDING attempt its terminal status (exactly once; a second call raises
        :class:`ConstraintViolation` ``rebalance_log_terminal_is_final``)."""

        async def work(conn: asyncpg.Connection) -> RebalanceLogEntry:
            row = await conn.fetchrow(
                "UPDATE rebalance_log SET status = $2, finished_at = now(), skip_reason = $3,"
                " error = $4, transaction_hash = $5, gas_used = $6, gas_cost_wei = $7,"
                " gas_cost_usd = $8,"
                " token_amounts = coalesce($9, token_amounts),"
                " swap_path = coalesce($10, swap_path),"
                " expected_outputs = coalesce($11, expected_outputs),"
                " actual_outputs = $12, execution_time_ms = $13"
                " WHERE id = $1 RETURNING *",
                rebalance_id,
                *_outcome_args(outcome_),
            )
            if row is None:
                raise NotFound(f"no rebalance_log row {rebalance_id}")
            return _rebalance(row)

        return await self._unit(work)

    async def record_rebalance(
        self,
        portfolio_id: int,
        outcome_: RebalanceOutcome,
        *,
        drift_percentage: Decimal | None,
        trigger: RebalanceTrigger = "drift",
    ) -> RebalanceLogEntry:
        """Insert a finished attempt in one step (skips, dry runs, failures before the chain)."""

        async def work(conn: asyncpg.Connection) -> RebalanceLogEntry:
            row = await conn.fetchrow(
                "INSERT INTO rebalance_log (portfolio_id, trigger, drift_percentage, finished_at,"
                " status, skip_reason, error, transaction_hash, gas_used, gas_cost_wei,"
                " gas_cost_usd, token_amounts, swap_path, expected_outputs, actual_outputs,"
                " execution_time_ms)"
                " VALUES ($1, $2, $3, now(), $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
                " RETURNING *",
                portfolio_id,
                trigger,
                drift_percentage,
                *_outcome_args(outcome_),
            )
            return _rebalance(row)

        return await self._unit(work)

    async def pending_rebalances(
        self, chain_id: int | None = None, signer: str | None = None
    ) -> list[RebalanceLogEntry]:
        """Attempts not finished (a crash mid-attempt); recovery settles each.

        With ``chain_id`` and ``signer``: only that signer's attempts on that chain, plus rows
        written before attempts carried their signer (whose portfolio is on that chain) — never
        another live process's rows.
        """

        async def work(conn: asyncpg.Connection) -> list[RebalanceLogEntry]:
            rows = await conn.fetch(
                "SELECT r.* FROM rebalance_log r JOIN portfolio p ON p.id = r.portfolio_id"
                " WHERE r.status = 'PENDING' AND ($1::bigint IS NULL OR ("
                "   (r.signer = lower($2) AND r.chain_id = $1)"
                "   OR (r.signer IS NULL AND p.chain_id = $1)))"
                " ORDER BY r.id",
                chain_id,
                signer,
            )
            return [_rebalance(r) for r in rows]

        return await self._unit(work, transaction=False)

    async def rebalance(self, rebalance_id: int) -> RebalanceLogEntry:
        """One attempt by id."""

        async def work(conn: asyncpg.Connection) -> RebalanceLogEntry:
            row = await conn.fetchrow("SELECT * FROM rebalance_log WHERE id = $1", rebalance_id)
            if row is None:
                raise NotFound(f"no rebalance_log row {rebalance_id}")
            return _rebalance(row)

        return await self._unit(work, transaction=False)

    async def rebalance_history(
        self, portfolio_id: int | None = None, *, limit: int = 50
    ) -> list[RebalanceLogEntry]:
        """Newest attempts first, of one portfolio or all."""

        async def work(conn: asyncpg.Connection) -> list[RebalanceLogEntry]:
            rows = await conn.fetch(
                "SELECT * FROM rebalance_log WHERE $1::bigint IS NULL OR portfolio_id = $1"
                ' ORDER BY "timestamp" DESC, id DESC LIMIT $2',
                portfolio_id,
                limit,
            )
            return [_rebalance(r) for r in rows]

        return await self._unit(work, transaction=False)

    async def last_successful_rebalances(self) -> dict[int, dt.datetime]:
        """Portfolio id → when its last trade (SUCCESS or PARTIAL) finished: the durable
        cooldown source."""

        async def work(conn: asyncpg.Connection) -> dict[int, dt.datetime]:
            rows = await conn.fetch(
                "SELECT portfolio_id, max(finished_at) AS at FROM rebalance_log"
                " WHERE status = any($1::text[]) GROUP BY portfolio_id",
                list(TRADED_STATUSES),
            )
            return {r["portfolio_id"]: r["at"] for r in rows}

        return await self._unit(work, transaction=False)

    async def failure_streaks(self) -> dict[int, tuple[int, dt.datetime]]:
        """Portfolio id → (FAILED attempts since its last trade, when the newest finished), for
        portfolios whose newest finished chain attempt failed: the durable failure backoff."""

        async def work(conn: asyncpg.Connection) -> dict[int, tuple[int, dt.datetime]]:
            rows = await conn.fetch(
                "SELECT r.portfolio_id, count(*) AS failures, max(r.finished_at) AS at"
                " FROM rebalance_log r"
                " WHERE r.status = 'FAILED' AND r.finished_at > coalesce("
                "   (SELECT max(t.finished_at) FROM rebalance_log t"
                "    WHERE t.portfolio_id = r.portfolio_id AND t.status = any($1::text[])),"
                "   '-infinity')"
                " GROUP BY r.portfolio_id",
                list(TRADED_STATUSES),
            )
            return {r["portfolio_id"]: (r["failures"], r["at"]) for r in rows}

        return await self._unit(work, transaction=False)

    async def last_successful_rebalance(self, portfolio_id: int) -> RebalanceLogEntry | None:
        """The newest SUCCESS row of one portfolio."""

        async def work(conn: asyncpg.Connection) -> RebalanceLogEntry | None:
            row = await conn.fetchrow(
                "SELECT * FROM rebalance_log WHERE portfolio_id = $1 AND status = 'SUCCESS'"
                " ORDER BY finished_at DESC LIMIT 1",
                portfolio_id,
            )
            return None if row is None else _rebalance(row)

        return await self._unit(work, transaction=False)

    async def drift_report(
        self, *, days: int = 30, portfolio_id: int | None = None
    ) -> list[DailyDriftStats]:
        """The seed's analytics query: per UTC day over the last ``days`` days, average drift,
        rebalance count and total gas cost (USD), oldest day first."""

        async def work(conn: asyncpg.Connection) -> list[DailyDriftStats]:
            rows = await conn.fetch(
                "SELECT (\"timestamp\" AT TIME ZONE 'UTC')::date AS date,"
                " avg(drift_percentage) AS avg_drift,"
                " count(*) FILTER (WHERE status = 'SUCCESS') AS rebalance_count,"
                " count(*) FILTER (WHERE status <> 'PENDING') AS attempt_count,"
                " coalesce(sum(gas_cost_usd), 0) AS total_gas_cost_usd"
                " FROM rebalance_log"
                ' WHERE "timestamp" > now() - make_interval(days => $1)'
                " AND ($2::bigint IS NULL OR portfolio_id = $2)"
                " GROUP BY 1 ORDER BY 1",
                days,
                portfolio_id,
            )
            return [
                DailyDriftStats(
                    date=r["date"],
                    avg_drift=r["avg_drift"],
                    rebalance_count=r["rebalance_count"],
                    attempt_count=r["attempt_count"],
                    total_gas_cost_usd=r["total_gas_cost_usd"],
                )
                for r in rows
            ]

        return await self._unit(work, transaction=False)

    # --- signer lease ---

    async def acquire_signer_lease(
        self,
        chain_id: int,
        signer: str,
        holder: str,
        ttl: float,
        *,
        take_over_from: Callable[[str], bool] = lambda holder: False,
    ) -> SignerLease:
        """Take the signer's lease with a new fencing token.

        Raises :class:`LeaseHeld` (with the holder and its expiry) while another holder's lease
        is unexpired, unless ``take_over_from(holder)`` says that holder is provably gone
        (:func:`daemon.lease.holder_is_dead`: a dead process of this boot and pid namespace).

        An unexpired lease whose holder string equals ``holder`` is re-taken (new token): holder
        strings carry a random id per process start (:class:`daemon.lease.InstanceIdentity`), so
        only this same process can present it again. Callers must never pass a holder that other
        processes could share (a bare ``host:pid`` is shared by containers and cloned VMs).
        """

        async def work(conn: asyncpg.Connection) -> SignerLease:
            current = await conn.fetchrow(
                "SELECT holder, fencing_token, expires_at, expires_at > now() AS live"
                " FROM signer_lease WHERE chain_id = $1 AND signer = $2 FOR UPDATE",
                chain_id,
                signer.lower(),
            )
            if (
                current is not None
                and current["live"]
                # Equal holder: this same process (random per-start id), see the docstring.
                and current["holder"] != holder
                and not take_over_from(current["holder"])
            ):
                raise LeaseHeld(current["holder"], current["expires_at"])
            row = await conn.fetchrow(
                "INSERT INTO signer_lease (chain_id, signer, holder, fencing_token, expires_at)"
                " VALUES ($1, $2, $3, 1, now() + make_interval(secs => $4))"
                " ON CONFLICT (chain_id, signer) DO UPDATE SET holder = excluded.holder,"
                " fencing_token = signer_lease.fencing_token + 1, acquired_at = now(),"
                " expires_at = excluded.expires_at RETURNING *",
                chain_id,
                signer.lower(),
                holder,
                ttl,
            )
            return _lease(row)

        return await self._unit(work)

    async def renew_signer_lease(self, lease: SignerLease, ttl: float) -> SignerLease:
        """Extend our lease; :class:`LeaseLost` if it is no longer ours."""

        async def work(conn: asyncpg.Connection) -> SignerLease:
            row = await conn.fetchrow(
                "UPDATE signer_lease SET expires_at = now() + make_interval(secs => $4)"
                " WHERE chain_id = $1 AND signer = $2 AND fencing_token = $3"
                " AND expires_at > now() RETURNING *",
                lease.chain_id,
                lease.signer,
                lease.fencing_token,
                ttl,
            )
            if row is None:
                raise LeaseLost(
                    f"the lease of signer {lease.signer} (token {lease.fencing_token}) was lost"
                )
            return _lease(row)

        return await self._unit(work)

    async def release_signer_lease(self, lease: SignerLease) -> None:
        """Let the next process take over at once (the token counter is kept)."""

        async def work(conn: asyncpg.Connection) -> None:
            await conn.execute(
                "UPDATE signer_lease SET expires_at = now()"
                " WHERE chain_id = $1 AND signer = $2 AND fencing_token = $3",
                lease.chain_id,
                lease.signer,
                lease.fencing_token,
            )

        await self._unit(work)

    # --- transaction intents ---

    async def insert_intent(self, intent: NewTxIntent) -> TxIntent:
        """Record a signed transaction (status SIGNED) before its first broadcast.

        A second live intent for the same (chain, signer, nonce) raises
        :class:`ConstraintViolation` ``tx_intent_live_nonce``.
        """

        async def work(conn: asyncpg.Connection) -> TxIntent:
            return await _insert_intent(conn, intent, replaces_id=None)

        return await self._unit(work)

    async def replace_intent(self, old_id: int, new: NewTxIntent) -> TxIntent:
        """A fee bump: mark the live intent REPLACED and record the new signed transaction for
        the same nonce, atomically, before the new one is sent."""

        async def work(conn: asyncpg.Connection) -> TxIntent:
            old = await conn.fetchrow("SELECT * FROM tx_intent WHERE id = $1 FOR UPDATE", old_id)
            if old is None:
                raise NotFound(f"no tx_intent {old_id}")
            if old["status"] not in LIVE_INTENT_STATUSES:
                raise ConstraintViolation(
                    "tx_intent_replace_live",
                    f"tx_intent {old_id} is {old['status']}; only a live intent can be replaced",
                )
            same = (old["chain_id"], old["signer"].lower(), old["nonce"]) == (
                new.chain_id,
                new.signer.lower(),
                new.nonce,
            )
            if not same:
                raise ConstraintViolation(
                    "tx_intent_replace_same_nonce",
                    f"a replacement of tx_intent {old_id} must use the same chain, signer and "
                    "nonce",
                )
            await conn.execute("UPDATE tx_intent SET status = 'REPLACED' WHERE id = $1", old_id)
            return await _insert_intent(
                conn, attrs.evolve(new, rebalance_id=old["rebalance_id"]), replaces_id=old_id
            )

        return await self._unit(work)

    async def mark_intent(
        self, intent_id: int, status: IntentStatus, *, error: str | None = None
    ) -> TxIntent:
        """Set an intent's status (BROADCAST after sending, DROPPED when abandoned…)."""

        async def work(conn: asyncpg.Connection) -> TxIntent:
            row = await conn.fetchrow(
                "UPDATE tx_intent SET status = $2, error = coalesce($3, error) WHERE id = $1"
                " RETURNING *",
                intent_id,
                status,
                error,
            )
            if row is None:
                raise NotFound(f"no tx_intent {intent_id}")
            return _intent(row)

        return await self._unit(work)

    async def record_intent_receipt(self, intent_id: int, receipt: TxReceipt) -> TxIntent:
        """The intent was mined: CONFIRMED or REVERTED with its receipt; every other intent for
        the same nonce (replaced or replacing) becomes DROPPED, in one transaction."""

        async def work(conn: asyncpg.Connection) -> TxIntent:
            row = await conn.fetchrow(
                "UPDATE tx_intent SET status = $2, block_number = $3, gas_used = $4,"
                " effective_gas_price = $5 WHERE id = $1 RETURNING *",
                intent_id,
                "CONFIRMED" if receipt.succeeded else "REVERTED",
                receipt.block_number,
                receipt.gas_used,
                receipt.effective_gas_price,
            )
            if row is None:
                raise NotFound(f"no tx_intent {intent_id}")
            await conn.execute(
                "UPDATE tx_intent SET status = 'DROPPED' WHERE chain_id = $1"
                " AND lower(signer) = lower($2) AND nonce = $3 AND id <> $4"
                " AND status IN ('SIGNED', 'BROADCAST', 'REPLACED')",
                row["chain_id"],
                row["signer"],
                row["nonce"],
                intent_id,
            )
            return _intent(row)

        return await self._unit(work)

    async def intents_by_status(
        self, *statuses: IntentStatus, signer: str | None = None
    ) -> list[TxIntent]:
        """Intents in any of ``statuses`` (all live ones by default), oldest first."""
        wanted: list[str] = list(statuses) or sorted(LIVE_INTENT_STATUSES)

        async def work(conn: asyncpg.Connection) -> list[TxIntent]:
            rows = await conn.fetch(
                "SELECT * FROM tx_intent WHERE status = any($1::text[])"
                " AND ($2::text IS NULL OR lower(signer) = lower($2)) ORDER BY nonce, id",
                wanted,
                signer,
            )
            return [_intent(r) for r in rows]

        return await self._unit(work, transaction=False)

    async def nonce_versions(self, chain_id: int, signer: str) -> list[TxIntent]:
        """Every recorded version (live or replaced) of each nonce of this signer that still
        has a live intent, by nonce then id: what recovery must see through. A replaced
        version stays listed because it, not its replacement, may be the one that gets mined."""

        async def work(conn: asyncpg.Connection) -> list[TxIntent]:
            rows = await conn.fetch(
                "SELECT * FROM tx_intent i WHERE i.chain_id = $1 AND lower(i.signer) = lower($2)"
                " AND i.status = any($3::text[]) AND i.nonce IN ("
                "   SELECT nonce FROM tx_intent WHERE chain_id = $1"
                "   AND lower(signer) = lower($2) AND status IN ('SIGNED', 'BROADCAST'))"
                " ORDER BY i.nonce, i.id",
                chain_id,
                signer,
                ["SIGNED", "BROADCAST", "REPLACED"],
            )
            return [_intent(r) for r in rows]

        return await self._unit(work, transaction=False)

    async def drop_nonce(self, chain_id: int, signer: str, nonce: int, error: str) -> None:
        """Another transaction consumed ``nonce``: every unsettled version of ours is DROPPED."""

        async def work(conn: asyncpg.Connection) -> None:
            await conn.execute(
                "UPDATE tx_intent SET status = 'DROPPED', error = $4 WHERE chain_id = $1"
                " AND lower(signer) = lower($2) AND nonce = $3"
                " AND status IN ('SIGNED', 'BROADCAST', 'REPLACED')",
                chain_id,
                signer,
                nonce,
                error,
            )

        await self._unit(work)

    async def intents_for_rebalance(self, rebalance_id: int) -> list[TxIntent]:
        """Every intent recorded for one attempt, oldest first."""

        async def work(conn: asyncpg.Connection) -> list[TxIntent]:
            rows = await conn.fetch(
                "SELECT * FROM tx_intent WHERE rebalance_id = $1 ORDER BY id", rebalance_id
            )
            return [_intent(r) for r in rows]

        return await self._unit(work, transaction=False)

    # --- prices ---

    async def insert_prices(self, observations: Sequence[PriceObservation]) -> int:
        """Append a batch of observations (one COPY); returns how many."""
        records = [
            (o.token_id, o.source, o.usd, o.observed_at, o.block_number) for o in observations
        ]
        if not records:
            return 0

        async def work(conn: asyncpg.Connection) -> int:
            await conn.copy_records_to_table(
                "price",
                records=records,
                columns=["token_id", "source", "usd", "observed_at", "block_number"],
            )
            return len(records)

        return await self._unit(work)

    async def latest_prices(self, source: PriceSource | None = None) -> list[LatestPrice]:
        """The newest observation per (token, source), optionally of one source."""

        async def work(conn: asyncpg.Connection) -> list[LatestPrice]:
            rows = await conn.fetch(
                "SELECT DISTINCT ON (p.token_id, p.source) p.token_id, t.symbol, p.source,"
                " p.usd, p.observed_at, p.block_number"
                " FROM price p JOIN token t ON t.id = p.token_id"
                " WHERE $1::text IS NULL OR p.source = $1"
                " ORDER BY p.token_id, p.source, p.observed_at DESC, p.id DESC",
                source,
            )
            return [LatestPrice(**dict(r)) for r in rows]

        return await self._unit(work, transaction=False)

    # --- system_config ---

    async def get_system_config(self, key: str) -> Any:
        """The JSON value stored under ``key`` (numbers as int / Decimal), or None."""

        async def work(conn: asyncpg.Connection) -> Any:
            return await conn.fetchval("SELECT value FROM system_config WHERE key = $1", key)

        return await self._unit(work, transaction=False)

    async def set_system_config(self, key: str, value: Any) -> None:
        """Store a JSON value (announced on :data:`SYSTEM_CONFIG_CHANNEL`).

        Numbers must be int or Decimal: a float raises ``TypeError`` here, before any I/O.
        """
        _json_encode(value)

        async def work(conn: asyncpg.Connection) -> None:
            await conn.execute(
                "INSERT INTO system_config (key, value) VALUES ($1, $2)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                key,
                value,
            )

        await self._unit(work)

    # --- valuation snapshots ---

    async def insert_snapshots(self, snapshots: Sequence[PortfolioSnapshot]) -> None:
        """Append a batch of valuations in one transaction."""
        if not snapshots:
            return
        rows = [
            (
                s.portfolio_id,
                s.taken_at,
                s.total_usd,
                s.max_drift,
                s.price_source,
                [_holding_json(h) for h in s.holdings],
            )
            for s in snapshots
        ]

        async def work(conn: asyncpg.Connection) -> None:
            await conn.executemany(
                "INSERT INTO portfolio_snapshot (portfolio_id, taken_at, total_usd, max_drift,"
                " price_source, holdings) VALUES ($1, coalesce($2, now()), $3, $4, $5, $6)",
                rows,
            )

        await self._unit(work)

    async def latest_snapshot(self, portfolio_id: int) -> PortfolioSnapshot | None:
        """The newest valuation of a portfolio."""

        async def work(conn: asyncpg.Connection) -> PortfolioSnapshot | None:
            row = await conn.fetchrow(
                "SELECT * FROM portfolio_snapshot WHERE portfolio_id = $1"
                " ORDER BY taken_at DESC, id DESC LIMIT 1",
                portfolio_id,
            )
            if row is None:
                return None
            return PortfolioSnapshot(
                portfolio_id=row["portfolio_id"],
                total_usd=row["total_usd"],
                max_drift=row["max_drift"],
                price_source=row["price_source"],
                taken_at=row["taken_at"],
                holdings=tuple(
                    HoldingValue(
                        token_id=h["token_id"],
                        amount=int(h["amount"]),
                        usd=Decimal(h["usd"]),
                        weight=Decimal(h["weight"]),
                        drift=None if h.get("drift") is None else Decimal(h["drift"]),
                    )
                    for h in row["holdings"]
                ),
            )

        return await self._unit(work, transaction=False)

    # --- LISTEN / NOTIFY ---

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
        delay = LISTEN_RETRY_INITIAL
        while True:
            try:
                listener = await self._bridge.call(lambda: self._open_listener(stream))
            except DatabaseError:
                # At start the caller hears why; afterwards any failure to reconnect (refused,
                # timed out on an unreachable host, a server still recovering) is retried.
                if not started:
                    raise
                await trio.sleep(delay)
                delay = min(delay * 2, LISTEN_RETRY_MAX)
                continue
            try:
                if started:
                    stream._resync()  # changes while we were away were not announced
                else:
                    started = True
                    task_status.started()
                delay = LISTEN_RETRY_INITIAL
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


@contextlib.asynccontextmanager
async def open_database(
    config: DatabaseConfig, *, switch_interval: float | None = SWITCH_INTERVAL
) -> AsyncIterator[Database]:
    """Open the pool (raising :class:`DatabaseUnavailable` if the server cannot be reached),
    yield the :class:`Database`, and close everything when the block exits, even if cancelled.

    ``switch_interval`` lowers the GIL switch interval (see the module docstring); None leaves
    it alone.
    """
    if switch_interval is not None and sys.getswitchinterval() > switch_interval:
        sys.setswitchinterval(switch_interval)
    bridge = _Bridge(name="driftd-db", token=trio.lowlevel.current_trio_token())
    bridge.start()
    database = Database(config=config, bridge=bridge)
    try:
        await database._open()
        yield database
    finally:
        with trio.CancelScope(shield=True):
            with trio.move_on_after(CLOSE_TIMEOUT + 1):
                await database._close()
            await bridge.stop()


async def migrate(config: DatabaseConfig) -> list[AppliedMigration]:
    """Open the database, apply pending migrations, close it (``driftd migrate``)."""
    async with open_database(config) as database:
        return await database.migrate()


# ============================================================================ admin helpers


def database_url(url: str, database: str) -> str:
    """``url`` pointing at another database on the same server."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + database))


def _identifier(name: str) -> str:
    if not _IDENTIFIER.match(name):
        raise ValueError(f"not a plain identifier: {name!r}")
    return f'"{name}"'


async def create_database(
    admin_url: str, name: str, *, template: str | None = None, drop_existing: bool = False
) -> str:
    """CREATE DATABASE ``name`` (optionally from a template); returns its URL. For tests."""
    sql = f"CREATE DATABASE {_identifier(name)}"
    if template is not None:
        sql += f" TEMPLATE {_identifier(template)}"
    statements = [sql]
    if drop_existing:
        statements.insert(0, f"DROP DATABASE IF EXISTS {_identifier(name)} WITH (FORCE)")
    await admin_execute(admin_url, statements)
    return database_url(admin_url, name)


async def drop_database(admin_url: str, name: str) -> None:
    """DROP DATABASE ``name`` (disconnecting its sessions)."""
    await admin_execute(admin_url, [f"DROP DATABASE IF EXISTS {_identifier(name)} WITH (FORCE)"])


async def admin_execute(admin_url: str, statements: Sequence[str]) -> Any:
    """Run statements one by one, outside a transaction, on a one-off connection; returns the
    first column of the first row of the last one. For tests and tooling (CREATE DATABASE…)."""
    bridge = _Bridge(name="driftd-db-admin", token=trio.lowlevel.current_trio_token())
    bridge.start()
    where = mask_url(admin_url)

    async def run() -> Any:
        try:
            conn = await asyncpg.connect(dsn=admin_url, timeout=CONNECT_TIMEOUT)
        except Exception as exc:
            raise _translate(exc, where) from exc
        try:
            result = None
            for sql in statements:
                result = await conn.fetchval(sql)
            return result
        except Exception as exc:
            raise _translate(exc, where) from exc
        finally:
            await conn.close()

    try:
        return await bridge.call(run)
    finally:
        with trio.CancelScope(shield=True):
            await bridge.stop()


# ============================================================================ row mapping


def _lease(row: Mapping[str, Any]) -> SignerLease:
    return SignerLease(
        chain_id=row["chain_id"],
        signer=row["signer"],
        holder=row["holder"],
        fencing_token=row["fencing_token"],
        expires_at=row["expires_at"],
    )


def _token(row: Mapping[str, Any]) -> Token:
    return Token(
        id=row["id"],
        symbol=row["symbol"],
        address=row["address"],
        chain_id=row["chain_id"],
        decimals=row["decimals"],
        coingecko_id=row["coingecko_id"],
        is_quote=row["is_quote"],
        price_feed=row.get("price_feed"),
    )


async def _write_allocations(
    conn: asyncpg.Connection, portfolio_id: int, targets: Mapping[str, Decimal]
) -> None:
    symbols = list(targets)
    rows = await conn.fetch("SELECT id, symbol FROM token WHERE symbol = any($1::text[])", symbols)
    ids = {r["symbol"]: r["id"] for r in rows}
    missing = [s for s in symbols if s not in ids]
    if missing:
        raise NotFound(f"unknown token symbol(s): {', '.join(missing)}")
    await conn.executemany(
        "INSERT INTO allocation (portfolio_id, token_id, weight) VALUES ($1, $2, $3)",
        [(portfolio_id, ids[s], Decimal(targets[s])) for s in symbols],
    )


_PORTFOLIO_SELECT: Final = """
SELECT p.id, p.name, p.smart_account, p.chain_id, p.owner, p.is_active, p.is_paused,
       p.delegation, p.created_at, p.updated_at, a.weight,
       t.id AS t_id, t.symbol AS t_symbol, t.address AS t_address, t.chain_id AS t_chain_id,
       t.decimals AS t_decimals, t.coingecko_id AS t_coingecko_id, t.is_quote AS t_is_quote,
       t.price_feed AS t_price_feed
FROM portfolio p
LEFT JOIN allocation a ON a.portfolio_id = p.id
LEFT JOIN token t ON t.id = a.token_id
WHERE {where}
ORDER BY p.name, t.symbol
"""


async def _load_portfolios(conn: asyncpg.Connection, where: str, *args: Any) -> list[Portfolio]:
    rows = await conn.fetch(_PORTFOLIO_SELECT.format(where=where), *args)
    grouped: dict[int, list[Mapping[str, Any]]] = {}
    for row in rows:
        grouped.setdefault(row["id"], []).append(row)
    portfolios = []
    for group in grouped.values():
        first = group[0]
        allocations = tuple(
            Allocation(
                token=Token(
                    id=r["t_id"],
                    symbol=r["t_symbol"],
                    address=r["t_address"],
                    chain_id=r["t_chain_id"],
                    decimals=r["t_decimals"],
                    coingecko_id=r["t_coingecko_id"],
                    is_quote=r["t_is_quote"],
                    price_feed=r["t_price_feed"],
                ),
                weight=r["weight"],
            )
            for r in group
            if r["t_id"] is not None
        )
        portfolios.append(
            Portfolio(
                id=first["id"],
                name=first["name"],
                smart_account=first["smart_account"],
                chain_id=first["chain_id"],
                owner=first["owner"],
                is_active=first["is_active"],
                delegation=first["delegation"],
                allocations=allocations,
                created_at=first["created_at"],
                updated_at=first["updated_at"],
                is_paused=first["is_paused"],
            )
        )
    return portfolios


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


def _outcome_args(o: RebalanceOutcome) -> tuple[Any, ...]:
    return (
        o.status,
        o.skip_reason,
        o.error,
        o.transaction_hash,
        o.gas_used,
        o.gas_cost_wei,
        o.gas_cost_usd,
        o.token_amounts,
        o.swap_path,
        o.expected_outputs,
        o.actual_outputs,
        o.execution_time_ms,
    )


def _rebalance(row: Mapping[str, Any]) -> RebalanceLogEntry:
    return RebalanceLogEntry(
        id=row["id"],
        portfolio_id=row["portfolio_id"],
        timestamp=row["timestamp"],
        finished_at=row["finished_at"],
        status=row["status"],
        trigger=row["trigger"],
        drift_percentage=row["drift_percentage"],
        skip_reason=row["skip_reason"],
        error=row["error"],
        transaction_hash=row["transaction_hash"],
        gas_used=_int_or_none(row["gas_used"]),
        gas_cost_wei=_int_or_none(row["gas_cost_wei"]),
        gas_cost_usd=row["gas_cost_usd"],
        token_amounts=row["token_amounts"],
        swap_path=row["swap_path"],
        expected_outputs=row["expected_outputs"],
        actual_outputs=row["actual_outputs"],
        execution_time_ms=row["execution_time_ms"],
        chain_id=row["chain_id"],
        signer=row["signer"],
        planned_txs=row["planned_txs"],
        planned_swap_txs=row["planned_swap_txs"],
        balances_block=row["balances_block"],
    )


async def _insert_intent(
    conn: asyncpg.Connection, intent: NewTxIntent, *, replaces_id: int | None
) -> TxIntent:
    row = await conn.fetchrow(
        "INSERT INTO tx_intent (rebalance_id, chain_id, signer, nonce, raw_tx, tx_hash, status,"
        " fencing_token, max_fee_per_gas, max_priority_fee_per_gas, replaces_id, purpose,"
        " call_index, tx_to, tx_data, tx_value, gas_limit, deadline)"
        " VALUES ($1, $2, $3, $4, $5, $6, 'SIGNED', $7, $8, $9, $10, $11, $12, $13, $14, $15,"
        " $16, $17) RETURNING *",
        intent.rebalance_id,
        intent.chain_id,
        intent.signer,
        intent.nonce,
        intent.raw_tx,
        intent.tx_hash,
        intent.fencing_token,
        intent.max_fee_per_gas,
        intent.max_priority_fee_per_gas,
        replaces_id,
        intent.purpose,
        intent.call_index,
        intent.tx_to,
        intent.tx_data,
        intent.tx_value,
        intent.gas_limit,
        intent.deadline,
    )
    return _intent(row)


def _intent(row: Mapping[str, Any]) -> TxIntent:
    return TxIntent(
        id=row["id"],
        rebalance_id=row["rebalance_id"],
        chain_id=row["chain_id"],
        signer=row["signer"],
        nonce=row["nonce"],
        raw_tx=bytes(row["raw_tx"]),
        tx_hash=row["tx_hash"],
        status=row["status"],
        fencing_token=row["fencing_token"],
        max_fee_per_gas=_int_or_none(row["max_fee_per_gas"]),
        max_priority_fee_per_gas=_int_or_none(row["max_priority_fee_per_gas"]),
        replaces_id=row["replaces_id"],
        block_number=row["block_number"],
        gas_used=_int_or_none(row["gas_used"]),
        effective_gas_price=_int_or_none(row["effective_gas_price"]),
        error=row["error"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        purpose=row["purpose"],
        call_index=row["call_index"],
        tx_to=row["tx_to"],
        tx_data=None if row["tx_data"] is None else bytes(row["tx_data"]),
        tx_value=_int_or_none(row["tx_value"]),
        gas_limit=_int_or_none(row["gas_limit"]),
        deadline=row["deadline"],
    )


def _holding_json(h: HoldingValue) -> dict[str, Any]:
    return {
        "token_id": h.token_id,
        "amount": str(h.amount),
        "usd": str(h.usd),
        "weight": str(h.weight),
        "drift": None if h.drift is None else str(h.drift),
    }

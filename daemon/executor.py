"""The chain-executor actor: the only part of the process that signs.

It serves :class:`~daemon.messages.RebalanceRequest` messages with up to
``execution.max_in_flight`` workers. One request:

1. **Guard** (DESIGN.md §4.9), each refusal a SKIPPED row with its reason: prices older than
   ``prices.max_age``, a signer that cannot send (:meth:`SignerTransactions.blocked`), another
   attempt of the portfolio in flight, or a swap of the portfolio mined after the block the
   plan's balances were read at — the last two decided by PostgreSQL when the PENDING row is
   inserted, so no actor restart, pause or edit can produce a second trade.
2. **Plan the transactions**: fresh quotes → price-impact cap → ``amountOutMin`` from the
   slippage tolerance → deadline from chain time → the oracle guard's bound at the worst case
   the router allows (every swap paid its ``amountOutMin``; a redemption the guard could revert
   is SKIPPED, never sent) → the calls of the execution mode; the number of transactions (and
   swaps) is recorded before the first intent.
3. **Send each call** through :class:`~daemon.transactions.SignerTransactions`, which records the
   intent before any broadcast and returns only once the nonce is provably consumed.
4. **Record the truth**: the row's status comes from the mined intents alone
   (:func:`~daemon.attempt.attempt_outcome`): SUCCESS only if every planned transaction was
   mined successfully, PARTIAL if some swap was, FAILED otherwise — the same function decides
   after a restart.

Recovery at start rebuilds every unsettled nonce of this (chain, signer) from ``tx_intent`` and
settles them in the background (the executor is ready at once, and new nonces go above them);
each PENDING attempt of this signer is finished when its nonces are. Rows of other signers are
never touched.

This module is the orchestration; planning is :mod:`daemon.planning`, what an attempt and its
outcome are is :mod:`daemon.attempt` (pure), recovery is :mod:`daemon.recovery`, and the nonce
lifecycle is :mod:`daemon.transactions`.
"""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from functools import partial
from typing import TYPE_CHECKING, Any, Final, NoReturn, Protocol

import attrs
import trio

from daemon import db as dbm
from daemon.attempt import (
    Prepared,
    RebalanceAborted,
    actual_outputs,
    attempt_outcome,
    error_text,
    own_intents,
    planned_leg,
    purpose,
)
from daemon.chain import ChainClient
from daemon.chain_errors import ChainError, Reverted
from daemon.delegation import Delegation, Execution
from daemon.drift import from_base_units
from daemon.executor_settings import ExecutorSettings
from daemon.executor_status import ExecutorStatus
from daemon.faults import Faults
from daemon.lease import InstanceIdentity, SignerLeaseHolder
from daemon.logs import get_logger
from daemon.messages import RebalanceOutcome, RebalanceRequest
from daemon.packing import PackMember, packed_call, predicted_gas, weights
from daemon.planning import ModeSource, Planner, TokenSource
from daemon.recovery import Recovery, revert_reason, until_stored
from daemon.signer import TxSigner
from daemon.transactions import SignerTransactions
from daemon.transactions_io import ChainNode, Node
from daemon.transactions_values import (
    FeeAboveCeiling,
    LifecycleSettings,
    NonceSlot,
    Settled,
    SignerBlocked,
    TxPlan,
)
from daemon.txbuild import Call, DelegationMode
from daemon.uniswap import NoRoute, UniswapV2

if TYPE_CHECKING:
    from daemon.alerts import Alerter
    from daemon.live_config import ConfigSource

GAS_LIMIT_MARGIN: Final = Decimal("1.25")
"""Estimated gas × this: estimates are exact for the state they ran on, blocks move on."""
GAS_HISTORY: Final = 20
GAS_HISTORY_MIN: Final = 3
"""Rebalances of a kind seen before their median serves as the expected gas cost."""
WATCH_SECONDS: Final = 1.0
"""How often liveness (stuck transactions, a blocked signer) is re-evaluated."""
PACK_DRAIN: Final = 64
"""Most requests one worker takes at once when packing (the gas bound splits them further)."""
PREPARE_AT_ONCE: Final = 8
"""Attempts planned at the same time. Planning is mostly CPU (quotes, the guard's bound, ABI
encoding): a thousand planned at once all finish together, late, and the first pack waits for
the last plan; a few at a time finish in order and packs stream out behind them."""
PACK_WAIT: Final = 0.5
"""Seconds a pack waits for more ready attempts before it goes out (a fraction of a block)."""
LEASE_WAIT_EXTEND: Final = 30.0
"""Seconds of start-up time asked of systemd at each lease wait (a standby is not stuck)."""


def utc_now() -> datetime:
    return datetime.now(UTC)


def _packable(step: _Ready) -> bool:
    """Delegation mode with its one ``redeemDelegations`` call: its executions can join others'."""
    return isinstance(step.prepared.mode, DelegationMode) and len(step.calls) == 1


def _pack_budget(settings: ExecutorSettings) -> int:
    """Predicted gas a pack may hold: its signed limit (estimate × margin) stays in the bound."""
    return int(Decimal(settings.pack_max_gas) / GAS_LIMIT_MARGIN)


def _redemptions(step: _Ready) -> list[tuple[Delegation, Execution]]:
    mode = step.prepared.mode
    assert isinstance(mode, DelegationMode)
    return mode.redemptions(step.prepared.swap_legs, step.prepared.allowances)


class OutcomeListener(Protocol):
    """Hears every finished attempt, live or recovered (implemented by
    :class:`daemon.portfolio_supervisor.PortfolioSupervisor`: cooldown, backoff, metrics)."""

    def rebalance_finished(
        self, portfolio_id: int, portfolio: str, result: dbm.FinishedAttempt
    ) -> None: ...


class StartupTimeout(Protocol):
    """Told while the executor waits for the signer lease (:class:`daemon.systemd.Notifier`)."""

    def extend_timeout(self, seconds: float) -> bool: ...


@attrs.frozen
class _Sent:
    """What the calls of an attempt came to: each settled nonce, and why sending stopped."""

    settled: list[Settled]
    stopped: str | None


@attrs.define(eq=False)
class _Ready:
    """An attempt with its PENDING row and its stored plan, about to send."""

    request: RebalanceRequest
    rebalance_id: int
    started: float
    log: Any
    settings: ExecutorSettings
    prepared: Prepared = attrs.field(init=False)
    calls: list[Call] = attrs.field(init=False)
    purposes: list[dbm.IntentPurpose] = attrs.field(init=False)


@attrs.frozen(eq=False)
class _Candidate:
    """A ready attempt that can join a pack: its place in the batch and its executions."""

    index: int
    step: _Ready
    part: PackMember


@attrs.define(eq=False)
class Executor:
    """Owns the signer. Run with ``await nursery.start(executor.run, receive)``."""

    chain: ChainClient
    uniswap: UniswapV2
    signer: TxSigner
    db: dbm.Database
    tokens: TokenSource
    """Registered tokens by symbol (addresses and decimals for the legs)."""
    modes: ModeSource
    """The execution mode of a request's portfolio, and whether its delegations are usable."""
    config: ConfigSource
    """Read afresh on every use (:meth:`ExecutorSettings.from_config`)."""
    alerts: Alerter
    outcomes: OutcomeListener
    """Hears every finished attempt, live or recovered (cooldown, backoff, metrics)."""
    max_in_flight: int = 1
    now: Callable[[], datetime] = utc_now
    """Wall clock of price ages."""
    identity: InstanceIdentity = attrs.Factory(InstanceIdentity.current)
    startup: StartupTimeout | None = None
    """Told while waiting for the signer lease (a standby tells systemd it is not stuck)."""
    faults: Faults = attrs.Factory(Faults)
    """Test hook: raises (or kills the process) at named points (see :mod:`daemon.faults`)."""
    node: Node | None = None
    """The lifecycle's view of the chain (default: JSON-RPC through ``chain``)."""
    chain_recheck: float = 15.0
    """Seconds between chain-id checks while no nonce is in flight."""
    status: ExecutorStatus = attrs.field(init=False)
    transactions: SignerTransactions = attrs.field(init=False)
    _log: Any = attrs.field(init=False)
    _planner: Planner = attrs.field(init=False)
    _recent_gas: dict[tuple[int, int], deque[Decimal]] = attrs.field(init=False, factory=dict)
    _alerted_stuck: set[int] = attrs.field(init=False, factory=set)
    _alerted_chain: str | None = attrs.field(init=False, default=None)
    _chain_checked_at: float = attrs.field(init=False, default=float("-inf"))
    in_flight: set[int] = attrs.field(init=False, factory=set)
    """Portfolio ids with an attempt being carried out or recovered."""
    _preparing: trio.CapacityLimiter = attrs.field(
        init=False, factory=lambda: trio.CapacityLimiter(PREPARE_AT_ONCE)
    )

    def __attrs_post_init__(self) -> None:
        self.status = ExecutorStatus(signer=self.signer.address)
        self.transactions = SignerTransactions(
            node=self.node or ChainNode(self.chain),
            store=self.db,
            signer=self.signer,
            settings=self._lifecycle,
            alert=self._alert,
            fault=self.faults.check,
        )
        self._log = get_logger(actor="executor", signer=self.signer.address)
        self._planner = Planner(self.chain, self.uniswap, self.tokens, self.modes, self._log)

    @property
    def chain_id(self) -> int:
        return self.transactions.chain_id

    def settings(self) -> ExecutorSettings:
        """The settings in force now."""
        return ExecutorSettings.from_config(self.config.current)

    def signer_blocked(self) -> str | None:
        """Why no new transaction can be sent now (the portfolio actors ask before a request)."""
        return self.transactions.blocked()

    def _lifecycle(self) -> LifecycleSettings:
        return self.settings().lifecycle

    def _alert(self, kind: str, fields: Mapping[str, object]) -> None:
        self.alerts.fire(kind, fields)

    def _lease_waiting(self) -> None:
        if self.startup is not None:
            self.startup.extend_timeout(LEASE_WAIT_EXTEND)

    async def run(
        self,
        requests: trio.MemoryReceiveChannel[RebalanceRequest],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> NoReturn:
        """Take the signer's lease, start recovery, then serve requests until cancelled."""
        lease_holder = SignerLeaseHolder(
            db=self.db,
            chain_id=self.chain_id,
            signer=self.signer.address,
            identity=self.identity,
            on_waiting=self._lease_waiting,
        )
        lease = await lease_holder.acquire()
        self.transactions.fencing_token = lease.fencing_token
        self.status.lease_held = True
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(lease_holder.keep, lease)
                await self.recover(nursery)
                nursery.start_soon(self._watch)
                self.status.last_loop_at = trio.current_time()
                self._log.info(
                    "executor_ready",
                    fencing_token=lease.fencing_token,
                    recovering=self.status.recovering,
                    workers=self.max_in_flight,
                )
                task_status.started()
                async with requests, trio.open_nursery() as workers:
                    for _ in range(self.max_in_flight):
                        workers.start_soon(self._serve, requests)
                raise RuntimeError("the executor's request channel was closed")
        finally:
            self.status.lease_held = False
            await lease_holder.release(lease)

    async def recover(self, nursery: trio.Nursery) -> None:
        """Rebuild every unsettled nonce of this signer and settle them in ``nursery``; finish
        each PENDING attempt of this (chain, signer) once its nonces are settled (see
        :mod:`daemon.recovery`)."""
        recovery = Recovery(
            transactions=self.transactions,
            db=self.db,
            chain=self.chain,
            status=self.status,
            in_flight=self.in_flight,
            ends=self,
            faults=self.faults,
            log=self._log,
        )
        await recovery.start(nursery)

    async def _serve(self, requests: trio.MemoryReceiveChannel[RebalanceRequest]) -> None:
        async for request in requests:
            batch = [request]
            if self.settings().pack_max_gas > 0:
                # Requests already waiting go with this one: they may share a transaction.
                while len(batch) < PACK_DRAIN:
                    try:
                        batch.append(requests.receive_nowait())
                    except trio.WouldBlock:
                        break
            if len(batch) == 1:
                await self.handle(request)
            else:
                await self.handle_batch(batch)
            self.status.last_loop_at = trio.current_time()

    async def _watch(self) -> NoReturn:
        """Liveness: publish the lifecycle's state for health and alert a stuck nonce once."""
        while True:
            tx = self.transactions
            now = trio.current_time()
            # With nonces in flight the settle loops ask the chain id on every observation;
            # idle, it is asked here, so a node that fails over to another chain stops trading
            # before anything is planned on its balances and prices.
            if not tx.slots and (
                tx.wrong_chain is not None or now - self._chain_checked_at >= self.chain_recheck
            ):
                self._chain_checked_at = now
                await tx.recheck_chain()
            self._alert_wrong_chain(tx.wrong_chain)
            self.status.next_nonce = tx.next_nonce
            self.status.unsettled = len(tx.slots)
            self.status.blocked = tx.blocked()
            oldest = tx.oldest_open_at()
            stuck_after = self.settings().stuck_after
            self.status.stuck_for = (
                now - oldest if oldest is not None and now - oldest > stuck_after else None
            )
            for nonce, slot in tx.slots.items():
                if now - slot.opened_at > stuck_after and nonce not in self._alerted_stuck:
                    self._alerted_stuck.add(nonce)
                    self.alerts.fire(
                        "TX_STUCK",
                        {
                            "signer": self.signer.address,
                            "nonce": nonce,
                            "seconds": int(now - slot.opened_at),
                            "problem": slot.unsendable or slot.trouble or "not mined",
                        },
                    )
            self._alerted_stuck &= set(tx.slots)
            # The loop turns while the settle loops do (or there is nothing to settle).
            if not tx.slots or (tx.progress_at is not None and tx.progress_at >= now - 60):
                self.status.last_loop_at = max(self.status.last_loop_at or now, now)
            await trio.sleep(WATCH_SECONDS)

    def _alert_wrong_chain(self, wrong_chain: str | None) -> None:
        if wrong_chain is None:
            if self._alerted_chain is not None:
                self._log.info("chain_id_restored", chain_id=self.chain_id)
            self._alerted_chain = None
        elif self._alerted_chain is None:
            self._alerted_chain = wrong_chain
            self._log.error("chain_id_mismatch", problem=wrong_chain)
            self.alerts.fire(
                "CHAIN_MISMATCH", {"signer": self.signer.address, "problem": wrong_chain}
            )

    # --- one request ---------------------------------------------------------------------

    async def handle(self, request: RebalanceRequest) -> RebalanceOutcome:
        """Carry out one request; always ends its row and always answers (if anyone listens)."""
        log, started, mine = self._begin(request)
        try:
            rebalance_id, result = await self._carry_out(request, started, log)
        finally:
            self._end(request, mine)
        return self._conclude(request, rebalance_id, result, log)

    async def handle_batch(self, requests: Sequence[RebalanceRequest]) -> None:
        """Carry out several requests at once, packing the calls of those that can share a
        transaction (:mod:`daemon.packing`); each still ends its own row and gets its answer.
        Attempts are sent as they become ready, not once the whole batch is planned."""
        begun = [self._begin(request) for request in requests]
        done: dict[int, tuple[int | None, dbm.FinishedAttempt]] = {}
        ready_out, ready_in = trio.open_memory_channel[tuple[int, _Ready]](len(requests))
        try:

            async def prepare(index: int) -> None:
                log, started, _ = begun[index]
                step = await self._prepare(requests[index], started, log)
                if isinstance(step, _Ready):
                    ready_out.send_nowait((index, step))  # room for every request
                else:
                    done[index] = step

            async def prepare_all() -> None:
                async with ready_out, trio.open_nursery() as preparing:
                    for index in range(len(requests)):
                        preparing.start_soon(prepare, index)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(prepare_all)
                await self._pack_as_ready(ready_in, done, nursery)
        finally:
            for request, (_, _, mine) in zip(requests, begun, strict=True):
                self._end(request, mine)
        for index, request in enumerate(requests):
            rebalance_id, result = done[index]
            self._conclude(request, rebalance_id, result, begun[index][0])

    def _begin(self, request: RebalanceRequest) -> tuple[Any, float, bool]:
        self.status.begin()
        mine = request.portfolio_id not in self.in_flight
        self.in_flight.add(request.portfolio_id)
        return self._log.bind(portfolio=request.portfolio_name), trio.current_time(), mine

    def _end(self, request: RebalanceRequest, mine: bool) -> None:
        self.status.end()
        if mine:
            self.in_flight.discard(request.portfolio_id)

    def _conclude(
        self,
        request: RebalanceRequest,
        rebalance_id: int | None,
        result: dbm.FinishedAttempt,
        log: Any,
    ) -> RebalanceOutcome:
        self.status.handled += 1
        self.finished(request.portfolio_id, request.portfolio_name, rebalance_id, result, log)
        if result.status == "SUCCESS" and result.gas_cost_usd is not None:
            kind = (len(result.expected_outputs or ()), len(result.swap_path or ()))
            self._check_gas_cost(request.portfolio_name, kind, result.gas_cost_usd)
        outcome = RebalanceOutcome(
            rebalance_id=rebalance_id,
            status=result.status,
            tx_hash=result.transaction_hash,
            error=result.error or result.skip_reason,
        )
        try:
            request.reply.send_nowait(outcome)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.WouldBlock):
            log.info("requester_gone", rebalance_id=rebalance_id)
        return outcome

    async def _carry_out(
        self, request: RebalanceRequest, started: float, log: Any
    ) -> tuple[int | None, dbm.FinishedAttempt]:
        """The attempt's row and outcome: refused (a SKIPPED row, if one can be written), or
        started as PENDING, attempted, and finished."""
        step = await self._prepare(request, started, log)
        if not isinstance(step, _Ready):
            return step
        return await self._send_and_finish(step)

    async def _send_and_finish(self, step: _Ready) -> tuple[int, dbm.FinishedAttempt]:
        """Send the attempt's own calls, then finish it from what was mined."""
        sent = await self._send(step.calls, step.purposes, step.rebalance_id, step.prepared)
        return await self._finish_sent(step, sent)

    async def _prepare(
        self, request: RebalanceRequest, started: float, log: Any
    ) -> _Ready | tuple[int | None, dbm.FinishedAttempt]:
        """Refuse, or start the PENDING row and plan the calls (stored before any is sent); an
        attempt that ends before sending anything is finished here."""
        async with self._preparing:
            return await self._prepare_now(request, started, log)

    async def _prepare_now(
        self, request: RebalanceRequest, started: float, log: Any
    ) -> _Ready | tuple[int | None, dbm.FinishedAttempt]:
        refusal = self._refusal(request)
        rebalance_id: int | None = None
        if refusal is None:
            rebalance_id, refusal = await self._start_row(request)
        if rebalance_id is None:
            assert refusal is not None
            return await self._record_skip(request, refusal, log)
        settings = self.settings()
        prepared = await self._plan(request, settings)
        step = _Ready(request, rebalance_id, started, log, settings)
        if isinstance(prepared, dbm.FinishedAttempt):
            return await self._finish_row(step, prepared)
        await self._store_plan(step, prepared)
        self.faults.check("after_plan")
        return step

    async def _store_plan(self, step: _Ready, prepared: Prepared) -> None:
        """The plan's calls, and their number, stored before the first intent."""
        calls = prepared.mode.calls(prepared.swap_legs, prepared.allowances)
        purposes = [purpose(call) for call in calls]
        rid = step.rebalance_id
        await until_stored(
            lambda: self.db.set_rebalance_plan(
                rid,
                planned_txs=len(calls),
                planned_swap_txs=purposes.count("swap"),
                swap_path=prepared.swap_path,
                expected_outputs=prepared.expected,
            ),
            step.log,
            self.status,
        )
        step.prepared, step.calls, step.purposes = prepared, calls, purposes

    async def _finish_sent(
        self, step: _Ready, sent: _Sent | dbm.FinishedAttempt
    ) -> tuple[int, dbm.FinishedAttempt]:
        """The outcome from the attempt's mined intents (or the one decided before sending)."""
        if isinstance(sent, dbm.FinishedAttempt):
            return await self._finish_row(step, sent)
        rid = step.rebalance_id
        intents = await until_stored(
            lambda: self.db.intents_for_rebalance(rid), step.log, self.status
        )
        result = attempt_outcome(
            len(step.calls),
            step.purposes.count("swap"),
            own_intents(intents, rid),
            stopped=sent.stopped,
        )
        result = await self._outcome(step.request, step.settings, step.prepared, sent, result)
        return await self._finish_row(step, result)

    async def _finish_row(
        self, step: _Ready, result: dbm.FinishedAttempt
    ) -> tuple[int, dbm.FinishedAttempt]:
        started = min(step.started, step.request.requested_at)
        elapsed_ms = int((trio.current_time() - started) * 1000)
        result = attrs.evolve(result, execution_time_ms=elapsed_ms)
        self.faults.check("after_mined")
        rid = step.rebalance_id
        await until_stored(lambda: self.db.finish_rebalance(rid, result), step.log, self.status)
        return rid, result

    async def _start_row(self, request: RebalanceRequest) -> tuple[int | None, str | None]:
        """The attempt's PENDING row, or why PostgreSQL refused it (another attempt of the
        portfolio in flight, a trade mined after the plan's balances, an outage)."""
        try:
            rebalance_id = await self.db.start_rebalance(
                request.portfolio_id,
                drift_percentage=request.plan.max_drift,
                token_amounts=[planned_leg(leg) for leg in request.plan.legs],
                chain_id=self.chain_id,
                signer=self.signer.address,
                balances_block=request.balances_block,
            )
        except dbm.RebalanceRefused as exc:
            return None, f"No trade: {exc.reason}"
        except dbm.DatabaseError as exc:
            # Without its PENDING row nothing may be signed: no trade, and no row either.
            return None, f"No trade: the database is unavailable: {exc}"
        return rebalance_id, None

    async def _record_skip(
        self, request: RebalanceRequest, refusal: str, log: Any
    ) -> tuple[int | None, dbm.FinishedAttempt]:
        result = dbm.FinishedAttempt(status="SKIPPED", skip_reason=refusal)
        try:
            row = await self.db.record_rebalance(
                request.portfolio_id, result, drift_percentage=request.plan.max_drift
            )
        except dbm.DatabaseError as exc:
            log.warning("skip_not_recorded", reason=refusal, error=str(exc))
            return None, result
        return row.id, result

    def _refusal(self, request: RebalanceRequest) -> str | None:
        """Why the request must not trade, decided before anything is written."""
        settings = self.settings()
        if request.prices_observed_at is not None:
            age = (self.now() - request.prices_observed_at).total_seconds()
            if age > settings.max_age:
                return (
                    f"No trade: the plan's prices are {age:.0f} s old "
                    f"(max_age {settings.max_age:.0f} s)"
                )
        unusable = self.modes.delegation_problem(request.portfolio_id)
        if unusable is not None:
            return unusable
        blocked = self.transactions.blocked()
        if blocked is not None and not settings.dry_run:
            return f"No trade: the signer cannot send: {blocked}"
        return None

    def finished(
        self,
        portfolio_id: int,
        portfolio: str,
        rebalance_id: int | None,
        result: dbm.FinishedAttempt,
        log: Any,
    ) -> None:
        """Every finished attempt, live or recovered: logged, alerted if it failed or traded
        only in part, and reported to the portfolio supervisor (cooldown, backoff, metrics)."""
        log.info(
            "rebalance_logged",
            rebalance_id=rebalance_id,
            status=result.status,
            tx_hash=result.transaction_hash,
            gas_used=result.gas_used,
            gas_cost_usd=None if result.gas_cost_usd is None else str(result.gas_cost_usd),
            error=result.error,
            skip_reason=result.skip_reason,
        )
        if result.status in ("FAILED", "PARTIAL"):
            self.alerts.fire(
                f"REBALANCE_{result.status}", {"portfolio": portfolio, "error": result.error}
            )
        self.outcomes.rebalance_finished(portfolio_id, portfolio, result)

    def _check_gas_cost(self, portfolio: str, kind: tuple[int, int], cost: Decimal) -> None:
        """HIGH_GAS_COST when ``cost`` exceeds the factor × the expected cost of this kind of
        transaction (configured, else the median of recent ones)."""
        settings = self.settings()
        recent = self._recent_gas.setdefault(kind, deque(maxlen=GAS_HISTORY))
        expected: Decimal | None = settings.expected_gas_cost_usd or None
        if expected is None and len(recent) >= GAS_HISTORY_MIN:
            expected = statistics.median(recent)
        if expected is not None and cost > settings.gas_cost_factor * expected:
            self.alerts.fire(
                "HIGH_GAS_COST",
                {"portfolio": portfolio, "gas_cost_usd": str(cost), "expected": str(expected)},
            )
        recent.append(cost)

    async def _plan(
        self, request: RebalanceRequest, settings: ExecutorSettings
    ) -> Prepared | dbm.FinishedAttempt:
        """The legs to send, or the outcome of an attempt that sends nothing: FAILED (no
        quote), SKIPPED (every leg rejected, or the oracle guard could revert it), DRY_RUN."""
        try:
            prepared = await self._planner.prepare(request, settings)
        except (RebalanceAborted, ChainError, NoRoute, ValueError, KeyError) as exc:
            return dbm.FinishedAttempt(status="FAILED", error=error_text(exc))
        if not prepared.swap_legs:
            return dbm.FinishedAttempt(
                status="SKIPPED",
                skip_reason="; ".join(prepared.rejected) or "no leg to send",
                expected_outputs=prepared.expected,
            )
        try:
            refusal = await self._planner.guard_refusal(prepared)
        except ChainError as exc:
            return dbm.FinishedAttempt(
                status="FAILED", error=f"the oracle guard's bound could not be checked: {exc}"
            )
        if refusal is not None:
            # Nothing is sent: the redemption could revert on chain, and a revert costs gas.
            return dbm.FinishedAttempt(
                status="SKIPPED",
                skip_reason=f"No trade: the oracle guard could revert it: {refusal}",
                expected_outputs=prepared.expected,
            )
        if settings.dry_run:
            return dbm.FinishedAttempt(
                status="DRY_RUN",
                swap_path=prepared.swap_path,
                expected_outputs=prepared.expected,
                error="; ".join(prepared.rejected) or None,
            )
        return prepared

    async def _send(
        self,
        calls: Sequence[Call],
        purposes: Sequence[dbm.IntentPurpose],
        rebalance_id: int,
        prepared: Prepared,
    ) -> _Sent | dbm.FinishedAttempt:
        """Send the calls in order, each once the previous one is mined successfully. SKIPPED
        if the signer cannot send the first (nothing signed: a trade that did not start)."""
        settled: list[Settled] = []
        stopped: str | None = None
        for index, (call, purpose_of) in enumerate(zip(calls, purposes, strict=True)):
            try:
                slot = await self._submit(call, purpose_of, index, rebalance_id, prepared.deadline)
            except SignerBlocked as exc:
                if index == 0:
                    # Nothing signed: not an attempt that failed, a trade that did not start.
                    return dbm.FinishedAttempt(
                        status="SKIPPED",
                        skip_reason=f"No trade: the signer cannot send: {exc}",
                        expected_outputs=prepared.expected,
                    )
                stopped = error_text(exc)
                break
            except (RebalanceAborted, FeeAboveCeiling, ChainError) as exc:
                stopped = error_text(exc)
                break
            except dbm.DatabaseError as exc:
                # The intent was not recorded (outage, or the lease's fencing token was refused),
                # so this transaction was never sent.
                stopped = f"intent not recorded, transaction not sent: {exc}"
                break
            done = await self.transactions.settle(slot)
            settled.append(done)
            if done.outcome != "mined" or done.receipt is None or not done.receipt.succeeded:
                break
        return _Sent(settled, stopped)

    async def _outcome(
        self,
        request: RebalanceRequest,
        settings: ExecutorSettings,
        prepared: Prepared,
        sent: _Sent,
        result: dbm.FinishedAttempt,
    ) -> dbm.FinishedAttempt:
        """The outcome from the mined intents, with gas in USD, what each leg received and the
        reason of a revert."""
        receipts = [
            s.receipt for s in sent.settled if s.receipt is not None and s.outcome == "mined"
        ]
        native_usd = request.prices.get(settings.gas_price_symbol)
        if result.gas_cost_wei is not None and native_usd is not None:
            result = attrs.evolve(
                result, gas_cost_usd=from_base_units(result.gas_cost_wei, 18) * native_usd
            )
        actual = actual_outputs(receipts, prepared.swap_legs, prepared.mode.holder)
        for entry, amount in zip(prepared.expected, actual, strict=True):
            entry["actual_out"] = None if amount is None else str(amount)
        reverted = next((r for r in receipts if not r.succeeded), None)
        error = result.error
        if reverted is not None and error is not None:
            reason = await revert_reason(self.chain, reverted.transaction_hash)
            error = error.replace("transaction reverted", f"transaction reverted: {reason}", 1)
        extra = "; ".join(prepared.rejected) or None
        if result.status == "SUCCESS":
            error = extra
        return attrs.evolve(
            result,
            error=error,
            swap_path=prepared.swap_path,
            expected_outputs=prepared.expected,
            actual_outputs=[None if a is None else str(a) for a in actual]
            if result.status == "SUCCESS"
            else None,
        )

    # --- several attempts in one transaction (daemon.packing) -------------------------------

    async def _pack_as_ready(
        self,
        ready: trio.MemoryReceiveChannel[tuple[int, _Ready]],
        done: dict[int, tuple[int | None, dbm.FinishedAttempt]],
        nursery: trio.Nursery,
    ) -> None:
        """Group attempts as they become ready; a group goes out when the next one would pass
        ``pack_max_gas``, when it has waited :data:`PACK_WAIT`, or when the batch is planned.
        Attempts that cannot be packed (not one ``redeemDelegations`` call) go alone."""
        group: list[_Candidate] = []
        predicted = 0
        opened_at = 0.0
        async with ready:
            while True:
                wait = opened_at + PACK_WAIT - trio.current_time() if group else float("inf")
                with trio.move_on_after(max(wait, 0.0)):
                    try:
                        index, step = await ready.receive()
                    except trio.EndOfChannel:
                        break
                    if not _packable(step):
                        nursery.start_soon(self._alone, index, step, done)
                        continue
                    part = PackMember(step.rebalance_id, tuple(_redemptions(step)))
                    gas = predicted_gas(len(part.redemptions))
                    if group and predicted + gas > _pack_budget(step.settings):
                        nursery.start_soon(self._send_group, group, done)
                        group, predicted = [], 0
                    if not group:
                        opened_at = trio.current_time()
                    group.append(_Candidate(index, step, part))
                    predicted += gas
                    continue
                nursery.start_soon(self._send_group, group, done)
                group, predicted = [], 0
        if group:
            nursery.start_soon(self._send_group, group, done)

    async def _alone(
        self, index: int, step: _Ready, done: dict[int, tuple[int | None, dbm.FinishedAttempt]]
    ) -> None:
        done[index] = await self._send_and_finish(step)

    async def _send_group(
        self,
        group: Sequence[_Candidate],
        done: dict[int, tuple[int | None, dbm.FinishedAttempt]],
        *,
        screened: bool = False,
    ) -> None:
        """One pack of ``group`` if its estimate allows: over the budget it is split in two; if
        it would revert, the members whose own call would revert go alone (and are refused
        there) and the others are tried once more as a pack (``screened``), else alone."""
        if len(group) == 1:
            await self._alone(group[0].index, group[0].step, done)
            return
        settings = group[0].step.settings
        call = packed_call(group[0].step.calls[0].to, [c.part for c in group])
        try:
            estimate: int | None = await self.chain.estimate_gas(
                call.to, call.data, sender=self.signer.address, value=0
            )
        except ChainError as exc:
            self._log.info("pack_not_sent", reason=str(exc), attempts=len(group))
            estimate = None
        async with trio.open_nursery() as nursery:
            alone: Sequence[_Candidate] = ()
            if estimate is not None and estimate * GAS_LIMIT_MARGIN > settings.pack_max_gas:
                half = len(group) // 2
                nursery.start_soon(self._send_group, group[:half], done)
                nursery.start_soon(self._send_group, group[half:], done)
            elif estimate is not None:
                if not await self._send_pack(call, group, estimate, done):
                    alone = group
            elif screened:
                alone = group
            else:
                fine = await self._would_not_revert(group)
                alone = [c for c in group if c not in fine]
                if fine:
                    nursery.start_soon(partial(self._send_group, fine, done, screened=True))
            for candidate in alone:
                nursery.start_soon(self._alone, candidate.index, candidate.step, done)

    async def _would_not_revert(self, group: Sequence[_Candidate]) -> list[_Candidate]:
        """The members whose own call's estimate succeeds (only asked when a pack would
        revert: each estimate costs the node a full simulation)."""
        fine: set[int] = set()

        async def check(candidate: _Candidate) -> None:
            call = candidate.step.calls[0]
            try:
                await self.chain.estimate_gas(
                    call.to, call.data, sender=self.signer.address, value=call.value
                )
            except ChainError:
                return
            fine.add(candidate.index)

        async with trio.open_nursery() as nursery:
            for candidate in group:
                nursery.start_soon(check, candidate)
        return [candidate for candidate in group if candidate.index in fine]

    async def _send_pack(
        self,
        call: Call,
        group: Sequence[_Candidate],
        estimate: int,
        done: dict[int, tuple[int | None, dbm.FinishedAttempt]],
    ) -> bool:
        """Send ``call``, the pack of ``group``, and finish its attempts. False if nothing was
        signed (it could not be signed or recorded): the caller sends each attempt alone."""
        ids = tuple(candidate.step.rebalance_id for candidate in group)
        log = self._log.bind(pack=list(ids))
        plan = TxPlan(
            to=call.to,
            data=call.data,
            gas=int(Decimal(estimate) * GAS_LIMIT_MARGIN) + 1,
            purpose="swap",
            deadline=min(candidate.step.prepared.deadline for candidate in group),
            rebalance_id=ids[0],
            call_index=0,
            packed_rebalance_ids=ids,
            packed_weights=weights([candidate.part for candidate in group]),
        )
        try:
            slot = await self.transactions.submit(plan)
        except (SignerBlocked, FeeAboveCeiling, ChainError, dbm.DatabaseError) as exc:
            # Nothing signed, or an intent not recorded (so never sent): each goes alone.
            log.info("pack_not_sent", reason=str(exc))
            return False
        log.info("pack_sent", nonce=slot.nonce, gas_estimate=estimate, attempts=len(ids))
        settled = await self.transactions.settle(slot)
        reverted = (
            settled.outcome == "mined"
            and settled.receipt is not None
            and not settled.receipt.succeeded
        )

        async def finish(index: int, step: _Ready) -> None:
            if reverted:
                # Nothing of the pack executed: each attempt trades alone, at fresh quotes.
                sent = await self._resend_alone(step, settled)
            else:
                sent = _Sent([settled], None)
            done[index] = await self._finish_sent(step, sent)

        async with trio.open_nursery() as nursery:
            for candidate in group:
                nursery.start_soon(finish, candidate.index, candidate.step)
        return True

    async def _resend_alone(self, step: _Ready, reverted: Settled) -> _Sent:
        """After the attempt's pack reverted when mined: plan it again and send it alone (its
        one trade is still to come: the reverted transaction executed nothing)."""
        step.log.info(
            "pack_reverted_resend_alone", tx_hash=reverted.intent and reverted.intent.tx_hash
        )
        prepared = await self._plan(step.request, step.settings)
        if isinstance(prepared, dbm.FinishedAttempt):
            why = prepared.skip_reason or prepared.error or prepared.status
            return _Sent([reverted], f"not sent alone after the pack reverted: {why}")
        await self._store_plan(step, prepared)
        sent = await self._send(step.calls, step.purposes, step.rebalance_id, prepared)
        if isinstance(sent, dbm.FinishedAttempt):
            why = sent.skip_reason or sent.error or sent.status
            return _Sent([reverted], f"not sent alone after the pack reverted: {why}")
        return _Sent([reverted, *sent.settled], sent.stopped)

    async def _submit(
        self, call: Call, purpose: dbm.IntentPurpose, index: int, rebalance_id: int, deadline: int
    ) -> NonceSlot:
        """Estimate, then sign, record and broadcast one call (a call that would revert is
        not signed)."""
        try:
            estimate = await self.chain.estimate_gas(
                call.to, call.data, sender=self.signer.address, value=call.value
            )
        except Reverted as exc:
            raise RebalanceAborted(f"would revert: {exc.reason}") from None
        plan = TxPlan(
            to=call.to,
            data=call.data,
            value=call.value,
            gas=int(Decimal(estimate) * GAS_LIMIT_MARGIN) + 1,
            purpose=purpose,
            deadline=deadline,
            rebalance_id=rebalance_id,
            call_index=index,
        )
        return await self.transactions.submit(plan)

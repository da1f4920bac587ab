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
   (:func:`attempt_outcome`): SUCCESS only if every planned transaction was mined successfully,
   PARTIAL if some swap was, FAILED otherwise — the same function decides after a restart.

Recovery at start rebuilds every unsettled nonce of this (chain, signer) from ``tx_intent`` and
settles them in the background (the executor is ready at once, and new nonces go above them);
each PENDING attempt of this signer is finished when its nonces are. Rows of other signers are
never touched.
"""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction
from typing import Any, Final, NoReturn

import attrs
import trio
from eth_utils.crypto import keccak

from daemon import db as dbm
from daemon.address import to_address
from daemon.backoff import Backoff
from daemon.chain import ChainClient, ChainError, Receipt, Reverted, TxSigner, encode_call
from daemon.drift import Leg, from_base_units
from daemon.guard import PlannedSwap, guard_refusal
from daemon.lease import InstanceIdentity, SignerLeaseHolder
from daemon.logs import get_logger
from daemon.messages import RebalanceOutcome, RebalanceRequest, Token
from daemon.transactions import (
    ChainNode,
    FeeAboveCeiling,
    LifecycleSettings,
    Node,
    NonceSlot,
    Settled,
    SignerBlocked,
    SignerTransactions,
    TxPlan,
)
from daemon.txbuild import Call, DelegationMode, ExecutionMode, SwapLeg
from daemon.uniswap import NoRoute, UniswapV2, deadline_from, mid_price

TRANSFER_TOPIC: Final = keccak(text="Transfer(address,address,uint256)")
GAS_LIMIT_MARGIN: Final = Decimal("1.25")
"""Estimated gas × this: estimates are exact for the state they ran on, blocks move on."""
GAS_HISTORY: Final = 20
GAS_HISTORY_MIN: Final = 3
"""Rebalances of a kind seen before their median serves as the expected gas cost."""
WATCH_SECONDS: Final = 1.0
"""How often liveness (stuck transactions, a blocked signer) is re-evaluated."""
STORE_RETRY_INITIAL: Final = 0.2
STORE_RETRY_MAX: Final = 10.0


def utc_now() -> datetime:
    return datetime.now(UTC)


class RebalanceAborted(Exception):
    """The attempt sends no (further) transaction; the message says why."""


@attrs.frozen
class ExecutorSettings:
    """The live-reloadable parameters of execution."""

    slippage: Decimal = Decimal("0.01")
    price_impact_cap: Decimal = Decimal("0.05")
    max_quote_deviation: Decimal = Decimal("0.03")
    dry_run: bool = False
    deadline_seconds: int = 300
    native_price_symbol: str = "WETH"
    gas_alert_factor: Decimal = Decimal(2)
    expected_gas_cost_usd: Decimal = Decimal(0)
    """0: expect the median of recent rebalances of the same kind."""
    max_price_age: float = 300.0
    stuck_after: float = 900.0
    lifecycle: LifecycleSettings = attrs.Factory(LifecycleSettings)


@attrs.define(eq=False)
class ExecutorStatus:
    """What health reports about the executor."""

    signer: str
    next_nonce: int | None = None
    pending: int = 0
    """Requests being carried out now."""
    handled: int = 0
    last_loop_at: float | None = None
    """trio.current_time() of the executor's last sign of life (liveness)."""
    unsettled: int = 0
    """Nonces signed and not yet provably consumed."""
    blocked: str | None = None
    """Why no new transaction can be sent now (e.g. the signer has no gas money)."""
    stuck_for: float | None = None
    """Seconds the oldest unsettled nonce has been open, once past ``stuck_after``."""
    recovering: int = 0
    """Attempts of a previous run still being settled."""
    idle: trio.Event = attrs.Factory(trio.Event)
    """Set while no request is in flight (a graceful stop waits on it)."""

    def __attrs_post_init__(self) -> None:
        self.idle.set()

    def begin(self) -> None:
        if self.pending == 0:
            self.idle = trio.Event()
        self.pending += 1

    def end(self) -> None:
        self.pending -= 1
        if self.pending == 0:
            self.idle.set()

    @property
    def degraded(self) -> str | None:
        """Why health should say the executor is not well, or None."""
        if self.blocked is not None:
            return f"signer blocked: {self.blocked}"
        if self.stuck_for is not None:
            return f"a transaction has been unsettled for {self.stuck_for:.0f} s"
        return None


@attrs.define(eq=False)
class Executor:
    """Owns the signer. Run with ``await nursery.start(executor.run, receive)``."""

    chain: ChainClient
    uniswap: UniswapV2
    signer: TxSigner
    db: dbm.Database
    tokens: Callable[[], Mapping[str, Token]]
    """Registered tokens by symbol (addresses and decimals for the legs)."""
    mode_for: Callable[[RebalanceRequest], ExecutionMode]
    """The execution mode of a request's portfolio (its delegations, or the wallet)."""
    settings: Callable[[], ExecutorSettings]
    max_in_flight: int = 1
    now: Callable[[], datetime] = utc_now
    """Wall clock of price ages."""
    identity: InstanceIdentity = attrs.Factory(InstanceIdentity.current)
    alert: Callable[[str, Mapping[str, object]], None] = lambda kind, fields: None
    on_finished: Callable[[int, str, dbm.RebalanceOutcome], None] = attrs.field(
        default=lambda portfolio_id, portfolio, result: None
    )
    """Hears every finished attempt, live or recovered (cooldown, backoff, metrics)."""
    on_waiting: Callable[[], None] = lambda: None
    """Called while waiting for the signer lease (a standby tells systemd it is not stuck)."""
    fault: Callable[[str], None] = lambda point: None
    """Test hook: raises (or kills the process) at named points (see :mod:`daemon.faults`)."""
    node: Node | None = None
    """The lifecycle's view of the chain (default: JSON-RPC through ``chain``)."""
    delegation_problem: Callable[[int], str | None] = lambda portfolio_id: None
    """Why a portfolio's delegations cannot be redeemed now (expired), or None."""
    chain_recheck: float = 15.0
    """Seconds between chain-id checks while no nonce is in flight."""
    status: ExecutorStatus = attrs.field(init=False)
    transactions: SignerTransactions = attrs.field(init=False)
    _log: Any = attrs.field(init=False)
    _recent_gas: dict[tuple[int, int], deque[Decimal]] = attrs.field(init=False, factory=dict)
    _alerted_stuck: set[int] = attrs.field(init=False, factory=set)
    _alerted_chain: str | None = attrs.field(init=False, default=None)
    _chain_checked_at: float = attrs.field(init=False, default=float("-inf"))
    in_flight: set[int] = attrs.field(init=False, factory=set)
    """Portfolio ids with an attempt being carried out or recovered."""

    def __attrs_post_init__(self) -> None:
        self.status = ExecutorStatus(signer=self.signer.address)
        self.transactions = SignerTransactions(
            node=self.node or ChainNode(self.chain),
            store=self.db,
            signer=self.signer,
            settings=lambda: self.settings().lifecycle,
            alert=lambda kind, fields: self.alert(kind, fields),
            fault=lambda point: self.fault(point),
        )
        self._log = get_logger(actor="executor", signer=self.signer.address)

    @property
    def chain_id(self) -> int:
        return self.transactions.chain_id

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
            on_waiting=self.on_waiting,
        )
        lease = await lease_holder.acquire()
        self.transactions.fencing_token = lease.fencing_token
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
            await lease_holder.release(lease)

    async def _serve(self, requests: trio.MemoryReceiveChannel[RebalanceRequest]) -> None:
        async for request in requests:
            await self.handle(request)
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
                    self.alert(
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
            self.alert("CHAIN_MISMATCH", {"signer": self.signer.address, "problem": wrong_chain})

    # --- one request ---------------------------------------------------------------------

    async def handle(self, request: RebalanceRequest) -> RebalanceOutcome:
        """Carry out one request; always ends its row and always answers (if anyone listens)."""
        log = self._log.bind(portfolio=request.portfolio_name)
        started = trio.current_time()
        self.status.begin()
        mine = request.portfolio_id not in self.in_flight
        self.in_flight.add(request.portfolio_id)
        try:
            refusal = self._refusal(request)
            rebalance_id: int | None = None
            if refusal is None:
                try:
                    rebalance_id = await self.db.start_rebalance(
                        request.portfolio_id,
                        drift_percentage=request.plan.max_drift,
                        token_amounts=[_planned_leg(leg) for leg in request.plan.legs],
                        chain_id=self.chain_id,
                        signer=self.signer.address,
                        balances_block=request.balances_block,
                    )
                except dbm.RebalanceRefused as exc:
                    refusal = f"No trade: {exc.reason}"
                except dbm.DatabaseError as exc:
                    # Without its PENDING row nothing may be signed: no trade, and no row either.
                    refusal = f"No trade: the database is unavailable: {exc}"
            if rebalance_id is None:
                assert refusal is not None
                result = dbm.RebalanceOutcome(status="SKIPPED", skip_reason=refusal)
                try:
                    row = await self.db.record_rebalance(
                        request.portfolio_id, result, drift_percentage=request.plan.max_drift
                    )
                    rebalance_id = row.id
                except dbm.DatabaseError as exc:
                    log.warning("skip_not_recorded", reason=refusal, error=str(exc))
            else:
                result = await self._attempt(request, rebalance_id, log)
                elapsed_ms = int((trio.current_time() - min(started, request.requested_at)) * 1000)
                result = attrs.evolve(result, execution_time_ms=elapsed_ms)
                self.fault("after_mined")
                rid = rebalance_id
                await self._until_stored(lambda: self.db.finish_rebalance(rid, result), log)
        finally:
            self.status.end()
            if mine:
                self.in_flight.discard(request.portfolio_id)
        self.status.handled += 1
        self._finished(request.portfolio_id, request.portfolio_name, rebalance_id, result, log)
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

    def _refusal(self, request: RebalanceRequest) -> str | None:
        """Why the request must not trade, decided before anything is written."""
        settings = self.settings()
        if request.prices_observed_at is not None:
            age = (self.now() - request.prices_observed_at).total_seconds()
            if age > settings.max_price_age:
                return (
                    f"No trade: the plan's prices are {age:.0f} s old "
                    f"(max_age {settings.max_price_age:.0f} s)"
                )
        unusable = self.delegation_problem(request.portfolio_id)
        if unusable is not None:
            return unusable
        blocked = self.transactions.blocked()
        if blocked is not None and not settings.dry_run:
            return f"No trade: the signer cannot send: {blocked}"
        return None

    def _finished(
        self,
        portfolio_id: int,
        portfolio: str,
        rebalance_id: int | None,
        result: dbm.RebalanceOutcome,
        log: Any,
    ) -> None:
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
            self.alert(
                f"REBALANCE_{result.status}", {"portfolio": portfolio, "error": result.error}
            )
        self.on_finished(portfolio_id, portfolio, result)

    def _check_gas_cost(self, portfolio: str, kind: tuple[int, int], cost: Decimal) -> None:
        """HIGH_GAS_COST when ``cost`` exceeds the factor × the expected cost of this kind of
        transaction (configured, else the median of recent ones)."""
        settings = self.settings()
        recent = self._recent_gas.setdefault(kind, deque(maxlen=GAS_HISTORY))
        expected: Decimal | None = settings.expected_gas_cost_usd or None
        if expected is None and len(recent) >= GAS_HISTORY_MIN:
            expected = statistics.median(recent)
        if expected is not None and cost > settings.gas_alert_factor * expected:
            self.alert(
                "HIGH_GAS_COST",
                {"portfolio": portfolio, "gas_cost_usd": str(cost), "expected": str(expected)},
            )
        recent.append(cost)

    async def _attempt(
        self, request: RebalanceRequest, rebalance_id: int, log: Any
    ) -> dbm.RebalanceOutcome:
        """Quote, plan and send; the outcome from what was mined. Raises only cancellation."""
        settings = self.settings()
        try:
            prepared = await self._prepare(request, settings)
        except (RebalanceAborted, ChainError, NoRoute, ValueError, KeyError) as exc:
            return dbm.RebalanceOutcome(status="FAILED", error=_error_text(exc))
        if not prepared.swap_legs:
            return dbm.RebalanceOutcome(
                status="SKIPPED",
                skip_reason="; ".join(prepared.rejected) or "no leg to send",
                expected_outputs=prepared.expected,
            )
        try:
            refusal = await self._guard_refusal(prepared)
        except ChainError as exc:
            return dbm.RebalanceOutcome(
                status="FAILED", error=f"the oracle guard's bound could not be checked: {exc}"
            )
        if refusal is not None:
            # Nothing is sent: the redemption could revert on chain, and a revert costs gas.
            return dbm.RebalanceOutcome(
                status="SKIPPED",
                skip_reason=f"No trade: the oracle guard could revert it: {refusal}",
                expected_outputs=prepared.expected,
            )
        if settings.dry_run:
            return dbm.RebalanceOutcome(
                status="DRY_RUN",
                swap_path=prepared.swap_path,
                expected_outputs=prepared.expected,
                error="; ".join(prepared.rejected) or None,
            )
        calls = prepared.mode.calls(prepared.swap_legs, prepared.allowances)
        purposes = [_purpose(call) for call in calls]
        await self._until_stored(
            lambda: self.db.set_rebalance_plan(
                rebalance_id,
                planned_txs=len(calls),
                planned_swap_txs=purposes.count("swap"),
                swap_path=prepared.swap_path,
                expected_outputs=prepared.expected,
            ),
            log,
        )
        self.fault("after_plan")
        settled: list[Settled] = []
        stopped: str | None = None
        for index, (call, purpose) in enumerate(zip(calls, purposes, strict=True)):
            try:
                slot = await self._submit(call, purpose, index, rebalance_id, prepared.deadline)
            except SignerBlocked as exc:
                if index == 0:
                    # Nothing signed: not an attempt that failed, a trade that did not start.
                    return dbm.RebalanceOutcome(
                        status="SKIPPED",
                        skip_reason=f"No trade: the signer cannot send: {exc}",
                        expected_outputs=prepared.expected,
                    )
                stopped = _error_text(exc)
                break
            except (RebalanceAborted, FeeAboveCeiling, ChainError) as exc:
                stopped = _error_text(exc)
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
        intents = await self._until_stored(lambda: self.db.intents_for_rebalance(rebalance_id), log)
        result = attempt_outcome(len(calls), purposes.count("swap"), intents, stopped=stopped)
        receipts = [s.receipt for s in settled if s.receipt is not None and s.outcome == "mined"]
        native_usd = request.prices.get(settings.native_price_symbol)
        if result.gas_cost_wei is not None and native_usd is not None:
            result = attrs.evolve(
                result, gas_cost_usd=from_base_units(result.gas_cost_wei, 18) * native_usd
            )
        actual = _actual_outputs(receipts, prepared.swap_legs, prepared.mode.holder)
        for entry, amount in zip(prepared.expected, actual, strict=True):
            entry["actual_out"] = None if amount is None else str(amount)
        reverted = next((r for r in receipts if not r.succeeded), None)
        error = result.error
        if reverted is not None:
            reason = await self._revert_reason(reverted.transaction_hash)
            error = f"transaction reverted: {reason}"
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

    async def _revert_reason(self, tx_hash: str) -> str:
        try:
            reverted = await self.chain.revert_reason_of(tx_hash)
        except ChainError:
            return "reason unavailable"
        return (reverted.reason or "no reason given") if reverted else "no reason given"

    async def _prepare(self, request: RebalanceRequest, settings: ExecutorSettings) -> _Prepared:
        tokens = self.tokens()
        mode = self.mode_for(request)
        block = await self.chain.latest_block()
        deadline = deadline_from(block.timestamp, settings.deadline_seconds)
        prepared = _Prepared(mode=mode, deadline=deadline, block_timestamp=block.timestamp)
        for leg in request.plan.legs:
            token_in, token_out = tokens[leg.sell], tokens[leg.buy]
            quote = await self.uniswap.quote(token_in.address, token_out.address, leg.amount_in)
            deviation = quote_deviation(leg, quote.reserves, token_in, token_out)
            if deviation.fraction > settings.max_quote_deviation:
                prepared.rejected.append(
                    deviation.describe(leg, token_in, token_out, settings.max_quote_deviation)
                )
                continue
            impact = quote.price_impact
            if impact > settings.price_impact_cap:
                prepared.rejected.append(
                    f"{leg.sell}->{leg.buy}: price impact {impact:.4f} exceeds the cap "
                    f"{settings.price_impact_cap}"
                )
                continue
            minimum = quote.amount_out_min(settings.slippage)
            prepared.swap_legs.append(
                SwapLeg(
                    token_in=token_in.address,
                    token_out=token_out.address,
                    amount_in=leg.amount_in,
                    amount_out_min=minimum,
                    path=quote.path,
                    deadline=deadline,
                )
            )
            prepared.expected.append(
                {
                    "sell": leg.sell,
                    "buy": leg.buy,
                    "amount_in": str(leg.amount_in),
                    "quoted_out": str(quote.amount_out),
                    "amount_out_min": str(minimum),
                    "price_impact": str(impact),
                    "quote_deviation": str(deviation.fraction),
                    "quote_block": quote.block_number,
                }
            )
        prepared.allowances = await self._allowances(mode, prepared.swap_legs)
        return prepared

    async def _guard_refusal(self, prepared: _Prepared) -> str | None:
        """Why the swap delegation's oracle guard could revert these legs (each paying only its
        ``amount_out_min``), or None: the same bound, feeds and period loss the guard uses."""
        mode = prepared.mode
        if not isinstance(mode, DelegationMode) or mode.guard is None:
            return None
        return await guard_refusal(
            self.chain,
            mode.guard,
            manager=mode.manager,
            account=mode.holder,
            swaps=[
                PlannedSwap(
                    path=leg.path, amount_in=leg.amount_in, amount_out_min=leg.amount_out_min
                )
                for leg in prepared.swap_legs
            ],
            now=prepared.block_timestamp,
        )

    async def _allowances(
        self, mode: ExecutionMode, legs: Sequence[SwapLeg]
    ) -> dict[str, int] | None:
        """The holder's allowances to the router for the tokens it sells (None if they cannot
        be read: each leg then approves exactly its amount)."""
        tokens = sorted({leg.token_in for leg in legs})
        if not tokens:
            return {}
        data = encode_call("allowance(address,address)", mode.holder, mode.router)
        try:
            results = await self.chain.call_many([(token, data) for token in tokens])
        except ChainError as exc:
            self._log.warning("allowances_unread", error=str(exc))
            return None
        return {
            token: int.from_bytes(result[:32], "big")
            for token, result in zip(tokens, results, strict=True)
            if len(result) >= 32
        }

    async def _submit(
        self, call: Call, purpose: dbm.IntentPurpose, index: int, rebalance_id: int, deadline: int
    ) -> NonceSlot:
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

    # --- recovery ------------------------------------------------------------------------

    async def recover(self, nursery: trio.Nursery) -> None:
        """Rebuild every unsettled nonce of this signer and settle them in ``nursery``; finish
        each PENDING attempt of this (chain, signer) once its nonces are settled. Attempts with
        no intent were interrupted before anything was signed: FAILED, nothing traded."""
        slots = await self.transactions.load()
        pending = await self.db.pending_rebalances(self.chain_id, self.signer.address)
        pending_ids = {row.id for row in pending}
        by_attempt: dict[int, list[NonceSlot]] = {}
        self.fault("recovering")
        for slot in slots:
            attempt = slot.newest.rebalance_id
            if attempt in pending_ids:
                by_attempt.setdefault(attempt, []).append(slot)
            else:
                # A nonce whose attempt is already finished (or that has none) is still seen
                # through: it may be mined any moment.
                nursery.start_soon(self.transactions.settle, slot)
        for row in pending:
            self.status.recovering += 1
            self.in_flight.add(row.portfolio_id)
            nursery.start_soon(self._recover_attempt, row, by_attempt.get(row.id, []))
        self._log.info("recovery_started", nonces=len(slots), attempts=len(pending))

    async def _recover_attempt(
        self, row: dbm.RebalanceLogEntry, slots: Sequence[NonceSlot]
    ) -> None:
        log = self._log.bind(rebalance_id=row.id, recovering=True)
        try:
            async with trio.open_nursery() as nursery:
                for slot in slots:
                    nursery.start_soon(self.transactions.settle, slot)
            intents = await self._until_stored(lambda: self.db.intents_for_rebalance(row.id), log)
            result = attempt_outcome(row.planned_txs, row.planned_swap_txs, intents)
            reverted = next(
                (i for i in intents if i.status == "REVERTED" and i.purpose != "cancel"), None
            )
            if reverted is not None and result.error is not None:
                reason = await self._revert_reason(reverted.tx_hash)
                result = attrs.evolve(
                    result,
                    error=result.error.replace(
                        "transaction reverted", f"transaction reverted: {reason}", 1
                    ),
                )
            note = "settled after a restart"
            result = attrs.evolve(result, error=f"{result.error}; {note}" if result.error else note)
            await self._until_stored(lambda: self.db.finish_rebalance(row.id, result), log)
        finally:
            self.status.recovering -= 1
            self.in_flight.discard(row.portfolio_id)
        name = str(row.portfolio_id)
        self._finished(row.portfolio_id, name, row.id, result, log)

    async def _until_stored(self, write: Callable[[], Any], log: Any) -> Any:
        """A write the attempt cannot end without: retried until the database takes it (the
        executor waits through an outage rather than lose an outcome)."""
        schedule = Backoff(initial=STORE_RETRY_INITIAL, maximum=STORE_RETRY_MAX)
        attempt = 0
        while True:
            try:
                return await write()
            except (dbm.DatabaseUnavailable, dbm.QueryTimeout) as exc:
                self.status.last_loop_at = trio.current_time()  # alive, waiting for the database
                delay = schedule.delay(attempt)
                log.warning("database_write_retry", error=str(exc), retry_in=delay)
                await trio.sleep(delay)
                attempt += 1


@attrs.define
class _Prepared:
    mode: ExecutionMode
    deadline: int
    block_timestamp: int
    swap_legs: list[SwapLeg] = attrs.Factory(list)
    expected: list[dict[str, Any]] = attrs.Factory(list)
    rejected: list[str] = attrs.Factory(list)
    allowances: dict[str, int] | None = None
    """The holder's allowances to the router by token (None: unknown)."""

    @property
    def swap_path(self) -> list[list[str]]:
        return [list(leg.path) for leg in self.swap_legs]


@attrs.frozen
class QuoteDeviation:
    """How far the pools' mid price is from the price the plan was made with."""

    planned: Fraction
    """``buy`` per ``sell`` (whole tokens) at the plan's prices."""
    pool: Fraction
    """``buy`` per ``sell`` (whole tokens) at the pools' mid price along the route."""

    @property
    def fraction(self) -> Decimal:
        """``|pool / planned − 1|`` (1 if the plan priced the leg at nothing)."""
        if self.planned == 0:
            return Decimal(1)
        ratio = abs(self.pool / self.planned - 1)
        return Decimal(ratio.numerator) / Decimal(ratio.denominator)

    def describe(self, leg: Leg, token_in: Token, token_out: Token, limit: Decimal) -> str:
        def rate(value: Fraction) -> str:
            return f"{Decimal(value.numerator) / Decimal(value.denominator):.6g}"

        return (
            f"{leg.sell}->{leg.buy}: the pool prices 1 {token_in.symbol} at "
            f"{rate(self.pool)} {token_out.symbol}, the plan at {rate(self.planned)} "
            f"{token_out.symbol}: {self.fraction:.2%} apart, above the "
            f"max_quote_deviation {limit:%}"
        )


def quote_deviation(
    leg: Leg, reserves: Sequence[tuple[int, int]], token_in: Token, token_out: Token
) -> QuoteDeviation:
    """Compare the pools' mid price (before fees and impact, which are capped separately) with
    the plan's ``expected_out / amount_in``: a pool pushed off-market passes the impact cap,
    because impact is measured against the same pool."""
    scale = Fraction(10**token_in.decimals, 10**token_out.decimals)
    return QuoteDeviation(
        planned=Fraction(leg.expected_out, leg.amount_in) * scale,
        pool=mid_price(reserves) * scale,
    )


def _purpose(call: Call) -> dbm.IntentPurpose:
    return "approve" if call.approve else "swap"


def attempt_outcome(
    planned_txs: int | None,
    planned_swap_txs: int | None,
    intents: Sequence[dbm.TxIntent],
    *,
    stopped: str | None = None,
) -> dbm.RebalanceOutcome:
    """The truthful terminal status of an attempt, from its recorded intents alone.

    SUCCESS iff every planned transaction was mined successfully; PARTIAL iff some swap was and
    not every planned transaction; FAILED otherwise. Gas is the sum over every mined version
    (cancels included: they cost gas too). ``stopped`` says why the attempt sent no more.
    """
    mined = [i for i in intents if i.status in ("CONFIRMED", "REVERTED")]
    succeeded = {i.call_index for i in mined if i.status == "CONFIRMED" and i.purpose != "cancel"}
    swaps_done = sum(1 for i in mined if i.status == "CONFIRMED" and i.purpose == "swap")
    gas_used = sum(i.gas_used or 0 for i in mined)
    gas_wei = sum((i.gas_used or 0) * (i.effective_gas_price or 0) for i in mined)
    last_hash = next(
        (i.tx_hash for i in reversed(mined) if i.purpose == "swap"),
        mined[-1].tx_hash if mined else None,
    )
    gas = {"gas_used": gas_used, "gas_cost_wei": gas_wei} if mined else {}
    problems: list[str] = []
    if any(i.status == "REVERTED" and i.purpose != "cancel" for i in mined):
        problems.append("transaction reverted")
    if any(i.status == "CONFIRMED" and i.purpose == "cancel" for i in mined):
        problems.append("cancelled with a 0-value transaction at the same nonce")
    if any(i.status == "DROPPED" and i.error and "not ours" in i.error for i in intents):
        problems.append("a nonce was consumed by a transaction that is not ours")
    if stopped is not None:
        problems.append(stopped)
    if planned_txs is not None and len(succeeded) == planned_txs and planned_txs > 0:
        return dbm.RebalanceOutcome(status="SUCCESS", transaction_hash=last_hash, **gas)  # type: ignore[arg-type]
    if planned_txs is None and mined:
        problems.append("recorded before attempts stored their plan: check the swaps on chain")
    if swaps_done > 0:
        done = f"{swaps_done} of {planned_swap_txs if planned_swap_txs is not None else '?'}"
        return dbm.RebalanceOutcome(
            status="PARTIAL",
            transaction_hash=last_hash,
            error="; ".join([f"only {done} swap transactions were mined", *problems]),
            **gas,  # type: ignore[arg-type]
        )
    if not mined and not problems:
        problems.append("interrupted before any transaction was mined; nothing was traded")
    return dbm.RebalanceOutcome(
        status="FAILED",
        transaction_hash=last_hash,
        error="; ".join(problems) or "no swap was mined; nothing was traded",
        **gas,  # type: ignore[arg-type]
    )


def _actual_outputs(
    receipts: Sequence[Receipt], legs: Sequence[SwapLeg], holder: str
) -> list[int | None]:
    """Per leg, the amount of ``token_out`` transferred to ``holder`` — read from the receipts'
    Transfer events in execution order, so two legs buying the same token are told apart."""
    holder_topic = bytes(12) + bytes.fromhex(to_address(holder)[2:])
    transfers = [
        (to_address(log.address), int.from_bytes(log.data[:32], "big"))
        for receipt in receipts
        if receipt.succeeded
        for log in receipt.logs
        if len(log.topics) == 3
        and log.topics[0] == TRANSFER_TOPIC
        and log.topics[2] == holder_topic
    ]
    outputs: list[int | None] = []
    position = 0
    for leg in legs:
        found = None
        while position < len(transfers):
            token, amount = transfers[position]
            position += 1
            if token == leg.token_out:
                found = amount
                break
        outputs.append(found)
    return outputs


def _planned_leg(leg: Leg) -> dict[str, Any]:
    return {
        "sell": leg.sell,
        "buy": leg.buy,
        "usd": str(leg.usd),
        "amount_in": str(leg.amount_in),
        "expected_out_at_prices": str(leg.expected_out),
        "capped": leg.capped,
    }


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, RebalanceAborted | SignerBlocked | FeeAboveCeiling):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"

"""The chain-executor actor: the only task that signs.

One request at a time, in order: fresh quotes → price-impact cap → ``amountOutMin`` from the
slippage tolerance → deadline from chain time → build the transaction for the execution mode →
estimate gas → sign with the next nonce → **record the intent** → broadcast → wait for the
receipt, replacing a stuck transaction with bumped fees → record the outcome → reply.

Money-safety invariants (DESIGN.md §4) and how this module keeps them:

1. *One nonce owner*: nonces come from this object only, serially, starting from the chain's
   pending nonce after recovery; a fencing token from the signer lease marks every intent.
2. *Durable intent before broadcast*: the signed bytes, hash, nonce and rebalance id are
   committed before the first ``eth_sendRawTransaction``; a fee bump is a new signed transaction
   for the same nonce, also committed before it is sent. :meth:`Executor.recover` settles every
   unfinished intent at start by its receipt or by rebroadcasting the *same bytes* — it never
   re-plans a trade that may be on the wire.
4. *Bounded execution*: every swap has ``amountOutMin`` from a fresh on-chain quote, a deadline
   from the latest block, passes the impact cap and pays out to the holder (``txbuild``).
7. *Every attempt is accounted for*: each request gets a ``rebalance_log`` row (PENDING at start)
   that ends in exactly one terminal status, here or in recovery.

Only the short record-then-broadcast step is shielded from cancellation, so SIGTERM never leaves
a transaction on the wire without its intent recorded, and never waits on a receipt forever.
"""

from __future__ import annotations

import itertools
import math
import os
import socket
import statistics
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any, Final, NoReturn

import attrs
import trio
from eth_utils.crypto import keccak

from daemon import db as dbm
from daemon.chain import (
    ChainClient,
    ChainError,
    Receipt,
    Reverted,
    RpcError,
    SignedTx,
    TxRequest,
    TxSigner,
    to_address,
)
from daemon.drift import Leg, from_base_units
from daemon.logs import get_logger
from daemon.messages import RebalanceOutcome, RebalanceRequest, Token
from daemon.txbuild import Call, ExecutionMode, SwapLeg
from daemon.uniswap import NoRoute, UniswapV2, deadline_from

TRANSFER_TOPIC: Final = keccak(text="Transfer(address,address,uint256)")
GAS_LIMIT_MARGIN: Final = Decimal("1.25")
"""Estimated gas × this: estimates are exact for the state they ran on, blocks move on."""
RECEIPT_POLL_SECONDS: Final = 0.25
NONCE_CONSUMED_GRACE: Final = 5.0
"""Seconds a used nonce must go without a receipt of ours before it counts as taken."""
GAS_HISTORY: Final = 20
GAS_HISTORY_MIN: Final = 3
"""Rebalances of a kind seen before their median serves as the expected gas cost."""
LEASE_TTL_SECONDS: Final = 30.0
LEASE_RENEW_SECONDS: Final = 5.0
LEASE_RELEASE_SECONDS: Final = 2.0


def holder_is_dead(holder: str) -> bool:
    """A lease holder (``host:pid``) that is a process on this host which no longer runs."""
    host, _, pid = holder.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def this_process() -> str:
    """This process as a lease holder."""
    return f"{socket.gethostname()}:{os.getpid()}"


class RebalanceAborted(Exception):
    """The attempt ends FAILED without (further) transactions; the message says why."""


class NonceConsumed(RebalanceAborted):
    """Our nonce was used by a transaction that is not ours: another process shares the key."""


@attrs.frozen
class ExecutorSettings:
    """The live-reloadable parameters of execution."""

    slippage: Decimal = Decimal("0.01")
    price_impact_cap: Decimal = Decimal("0.05")
    dry_run: bool = False
    receipt_timeout: float = 120.0
    fee_bump: Decimal = Decimal("0.125")
    max_fee_per_gas: int = 500 * 10**9
    deadline_seconds: int = 300
    native_price_symbol: str = "WETH"
    gas_alert_factor: Decimal = Decimal(2)
    expected_gas_cost_usd: Decimal = Decimal(0)
    """0: expect the median of recent rebalances of the same kind."""


@attrs.define(eq=False)
class ExecutorStatus:
    """What health reports about the executor."""

    signer: str
    next_nonce: int | None = None
    pending: int = 0
    handled: int = 0
    last_loop_at: float | None = None
    """trio.current_time() of the last time the loop was idle or finished a request."""
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


@attrs.define(eq=False)
class Executor:
    """Owns the signer and its nonces. Run with ``await nursery.start(executor.run, receive)``."""

    chain: ChainClient
    uniswap: UniswapV2
    signer: TxSigner
    db: dbm.Database
    tokens: Callable[[], Mapping[str, Token]]
    """Registered tokens by symbol (addresses and decimals for the legs)."""
    mode_for: Callable[[RebalanceRequest], ExecutionMode]
    """The execution mode of a request's portfolio (its delegations, or the wallet)."""
    settings: Callable[[], ExecutorSettings]
    fencing_token: int = 0
    """Set from the signer lease when :meth:`run` starts."""
    holder: str = attrs.field(factory=this_process)
    alert: Callable[[str, Mapping[str, object]], None] = lambda kind, fields: None
    on_finished: Callable[[RebalanceRequest, dbm.RebalanceOutcome], None] = attrs.field(
        default=lambda request, result: None
    )
    """Hears every finished attempt (metrics)."""
    on_waiting: Callable[[], None] = lambda: None
    """Called while waiting for the signer lease (a standby tells systemd it is not stuck)."""
    fault: Callable[[str], None] = lambda point: None
    """Test hook: raises (or kills the process) at named points: ``after_intent``,
    ``after_broadcast``."""
    status: ExecutorStatus = attrs.field(init=False)
    _log: Any = attrs.field(init=False)
    _recent_gas: dict[tuple[int, int], deque[Decimal]] = attrs.field(init=False, factory=dict)
    """Recent gas costs (USD) by (legs, transactions): the expectation for HIGH_GAS_COST."""

    def __attrs_post_init__(self) -> None:
        self.status = ExecutorStatus(signer=self.signer.address)
        self._log = get_logger(actor="executor", signer=self.signer.address)

    async def run(
        self,
        requests: trio.MemoryReceiveChannel[RebalanceRequest],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> NoReturn:
        """Take the signer's lease, recover, then serve requests one at a time until cancelled."""
        lease = await self._acquire_lease()
        self.fencing_token = lease.fencing_token
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._keep_lease, lease)
                await self.recover()
                self.status.next_nonce = await self.chain.get_transaction_count(
                    self.signer.address, "pending"
                )
                self.status.last_loop_at = trio.current_time()
                self._log.info(
                    "executor_ready",
                    next_nonce=self.status.next_nonce,
                    fencing_token=lease.fencing_token,
                )
                task_status.started()
                async with requests:
                    async for request in requests:
                        await self.handle(request)
                        self.status.last_loop_at = trio.current_time()
                raise RuntimeError("the executor's request channel was closed")
        finally:
            # Let a restarted process take over at once instead of waiting for the expiry.
            with trio.CancelScope(shield=True), trio.move_on_after(LEASE_RELEASE_SECONDS):
                try:
                    await self.db.release_signer_lease(lease)
                except dbm.DatabaseError as exc:
                    self._log.warning("lease_release_failed", error=str(exc))

    async def _acquire_lease(self) -> dbm.SignerLease:
        """Wait until no other live process holds the signer (a standby waits here)."""
        while True:
            try:
                return await self.db.acquire_signer_lease(
                    self.chain.chain_id,
                    self.signer.address,
                    self.holder,
                    LEASE_TTL_SECONDS,
                    take_over_from=holder_is_dead,
                )
            except dbm.LeaseHeld as exc:
                self._log.warning(
                    "signer_lease_held", holder=exc.holder, expires_at=exc.expires_at.isoformat()
                )
                self.on_waiting()
                await trio.sleep(LEASE_RENEW_SECONDS)

    async def _keep_lease(self, lease: dbm.SignerLease) -> NoReturn:
        """Renew the lease; losing it is fatal (another process may be signing now)."""
        while True:
            await trio.sleep(LEASE_RENEW_SECONDS)
            try:
                lease = await self.db.renew_signer_lease(lease, LEASE_TTL_SECONDS)
            except dbm.DatabaseUnavailable as exc:
                # The lease outlives a short outage; if it expires meanwhile, the next renewal
                # raises LeaseLost and the intents' fencing check already refuses our writes.
                self._log.warning("lease_renewal_failed", error=str(exc))

    # --- one request ---------------------------------------------------------------------

    async def handle(self, request: RebalanceRequest) -> RebalanceOutcome:
        """Carry out one request; always ends its row and always answers (if anyone listens)."""
        log = self._log.bind(portfolio=request.portfolio_name)
        started = trio.current_time()
        rebalance_id = await self.db.start_rebalance(
            request.portfolio_id,
            drift_percentage=request.plan.max_drift,
            token_amounts=[_planned_leg(leg) for leg in request.plan.legs],
        )
        self.status.begin()
        try:
            result = await self._execute(request, rebalance_id, log)
        except NonceConsumed as exc:
            # Someone else signs with our key: our nonce count is no longer ours to trust.
            log.error("nonce_consumed_by_another_sender", error=str(exc))
            self.status.next_nonce = await self.chain.get_transaction_count(
                self.signer.address, "pending"
            )
            result = dbm.RebalanceOutcome(status="FAILED", error=_error_text(exc))
        except (RebalanceAborted, ChainError, NoRoute, ValueError) as exc:
            result = dbm.RebalanceOutcome(status="FAILED", error=_error_text(exc))
        finally:
            self.status.end()
        elapsed_ms = int((trio.current_time() - min(started, request.requested_at)) * 1000)
        result = attrs.evolve(result, execution_time_ms=elapsed_ms)
        await self.db.finish_rebalance(rebalance_id, result)
        self.status.handled += 1
        self.on_finished(request, result)
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
        if result.status == "FAILED":
            self.alert(
                "REBALANCE_FAILED", {"portfolio": request.portfolio_name, "error": result.error}
            )
        if result.status == "SUCCESS" and result.gas_cost_usd is not None:
            intents = await self.db.intents_for_rebalance(rebalance_id)
            kind = (len(result.expected_outputs or ()), len({i.nonce for i in intents}))
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

    async def _execute(
        self, request: RebalanceRequest, rebalance_id: int, log: Any
    ) -> dbm.RebalanceOutcome:
        settings = self.settings()
        tokens = self.tokens()
        mode = self.mode_for(request)
        block = await self.chain.latest_block()
        deadline = deadline_from(block.timestamp, settings.deadline_seconds)
        swap_legs: list[SwapLeg] = []
        sent_legs: list[Leg] = []
        expected: list[dict[str, Any]] = []
        rejected: list[str] = []
        for leg in request.plan.legs:
            token_in, token_out = tokens[leg.sell], tokens[leg.buy]
            quote = await self.uniswap.quote(token_in.address, token_out.address, leg.amount_in)
            impact = quote.price_impact
            if impact > settings.price_impact_cap:
                rejected.append(
                    f"{leg.sell}->{leg.buy}: price impact {impact:.4f} exceeds the cap "
                    f"{settings.price_impact_cap}"
                )
                continue
            minimum = quote.amount_out_min(settings.slippage)
            swap_legs.append(
                SwapLeg(
                    token_in=token_in.address,
                    token_out=token_out.address,
                    amount_in=leg.amount_in,
                    amount_out_min=minimum,
                    path=quote.path,
                    deadline=deadline,
                )
            )
            sent_legs.append(leg)
            expected.append(
                {
                    "sell": leg.sell,
                    "buy": leg.buy,
                    "amount_in": str(leg.amount_in),
                    "quoted_out": str(quote.amount_out),
                    "amount_out_min": str(minimum),
                    "price_impact": str(impact),
                    "quote_block": quote.block_number,
                }
            )
        swap_path = [list(leg.path) for leg in swap_legs]
        if not swap_legs:
            return dbm.RebalanceOutcome(
                status="SKIPPED",
                skip_reason="; ".join(rejected) or "no leg to send",
                expected_outputs=expected,
            )
        if settings.dry_run:
            return dbm.RebalanceOutcome(
                status="DRY_RUN",
                swap_path=swap_path,
                expected_outputs=expected,
                error="; ".join(rejected) or None,
            )
        receipts: list[Receipt] = []
        for call in mode.calls(swap_legs):
            receipts.append(await self._send_call(call, rebalance_id, settings, log))
            if not receipts[-1].succeeded:
                break
        gas_used, gas_wei = gas_totals(receipts)
        native_usd = request.prices.get(settings.native_price_symbol)
        gas_usd = None if native_usd is None else from_base_units(gas_wei, 18) * native_usd
        actual = _actual_outputs(receipts, swap_legs, mode.holder)
        for entry, amount in zip(expected, actual, strict=True):
            entry["actual_out"] = None if amount is None else str(amount)
        last = receipts[-1]
        if not last.succeeded:
            reason = await self.chain.revert_reason_of(last.transaction_hash)
            return dbm.RebalanceOutcome(
                status="FAILED",
                error=f"transaction reverted: {reason.reason if reason else 'no reason given'}",
                transaction_hash=last.transaction_hash,
                gas_used=gas_used,
                gas_cost_wei=gas_wei,
                gas_cost_usd=gas_usd,
                swap_path=swap_path,
                expected_outputs=expected,
            )
        return dbm.RebalanceOutcome(
            status="SUCCESS",
            transaction_hash=last.transaction_hash,
            gas_used=gas_used,
            gas_cost_wei=gas_wei,
            gas_cost_usd=gas_usd,
            swap_path=swap_path,
            expected_outputs=expected,
            actual_outputs=[None if a is None else str(a) for a in actual],
            error="; ".join(rejected) or None,
        )

    # --- one transaction -----------------------------------------------------------------

    async def _send_call(
        self, call: Call, rebalance_id: int, settings: ExecutorSettings, log: Any
    ) -> Receipt:
        try:
            estimate = await self.chain.estimate_gas(
                call.to, call.data, sender=self.signer.address, value=call.value
            )
        except Reverted as exc:
            raise RebalanceAborted(f"would revert: {exc.reason}") from None
        gas = math.ceil(estimate * GAS_LIMIT_MARGIN)
        fees = await self.chain.fee_data()
        priority = fees.priority_fee
        max_fee = min(fees.max_fee(), settings.max_fee_per_gas)
        if max_fee < fees.base_fee + priority:
            raise RebalanceAborted(
                f"base fee {fees.base_fee} wei is above the fee ceiling {settings.max_fee_per_gas}"
            )
        if self.status.next_nonce is None:
            raise RuntimeError("executor not started")
        tx = TxRequest(
            to=call.to,
            data=call.data,
            nonce=self.status.next_nonce,
            gas=gas,
            max_fee_per_gas=max_fee,
            max_priority_fee_per_gas=priority,
            chain_id=self.chain.chain_id,
            value=call.value,
        )
        signed = self.signer.sign(tx)
        with trio.CancelScope(shield=True):
            intent = await self.db.insert_intent(self._new_intent(signed, tx, rebalance_id))
            # From here the nonce belongs to this intent, whatever happens next.
            self.status.next_nonce = tx.nonce + 1
        log.info("intent_recorded", nonce=tx.nonce, tx_hash=signed.hash, intent_id=intent.id)
        self.fault("after_intent")
        return await self._see_through(intent, tx, signed, settings, log)

    def _new_intent(self, signed: SignedTx, tx: TxRequest, rebalance_id: int) -> dbm.NewTxIntent:
        return dbm.NewTxIntent(
            chain_id=tx.chain_id,
            signer=self.signer.address,
            nonce=tx.nonce,
            raw_tx=signed.raw,
            tx_hash=signed.hash,
            fencing_token=self.fencing_token,
            rebalance_id=rebalance_id,
            max_fee_per_gas=tx.max_fee_per_gas,
            max_priority_fee_per_gas=tx.max_priority_fee_per_gas,
        )

    async def _see_through(
        self,
        intent: dbm.TxIntent,
        tx: TxRequest | None,
        signed: SignedTx,
        settings: ExecutorSettings,
        log: Any,
    ) -> Receipt:
        """Broadcast ``signed`` and wait for any transaction of this nonce to be mined,
        replacing it with bumped fees when it is stuck. ``tx`` is None in recovery (the
        original request is not stored, so no bump: the same bytes are rebroadcast)."""
        hashes = {signed.hash: intent.id}
        for previous in await self.db.intents_for_rebalance(intent.rebalance_id or -1):
            if previous.nonce == intent.nonce:
                hashes.setdefault(previous.tx_hash, previous.id)
        while True:
            with trio.CancelScope(shield=True):
                await self._broadcast(intent, signed, hashes)
            self.fault("after_broadcast")
            with trio.move_on_after(settings.receipt_timeout):
                return await self._wait_mined(hashes, intent.nonce)
            if tx is None:
                log.warning("recovered_tx_still_pending", nonce=intent.nonce, tx_hash=signed.hash)
                continue
            bumped = _bumped(tx, settings)
            if bumped is None:
                log.warning("fee_ceiling_reached", nonce=tx.nonce, tx_hash=signed.hash)
                continue
            tx = bumped
            signed = self.signer.sign(tx)
            with trio.CancelScope(shield=True):
                intent = await self.db.replace_intent(
                    intent.id, self._new_intent(signed, tx, intent.rebalance_id or 0)
                )
            hashes[signed.hash] = intent.id
            log.info(
                "tx_replaced",
                nonce=tx.nonce,
                tx_hash=signed.hash,
                max_fee_per_gas=tx.max_fee_per_gas,
                max_priority_fee_per_gas=tx.max_priority_fee_per_gas,
            )

    async def _broadcast(
        self, intent: dbm.TxIntent, signed: SignedTx, hashes: dict[str, int]
    ) -> None:
        try:
            await self.chain.send_raw_transaction(signed)
        except RpcError as exc:
            message = exc.message.lower()
            too_low = "nonce too low" in message or "nonce is too low" in message
            # "nonce too low": ours was mined already (a retried send after the first landed)
            # or someone else used the nonce; the receipt wait tells which. "underpriced" and
            # "already known": a version of ours is in the pool.
            if not too_low and "underpriced" not in message and "already known" not in message:
                raise
        if intent.status == "SIGNED":
            await self.db.mark_intent(intent.id, "BROADCAST")

    async def _mined_receipt(self, hashes: Mapping[str, int]) -> tuple[int, Receipt] | None:
        for tx_hash, intent_id in hashes.items():
            receipt = await self.chain.get_transaction_receipt(tx_hash)
            if receipt is not None:
                return intent_id, receipt
        return None

    async def _wait_mined(self, hashes: Mapping[str, int], nonce: int) -> Receipt:
        consumed_since: float | None = None
        while True:
            found = await self._mined_receipt(hashes)
            if found is not None:
                intent_id, receipt = found
                await self.db.record_intent_receipt(
                    intent_id,
                    dbm.TxReceipt(
                        block_number=receipt.block_number,
                        gas_used=receipt.gas_used,
                        effective_gas_price=receipt.effective_gas_price,
                        succeeded=receipt.succeeded,
                    ),
                )
                return receipt
            latest_nonce = await self.chain.get_transaction_count(self.signer.address, "latest")
            if latest_nonce <= nonce:
                consumed_since = None
            elif consumed_since is None:
                consumed_since = trio.current_time()
            elif trio.current_time() - consumed_since > NONCE_CONSUMED_GRACE:
                # The nonce has been used for a while and none of our hashes has a receipt:
                # a node can report the nonce before it serves the receipt, hence the grace.
                for intent_id in hashes.values():
                    await self.db.mark_intent(intent_id, "DROPPED", error="nonce consumed")
                raise NonceConsumed(f"nonce {nonce} was used by a transaction that is not ours")
            await trio.sleep(RECEIPT_POLL_SECONDS)

    # --- recovery ------------------------------------------------------------------------

    async def recover(self) -> None:
        """Settle what a previous run left unfinished, before any new nonce is allocated.

        Live intents are rebroadcast as the same bytes (or their receipt recorded); attempts
        with no intent were interrupted before anything was signed and end FAILED.
        """
        settings = self.settings()
        live = await self.db.intents_by_status("SIGNED", "BROADCAST", signer=self.signer.address)
        by_nonce = {
            nonce: list(group) for nonce, group in itertools.groupby(live, key=lambda i: i.nonce)
        }
        settled: dict[int, list[Receipt]] = {}
        for nonce, intents in sorted(by_nonce.items()):
            newest = max(intents, key=lambda i: i.id)
            log = self._log.bind(recovering_nonce=nonce, rebalance_id=newest.rebalance_id)
            signed = SignedTx(
                raw=newest.raw_tx, hash=newest.tx_hash, nonce=nonce, sender=self.signer.address
            )
            try:
                receipt = await self._see_through(newest, None, signed, settings, log)
            except NonceConsumed as exc:
                log.error("recovery_nonce_consumed", error=str(exc))
                if newest.rebalance_id is not None:
                    settled.setdefault(newest.rebalance_id, [])
                continue
            log.info("intent_recovered", tx_hash=receipt.transaction_hash, status=receipt.status)
            if newest.rebalance_id is not None:
                settled.setdefault(newest.rebalance_id, []).append(receipt)
        for row in await self.db.pending_rebalances():
            receipts = settled.get(row.id)
            intents = await self.db.intents_for_rebalance(row.id)
            if receipts is None and any(i.status in ("CONFIRMED", "REVERTED") for i in intents):
                receipts = [
                    await self._receipt_of(i.tx_hash)
                    for i in intents
                    if i.status in ("CONFIRMED", "REVERTED")
                ]
            await self.db.finish_rebalance(row.id, _recovered_outcome(row, receipts or []))
            self._log.info("rebalance_recovered", rebalance_id=row.id)

    async def _receipt_of(self, tx_hash: str) -> Receipt:
        receipt = await self.chain.get_transaction_receipt(tx_hash)
        if receipt is None:
            raise RuntimeError(f"intent {tx_hash} is recorded as mined but has no receipt")
        return receipt


def _recovered_outcome(
    row: dbm.RebalanceLogEntry, receipts: Sequence[Receipt]
) -> dbm.RebalanceOutcome:
    if not receipts:
        return dbm.RebalanceOutcome(
            status="FAILED",
            error="interrupted before any transaction was mined; nothing was traded",
        )
    last = receipts[-1]
    gas_used, gas_wei = gas_totals(receipts)
    if not all(r.succeeded for r in receipts):
        return dbm.RebalanceOutcome(
            status="FAILED",
            error="transaction reverted (settled after a restart)",
            transaction_hash=last.transaction_hash,
            gas_used=gas_used,
            gas_cost_wei=gas_wei,
        )
    return dbm.RebalanceOutcome(
        status="SUCCESS",
        transaction_hash=last.transaction_hash,
        gas_used=gas_used,
        gas_cost_wei=gas_wei,
        error="settled after a restart",
    )


def gas_totals(receipts: Sequence[Receipt]) -> tuple[int, int]:
    """Gas used and its cost in wei over an attempt's transactions."""
    return (
        sum(r.gas_used for r in receipts),
        sum(r.gas_used * r.effective_gas_price for r in receipts),
    )


def _bumped(tx: TxRequest, settings: ExecutorSettings) -> TxRequest | None:
    """The same transaction with fees raised by at least ``fee_bump``; None above the ceiling."""
    factor = 1 + settings.fee_bump
    priority = math.ceil(Decimal(tx.max_priority_fee_per_gas) * factor)
    max_fee = math.ceil(Decimal(tx.max_fee_per_gas) * factor)
    if max_fee > settings.max_fee_per_gas:
        return None
    return attrs.evolve(tx, max_fee_per_gas=max_fee, max_priority_fee_per_gas=max(priority, 1))


def _actual_outputs(
    receipts: Sequence[Receipt], legs: Sequence[SwapLeg], holder: str
) -> list[int | None]:
    """Per leg, the amount of ``token_out`` transferred to ``holder`` — read from the receipts'
    Transfer events in execution order, so two legs buying the same token are told apart."""
    holder_topic = bytes(12) + bytes.fromhex(to_address(holder)[2:])
    transfers = [
        (to_address(log.address), int.from_bytes(log.data[:32], "big"))
        for receipt in receipts
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
    return f"{type(exc).__name__}: {exc}" if not isinstance(exc, RebalanceAborted) else str(exc)

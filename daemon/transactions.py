"""The transaction lifecycle of one signer: every signed transaction is seen through until its
nonce is provably consumed.

Why this module exists (DESIGN.md §4.2): a signed transaction is money that may move at any
later moment, whatever our process believes. An RPC error, a timeout, a garbled reply, a restart
or a crash says nothing about whether the node has it, so none of them may end the attempt. The
only facts are the node's answers to direct questions — is this hash known, is it mined, how many
of the signer's transactions are mined — asked again until they settle the nonce.

One nonce ("slot") goes through these states, each recorded in ``tx_intent`` before the action it
allows::

    allocate ─► SIGNED ─(node knows the hash)─► BROADCAST ─► CONFIRMED | REVERTED
                  │                                 │
                  └──── REPLACED (a fee bump, or a 0-value cancel, recorded before it is sent) ──┘
                  └──── DROPPED (another version was mined, or another sender used the nonce)

Rules kept here:

* **No decision from an error's wording.** A send that raised is followed by the next
  observation (``eth_getTransactionByHash`` / receipts / mined nonce in one JSON-RPC batch); an
  unparseable or failed observation is a transient fault and is simply asked again.
* **Never abandon a live nonce.** :meth:`SignerTransactions.settle` returns only when one of our
  versions was mined (``mined``; ``cancelled`` when the mined one is our cancel) or another
  transaction consumed the nonce for longer than a grace period (``consumed``).
* **No gap.** A nonce that the node will not take (insufficient funds for gas, fee below the
  base fee, a node of another chain) blocks new allocations (:meth:`SignerTransactions.blocked`);
  it is retried with backoff, re-signed at market fees when its fee is too low, and past the
  trade's deadline replaced by a cancel, until the nonce is consumed. Trading resumes by itself.
* **Bounded waiting.** A version unmined after ``receipt_timeout`` is replaced with fees raised
  by ``fee_bump`` (≥ 12.5 %, both fees) up to the ceiling; past the trade's deadline (chain time)
  a trade is replaced by a cancel. A cancel may bid one bump above the fee ceiling: it costs
  21 000 gas and is the only way to free the nonce.
* **Several nonces in flight.** Slots are independent; nonces are allocated under a lock, each
  slot is settled by its own task, and recovery rebuilds every slot from the store.

The node and the store are small protocols (:class:`Node`, :class:`IntentStore`, in
:mod:`daemon.transactions_io`) so every transition is unit-tested against in-memory fakes under
Trio's virtual clock. The settings, plans, slots, outcomes and fee rules are plain values in
:mod:`daemon.transactions_values`. This module is the engine; it re-exports both modules' public
names, so ``from daemon.transactions import …`` keeps working for all of them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final, TypeVar

import attrs
import trio

from daemon.backoff import Backoff
from daemon.chain_errors import ChainError, RpcError
from daemon.db import (
    DatabaseError,
    DatabaseUnavailable,
    NewTxIntent,
    QueryTimeout,
    TxIntent,
    TxReceipt,
)
from daemon.logs import get_logger
from daemon.signer import SignedTx, TxRequest, TxSigner
from daemon.transactions_io import IntentStore, Node
from daemon.transactions_values import (
    LifecycleSettings,
    NodeView,
    NonceSlot,
    Settled,
    SignerBlocked,
    TxOutcome,
    TxPlan,
    bump_fee,
    opening_fees,
    plan_of,
    replacement_due,
    replacement_fees,
)

T = TypeVar("T")

CANCEL_GAS: Final = 21_000
"""Gas of a 0-value transfer to oneself: the cheapest transaction that consumes a nonce."""
RESEND_BACKOFF_MAX: Final = 30.0
"""Seconds between sends of a version the node does not take, at most."""
UNSENDABLE_AFTER: Final = 2
"""Failed sends of a version no node knows before its nonce blocks new allocations."""
STORE_RETRY_MAX: Final = 10.0
"""Seconds between retries of a write the lifecycle cannot go on without, at most."""


def _resend_backoff(settings: LifecycleSettings) -> Backoff:
    """Wait after the n-th failed check or send: ``poll_interval`` doubled per failure, the
    doubling stopping after 8 steps, never over :data:`RESEND_BACKOFF_MAX`."""
    ceiling = min(RESEND_BACKOFF_MAX, settings.poll_interval * 2**8)
    return Backoff(initial=settings.poll_interval, maximum=ceiling)


# --- the lifecycle ------------------------------------------------------------------------------


@attrs.define(eq=False)
class SignerTransactions:
    """Owns one signer's nonces: allocates, signs, records, broadcasts, replaces and settles."""

    node: Node
    store: IntentStore
    signer: TxSigner
    settings: Callable[[], LifecycleSettings]
    fencing_token: int = 0
    alert: Callable[[str, Mapping[str, object]], None] = lambda kind, fields: None
    fault: Callable[[str], None] = lambda point: None
    """Test hook (``after_intent``, ``after_broadcast``, ``after_replacement_recorded``)."""
    slots: dict[int, NonceSlot] = attrs.Factory(dict)
    next_nonce: int | None = None
    wrong_chain: str | None = None
    """Set while the node reports another chain id: nothing new is signed."""
    progress_at: float | None = None
    """trio time a settle loop last completed an iteration (liveness)."""
    _allocating: trio.Lock = attrs.Factory(trio.Lock)
    _log: Any = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._log = get_logger(actor="transactions", signer=self.signer.address)

    @property
    def chain_id(self) -> int:
        return self.node.chain_id

    def blocked(self) -> str | None:
        """Why no new nonce may be allocated now, or None."""
        return self.wrong_chain or self._unsendable()

    def _unsendable(self) -> str | None:
        for slot in self.slots.values():
            if slot.unsendable is not None:
                return f"nonce {slot.nonce} cannot be sent: {slot.unsendable}"
        return None

    async def recheck_chain(self) -> None:
        """Ask the node which chain it serves (clears :attr:`wrong_chain` once it is ours
        again); the settle loops do this too, this serves while nothing is in flight."""
        try:
            view = await self.node.observe(self.signer.address, [])
        except ChainError:
            return
        if view.chain_id == self.chain_id:
            self.wrong_chain = None
        else:
            self._wrong_chain(view.chain_id)

    def oldest_open_at(self) -> float | None:
        """trio time the oldest unsettled nonce was opened (health's "stuck")."""
        return min((slot.opened_at for slot in self.slots.values()), default=None)

    # --- recovery ---

    async def load(self) -> list[NonceSlot]:
        """Rebuild a slot for every nonce with a live intent (after a restart). The caller
        settles each; new nonces may be allocated meanwhile, above them."""
        versions = await self.store.nonce_versions(self.chain_id, self.signer.address)
        now = trio.current_time()
        by_nonce: dict[int, list[TxIntent]] = {}
        for version in versions:
            by_nonce.setdefault(version.nonce, []).append(version)
        loaded = []
        for nonce, group in sorted(by_nonce.items()):
            group.sort(key=lambda v: v.id)
            live = [v for v in group if v.live]
            # The newest live version is the one to send; replaced ones are only watched.
            ordered = [v for v in group if not v.live] + live[-1:]
            slot = NonceSlot(
                nonce=nonce,
                plan=plan_of(live[-1]),
                versions=ordered,
                opened_at=now,
                version_at=now,
            )
            self.slots[nonce] = slot
            loaded.append(slot)
        return loaded

    # --- a new nonce ---

    async def submit(self, plan: TxPlan) -> NonceSlot:
        """Allocate the next nonce, sign ``plan`` and record the intent (durable before any
        broadcast). Raises :class:`SignerBlocked`, :class:`FeeAboveCeiling` or a
        :class:`~daemon.chain.ChainError` only while nothing is signed."""
        settings = self.settings()
        async with self._allocating:
            reason = self._unsendable()
            if reason is not None:
                raise SignerBlocked(reason)
            mined = await self.node.observe(self.signer.address, [])
            if mined.chain_id != self.chain_id:
                raise SignerBlocked(self._wrong_chain(mined.chain_id))
            self.wrong_chain = None
            # Nonces another sender used are skipped; our own unsettled ones are never reused.
            nonce = max(
                mined.mined_nonce,
                self.next_nonce or 0,
                max(self.slots, default=-1) + 1,
            )
            max_fee, priority = opening_fees(await self.node.fees(), settings.max_fee_per_gas)
            tx = self._request(plan, nonce, max_fee, priority)
            signed = self.signer.sign(tx)
            intent = await self._insert(self._intent(plan, tx, signed))
            # From here the nonce belongs to this intent, whatever happens next.
            self.next_nonce = nonce + 1
            now = trio.current_time()
            slot = NonceSlot(
                nonce=nonce, plan=plan, versions=[intent], opened_at=now, version_at=now
            )
            self.slots[nonce] = slot
        self._log.info(
            "intent_recorded",
            nonce=nonce,
            tx_hash=intent.tx_hash,
            intent_id=intent.id,
            purpose=plan.purpose,
            rebalance_id=plan.rebalance_id,
        )
        self.fault("after_intent")
        return slot

    # --- seeing a nonce through ---

    async def settle(self, slot: NonceSlot) -> Settled:
        """Broadcast, watch, replace and cancel until the nonce is consumed. Never raises
        (but for cancellation, which leaves the intents for recovery)."""
        log = self._log.bind(nonce=slot.nonce)
        failures = 0
        try:
            while True:
                settings = self.settings()
                now = trio.current_time()
                self.progress_at = now
                try:
                    view = await self.node.observe(self.signer.address, slot.hashes)
                except ChainError as exc:
                    failures += 1
                    slot.trouble = str(exc)
                    log.warning("tx_check_failed", error=str(exc), failures=failures)
                    await trio.sleep(_resend_backoff(settings).delay(failures))
                    continue
                failures = 0
                if view.chain_id != self.chain_id:
                    slot.trouble = self._wrong_chain(view.chain_id)
                    await trio.sleep(settings.poll_interval)
                    continue
                self.wrong_chain = None
                slot.trouble = None
                settled = await self._settled(slot, view, settings, log)
                if settled is not None:
                    return settled
                # Replace before sending: a version past its deadline, or below the base fee,
                # is never sent again once a successor is due (a recovered expired swap would
                # only be mined to revert).
                await self._replace_if_due(slot, view, settings, log)
                await self._send_if_due(slot, view, settings, log)
                await trio.sleep(settings.poll_interval)
        finally:
            # Settled, or cancelled (shutdown): either way this task no longer watches it; a
            # cancelled slot's intents stay live in the store for the next start's recovery.
            self.slots.pop(slot.nonce, None)

    async def _settled(
        self, slot: NonceSlot, view: NodeView, settings: LifecycleSettings, log: Any
    ) -> Settled | None:
        mined = next((v for v in reversed(slot.versions) if v.tx_hash in view.receipts), None)
        if mined is not None:
            receipt = view.receipts[mined.tx_hash]
            recorded = await self._until_stored(
                lambda: self.store.record_intent_receipt(
                    mined.id,
                    TxReceipt(
                        block_number=receipt.block_number,
                        gas_used=receipt.gas_used,
                        effective_gas_price=receipt.effective_gas_price,
                        succeeded=receipt.succeeded,
                    ),
                ),
                log,
            )
            self._unblocked(slot, log)
            outcome: TxOutcome = "cancelled" if mined.purpose == "cancel" else "mined"
            log.info(
                "tx_mined",
                tx_hash=mined.tx_hash,
                status=receipt.status,
                block=receipt.block_number,
                outcome=outcome,
            )
            return Settled(slot.nonce, outcome, receipt, recorded)
        if view.mined_nonce <= slot.nonce or any(h in view.known for h in slot.hashes):
            # Not consumed, or one of ours is known to the node (mined, its receipt not served
            # yet): wait.
            slot.consumed_since = None
            return None
        now = trio.current_time()
        if slot.consumed_since is None:
            slot.consumed_since = now
            return None
        if now - slot.consumed_since < settings.consumed_grace:
            return None
        # The nonce has been mined for a while and none of our versions has a receipt.
        error = f"nonce {slot.nonce} was consumed by a transaction that is not ours"
        await self._until_stored(
            lambda: self.store.drop_nonce(self.chain_id, self.signer.address, slot.nonce, error),
            log,
        )
        self._unblocked(slot, log)
        log.error("nonce_consumed_by_another_sender", error=error)
        self.alert("NONCE_CONSUMED", {"signer": self.signer.address, "nonce": slot.nonce})
        return Settled(slot.nonce, "consumed")

    async def _send_if_due(
        self, slot: NonceSlot, view: NodeView, settings: LifecycleSettings, log: Any
    ) -> None:
        newest = slot.newest
        now = trio.current_time()
        if newest.tx_hash in view.known:
            if newest.status == "SIGNED":
                slot.versions[-1] = await self._mark_broadcast(newest, log)
            slot.failed_sends = 0
            slot.refusals = 0
            slot.last_send_error = None
            self._unblocked(slot, log)
            return
        if now < slot.next_send_at or view.mined_nonce > slot.nonce:
            # Not due; or the nonce is mined already (ours, receipt on its way, or another
            # sender's): sending again could only be refused.
            return
        try:
            await self.node.send(newest.raw_tx)
        except ChainError as exc:
            # Not a verdict: the next observation asks the node whether it has the hash.
            slot.last_send_error = str(exc)[:300]
            slot.failed_sends += 1
            if isinstance(exc, RpcError):
                # The node answered and refused (an unreachable node says nothing about the
                # transaction, so it does not count toward blocking the signer).
                slot.refusals += 1
            log.warning("tx_send_failed", tx_hash=newest.tx_hash, error=slot.last_send_error)
        else:
            slot.last_send_error = None
        slot.next_send_at = now + _resend_backoff(settings).delay(slot.failed_sends)
        anything_known = any(h in view.known for h in slot.hashes)
        if (
            slot.refusals >= UNSENDABLE_AFTER
            and not anything_known
            and slot.unsendable is None
            and slot.last_send_error is not None
        ):
            slot.unsendable = slot.last_send_error
            log.error("signer_blocked", reason=slot.unsendable)
            self.alert(
                "SIGNER_BLOCKED",
                {"signer": self.signer.address, "nonce": slot.nonce, "reason": slot.unsendable},
            )
        if not slot.sent_once:
            slot.sent_once = True
            self.fault("after_broadcast")

    async def _replace_if_due(
        self, slot: NonceSlot, view: NodeView, settings: LifecycleSettings, log: Any
    ) -> None:
        newest = slot.newest
        now = trio.current_time()
        cancelling = newest.purpose == "cancel"
        cancel_ceiling = bump_fee(settings.max_fee_per_gas, settings.fee_bump)
        ceiling = cancel_ceiling if cancelling else settings.max_fee_per_gas
        deadline = slot.plan.deadline if slot.plan is not None else None
        waited = now - slot.version_at
        due = replacement_due(slot, view, settings, waited)
        if due is None:
            return
        reason, cancel = due
        if cancel:
            ceiling = cancel_ceiling
        max_fee, priority = replacement_fees(newest, view.base_fee, settings.fee_bump, ceiling)
        if max_fee > ceiling:
            if waited > settings.receipt_timeout:
                log.warning("fee_ceiling_reached", reason=reason, max_fee=max_fee, ceiling=ceiling)
                slot.version_at = now  # warn once per receipt_timeout, not on every poll
            return
        if cancel or cancelling:
            plan = TxPlan(
                to=self.signer.address,
                data=b"",
                gas=CANCEL_GAS,
                purpose="cancel",
                rebalance_id=newest.rebalance_id,
                call_index=newest.call_index,
                deadline=deadline,
                packed_rebalance_ids=newest.packed_rebalance_ids,
                packed_weights=newest.packed_weights,
            )
        else:
            assert slot.plan is not None  # no plan means cancel (replacement_due)
            plan = slot.plan
        await self._record_replacement(slot, plan, (max_fee, priority), reason, now, log)

    async def _record_replacement(
        self,
        slot: NonceSlot,
        plan: TxPlan,
        fees: tuple[int, int],
        reason: str,
        now: float,
        log: Any,
    ) -> None:
        """Sign ``plan`` at ``fees`` (max fee, priority) and record it as the successor of
        ``slot``'s newest version, before it is ever sent."""
        newest = slot.newest
        max_fee, priority = fees
        tx = self._request(plan, slot.nonce, max_fee, priority)
        signed = self.signer.sign(tx)
        try:
            with trio.CancelScope(shield=True):
                replacement = await self.store.replace_intent(
                    newest.id, self._intent(plan, tx, signed)
                )
        except DatabaseError as exc:
            # Unsent either way. It may have been committed with its answer lost: carry on
            # with whatever the store holds for this nonce.
            log.warning("tx_replacement_not_recorded", error=str(exc))
            await self._resync(slot, log)
            return
        slot.versions[-1] = attrs.evolve(newest, status="REPLACED")
        slot.versions.append(replacement)
        slot.version_at = now
        slot.next_send_at = 0.0
        slot.failed_sends = slot.refusals = 0
        log.info(
            "tx_replaced",
            reason=reason,
            purpose=plan.purpose,
            tx_hash=replacement.tx_hash,
            max_fee_per_gas=max_fee,
            max_priority_fee_per_gas=priority,
        )
        self.fault("after_replacement_recorded")

    # --- helpers ---

    def _request(self, plan: TxPlan, nonce: int, max_fee: int, priority: int) -> TxRequest:
        return TxRequest(
            to=plan.to,
            data=plan.data,
            nonce=nonce,
            gas=plan.gas,
            max_fee_per_gas=max_fee,
            max_priority_fee_per_gas=priority,
            chain_id=self.chain_id,
            value=plan.value,
        )

    def _intent(self, plan: TxPlan, tx: TxRequest, signed: SignedTx) -> NewTxIntent:
        return NewTxIntent(
            chain_id=tx.chain_id,
            signer=self.signer.address,
            nonce=tx.nonce,
            raw_tx=signed.raw,
            tx_hash=signed.hash,
            fencing_token=self.fencing_token,
            rebalance_id=plan.rebalance_id,
            max_fee_per_gas=tx.max_fee_per_gas,
            max_priority_fee_per_gas=tx.max_priority_fee_per_gas,
            purpose=plan.purpose,
            call_index=plan.call_index,
            tx_to=plan.to,
            tx_data=plan.data,
            tx_value=plan.value,
            gas_limit=plan.gas,
            deadline=plan.deadline,
            packed_rebalance_ids=plan.packed_rebalance_ids,
            packed_weights=plan.packed_weights,
        )

    def _wrong_chain(self, actual: int) -> str:
        self.wrong_chain = f"the node serves chain {actual}, not {self.chain_id}"
        return self.wrong_chain

    def _unblocked(self, slot: NonceSlot, log: Any) -> None:
        if slot.unsendable is not None:
            slot.unsendable = None
            log.info("signer_unblocked")

    async def _mark_broadcast(self, intent: TxIntent, log: Any) -> TxIntent:
        try:
            return await self.store.mark_intent(intent.id, "BROADCAST")
        except DatabaseError as exc:
            # Informational only: the intent is live either way.
            log.warning("intent_mark_failed", error=str(exc))
            return intent

    async def _insert(self, new: NewTxIntent) -> TxIntent:
        """Record a first version. If the database's answer was lost, the row may exist: ask
        (waiting for the database) rather than leave a live intent nobody watches."""
        try:
            with trio.CancelScope(shield=True):
                return await self.store.insert_intent(new)
        except (DatabaseUnavailable, QueryTimeout):
            # Not shielded: cancelled here (shutdown), recovery finds the row if it exists.
            stored = await self._until_stored(
                lambda: self.store.nonce_versions(self.chain_id, self.signer.address), self._log
            )
            found = next((v for v in stored if v.tx_hash == new.tx_hash), None)
            if found is None:
                raise  # not recorded, so never sent
            return found
        raise AssertionError("a shielded scope does not swallow the insert's outcome")

    async def _resync(self, slot: NonceSlot, log: Any) -> None:
        """Take the store's versions of ``slot``'s nonce as the truth (after an ambiguous
        write); on failure keep what we have and try again on the next replacement."""
        try:
            stored = await self.store.nonce_versions(self.chain_id, self.signer.address)
        except DatabaseError as exc:
            log.warning("tx_versions_not_read", error=str(exc))
            return
        mine = sorted((v for v in stored if v.nonce == slot.nonce), key=lambda v: v.id)
        live = [v for v in mine if v.live]
        if not live:
            return
        if live[-1].id != slot.newest.id:
            slot.versions = [v for v in mine if not v.live] + live[-1:]
            slot.version_at = trio.current_time()
            slot.next_send_at = 0.0
            slot.failed_sends = slot.refusals = 0

    async def _until_stored(self, write: Callable[[], Awaitable[T]], log: Any) -> T:
        """A write the lifecycle cannot go on without: retried while the database is
        unreachable (anything else is a bug, raised: the process restarts into recovery)."""
        schedule = Backoff(initial=self.settings().poll_interval, maximum=STORE_RETRY_MAX)
        attempt = 0
        while True:
            try:
                return await write()
            except (DatabaseUnavailable, QueryTimeout) as exc:
                self.progress_at = trio.current_time()  # alive, waiting for the database
                delay = schedule.delay(attempt)
                log.warning("tx_outcome_not_recorded", error=str(exc), retry_in=delay)
                await trio.sleep(delay)
                attempt += 1

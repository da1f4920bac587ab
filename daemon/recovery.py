"""Recovery at start: the attempts a previous run of this signer left unfinished.

Every unsettled nonce of this (chain, signer) is rebuilt from ``tx_intent`` and settled in the
background (the executor is ready at once, and new nonces go above them); each PENDING attempt
of this signer is finished once its nonces are, with the status :func:`attempt_outcome` reads
from its mined intents — the same rule as for a live attempt. Attempts with no intent were
interrupted before anything was signed: FAILED, nothing traded. Rows of other signers are never
touched.

Also here, because a live attempt needs them as much as a recovered one: :func:`until_stored`
(a write an attempt cannot end without waits out a database outage) and :func:`revert_reason`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, Protocol, TypeVar

import attrs
import trio

from daemon import db as dbm
from daemon.attempt import attempt_outcome, own_intents
from daemon.backoff import Backoff
from daemon.chain import ChainClient
from daemon.chain_errors import ChainError
from daemon.executor_status import ExecutorStatus
from daemon.faults import Faults
from daemon.transactions import SignerTransactions
from daemon.transactions_values import NonceSlot

STORE_RETRY_INITIAL: Final = 0.2
STORE_RETRY_MAX: Final = 10.0

T = TypeVar("T")


async def until_stored(write: Callable[[], Awaitable[T]], log: Any, status: ExecutorStatus) -> T:
    """A write the attempt cannot end without: retried until the database takes it (the
    executor waits through an outage rather than lose an outcome)."""
    schedule = Backoff(initial=STORE_RETRY_INITIAL, maximum=STORE_RETRY_MAX)
    attempt = 0
    while True:
        try:
            return await write()
        except (dbm.DatabaseUnavailable, dbm.QueryTimeout) as exc:
            status.last_loop_at = trio.current_time()  # alive, waiting for the database
            delay = schedule.delay(attempt)
            log.warning("database_write_retry", error=str(exc), retry_in=delay)
            await trio.sleep(delay)
            attempt += 1


async def revert_reason(chain: ChainClient, tx_hash: str) -> str:
    """Why a mined transaction reverted, as the node replays it."""
    try:
        reverted = await chain.revert_reason_of(tx_hash)
    except ChainError:
        return "reason unavailable"
    return (reverted.reason or "no reason given") if reverted else "no reason given"


class AttemptEnds(Protocol):
    """Hears about every finished attempt (implemented by the executor)."""

    def finished(
        self,
        portfolio_id: int,
        portfolio: str,
        rebalance_id: int | None,
        result: dbm.FinishedAttempt,
        log: Any,
    ) -> None: ...


@attrs.frozen
class Recovery:
    """Settles what a previous run of this signer left unfinished."""

    transactions: SignerTransactions
    db: dbm.Database
    chain: ChainClient
    status: ExecutorStatus
    in_flight: set[int]
    """The executor's: portfolio ids with an attempt being carried out or recovered."""
    ends: AttemptEnds
    faults: Faults
    log: Any

    async def start(self, nursery: trio.Nursery) -> None:
        """Rebuild every unsettled nonce of this signer and settle them in ``nursery``; finish
        each PENDING attempt of this (chain, signer) once its nonces are settled."""
        transactions = self.transactions
        slots = await transactions.load()
        pending = await self.db.pending_rebalances(
            transactions.chain_id, transactions.signer.address
        )
        pending_ids = {row.id for row in pending}
        # A packed nonce carries several attempts: it is settled once, and each of its
        # attempts is finished when every nonce it has is settled.
        settled_by_attempt: dict[int, list[trio.Event]] = {}
        self.faults.check("recovering")
        for slot in slots:
            newest = slot.newest
            carried = {newest.rebalance_id, *newest.packed_rebalance_ids} & pending_ids
            settled = trio.Event()
            for attempt in sorted(a for a in carried if a is not None):
                settled_by_attempt.setdefault(attempt, []).append(settled)
            # A nonce whose attempts are already finished (or that has none) is still seen
            # through: it may be mined any moment.
            nursery.start_soon(self._settle, slot, settled)
        for row in pending:
            self.status.recovering += 1
            self.in_flight.add(row.portfolio_id)
            nursery.start_soon(self._finish_attempt, row, settled_by_attempt.get(row.id, []))
        self.log.info("recovery_started", nonces=len(slots), attempts=len(pending))

    async def _settle(self, slot: NonceSlot, settled: trio.Event) -> None:
        await self.transactions.settle(slot)
        settled.set()

    async def _finish_attempt(
        self, row: dbm.RebalanceLogEntry, settled: Sequence[trio.Event]
    ) -> None:
        log = self.log.bind(rebalance_id=row.id, recovering=True)
        try:
            for nonce_settled in settled:
                await nonce_settled.wait()
            intents = await until_stored(
                lambda: self.db.intents_for_rebalance(row.id), log, self.status
            )
            result = await self._outcome(row, own_intents(intents, row.id))
            await until_stored(lambda: self.db.finish_rebalance(row.id, result), log, self.status)
        finally:
            self.status.recovering -= 1
            self.in_flight.discard(row.portfolio_id)
        name = str(row.portfolio_id)
        self.ends.finished(row.portfolio_id, name, row.id, result, log)

    async def _outcome(
        self, row: dbm.RebalanceLogEntry, intents: Sequence[dbm.TxIntent]
    ) -> dbm.FinishedAttempt:
        result = attempt_outcome(row.planned_txs, row.planned_swap_txs, intents)
        reverted = next(
            (i for i in intents if i.status == "REVERTED" and i.purpose != "cancel"), None
        )
        if reverted is not None and result.error is not None:
            reason = await revert_reason(self.chain, reverted.tx_hash)
            result = attrs.evolve(
                result,
                error=result.error.replace(
                    "transaction reverted", f"transaction reverted: {reason}", 1
                ),
            )
        note = "settled after a restart"
        return attrs.evolve(result, error=f"{result.error}; {note}" if result.error else note)

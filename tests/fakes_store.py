"""An in-memory :class:`daemon.db.Database` as the executor uses it: the ``tx_intent`` store of
:class:`fakes_chain.FakeStore` plus ``rebalance_log``, with the rules the executor relies on.

* one PENDING attempt per portfolio, and none from balances older than a mined swap of the
  portfolio (:class:`~daemon.db.RebalanceRefused`, nothing written);
* a plan is stored only on a PENDING row; an attempt is finished exactly once;
* the signer lease: one holder at a time, a new fencing token at each acquisition (a second
  holder waits while the first holds it).

It appends to the same event log as the fake node and the intent store: ``("pending", id)``,
``("plan", id)``, ``("finished", id, status)`` and ``("row", id, status)`` (a finished row
written in one step), ``("lease", token)`` and ``("released", token)``, so tests can assert
that the plan was stored before the first intent.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import attrs
from fakes_chain import EPOCH, FakeStore

from daemon.db import (
    ConstraintViolation,
    FinishedAttempt,
    LeaseHeld,
    LeaseLost,
    NotFound,
    RebalanceLogEntry,
    RebalanceRefused,
    SignerLease,
    TxIntent,
)


def _entry(ident: int, portfolio_id: int, **fields: Any) -> RebalanceLogEntry:
    row: dict[str, Any] = {
        "finished_at": None,
        "status": "PENDING",
        "trigger": "drift",
        "drift_percentage": None,
        "skip_reason": None,
        "error": None,
        "transaction_hash": None,
        "gas_used": None,
        "gas_cost_wei": None,
        "gas_cost_usd": None,
        "token_amounts": None,
        "swap_path": None,
        "expected_outputs": None,
        "actual_outputs": None,
        "execution_time_ms": None,
    }
    row.update(fields)
    return RebalanceLogEntry(id=ident, portfolio_id=portfolio_id, timestamp=EPOCH, **row)


def _finished(row: RebalanceLogEntry, outcome: FinishedAttempt) -> RebalanceLogEntry:
    return attrs.evolve(
        row,
        finished_at=EPOCH,
        status=outcome.status,
        skip_reason=outcome.skip_reason,
        error=outcome.error,
        transaction_hash=outcome.transaction_hash,
        gas_used=outcome.gas_used,
        gas_cost_wei=outcome.gas_cost_wei,
        gas_cost_usd=outcome.gas_cost_usd,
        token_amounts=outcome.token_amounts or row.token_amounts,
        swap_path=outcome.swap_path or row.swap_path,
        expected_outputs=outcome.expected_outputs or row.expected_outputs,
        actual_outputs=outcome.actual_outputs,
        execution_time_ms=outcome.execution_time_ms,
    )


@attrs.define(eq=False)
class FakeDatabase(FakeStore):
    """``rebalance_log`` and ``tx_intent`` in memory (``outage`` applies to both)."""

    attempts: dict[int, RebalanceLogEntry] = attrs.Factory(dict)
    lease: SignerLease | None = None
    """The signer lease as held now (None: free)."""
    _next_attempt: int = 1
    _fencing_token: int = 0

    # -- helpers for tests --

    def attempt(self, rebalance_id: int) -> RebalanceLogEntry:
        return self.attempts[rebalance_id]

    def of_portfolio(self, portfolio_id: int) -> list[RebalanceLogEntry]:
        return [row for row in self.attempts.values() if row.portfolio_id == portfolio_id]

    def _new_id(self) -> int:
        ident = self._next_attempt
        self._next_attempt += 1
        return ident

    # -- the rebalance log --

    async def start_rebalance(
        self,
        portfolio_id: int,
        *,
        drift_percentage: Decimal | None,
        trigger: str = "drift",
        token_amounts: Any = None,
        swap_path: Any = None,
        expected_outputs: Any = None,
        chain_id: int | None = None,
        signer: str | None = None,
        balances_block: int | None = None,
    ) -> int:
        await self._enter("start_rebalance")
        mine = {row.id for row in self.of_portfolio(portfolio_id)}
        if balances_block is not None:
            mined = [
                i.block_number
                for i in self.rows.values()
                if ({i.rebalance_id, *i.packed_rebalance_ids} & mine)
                and i.status == "CONFIRMED"
                and i.purpose == "swap"
            ]
            newest = max((b for b in mined if b is not None), default=None)
            if newest is not None and newest > balances_block:
                raise RebalanceRefused(
                    f"the plan's balances (block {balances_block}) predate a trade of this "
                    f"portfolio mined in block {newest}"
                )
        if any(self.attempts[i].status == "PENDING" for i in mine):
            raise RebalanceRefused("another rebalance of this portfolio is in flight")
        ident = self._new_id()
        self.attempts[ident] = _entry(
            ident,
            portfolio_id,
            trigger=trigger,
            drift_percentage=drift_percentage,
            token_amounts=token_amounts,
            swap_path=swap_path,
            expected_outputs=expected_outputs,
            chain_id=chain_id,
            signer=None if signer is None else signer.lower(),
            balances_block=balances_block,
        )
        self.events.append(("pending", str(ident)))
        return ident

    async def set_rebalance_plan(
        self,
        rebalance_id: int,
        *,
        planned_txs: int,
        planned_swap_txs: int,
        swap_path: Any,
        expected_outputs: Any,
    ) -> None:
        await self._enter("set_rebalance_plan")
        row = self.attempts.get(rebalance_id)
        if row is None or row.status != "PENDING":
            raise NotFound(f"no PENDING rebalance_log row {rebalance_id}")
        self.attempts[rebalance_id] = attrs.evolve(
            row,
            planned_txs=planned_txs,
            planned_swap_txs=planned_swap_txs,
            swap_path=swap_path,
            expected_outputs=expected_outputs,
        )
        self.events.append(("plan", str(rebalance_id)))

    async def finish_rebalance(
        self, rebalance_id: int, outcome: FinishedAttempt
    ) -> RebalanceLogEntry:
        await self._enter("finish_rebalance")
        row = self.attempts.get(rebalance_id)
        if row is None:
            raise NotFound(f"no rebalance_log row {rebalance_id}")
        if row.status != "PENDING":
            raise ConstraintViolation(
                "rebalance_log_terminal_is_final", f"rebalance {rebalance_id} is {row.status}"
            )
        row = self.attempts[rebalance_id] = _finished(row, outcome)
        self.events.append(("finished", str(rebalance_id), outcome.status))
        return row

    async def record_rebalance(
        self,
        portfolio_id: int,
        outcome: FinishedAttempt,
        *,
        drift_percentage: Decimal | None,
        trigger: str = "drift",
    ) -> RebalanceLogEntry:
        await self._enter("record_rebalance")
        ident = self._new_id()
        row = _entry(ident, portfolio_id, trigger=trigger, drift_percentage=drift_percentage)
        row = self.attempts[ident] = _finished(row, outcome)
        self.events.append(("row", str(ident), outcome.status))
        return row

    async def pending_rebalances(
        self, chain_id: int | None = None, signer: str | None = None
    ) -> list[RebalanceLogEntry]:
        await self._enter("pending_rebalances")
        return [
            row
            for row in self.attempts.values()
            if row.status == "PENDING"
            and (chain_id is None or row.chain_id == chain_id)
            and (signer is None or row.signer == signer.lower())
        ]

    # -- the signer lease --

    async def acquire_signer_lease(
        self,
        chain_id: int,
        signer: str,
        holder: str,
        ttl: float,
        *,
        take_over_from: Callable[[str], bool] = lambda holder: False,
    ) -> SignerLease:
        await self._enter("acquire_signer_lease")
        held = self.lease
        if held is not None and held.holder != holder and not take_over_from(held.holder):
            raise LeaseHeld(held.holder, held.expires_at)
        self._fencing_token += 1
        self.lease = SignerLease(
            chain_id=chain_id,
            signer=signer.lower(),
            holder=holder,
            fencing_token=self._fencing_token,
            expires_at=EPOCH + dt.timedelta(seconds=ttl),
        )
        self.events.append(("lease", str(self._fencing_token)))
        return self.lease

    async def renew_signer_lease(self, lease: SignerLease, ttl: float) -> SignerLease:
        await self._enter("renew_signer_lease")
        if self.lease is None or self.lease.fencing_token != lease.fencing_token:
            raise LeaseLost(f"the lease of signer {lease.signer} was lost")
        return self.lease

    async def release_signer_lease(self, lease: SignerLease) -> None:
        await self._enter("release_signer_lease")
        if self.lease is not None and self.lease.fencing_token == lease.fencing_token:
            self.lease = None
            self.events.append(("released", str(lease.fencing_token)))

    async def intents_for_rebalance(self, rebalance_id: int) -> list[TxIntent]:
        await self._enter("intents_for_rebalance")
        return sorted(
            (
                r
                for r in self.rows.values()
                if r.rebalance_id == rebalance_id or rebalance_id in r.packed_rebalance_ids
            ),
            key=lambda r: r.id,
        )

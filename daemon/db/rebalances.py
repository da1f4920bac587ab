"""The rebalance log: attempts (started, planned, finished), their history and statistics.

Starting an attempt is where the database enforces money-safety invariant 9
(:class:`~daemon.db.errors.RebalanceRefused`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import asyncpg

from daemon.db.codec import _int_or_none
from daemon.db.errors import NotFound, RebalanceRefused
from daemon.db.pool import Store
from daemon.db.records import (
    TRADED_STATUSES,
    DailyDriftStats,
    FinishedAttempt,
    RebalanceLogEntry,
    RebalanceTrigger,
)


async def _refuse_if_traded_since(
    conn: asyncpg.Connection, portfolio_id: int, balances_block: int
) -> None:
    """:class:`RebalanceRefused` if a swap of the portfolio was mined after ``balances_block``
    (a plan made from those balances would trade on balances that no longer exist)."""
    # Two indexable lookups (a join on "id = rebalance_id OR id = ANY(packed ids)" cannot use
    # an index: 2.9 s against 2 ms at 200 000 attempts): the portfolio's own transactions, and
    # the packs that carried any of its attempts (GIN overlap with all of their ids at once).
    mined = await conn.fetchval(
        "SELECT max(block_number) FROM ("
        " SELECT i.block_number FROM tx_intent i JOIN rebalance_log r ON r.id = i.rebalance_id"
        " WHERE r.portfolio_id = $1 AND i.status = 'CONFIRMED' AND i.purpose = 'swap'"
        " UNION ALL"
        " SELECT i.block_number FROM tx_intent i"
        " WHERE i.packed_rebalance_ids"
        " && ARRAY(SELECT id FROM rebalance_log WHERE portfolio_id = $1)"
        " AND i.status = 'CONFIRMED' AND i.purpose = 'swap'"
        ") AS mined",
        portfolio_id,
    )
    if mined is not None and mined > balances_block:
        raise RebalanceRefused(
            f"the plan's balances (block {balances_block}) predate a trade of this "
            f"portfolio mined in block {mined}"
        )


class RebalanceLog(Store):
    """Rebalance attempts (``rebalance_log``)."""

    __slots__ = ()

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
                await _refuse_if_traded_since(conn, portfolio_id, balances_block)
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
        self, rebalance_id: int, outcome_: FinishedAttempt
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
        outcome_: FinishedAttempt,
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

    async def finished_attempts(
        self, portfolio_id: int, since: dt.datetime, until: dt.datetime
    ) -> list[RebalanceLogEntry]:
        """A portfolio's finished attempts started in [since, until], oldest first (reports)."""

        async def work(conn: asyncpg.Connection) -> list[RebalanceLogEntry]:
            rows = await conn.fetch(
                "SELECT * FROM rebalance_log WHERE portfolio_id = $1 AND status <> 'PENDING'"
                ' AND "timestamp" BETWEEN $2 AND $3 ORDER BY "timestamp", id',
                portfolio_id,
                since,
                until,
            )
            return [_rebalance(r) for r in rows]

        return await self._unit(work, transaction=False)


def _outcome_args(o: FinishedAttempt) -> tuple[Any, ...]:
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

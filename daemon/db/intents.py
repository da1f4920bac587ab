"""Transaction intents: every signed transaction is recorded before it is broadcast."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import asyncpg
import attrs

from daemon.db.codec import _int_or_none
from daemon.db.errors import ConstraintViolation, NotFound
from daemon.db.pool import Store
from daemon.db.records import LIVE_INTENT_STATUSES, IntentStatus, NewTxIntent, TxIntent, TxReceipt


class TxIntents(Store):
    """Transaction intents (``tx_intent``)."""

    __slots__ = ()

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
            # A replacement (fee bump or cancel) carries the same attempts as what it replaces.
            carried = attrs.evolve(
                new,
                rebalance_id=old["rebalance_id"],
                packed_rebalance_ids=tuple(old["packed_rebalance_ids"] or ()),
                packed_weights=tuple(old["packed_weights"] or ()),
            )
            return await _insert_intent(conn, carried, replaces_id=old_id)

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
        """Every intent recorded for one attempt, oldest first (packed ones included)."""

        async def work(conn: asyncpg.Connection) -> list[TxIntent]:
            rows = await conn.fetch(
                "SELECT * FROM tx_intent WHERE rebalance_id = $1"
                " OR packed_rebalance_ids @> ARRAY[$1::bigint] ORDER BY id",
                rebalance_id,
            )
            return [_intent(r) for r in rows]

        return await self._unit(work, transaction=False)


async def _insert_intent(
    conn: asyncpg.Connection, intent: NewTxIntent, *, replaces_id: int | None
) -> TxIntent:
    row = await conn.fetchrow(
        "INSERT INTO tx_intent (rebalance_id, chain_id, signer, nonce, raw_tx, tx_hash, status,"
        " fencing_token, max_fee_per_gas, max_priority_fee_per_gas, replaces_id, purpose,"
        " call_index, tx_to, tx_data, tx_value, gas_limit, deadline, packed_rebalance_ids,"
        " packed_weights)"
        " VALUES ($1, $2, $3, $4, $5, $6, 'SIGNED', $7, $8, $9, $10, $11, $12, $13, $14, $15,"
        " $16, $17, $18, $19) RETURNING *",
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
        list(intent.packed_rebalance_ids) or None,
        list(intent.packed_weights) or None,
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
        packed_rebalance_ids=tuple(row["packed_rebalance_ids"] or ()),
        packed_weights=tuple(row["packed_weights"] or ()),
    )

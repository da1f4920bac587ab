"""Signer leases: one live process per (chain, signer) may sign, fenced by a token."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import asyncpg

from daemon.db.errors import LeaseHeld, LeaseLost
from daemon.db.pool import Store
from daemon.db.records import SignerLease


class SignerLeases(Store):
    """Signer leases (``signer_lease``)."""

    __slots__ = ()

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


def _lease(row: Mapping[str, Any]) -> SignerLease:
    return SignerLease(
        chain_id=row["chain_id"],
        signer=row["signer"],
        holder=row["holder"],
        fencing_token=row["fencing_token"],
        expires_at=row["expires_at"],
    )

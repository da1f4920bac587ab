"""The signer lease: one nonce owner per signer across processes (DESIGN.md §4.1).

A process that signs for a signer holds its lease in ``signer_lease``; every intent carries the
lease's fencing token, and the database refuses intents with a superseded or expired token. This
module decides *who* a holder is and *when* its lease may be taken before it expires.

Identity. Each process start gets an :class:`InstanceIdentity`: a random id plus what makes its
pid meaningful — the kernel boot id, the pid-namespace inode and the process start time. The
hostname and pid are kept for humans only: two containers (or cloned VMs) can share a hostname,
and pid 1 is in every container.

Take-over. An unexpired lease is taken over early only when its holder is *provably* gone: it ran
under this very kernel boot and pid namespace (so its pid means the same here), and that pid no
longer exists or now belongs to a process that started at another time (pid reused). Any doubt —
another host, another namespace, a legacy ``host:pid`` holder, an unreadable ``/proc`` — means
waiting for the expiry (at most :data:`LEASE_TTL_SECONDS`). A live holder is never judged dead,
so two processes can no longer take the lease from each other in turn.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Final, NoReturn

import attrs
import trio
from structlog.typing import FilteringBoundLogger

from daemon.db import (
    Database,
    DatabaseError,
    DatabaseUnavailable,
    LeaseHeld,
    QueryTimeout,
    SignerLease,
)
from daemon.logs import get_logger

LEASE_TTL_SECONDS: Final = 30.0
"""A lease lives this long after its last renewal (the longest a standby waits for a lost one)."""
LEASE_RENEW_SECONDS: Final = 5.0
"""The holder renews this often; a waiting process retries this often."""
LEASE_RELEASE_SECONDS: Final = 2.0
"""The most time spent releasing the lease on the way out."""

PROC: Final = Path("/proc")
_START_TIME_FIELD: Final = 22
"""``starttime`` in ``/proc/<pid>/stat`` (1-based, clock ticks after boot; proc(5))."""
_NONE: Final = "-"
_HOLDER_RE: Final = re.compile(
    r"(?P<hostname>.*) pid=(?P<pid>[0-9]+) id=(?P<instance_id>[0-9a-f]+)"
    r" boot=(?P<boot_id>\S+) pidns=(?P<pid_namespace>[0-9]+|-) start=(?P<start_time>[0-9]+|-)",
    re.DOTALL,
)


@attrs.frozen
class InstanceIdentity:
    """Who this process is, as a lease holder. Build it with :meth:`current`."""

    instance_id: str
    """Random per process start: two live processes never share it."""
    hostname: str
    pid: int
    boot_id: str | None
    """``/proc/sys/kernel/random/boot_id``: which kernel boot the pid belongs to."""
    pid_namespace: int | None
    """Inode of ``/proc/self/ns/pid``: which pid namespace the pid belongs to."""
    start_time: int | None
    """Clock ticks from boot to the start of the process: tells a reused pid apart."""

    @classmethod
    def current(cls) -> InstanceIdentity:
        """This process. The same object for the life of the process (a fork gets its own)."""
        pid = os.getpid()
        identity = _current.get(pid)
        if identity is None:
            identity = _current[pid] = cls.probe()
        return identity

    @classmethod
    def probe(cls) -> InstanceIdentity:
        """A fresh identity of this process, with a new random id (see :meth:`current`)."""
        pid = os.getpid()
        pid_namespace = start_time = None
        # /proc must be the proc of our own pid namespace, or its pids mean nothing to us.
        if _read_link(PROC / "self") == str(pid):
            pid_namespace = _namespace_inode(PROC / "self" / "ns" / "pid")
            start_time = process_start_time(pid)
        return cls(
            instance_id=secrets.token_hex(8),
            hostname=socket.gethostname(),
            pid=pid,
            boot_id=_read_boot_id(),
            pid_namespace=pid_namespace,
            start_time=start_time,
        )

    @property
    def holder(self) -> str:
        """This identity as ``signer_lease.holder``: readable first, parsed by
        :func:`parse_holder`."""
        return (
            f"{self.hostname} pid={self.pid} id={self.instance_id}"
            f" boot={_or_none(self.boot_id)} pidns={_or_none(self.pid_namespace)}"
            f" start={_or_none(self.start_time)}"
        )


_current: dict[int, InstanceIdentity] = {}


def parse_holder(text: str) -> InstanceIdentity | None:
    """The identity a holder string was rendered from; None for any other format (legacy
    ``host:pid``)."""
    match = _HOLDER_RE.fullmatch(text)
    if match is None:
        return None
    boot_id, pid_namespace, start_time = match.group("boot_id", "pid_namespace", "start_time")
    return InstanceIdentity(
        instance_id=match["instance_id"],
        hostname=match["hostname"],
        pid=int(match["pid"]),
        boot_id=None if boot_id == _NONE else boot_id,
        pid_namespace=None if pid_namespace == _NONE else int(pid_namespace),
        start_time=None if start_time == _NONE else int(start_time),
    )


def holder_is_dead(holder: str, me: InstanceIdentity) -> bool:
    """True only when ``holder`` provably no longer runs, so its lease may be taken before it
    expires.

    That needs a holder of this kernel boot and pid namespace (its pid means the same here), not
    ``me``, whose pid is free or taken by a process with another start time. Anything uncertain
    is False: wait for the expiry.
    """
    other = parse_holder(holder)
    if other is None or other.instance_id == me.instance_id:
        return False
    if other.boot_id is None or other.boot_id != me.boot_id:
        return False
    if other.pid_namespace is None or other.pid_namespace != me.pid_namespace:
        return False
    if other.pid < 1:
        return False
    try:
        stat = (PROC / str(other.pid) / "stat").read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return _no_such_process(other.pid)
    except OSError:
        return False
    start_time = _parse_start_time(stat)
    if start_time is None or other.start_time is None:
        return False
    return start_time != other.start_time


def process_start_time(pid: int) -> int | None:
    """When process ``pid`` started, in clock ticks after boot; None if it cannot be read."""
    try:
        stat = (PROC / str(pid) / "stat").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return _parse_start_time(stat)


def _parse_start_time(stat: str) -> int | None:
    # "pid (comm) state ppid …": comm may hold spaces and parentheses, so split after the last ")".
    _, paren, rest = stat.rpartition(")")
    fields = rest.split()
    index = _START_TIME_FIELD - 3  # fields 1 and 2 (pid, comm) are before the ")"
    if not paren or len(fields) <= index or not fields[index].isdigit():
        return None
    return int(fields[index])


def _no_such_process(pid: int) -> bool:
    # /proc said no; the kernel confirms in our own pid namespace.
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def _read_boot_id() -> str | None:
    try:
        text = (PROC / "sys" / "kernel" / "random" / "boot_id").read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError):
        return None
    boot_id = text.strip()
    return boot_id if boot_id and not any(c.isspace() for c in boot_id) else None


def _namespace_inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except OSError:
        return None


def _read_link(path: Path) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def _or_none(value: object) -> str:
    return _NONE if value is None else str(value)


@attrs.define(eq=False)
class SignerLeaseHolder:
    """Takes, keeps and gives back one signer's lease for ``identity``.

    ``lease = await holder.acquire()``, then run ``holder.keep(lease)`` beside the work that
    signs (its :class:`~daemon.db.LeaseLost` must stop that work), and ``await
    holder.release(lease)`` on the way out.
    """

    db: Database
    chain_id: int
    signer: str
    identity: InstanceIdentity
    ttl: float = LEASE_TTL_SECONDS
    renew_every: float = LEASE_RENEW_SECONDS
    """Seconds between renewals, and between attempts while another process holds the lease."""
    on_waiting: Callable[[], None] = lambda: None
    """Called at each round of waiting (a standby tells systemd it is not stuck)."""
    _log: FilteringBoundLogger = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._log = get_logger(actor="signer_lease", signer=self.signer, chain_id=self.chain_id)

    async def acquire(self) -> SignerLease:
        """Take the lease, waiting while another live process holds it (a standby waits here).

        :class:`~daemon.db.DatabaseError` other than :class:`~daemon.db.LeaseHeld` propagates.
        """
        dead: list[str] = []

        def take_over_from(holder: str) -> bool:
            # Runs on the database's thread: only decide and note; log afterwards.
            if holder_is_dead(holder, self.identity):
                dead.append(holder)
                return True
            return False

        while True:
            try:
                lease = await self.db.acquire_signer_lease(
                    self.chain_id,
                    self.signer,
                    self.identity.holder,
                    self.ttl,
                    take_over_from=take_over_from,
                )
            except LeaseHeld as exc:
                self._log.warning(
                    "signer_lease_held", holder=exc.holder, expires_at=exc.expires_at.isoformat()
                )
                self.on_waiting()
                await trio.sleep(self.renew_every)
                continue
            if dead:
                self._log.warning("signer_lease_taken_over", previous_holder=dead[-1])
            self._log.info(
                "signer_lease_acquired", holder=lease.holder, fencing_token=lease.fencing_token
            )
            return lease

    async def keep(self, lease: SignerLease) -> NoReturn:
        """Renew the lease every ``renew_every`` seconds until cancelled.

        Raises :class:`~daemon.db.LeaseLost` once it is no longer ours: another process may be
        signing now, so the caller must stop.
        """
        while True:
            await trio.sleep(self.renew_every)
            try:
                lease = await self.db.renew_signer_lease(lease, self.ttl)
            except (DatabaseUnavailable, QueryTimeout) as exc:
                # The lease outlives a short outage; if it expires meanwhile, the next renewal
                # raises LeaseLost and the intents' fencing check already refuses our writes.
                self._log.warning("lease_renewal_failed", error=str(exc))

    async def release(self, lease: SignerLease) -> None:
        """Let the next process take over at once (best effort, shielded, at most
        :data:`LEASE_RELEASE_SECONDS`)."""
        with trio.CancelScope(shield=True), trio.move_on_after(LEASE_RELEASE_SECONDS):
            try:
                await self.db.release_signer_lease(lease)
            except DatabaseError as exc:
                self._log.warning("lease_release_failed", error=str(exc))

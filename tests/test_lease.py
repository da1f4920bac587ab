"""Tests of daemon.lease: who holds the signer lease, when it may be taken, and the lease loop.

Against a real PostgreSQL (the ``db`` fixture). Other processes are simulated by identities that
differ from this process's in the one field a scenario is about.
"""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import structlog
import trio

from daemon.db import Database, LeaseHeld, LeaseLost, SignerLease
from daemon.lease import (
    InstanceIdentity,
    SignerLeaseHolder,
    holder_is_dead,
    parse_holder,
    process_start_time,
)

SIGNER = "0x" + "55" * 20
CHAIN_ID = 1
SHORT_TTL = 0.5


def _no_such_pid() -> int:
    """A pid that cannot exist: above the kernel's limit."""
    try:
        return int(Path("/proc/sys/kernel/pid_max").read_text()) + 1
    except (OSError, ValueError):
        return 2**22 + 1


def _other(me: InstanceIdentity, **changes: Any) -> InstanceIdentity:
    """Another process start: its own random id, plus ``changes``."""
    return attrs.evolve(me, instance_id=os.urandom(8).hex(), **changes)


@pytest.fixture
def me() -> InstanceIdentity:
    identity = InstanceIdentity.current()
    if identity.boot_id is None or identity.pid_namespace is None or identity.start_time is None:
        pytest.skip("this system's /proc does not identify processes")
    return identity


@pytest.fixture
async def sleeper() -> AsyncIterator[trio.Process]:
    """A live process of ours that is not this one."""
    process = await trio.lowlevel.open_process(["sleep", "30"])
    try:
        yield process
    finally:
        process.kill()
        with trio.move_on_after(5):
            await process.wait()


async def _take(db: Database, me: InstanceIdentity, ttl: float = 60.0) -> SignerLease:
    return await db.acquire_signer_lease(
        CHAIN_ID, SIGNER, me.holder, ttl, take_over_from=lambda h: holder_is_dead(h, me)
    )


# --- identity ------------------------------------------------------------------------------


def test_holder_renders_readably_and_parses_back(me: InstanceIdentity) -> None:
    assert me.pid == os.getpid()
    assert me.hostname == socket.gethostname()
    assert len(me.instance_id) == 16
    assert me.start_time == process_start_time(os.getpid())
    assert me.holder.startswith(f"{me.hostname} pid={me.pid} id={me.instance_id} ")
    assert parse_holder(me.holder) == me
    # The same identity for the life of the process; a fresh probe is another start.
    assert InstanceIdentity.current() is me
    assert InstanceIdentity.probe().instance_id != me.instance_id
    unknown = InstanceIdentity("00ff", "a host (with spaces)", 7, None, None, None)
    assert unknown.holder == "a host (with spaces) pid=7 id=00ff boot=- pidns=- start=-"
    assert parse_holder(unknown.holder) == unknown


@pytest.mark.parametrize("text", ["host:1234", "", "host pid=1", "host pid=x id=ab boot=b"])
def test_legacy_or_unknown_holders_do_not_parse(text: str) -> None:
    assert parse_holder(text) is None


def test_only_provably_dead_holders_are_dead(me: InstanceIdentity) -> None:
    gone = _no_such_pid()
    assert holder_is_dead(_other(me, pid=gone).holder, me)
    # Not this process, nor anything uncertain.
    assert not holder_is_dead(me.holder, me)
    assert not holder_is_dead(f"{me.hostname}:{gone}", me)
    assert not holder_is_dead(_other(me, pid=gone, boot_id="another-boot").holder, me)
    assert not holder_is_dead(_other(me, pid=gone, pid_namespace=1).holder, me)
    assert not holder_is_dead(_other(me, pid=gone, boot_id=None).holder, me)
    assert not holder_is_dead(_other(me, pid=gone).holder, attrs.evolve(me, pid_namespace=None))
    # Our own pid under another id: the recorded process started at another time, so it is gone.
    assert me.start_time is not None
    assert holder_is_dead(_other(me, start_time=me.start_time + 1).holder, me)
    assert not holder_is_dead(_other(me).holder, me)


# --- take-over through the database --------------------------------------------------------


@pytest.mark.parametrize(
    "difference",
    [
        pytest.param({"pid_namespace": 1}, id="other-pid-namespace"),
        pytest.param({"boot_id": "00000000-0000-0000-0000-000000000000"}, id="other-boot"),
        pytest.param({"pid_namespace": 1, "boot_id": "b"}, id="pid-1-in-two-containers"),
    ],
)
async def test_same_hostname_elsewhere_waits_for_expiry(
    db: Database, me: InstanceIdentity, difference: dict[str, Any]
) -> None:
    # What the old ``hostname:pid`` logic judged dead (same hostname, pid not running here), or
    # even the very same holder string (pid 1 in two containers with one hostname).
    pid = 1 if "boot_id" in difference and "pid_namespace" in difference else _no_such_pid()
    other = _other(me, pid=pid, **difference)
    me_too = attrs.evolve(me, pid=pid) if pid == 1 else me
    with trio.fail_after(10):
        first = await _take(db, other, ttl=SHORT_TTL)
        with pytest.raises(LeaseHeld) as info:
            await _take(db, me_too)
        assert info.value.holder == other.holder
        assert info.value.expires_at == first.expires_at
        await trio.sleep(SHORT_TTL + 0.1)
        second = await _take(db, me_too)
    assert second.fencing_token == 2
    assert second.holder == me_too.holder


async def test_dead_process_of_this_boot_and_namespace_is_taken_over_at_once(
    db: Database, me: InstanceIdentity
) -> None:
    with trio.fail_after(10):
        await _take(db, _other(me, pid=_no_such_pid()), ttl=60)
        second = await _take(db, me)
    assert second.fencing_token == 2


async def test_live_process_is_not_taken_over_until_it_exits(
    db: Database, me: InstanceIdentity, sleeper: trio.Process
) -> None:
    started = process_start_time(sleeper.pid)
    assert started is not None
    with trio.fail_after(10):
        await _take(db, _other(me, pid=sleeper.pid, start_time=started), ttl=60)
        with pytest.raises(LeaseHeld):
            await _take(db, me)
        sleeper.kill()
        await sleeper.wait()  # reaped: the pid is free
        taken = await _take(db, me)
    assert taken.fencing_token == 2


async def test_reused_pid_is_taken_over_at_once(
    db: Database, me: InstanceIdentity, sleeper: trio.Process
) -> None:
    started = process_start_time(sleeper.pid)
    assert started is not None
    # The holder had this pid once, but the process now behind it started at another time.
    with trio.fail_after(10):
        await _take(db, _other(me, pid=sleeper.pid, start_time=started - 1), ttl=60)
        taken = await _take(db, me)
    assert taken.fencing_token == 2


async def test_legacy_holder_is_never_taken_over_before_expiry(
    db: Database, me: InstanceIdentity
) -> None:
    legacy = f"{me.hostname}:{_no_such_pid()}"
    with trio.fail_after(10):
        await db.acquire_signer_lease(CHAIN_ID, SIGNER, legacy, SHORT_TTL)
        with pytest.raises(LeaseHeld) as info:
            await _take(db, me)
        assert info.value.holder == legacy
        await trio.sleep(SHORT_TTL + 0.1)
        taken = await _take(db, me)
    assert taken.fencing_token == 2


# --- the lease loop -------------------------------------------------------------------------


async def test_acquire_waits_for_a_live_holder_until_its_lease_expires(
    db: Database, me: InstanceIdentity
) -> None:
    other = _other(me, pid_namespace=1)
    waits = 0

    def on_waiting() -> None:
        nonlocal waits
        waits += 1

    holder = SignerLeaseHolder(db, CHAIN_ID, SIGNER, me, renew_every=0.1, on_waiting=on_waiting)
    with trio.fail_after(10), structlog.testing.capture_logs() as logs:
        first = await _take(db, other, ttl=SHORT_TTL)
        started = trio.current_time()
        lease = await holder.acquire()
        waited = trio.current_time() - started
    assert waits >= 2
    assert waited >= SHORT_TTL - 0.2
    assert lease.holder == me.holder
    assert lease.fencing_token == first.fencing_token + 1
    held = [log for log in logs if log["event"] == "signer_lease_held"]
    assert held
    assert held[0]["holder"] == other.holder
    assert held[0]["expires_at"] == first.expires_at.isoformat()


async def test_keep_renews_and_release_hands_over_at_once(
    db: Database, me: InstanceIdentity
) -> None:
    holder = SignerLeaseHolder(db, CHAIN_ID, SIGNER, me, ttl=SHORT_TTL, renew_every=0.1)
    other = _other(me, pid_namespace=1)
    with trio.fail_after(10):
        lease = await holder.acquire()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(holder.keep, lease)
            await trio.sleep(SHORT_TTL * 3)
            with pytest.raises(LeaseHeld):
                await _take(db, other)
            nursery.cancel_scope.cancel()
        await holder.release(lease)
        taken = await _take(db, other)
    assert taken.fencing_token == lease.fencing_token + 1


async def test_keep_raises_lease_lost_once_another_holder_took_the_expired_lease(
    db: Database, me: InstanceIdentity
) -> None:
    holder = SignerLeaseHolder(db, CHAIN_ID, SIGNER, me, ttl=0.2, renew_every=0.6)
    other = _other(me, pid_namespace=1)
    with trio.fail_after(10):
        lease = await holder.acquire()
        async with trio.open_nursery() as nursery:

            async def keep() -> None:
                with pytest.raises(LeaseLost):
                    await holder.keep(lease)

            nursery.start_soon(keep)
            await trio.sleep(0.3)  # expired, not yet renewed
            taken = await _take(db, other)
    assert taken.fencing_token == lease.fencing_token + 1

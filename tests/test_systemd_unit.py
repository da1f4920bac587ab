"""systemd/driftd.service: systemd's own verifier finds nothing wrong, the directives Operations
needs are there and agree with the code, and the hardening it claims works for our Python.

``systemd-analyze`` comes from Debian's ``systemd`` package, which ``./dev setup`` installs when
it is missing; these tests skip only when the binary is absent (and say so).
"""

from __future__ import annotations

import errno
import mmap
import platform
import shutil
import struct
import subprocess
import sys
import textwrap
from decimal import Decimal
from pathlib import Path

import pytest

from daemon.config import SIGNER_CREDENTIAL, Config, key_specs

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "driftd.service"
INSTALLED_BINARY = "/opt/driftd/.venv/bin/driftd"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None,
    reason="systemd-analyze is not installed (Debian package systemd; ./dev setup installs it)",
)


def directives(text: str) -> dict[str, list[str]]:
    """``Section.Key`` → every value given (systemd allows repeating a key)."""
    out: dict[str, list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        out.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return out


def unit_for_verify(directory: Path) -> Path:
    """The unit, with ExecStart's binary pointed at this checkout's ``driftd``.

    ``systemd-analyze verify`` checks that ExecStart's program exists and is executable. On a
    test machine nothing is installed under /opt/driftd, so the copy runs the ``driftd`` entry
    point of the virtualenv under test instead — the same program, its arguments unchanged. This
    is the only difference from the real file; nothing the verifier says is filtered."""
    text = UNIT.read_text()
    binary = Path(sys.executable).parent / "driftd"
    assert binary.exists(), f"{binary} missing: is driftd installed in this virtualenv?"
    start = f"ExecStart={INSTALLED_BINARY} "
    assert text.count(start) == 1, "ExecStart changed: update unit_for_verify"
    copy = directory / "driftd.service"
    copy.write_text(text.replace(start, f"ExecStart={binary} "))
    return copy


@needs_systemd_analyze
def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    assert SYSTEMD_ANALYZE is not None
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--man=no", str(unit_for_verify(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    # Warnings come on stderr with rc 0; any line at all fails the test.
    assert result.stderr == "", result.stderr
    assert result.stdout == "", result.stdout


@needs_systemd_analyze
def test_hardening_exposure_stays_low(tmp_path: Path) -> None:
    """`systemd-analyze security` scores the sandbox 0 (locked down) … 10 (wide open); the unit
    scores about 1.2. Dropping a hardening directive by accident pushes it over 2."""
    assert SYSTEMD_ANALYZE is not None
    result = subprocess.run(
        [
            SYSTEMD_ANALYZE,
            "security",
            "--offline=yes",
            "--threshold=20",
            "--no-pager",
            str(unit_for_verify(tmp_path)),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Overall exposure level for driftd.service" in result.stdout


def test_unit_has_what_operations_needs() -> None:
    unit = directives(UNIT.read_text())

    def one(key: str) -> str:
        values = unit.get(key, [])
        assert len(values) == 1, f"{key}: {values}"
        return values[0]

    assert one("Service.Type") == "notify"
    assert one("Service.ExecReload") == "/bin/kill -HUP $MAINPID"
    assert one("Service.ExecStart").startswith(f"{INSTALLED_BINARY} run --config ")
    assert one("Service.Restart") == "on-failure"
    assert one("Service.WatchdogSec")
    assert one("Service.User") == one("Service.Group") == "driftd"
    assert one("Service.StateDirectory") == "driftd"
    # The default health socket lives in the directory systemd creates for us.
    runtime = one("Service.RuntimeDirectory")
    assert Path(Config().health.socket).parent == Path("/run") / runtime
    # The credential name is the one config.py reads from $CREDENTIALS_DIRECTORY.
    assert one("Service.LoadCredential").startswith(f"{SIGNER_CREDENTIAL}:/")
    # A configuration error (EX_CONFIG) is not retried.
    assert one("Service.RestartPreventExitStatus") == "78"
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "MemoryDenyWriteExecute": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectControlGroups": "yes",
        "LockPersonality": "yes",
        "CapabilityBoundingSet": "",
    }.items():
        assert one(f"Service.{key}") == value, key
    assert "@system-service" in unit["Service.SystemCallFilter"]


def test_stop_timeout_leaves_room_for_the_shutdown_grace() -> None:
    unit = directives(UNIT.read_text())
    (timeout,) = unit["Service.TimeoutStopSec"]
    assert timeout.endswith("s")
    grace = [spec for spec in key_specs() if spec.name == "shutdown_grace"]
    assert grace, "no shutdown grace setting found in the configuration schema"
    assert Decimal(timeout[:-1]) >= Decimal(str(grace[0].default)) + 30


# ------------------------------------------------------------ MemoryDenyWriteExecute=yes

_BPF_LD_W_ABS, _BPF_JEQ_K, _BPF_AND_K, _BPF_RET_K = 0x20, 0x15, 0x54, 0x06


def memory_deny_write_execute_filter() -> bytes:
    """A seccomp program equivalent to systemd 252's ``MemoryDenyWriteExecute=yes`` on x86-64.

    Like systemd's (src/shared/seccomp-util.c), it fails with EPERM: ``mmap`` with both
    PROT_WRITE and PROT_EXEC, ``mprotect``/``pkey_mprotect`` adding PROT_EXEC, and ``shmat``
    with SHM_EXEC. Each rule: load the syscall number; if it is not ours skip the rule; load the
    low half of the flags argument (the third); mask; deny if it matches."""
    allow, deny = 0x7FFF0000, 0x00050000 | errno.EPERM  # SECCOMP_RET_ALLOW, RET_ERRNO(EPERM)
    arch_offset, nr_offset, arg2_offset = 4, 0, 16 + 8 * 2
    rules = [  # (x86-64 syscall number, mask, value)
        (9, mmap.PROT_WRITE | mmap.PROT_EXEC, mmap.PROT_WRITE | mmap.PROT_EXEC),  # mmap
        (10, mmap.PROT_EXEC, mmap.PROT_EXEC),  # mprotect
        (329, mmap.PROT_EXEC, mmap.PROT_EXEC),  # pkey_mprotect
        (30, 0o100000, 0o100000),  # shmat, SHM_EXEC
    ]
    program = [
        (_BPF_LD_W_ABS, 0, 0, arch_offset),
        (_BPF_JEQ_K, 1, 0, 0xC000003E),  # AUDIT_ARCH_X86_64
        (_BPF_RET_K, 0, 0, allow),
    ]
    for number, mask, value in rules:
        program += [
            (_BPF_LD_W_ABS, 0, 0, nr_offset),
            (_BPF_JEQ_K, 0, 4, number),
            (_BPF_LD_W_ABS, 0, 0, arg2_offset),
            (_BPF_AND_K, 0, 0, mask),
            (_BPF_JEQ_K, 0, 1, value),
            (_BPF_RET_K, 0, 0, deny),
        ]
    program.append((_BPF_RET_K, 0, 0, allow))
    return b"".join(struct.pack("HBBI", *instruction) for instruction in program)


# Runs in a fresh interpreter: install the filter (irreversibly), prove it bites, then do what
# the daemon does — import everything, sign, serve the health socket under Trio, make TLS
# contexts, run asyncio (the database bridge's loop), call through libffi.
_CHILD = textwrap.dedent(
    """
    import ctypes, mmap, sys

    program = bytes.fromhex(sys.argv[1])

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]

    libc = ctypes.CDLL(None, use_errno=True)
    fprog = SockFprog(len(program) // 8, program)
    if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
        raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS")
    if libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) != 0:  # PR_SET_SECCOMP, FILTER
        raise OSError(ctypes.get_errno(), "PR_SET_SECCOMP")
    try:
        mmap.mmap(-1, 4096, prot=mmap.PROT_WRITE | mmap.PROT_EXEC)
    except PermissionError:
        pass
    else:
        sys.exit("the filter is not active: W+X memory was granted")

    import asyncio, functools, json, ssl, tempfile
    import trio
    import asyncpg, httpx
    import daemon.app, daemon.cli.main, daemon.health, daemon.metrics, daemon.systemd
    from daemon.signer import TxRequest, TxSigner
    from daemon.config import Secret

    signer = TxSigner(key=Secret("0x" + "11" * 32))
    signer.sign(TxRequest(to=signer.address, data=b"", nonce=0, gas=21000,
                          max_fee_per_gas=1, max_priority_fee_per_gas=1, chain_id=1))
    ssl.create_default_context()

    class Controls:
        def health(self): return {"status": "ok"}
        def metrics(self): return daemon.metrics.Metrics().render()

    async def serve_and_ask():
        path = tempfile.mkdtemp() + "/driftd.sock"
        async with trio.open_nursery() as nursery:
            await nursery.start(daemon.health.serve_health, path, Controls())
            reply = await trio.to_thread.run_sync(
                daemon.cli.control.request, path, {"cmd": "metrics"}, 5.0)
            assert reply["ok"], reply
            async with httpx.AsyncClient() as client:
                pass
            nursery.cancel_scope.cancel()

    import daemon.cli.control
    trio.run(serve_and_ask)

    async def asyncio_loop():
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
        server.close()
        await server.wait_closed()
    asyncio.run(asyncio_loop())

    callback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int)(lambda x: x + 1)
    assert callback(41) == 42
    print("ok")
    """
)


@pytest.mark.skipif(
    sys.platform != "linux" or platform.machine() != "x86_64",
    reason="the seccomp program is written for Linux on x86-64",
)
def test_python_and_driftd_run_under_memory_deny_write_execute() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, memory_deny_write_execute_filter().hex()],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")

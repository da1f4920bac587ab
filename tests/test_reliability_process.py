"""Reliability scenarios against the real `driftd run` process (issue 10, "What to build" 7).

Each scenario registers the 50/30/20 portfolio, makes one market move (WETH × 1.3), runs the real
daemon with a fault — a SIGKILL at a named point of the transaction lifecycle
(:mod:`daemon.faults`), a PostgreSQL restart or outage, a second process on the same database —
restarts it as a supervisor would, waits until everything is settled (no PENDING row, no live
intent) and then lets the referee (:mod:`reliability`) check the chain and the database: every
swap on chain at most once, one truthful terminal row per attempt, no nonce gap, every mined
transaction of the signer recorded. Each also checks its own expected outcome, and that the
daemon left running is up and says ``ok`` in `driftd status` (ready, executor not stuck).

Scenarios:

1-6. SIGKILL at ``after_plan``, ``after_intent``, ``after_broadcast``,
     ``after_replacement_recorded``, ``after_mined`` and ``recovering``, then restart.
7.   Restart while our own transaction is still in the pool (finding 7: no crash loop).
8.   Wallet mode killed after the first approve (finding 5: not SUCCESS).
9.   Two processes with different signers on one database (finding 3).
10.  Two processes with the same signer: standby, take-over after a SIGKILL (finding 4).
11.  PostgreSQL restarted mid-attempt, the receipt arriving while it is down.
12.  PostgreSQL unreachable while the market moves (finding 8; the daemon in process).
13.  `driftd pause` survives a restart (finding 9).
14.  A crash loop: SIGKILL at ``after_intent`` on three consecutive starts, then a normal one.
15.  Killed after a fee bump was recorded, the original version mined while the daemon is down.
16.  Killed after the intent, restarted after the swap's deadline: cancelled, not broadcast.

Timings are shortened through the configuration (``execution.poll_interval`` 0.1 s,
``failure_backoff`` 0.5 s...); the signer lease's retry period (5 s) is not configurable, so the
standby scenario waits up to that long.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import attrs
import pytest
import trio
from daemon_harness import (
    daemon_document,
    driftd_process,
    fund_to_targets,
    guarded_delegations,
    move_price,
    portfolio_drift,
    register_tokens,
    run_cli,
    write_toml,
)
from reliability import Scenario, check_invariants
from test_daemon import TARGETS, TOTAL_USD, running_daemon, setup_portfolio

from daemon import db as dbm
from daemon import probes
from daemon.abi import hex_int
from daemon.chain import ChainClient
from daemon.config import DatabaseConfig, Secret
from daemon.control import DaemonControls
from daemon.delegation import dump_delegation_file
from daemon.devtools.devnet_anvil import (
    evm_increase_time,
    evm_mine,
    evm_set_automine,
    set_eth_balance,
)
from daemon.devtools.devnet_records import Devnet, SmartAccount, devnet_key
from daemon.devtools.pgserver import PostgresServer
from daemon.signer import TxSigner

pytestmark = pytest.mark.reliability

T = TypeVar("T")

MOVE = Decimal("1.3")
"""The one market move of every scenario: WETH up 30 % (the portfolio drifts past 15 %)."""
SCENARIO_SECONDS = 40
"""Upper bound of one scenario (they take ~5-15 s; the bound only turns a hang into a failure)."""
SETTLE_PAUSE = 0.6
"""Seconds a daemon keeps running after the scenario settled: more evaluations (a few price
ticks), which must not trade again."""
FAST: dict[str, dict[str, Any]] = {
    "execution": {
        "poll_interval": 0.1,
        "receipt_timeout": 10.0,
        "failure_backoff": 0.5,
        "failure_backoff_max": 1.0,
    },
    "prices": {"poll_interval": 0.2},
}
"""Fast timings for every daemon of this module (a FAILED attempt is retried after 0.5 s)."""


def overrides(**sections: dict[str, Any]) -> dict[str, Any]:
    """:data:`FAST` with some keys changed."""
    merged = {name: dict(values) for name, values in FAST.items()}
    for name, values in sections.items():
        merged.setdefault(name, {}).update(values)
    return merged


# --- the harness ------------------------------------------------------------------------------


@attrs.define
class Harness:
    """One scenario's daemon(s): config, environment, logs, and the referee's inputs."""

    chain: ChainClient
    devnet: Devnet
    db: dbm.Database
    db_config: DatabaseConfig
    tmp_path: Path
    scenario: Scenario
    config_path: Path
    signer_key: Secret
    document: dict[str, Any] = attrs.Factory(dict)
    """The daemon's configuration (``config_path`` holds it)."""
    since_block: int = 0
    nonce_before: int = 0
    runs: int = 0

    @property
    def signer(self) -> str:
        return TxSigner(key=self.signer_key).address

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "DRIFTD_SIGNER_KEY": self.signer_key.reveal()}

    async def mark_start(self) -> None:
        """Before the first daemon starts: where the referee begins looking."""
        self.since_block = hex_int(await self.chain.request("eth_blockNumber"))
        self.nonce_before = await self.chain.get_transaction_count(self.signer, "latest")

    def next_log(self, label: str) -> Path:
        self.runs += 1
        return self.tmp_path / f"run{self.runs}-{label}.log"

    async def killed_at(self, faults: str) -> Path:
        """`driftd run` with ``DRIFTD_TEST_FAULTS=faults``: it must die by SIGKILL there."""
        log_file = self.next_log(faults.replace("=kill", "").replace(",", "+"))
        env = {**self.env, "DRIFTD_TEST_FAULTS": faults}
        async with driftd_process(self.config_path, env, log_file) as process:
            status = await process.wait()
        assert status == -signal.SIGKILL, f"exit {status}: {log_file.read_text()[-3000:]}"
        self.scenario.kills += 1
        self.scenario.faults += 1
        return log_file

    @asynccontextmanager
    async def running(
        self,
        label: str = "run",
        faults: str = "",
        key: Secret | None = None,
        config_path: Path | None = None,
    ) -> AsyncIterator[Daemon]:
        """A `driftd run` for the duration of the block (stopped with SIGTERM on the way out,
        which must be a clean exit unless the test killed it)."""
        log_file = self.next_log(label)
        env = {**self.env, "DRIFTD_SIGNER_KEY": (key or self.signer_key).reveal()}
        if faults:
            env["DRIFTD_TEST_FAULTS"] = faults
        async with driftd_process(config_path or self.config_path, env, log_file) as process:
            daemon = Daemon(process, log_file)
            yield daemon
            if process.returncode is None and not daemon.killed:
                process.terminate()
                with trio.fail_after(15):
                    status = await process.wait()
                assert status == 0, f"exit {status}: {daemon.tail()}"

    async def healthy(self, config_path: Path | None = None) -> None:
        """`driftd status` over the control socket says ok (exit 0): ready again, executor
        not stuck or blocked, database and chain reachable (probes run every 5 s)."""
        path = config_path or self.config_path

        async def ok() -> bool:
            return await run_cli(["status"], path, self.env) == 0

        await poll(ok, f"`driftd status` ok ({path.name})", within=15, every=0.3)

    async def settled(self, finished: int = 1) -> list[dbm.RebalanceLogEntry]:
        """Wait until at least ``finished`` attempts are terminal (refusals not counted), none
        PENDING and no intent live; all the rows, oldest first."""

        async def done() -> list[dbm.RebalanceLogEntry] | None:
            rows = await self.db.rebalance_history(limit=1000)
            if any(r.status == "PENDING" for r in rows) or len(terminal(rows)) < finished:
                return None
            if await self.db.intents_by_status():
                return None
            return sorted(rows, key=lambda r: r.id)

        return await poll(done, f"{finished} settled row(s)", within=SCENARIO_SECONDS)

    async def referee(
        self,
        *,
        max_swaps: int = 1,
        signers: Sequence[str] | None = None,
        foreign_hashes: Sequence[str] = (),
    ) -> None:
        """The reliability invariants, recorded in the scenario and asserted."""
        for signer in signers or [self.signer]:
            self.scenario.checks += await check_invariants(
                self.chain,
                self.db,
                signer,
                since_block=self.since_block,
                max_swaps=max_swaps,
                foreign_hashes=foreign_hashes,
            )
        rows = sorted(await self.db.rebalance_history(limit=1000), key=lambda r: r.id)
        self.scenario.outcome = describe(rows)
        assert all(c.ok for c in self.scenario.checks), self.scenario.checks

    async def traded_back(self, account: str | None = None) -> None:
        """The portfolio is back within the threshold (the one trade did its job)."""
        account = account or self.devnet.accounts[0].address
        drift = await portfolio_drift(self.chain, self.devnet, account, TARGETS)
        assert drift < Decimal("0.15"), drift


@attrs.define
class Daemon:
    """A running `driftd run` subprocess and its JSON log."""

    process: trio.Process
    log_file: Path
    killed: bool = False

    def events(self) -> list[dict[str, Any]]:
        found = []
        for line in self.log_file.read_text(errors="replace").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                found.append(event)
        return found

    def count(self, event: str, **fields: Any) -> int:
        return sum(
            1
            for e in self.events()
            if e.get("event") == event and all(e.get(k) == v for k, v in fields.items())
        )

    async def logged(self, event: str, within: float = 20, **fields: Any) -> None:
        async def seen() -> bool:
            self.assert_alive()
            return self.count(event, **fields) > 0

        await poll(seen, f"{event} {fields or ''} in {self.log_file.name}", within=within)

    def alive(self) -> bool:
        return self.process.returncode is None and self.process.poll() is None

    def assert_alive(self) -> None:
        assert self.alive(), f"driftd exited {self.process.returncode}: {self.tail()}"

    async def sigkill(self) -> None:
        self.killed = True
        self.process.kill()
        await self.process.wait()

    def tail(self) -> str:
        return self.log_file.read_text(errors="replace")[-4000:]


async def poll(
    predicate: Callable[[], Awaitable[T | None]],
    what: str,
    within: float = 20,
    every: float = 0.05,
) -> T:
    """Ask ``predicate`` every ``every`` seconds until it returns something truthy (tolerating
    a test connection that is being re-established after a PostgreSQL restart)."""
    with trio.move_on_after(within):
        while True:
            try:
                result = await predicate()
            except (dbm.DatabaseUnavailable, dbm.QueryTimeout):
                result = None
            if result:
                return result
            await trio.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def describe(rows: Sequence[dbm.RebalanceLogEntry]) -> str:
    """The rows in words: every attempt, then the refusals counted by reason."""
    words = [
        f"#{r.id} {r.status}" + (f" ({r.error[:100]})" if r.error else "") for r in terminal(rows)
    ]
    reasons: dict[str, int] = {}
    for row in rows:
        if row.status == "SKIPPED":
            reason = row.skip_reason or ""
            reasons[reason] = reasons.get(reason, 0) + 1
    words += [f"{n} SKIPPED ({reason[:100]})" for reason, n in reasons.items()]
    return "; ".join(words)


def terminal(rows: Sequence[dbm.RebalanceLogEntry]) -> list[dbm.RebalanceLogEntry]:
    """The attempts that reached the executor's plan (SKIPPED refusals left out)."""
    return [r for r in rows if r.status != "SKIPPED"]


async def broadcast_intent(db: dbm.Database, signer: str | None = None) -> dbm.TxIntent:
    """Wait until the node is seen to have one of our transactions (status BROADCAST)."""

    async def found() -> list[dbm.TxIntent]:
        return await db.intents_by_status("BROADCAST", signer=signer)

    intents = await poll(found, "a BROADCAST intent")
    return intents[-1]


@asynccontextmanager
async def automine_off(chain: ChainClient) -> AsyncIterator[None]:
    await evm_set_automine(chain, False)
    try:
        yield
    finally:
        with trio.CancelScope(shield=True):
            await evm_set_automine(chain, True)


@pytest.fixture
def sockets() -> Iterator[Path]:
    """A directory for control sockets, short enough for AF_UNIX (tmp_path may be too long)."""
    directory = Path(tempfile.mkdtemp(prefix="driftd-rel-"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def harness_factory(
    chain: ChainClient,
    devnet: Devnet,
    db: dbm.Database,
    db_config: DatabaseConfig,
    tmp_path: Path,
    scenario: Scenario,
    sockets: Path,
) -> Callable[..., Awaitable[Harness]]:
    async def make(**config: dict[str, Any]) -> Harness:
        """The 50/30/20 portfolio "main" (delegated to the devnet signer) and a daemon config
        (with a control socket, so the scenario can ask `driftd status` at the end)."""
        document = overrides(health={"socket": str(sockets / "driftd.sock")}, **config)
        await setup_portfolio(chain, devnet, db_config, tmp_path, **document)
        full = daemon_document(devnet, db_config, **document)
        path = write_toml(tmp_path / "daemon.toml", full)
        return Harness(
            chain, devnet, db, db_config, tmp_path, scenario, path, devnet.signer_key, full
        )

    return make


@pytest.fixture
def server(pg_server: PostgresServer | None) -> Iterator[PostgresServer]:
    """The session's PostgreSQL, running again when the test ends however it ends (started from
    the main thread, as tests/test_db_outage.py explains)."""
    if pg_server is None:
        pytest.skip("needs the throwaway server (TEST_DATABASE_URL is set)")
    try:
        yield pg_server
    finally:
        pg_server.start()


# --- 1-6: SIGKILL at every fault point, then restart --------------------------------------------


KILL_POINTS = [
    "after_plan",
    "after_intent",
    "after_broadcast",
    "after_replacement_recorded",
    "after_mined",
    "recovering",
]


@pytest.mark.parametrize("point", KILL_POINTS)
async def test_sigkill_at_each_lifecycle_point_then_restart_trades_once(
    harness_factory: Callable[..., Awaitable[Harness]], scenario: Scenario, point: str
) -> None:
    """Killed at ``point`` (``recovering``: killed after the intent, then killed again during the
    next start's recovery), restarted: one trade on chain, one truthful terminal row, no gap."""
    # A recovered transaction re-signed with higher fees from its stored plan is finding 6; the
    # other points are the suite's own coverage (SIGKILL at every step of the lifecycle).
    scenario.finding = "6" if point == "after_replacement_recorded" else ""
    replacing = point == "after_replacement_recorded"
    with trio.fail_after(SCENARIO_SECONDS):
        config = {"execution": {"receipt_timeout": 0.5}} if replacing else {}
        h = await harness_factory(**config)
        chain, db = h.chain, h.db
        await move_price(chain, h.devnet, "WETH", MOVE)
        await h.mark_start()
        async with automine_off(chain) if replacing else _nothing():
            if point == "recovering":
                await h.killed_at("after_intent=kill")
                await h.killed_at("recovering=kill")
                scenario.injected = "SIGKILL after the intent; SIGKILL again during recovery"
            else:
                await h.killed_at(f"{point}=kill")
                scenario.injected = f"SIGKILL of driftd run at {point}"
            before_restart = await db.intents_by_status(
                "SIGNED", "BROADCAST", "REPLACED", "CONFIRMED"
            )
            (pending,) = await db.rebalance_history()
            assert pending.status == "PENDING"
            if point == "after_plan":
                assert before_restart == []  # nothing signed
                assert pending.planned_txs == 1
            elif point == "after_mined":
                assert [i.status for i in before_restart] == ["CONFIRMED"]
            elif replacing:
                assert {i.status for i in before_restart} == {"REPLACED", "SIGNED"}
            async with h.running("restart") as daemon:
                if replacing:
                    await broadcast_intent(db)  # the restart sent its newest version
                    await evm_mine(chain)
                rows = await h.settled(finished=2 if point == "after_plan" else 1)
                await daemon.logged("ready")
                await trio.sleep(SETTLE_PAUSE)  # more evaluations: they must not trade again
                await h.healthy()
                daemon.assert_alive()
        rows = await h.settled()
        attempts = terminal(rows)
        if point == "after_plan":
            failed, retried = attempts
            assert failed.status == "FAILED", describe(rows)
            assert "nothing was traded" in (failed.error or "")
            assert await db.intents_for_rebalance(failed.id) == []
            assert retried.status == "SUCCESS", describe(rows)
        else:
            (row,) = attempts
            assert row.status == "SUCCESS", describe(rows)
            signed_before = {i.tx_hash for i in before_restart}
            if replacing:
                # The original or one of its replacements (the restart may bump again).
                assert row.transaction_hash in {
                    i.tx_hash for i in await db.intents_for_rebalance(row.id)
                }
            else:
                assert row.transaction_hash in signed_before  # the same bytes, no new plan
        assert await chain.get_transaction_count(h.signer, "latest") == h.nonce_before + 1
        await h.traded_back()
        await h.referee(max_swaps=1)


@asynccontextmanager
async def _nothing() -> AsyncIterator[None]:
    yield


# --- 15: a replaced version mined while the daemon is down ----------------------------------------


async def test_replaced_version_mined_while_the_daemon_is_down_is_the_one_recorded(
    harness_factory: Callable[..., Awaitable[Harness]], scenario: Scenario
) -> None:
    """Killed right after a fee bump was recorded (not sent), and the *original* version is
    mined while the daemon is down: the restart must recognise the replaced version as the one
    mined (recovery watches every version of the nonce) — SUCCESS with the original's hash, the
    unsent replacement dropped, no second transaction."""
    scenario.finding = "6"
    scenario.injected = (
        "automine off; SIGKILL after a fee bump was recorded; the original version mined while "
        "the daemon is down"
    )
    with trio.fail_after(SCENARIO_SECONDS):
        h = await harness_factory(execution={"receipt_timeout": 0.5})
        chain, db = h.chain, h.db
        await move_price(chain, h.devnet, "WETH", MOVE)
        await h.mark_start()
        async with automine_off(chain):
            await h.killed_at("after_replacement_recorded=kill")
            versions = await db.intents_by_status("REPLACED", "SIGNED")
            original = next(i for i in versions if i.replaces_id is None)
            assert original.status == "REPLACED"
            await evm_mine(chain)
        receipt = await chain.get_transaction_receipt(original.tx_hash)
        assert receipt is not None
        assert receipt.succeeded
        async with h.running("restart"):
            (row,) = terminal(await h.settled())
            await trio.sleep(SETTLE_PAUSE)
            await h.healthy()
        assert row.status == "SUCCESS", describe([row])
        assert row.transaction_hash == original.tx_hash
        by_hash = {i.tx_hash: i.status for i in await db.intents_for_rebalance(row.id)}
        assert by_hash[original.tx_hash] == "CONFIRMED", by_hash
        assert list(by_hash.values()).count("CONFIRMED") == 1, by_hash
        assert await chain.get_transaction_count(h.signer, "latest") == h.nonce_before + 1
        await h.traded_back()
        await h.referee(max_swaps=1)


# --- 7: restart while our transaction is in the mempool -----------------------------------------


async def test_restart_with_our_transaction_still_in_the_mempool_does_not_crash_loop(
    harness_factory: Callable[..., Awaitable[Harness]], scenario: Scenario
) -> None:
    scenario.finding = "7"
    scenario.injected = (
        "automine off; SIGKILL after the broadcast; restart while the transaction is in the pool"
    )
    with trio.fail_after(SCENARIO_SECONDS):
        h = await harness_factory(execution={"receipt_timeout": 30.0})
        await move_price(h.chain, h.devnet, "WETH", MOVE)
        await h.mark_start()
        async with automine_off(h.chain):
            await h.killed_at("after_broadcast=kill")
            (intent,) = await h.db.intents_by_status()
            assert await h.chain.request("eth_getTransactionByHash", [intent.tx_hash]) is not None
            async with h.running("restart") as daemon:
                await daemon.logged("executor_ready")
                # Recovery meets its own transaction in the pool: the node has it, so it is
                # BROADCAST now, and the process keeps running (it used to exit 69).
                await broadcast_intent(h.db)
                await trio.sleep(1.5)
                daemon.assert_alive()
                assert daemon.count("service_unavailable") == 0
                await evm_mine(h.chain)
                (row,) = terminal(await h.settled())
                await h.healthy()
                daemon.assert_alive()
        assert row.status == "SUCCESS", describe([row])
        assert row.transaction_hash == intent.tx_hash
        assert await h.chain.get_transaction_count(h.signer, "latest") == h.nonce_before + 1
        await h.referee(max_swaps=1)


# --- 8: wallet mode, killed after the first approve ---------------------------------------------


async def test_wallet_mode_killed_after_the_approve_is_not_called_success(
    chain: ChainClient,
    devnet: Devnet,
    db: dbm.Database,
    db_config: DatabaseConfig,
    tmp_path: Path,
    scenario: Scenario,
    sockets: Path,
) -> None:
    """Wallet mode: approve + swap per leg from the signer. Killed right after the first
    approve is sent (and mined): the restart must not call the attempt SUCCESS; a FAILED attempt
    backs off (0.5 s here) and the portfolio then trades for real."""
    scenario.finding = "5"
    scenario.injected = "wallet mode; SIGKILL after the first approve is broadcast"
    document = overrides(execution={"mode": "wallet"}, health={"socket": f"{sockets}/w.sock"})
    path = write_toml(tmp_path / "daemon.toml", daemon_document(devnet, db_config, **document))
    h = Harness(chain, devnet, db, db_config, tmp_path, scenario, path, devnet.signer_key)
    with trio.fail_after(SCENARIO_SECONDS):
        env = {"DRIFTD_SIGNER_KEY": devnet.signer_key.reveal()}
        await register_tokens(devnet, path, env)
        await fund_to_targets(chain, devnet, devnet.signer, TARGETS, TOTAL_USD)
        argv = ["portfolio", "add", "own", "--account", devnet.signer]
        argv += ["--target", *[f"{s}={w}" for s, w in TARGETS.items()]]
        assert await run_cli(argv, path, env) == 0
        await move_price(chain, devnet, "WETH", MOVE)
        await h.mark_start()
        await h.killed_at("after_broadcast=kill")
        (approve,) = await db.intents_by_status()
        assert approve.purpose == "approve"
        async with h.running("restart") as daemon:
            rows = await h.settled(finished=2)
            await trio.sleep(SETTLE_PAUSE)
            await h.healthy()
            daemon.assert_alive()
        rows = await h.settled()
        first, *later = terminal(rows)
        # The truth: only the approve was mined, no swap — FAILED (nothing traded), never SUCCESS.
        assert first.status == "FAILED", describe(rows)
        assert first.planned_txs is not None
        assert first.planned_txs > 1
        statuses = {i.purpose: i.status for i in await db.intents_for_rebalance(first.id)}
        assert statuses == {"approve": "CONFIRMED"}
        # After the backoff the portfolio trades again, once.
        (success,) = later
        assert success.status == "SUCCESS", describe(rows)
        swaps = success.planned_swap_txs or 0
        await h.traded_back(devnet.signer)
        await h.referee(max_swaps=swaps)


# --- 9: two processes, different signers, one database ------------------------------------------


async def register_delegated(
    devnet: Devnet,
    account: SmartAccount,
    name: str,
    delegate: str,
    config_path: Path,
    env: dict[str, str],
    tmp_path: Path,
) -> None:
    """Like daemon_harness.register_portfolio, with the delegations made out to ``delegate``."""
    signed = guarded_delegations(devnet, account, list(TARGETS), delegate=delegate, salt=4242)
    file = tmp_path / f"{name}-delegations.json"
    file.write_text(dump_delegation_file(signed))
    argv = ["portfolio", "add", name, "--account", account.address, "--delegation", str(file)]
    argv += ["--target", *[f"{symbol}={weight}" for symbol, weight in TARGETS.items()]]
    assert await run_cli(argv, config_path, env) == 0


async def test_two_processes_with_different_signers_share_one_database(
    harness_factory: Callable[..., Awaitable[Harness]], scenario: Scenario
) -> None:
    """Process B (another signer, its own portfolio) starts while A's row is in flight: B's
    recovery leaves A's row alone, A survives, each portfolio rebalances exactly once."""
    scenario.finding = "3"
    scenario.injected = "automine off; a second driftd with another signer starts mid-flight"
    scenario.faults = 1
    with trio.fail_after(SCENARIO_SECONDS):
        h = await harness_factory(execution={"receipt_timeout": 30.0})
        socket_b = str(Path(h.document["health"]["socket"]).with_name("b.sock"))
        config_b = write_toml(
            h.tmp_path / "daemon-b.toml", {**h.document, "health": {"socket": socket_b}}
        )
        chain, devnet, db = h.chain, h.devnet, h.db
        other_key = devnet_key("reliability: second signer")
        other = TxSigner(key=other_key).address
        await set_eth_balance(chain, other, 10**20)
        second = devnet.accounts[1]
        await fund_to_targets(chain, devnet, second.address, TARGETS, TOTAL_USD)
        # The CLI accepts only delegations made out to the signer of its own environment.
        env = {"DRIFTD_SIGNER_KEY": other_key.reveal()}
        await register_delegated(devnet, second, "beta", other, h.config_path, env, h.tmp_path)
        await move_price(chain, devnet, "WETH", MOVE)
        await h.mark_start()
        other_nonce = await chain.get_transaction_count(other, "latest")
        async with automine_off(chain), h.running("A") as a:
            ours = await broadcast_intent(db, signer=h.signer)
            (a_row,) = await db.rebalance_history()
            assert a_row.status == "PENDING"
            async with h.running("B", key=other_key, config_path=config_b) as b:
                await b.logged("executor_ready")
                theirs = await broadcast_intent(db, signer=other)
                main, beta = (await db.portfolio("main")).id, (await db.portfolio("beta")).id
                a_now = (await db.rebalance_history(main))[0]
                assert (a_now.id, a_now.status) == (a_row.id, "PENDING")  # B left it alone
                assert (await db.rebalance_history(beta))[0].status == "PENDING"
                await evm_mine(chain)
                rows = await h.settled(finished=2)
                await trio.sleep(SETTLE_PAUSE)
                await h.healthy()
                await h.healthy(config_b)
                a.assert_alive()
                b.assert_alive()
        by_portfolio = {r.portfolio_id: r for r in terminal(rows)}
        assert len(terminal(rows)) == 2, describe(rows)
        assert by_portfolio[main].status == "SUCCESS", describe(rows)
        assert by_portfolio[beta].status == "SUCCESS", describe(rows)
        assert by_portfolio[main].transaction_hash == ours.tx_hash
        assert by_portfolio[beta].transaction_hash == theirs.tx_hash
        assert await chain.get_transaction_count(h.signer, "latest") == h.nonce_before + 1
        assert await chain.get_transaction_count(other, "latest") == other_nonce + 1
        await h.traded_back()
        await h.traded_back(second.address)
        # Two portfolios moved by one market move: two swaps in all, one per signer.
        await h.referee(max_swaps=2, signers=[h.signer, other])


# --- 10: two processes, the same signer ---------------------------------------------------------


async def test_second_process_with_the_same_signer_stands_by_then_takes_over(
    harness_factory: Callable[..., Awaitable[Harness]], scenario: Scenario
) -> None:
    """B waits on the signer lease while A has a transaction in flight and sends nothing; A is
    SIGKILLed; B takes the lease over (A is provably dead), recovers A's intent, trades once."""
    scenario.finding = "4"
    scenario.injected = "automine off; a standby driftd with the same signer; SIGKILL of the active"
    with trio.fail_after(SCENARIO_SECONDS):
        h = await harness_factory(execution={"receipt_timeout": 30.0})
        chain, db = h.chain, h.db
        await move_price(chain, h.devnet, "WETH", MOVE)
        await h.mark_start()
        async with automine_off(chain), h.running("active") as a:
            ours = await broadcast_intent(db)
            async with h.running("standby") as b:
                await b.logged("signer_lease_held")
                assert b.count("executor_ready") == 0
                await trio.sleep(0.5)
                assert [i.id for i in await db.intents_by_status()] == [ours.id]
                assert await chain.get_transaction_count(h.signer, "pending") == ours.nonce + 1
                await a.sigkill()
                h.scenario.kills += 1
                h.scenario.faults += 1
                await b.logged("signer_lease_taken_over", within=12)
                await b.logged("executor_ready")
                await evm_mine(chain)
                (row,) = terminal(await h.settled())
                await trio.sleep(SETTLE_PAUSE)
                await h.healthy()  # the standby's socket, over the SIGKILLed one's stale file
                b.assert_alive()
        assert row.status == "SUCCESS", describe([row])
        assert row.transaction_hash == ours.tx_hash
        assert await chain.get_transaction_count(h.signer, "latest") == h.nonce_before + 1
        await h.traded_back()
        await h.referee(max_swaps=1)


# --- 11-12: PostgreSQL restarted, PostgreSQL unreachable ----------------------------------------


async def test_postgres_restarted_mid_attempt_the_daemon_stays_up_and_finishes(
    harness_factory: Callable[..., Awaitable[Harness]],
    scenario: Scenario,
    server: PostgresServer,
) -> None:
    """PostgreSQL is restarted while our transaction is in the pool, and the transaction is
    mined while the server is down: the daemon stays up, records the receipt once the server is
    back, and finishes the attempt SUCCESS."""
    scenario.finding = "8"
    scenario.injected = (
        "automine off; PostgreSQL restarted while the transaction is BROADCAST, the block mined "
        "while it is down"
    )
    with trio.fail_after(SCENARIO_SECONDS):
        h = await harness_factory(execution={"receipt_timeout": 30.0})
        chain, db = h.chain, h.db
        await move_price(chain, h.devnet, "WETH", MOVE)
        await h.mark_start()
        async with automine_off(chain), h.running() as daemon:
            ours = await broadcast_intent(db)
            # A restart (stop + start on the same port) with the receipt arriving in between.
            # Blocking calls: they hold this test's loop only; the daemon is another process.
            server.stop()
            scenario.faults += 1
            try:
                await evm_mine(chain)
                await trio.sleep(2)
                daemon.assert_alive()
            finally:
                server.start()
            (row,) = terminal(await h.settled())
            await trio.sleep(SETTLE_PAUSE)
            await h.healthy()  # the database probe sees the server again
            daemon.assert_alive()
        assert row.status == "SUCCESS", describe([row])
        assert row.transaction_hash == ours.tx_hash
        assert await chain.get_transaction_count(h.signer, "latest") == h.nonce_before + 1
        await h.referee(max_swaps=1)


async def test_postgres_unreachable_while_the_market_moves_no_trade_until_it_is_back(
    chain: ChainClient,
    devnet: Devnet,
    db: dbm.Database,
    db_config: DatabaseConfig,
    tmp_path: Path,
    scenario: Scenario,
    server: PostgresServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The market moves while PostgreSQL is down for 5 s: nothing is signed without a durable
    intent, the (in-process) daemon stays up, and trades once when the database is back."""
    monkeypatch.setattr(probes, "PROBE_SECONDS", 0.5)  # health sees the outage end sooner
    scenario.finding = "8"
    scenario.injected = "PostgreSQL stopped for 5 s; the market moves meanwhile"
    config = overrides()
    h = Harness(chain, devnet, db, db_config, tmp_path, scenario, tmp_path, devnet.signer_key)
    with trio.fail_after(SCENARIO_SECONDS):
        await setup_portfolio(chain, devnet, db_config, tmp_path, **config)
        await h.mark_start()
        async with running_daemon(devnet, db_config, **config) as daemon:
            await poll(lambda: _evaluated(daemon, "main", 2), "first evaluations")
            server.stop()
            scenario.faults += 1
            try:
                await move_price(chain, devnet, "WETH", MOVE)
                seen = daemon.supervisor.actors["main"].state.evaluations
                await trio.sleep(5)
                # The actor evaluated the drift meanwhile, and nothing was signed.
                assert daemon.supervisor.actors["main"].state.evaluations > seen
                assert await chain.get_transaction_count(h.signer, "pending") == h.nonce_before
                assert not DaemonControls(daemon).health()["database"]["ok"]
            finally:
                server.start()
            (row,) = terminal(await h.settled())
            await trio.sleep(SETTLE_PAUSE)

            async def health_ok() -> bool:
                return bool(DaemonControls(daemon).health()["status"] == "ok")

            await poll(health_ok, "health ok again", within=15)
        rows = await h.settled()
        assert terminal(rows) == [row], describe(rows)
        assert row.status == "SUCCESS", describe(rows)
        assert await chain.get_transaction_count(h.signer, "latest") == h.nonce_before + 1
        await h.traded_back()
        await h.referee(max_swaps=1)


async def _evaluated(daemon: Any, name: str, count: int) -> bool:
    actor = daemon.supervisor.actors.get(name)
    return actor is not None and actor.state.evaluations >= count


# --- 13: pause survives a restart ---------------------------------------------------------------


async def test_pause_survives_a_restart_and_resume_trades_once(
    harness_factory: Callable[..., Awaitable[Harness]], scenario: Scenario
) -> None:
    """`driftd pause` is durable: after a restart the drifted portfolio stays untouched until
    `driftd resume`, which trades it once."""
    scenario.finding = "9"
    scenario.injected = "`driftd pause` over the control socket; restart; the market moves"
    scenario.faults = 1
    with trio.fail_after(SCENARIO_SECONDS):
        h = await harness_factory()
        chain, db = h.chain, h.db
        await h.mark_start()
        async with h.running("before") as daemon:
            await daemon.logged("ready")
            assert await run_cli(["pause", "main"], h.config_path, h.env) == 0
            assert (await db.portfolio("main")).is_paused
        await move_price(chain, h.devnet, "WETH", MOVE)
        async with h.running("after") as daemon:
            await daemon.logged("ready")
            await poll(
                lambda: _at_least(daemon.count("rebalance_skipped", reason="paused"), 3),
                "paused evaluations",
            )
            assert await db.rebalance_history() == []
            assert await chain.get_transaction_count(h.signer, "pending") == h.nonce_before
            assert await run_cli(["resume", "main"], h.config_path, h.env) == 0
            (row,) = terminal(await h.settled())
            await trio.sleep(SETTLE_PAUSE)
            await h.healthy()
            daemon.assert_alive()
    assert row.status == "SUCCESS", describe([row])
    assert len(terminal(await db.rebalance_history())) == 1
    assert await chain.get_transaction_count(h.signer, "latest") == h.nonce_before + 1
    await h.traded_back()
    await h.referee(max_swaps=1)


async def _at_least(value: int, n: int) -> bool:
    return value >= n


# --- 14: a crash loop at after_intent -----------------------------------------------------------


async def test_crash_loop_at_after_intent_then_a_normal_start_trades_once(
    harness_factory: Callable[..., Awaitable[Harness]], scenario: Scenario
) -> None:
    """Three starts in a row die right after recording their intent. A start signs anew only
    when the previous intent can no longer trade, so between starts chain time moves past the
    trade's deadline (a crash loop slower than the swap deadline): each start first settles the
    previous start's nonce (the expired swap trades nothing: reverted or cancelled), and only
    then plans and signs at the next nonce. A fourth, normal start settles the last intent: one
    swap on chain, consecutive nonces, one truthful row per attempt."""
    scenario.injected = (
        "SIGKILL at after_intent on 3 consecutive starts (chain time past the deadline between "
        "them), then a normal start"
    )
    deadline = 120
    with trio.fail_after(SCENARIO_SECONDS + 20):
        h = await harness_factory(execution={"deadline_seconds": deadline})
        chain, db = h.chain, h.db
        await move_price(chain, h.devnet, "WETH", MOVE)
        await h.mark_start()
        for start in range(3):
            if start:
                await evm_increase_time(chain, deadline + 60)
                await evm_mine(chain)
                scenario.faults += 1
            await h.killed_at("after_intent=kill")
        nonces = sorted({i.nonce for i in await db.intents_by_status("SIGNED")})
        async with h.running("normal") as daemon:
            rows = await h.settled(finished=3)
            await trio.sleep(SETTLE_PAUSE)
            await h.healthy()
            daemon.assert_alive()
        rows = await h.settled()
        attempts = terminal(rows)
        assert [r.status for r in attempts] == ["FAILED", "FAILED", "SUCCESS"], describe(rows)
        for voided in attempts[:2]:
            assert "reverted" in (voided.error or "") or "cancelled" in (voided.error or "")
        intents = [i for r in attempts for i in await db.intents_for_rebalance(r.id)]
        # One nonce per attempt, consecutive; no attempt signed at a nonce another one used.
        by_attempt = {r.id: {i.nonce for i in intents if i.rebalance_id == r.id} for r in attempts}
        assert [len(n) for n in by_attempt.values()] == [1, 1, 1], by_attempt
        assert sorted(n for ns in by_attempt.values() for n in ns) == [
            h.nonce_before + k for k in range(3)
        ]
        assert nonces == [h.nonce_before + 2]  # the last start's intent was left SIGNED
        assert await chain.get_transaction_count(h.signer, "latest") == h.nonce_before + 3
        await h.traded_back()
        await h.referee(max_swaps=1)


# --- 16: an intent whose deadline passed while the daemon was down --------------------------------


async def test_intent_past_its_deadline_at_restart_is_cancelled_not_broadcast(
    harness_factory: Callable[..., Awaitable[Harness]], scenario: Scenario
) -> None:
    """Killed right after the intent was recorded (never sent); chain time passes the swap's
    deadline before the restart. The swap can now only revert, so recovery must not broadcast
    it: the nonce is consumed by a 0-value cancel (DESIGN: "past the trade's deadline a trade is
    replaced by a cancel"), the row says FAILED/cancelled, and after the failure backoff the
    portfolio trades once with a fresh plan."""
    scenario.finding = "6"
    scenario.injected = "SIGKILL after the intent; chain time past the swap deadline; restart"
    deadline = 120
    with trio.fail_after(SCENARIO_SECONDS):
        h = await harness_factory(execution={"deadline_seconds": deadline})
        chain, db = h.chain, h.db
        await move_price(chain, h.devnet, "WETH", MOVE)
        await h.mark_start()
        await h.killed_at("after_intent=kill")
        (expired,) = await db.intents_by_status()
        await evm_increase_time(chain, deadline + 60)
        await evm_mine(chain)
        scenario.faults += 1
        async with h.running("restart"):
            rows = await h.settled(finished=2)
            await trio.sleep(SETTLE_PAUSE)
            await h.healthy()
        voided, retried = terminal(rows)
        intents = await db.intents_for_rebalance(voided.id)
        by_purpose = {i.purpose: i for i in intents}
        swap = by_purpose["swap"]
        assert swap.tx_hash == expired.tx_hash
        scenario.outcome = f"expired swap intent {swap.status}, " + ", ".join(
            f"{i.purpose} {i.status}" for i in intents
        )
        assert voided.status == "FAILED", describe(rows)
        assert retried.status == "SUCCESS", describe(rows)
        assert await chain.get_transaction_count(h.signer, "latest") == h.nonce_before + 2
        await h.referee(max_swaps=1)
        # The expired swap never went on chain: a cancel consumed its nonce.
        receipt = await chain.get_transaction_receipt(expired.tx_hash)
        assert receipt is None, (
            f"recovery broadcast the swap although its deadline had passed: it was mined and "
            f"reverted (status {receipt.status}, {receipt.gas_used} gas) instead of being "
            f"replaced by a cancel; intents: {[(i.purpose, i.status) for i in intents]}"
        )
        assert "cancel" in by_purpose, intents
        assert by_purpose["cancel"].status == "CONFIRMED", intents

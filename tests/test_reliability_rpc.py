"""Reliability suite, RPC faults: the real daemon behind a fault-injecting proxy in front of anvil.

Every scenario registers the 50/30/20 portfolio through the CLI (directly on anvil), runs the
in-process daemon against :mod:`rpc_proxy`, makes one market move (WETH × 1.3) and injects its
faults. It waits until a terminal row exists and the executor has settled every nonce, lets a few
more evaluations pass (they must not trade again), stops the daemon and hands the chain and the
database to the referee (:func:`reliability.check_invariants`): one terminal row per attempt that
tells the truth, no live intent, no nonce gap, every mined transaction recorded, each market move
traded at most once. Each scenario also asserts its own expected outcome.

Timings are shortened for the suite (poll every 0.1 s, backoff after a FAILED attempt 0.3 s, no
cooldown: a second trade would not be hidden by the cooldown), and the daemon's JSON-RPC client
retries once with a 1 s timeout, so the lifecycle itself meets the faults the client cannot hide.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping, Sequence
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any, Final, TypeVar

import attrs
import pytest
import structlog
import trio
from daemon_harness import Clock, move_price
from reliability import Scenario, check_invariants
from rpc_proxy import (
    DropConnection,
    Fault,
    Garbage,
    GarbageAfterForward,
    HangAfterForward,
    Latency,
    LoseReply,
    RateLimited,
    RpcErrorReply,
    RpcProxy,
    Rule,
    ServerError,
    StaleHead,
    WrongChainId,
    rpc_proxy,
)
from test_daemon import coingecko_from_pools, running_daemon, setup_portfolio

from daemon import db as dbm
from daemon.abi import hex_int
from daemon.app import Daemon
from daemon.chain import ChainClient
from daemon.config import DatabaseConfig
from daemon.control import DaemonControls
from daemon.devtools.devnet_anvil import (
    evm_increase_time,
    evm_mine,
    evm_set_automine,
    set_eth_balance,
)
from daemon.devtools.devnet_records import Devnet
from daemon.signer import TxRequest, TxSigner

pytestmark = [pytest.mark.reliability, pytest.mark.chain, pytest.mark.db]
__all__ = ["coingecko_from_pools"]  # a fixture of test_daemon's, used here too

T = TypeVar("T")

SCENARIO_LIMIT: Final = 25.0
"""Seconds one scenario may take at most (they take ~3–8 s)."""
WAIT_LIMIT: Final = 15.0
"""Seconds any single wait inside a scenario may take."""
QUIET_EVALUATIONS: Final = 3
"""Evaluations every portfolio must go through after the outcome, without trading again."""
ALL_INTENTS: Final[tuple[dbm.IntentStatus, ...]] = (
    "SIGNED",
    "BROADCAST",
    "CONFIRMED",
    "REVERTED",
    "REPLACED",
    "DROPPED",
)
HIGH_BASE_FEE: Final = 100 * 10**9
"""A base fee spike (wei) far above what the daemon's open transaction bids."""

BASE_OVERRIDES: Final[Mapping[str, Mapping[str, Any]]] = {
    "chain": {"request_timeout": 1.0, "max_retries": 1},
    "execution": {
        "poll_interval": 0.1,
        "receipt_timeout": 30.0,
        "failure_backoff": 0.3,
        "failure_backoff_max": 1.0,
        "stuck_after": 60.0,
    },
    "rebalance": {"cooldown_minutes": 0},
}


# --- the harness ------------------------------------------------------------------------------


def _merged(*layers: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    merged: dict[str, dict[str, Any]] = {}
    for layer in layers:
        for section, values in layer.items():
            merged.setdefault(section, {}).update(values)
    return merged


@attrs.define(eq=False)
class Run:
    """One running scenario: the daemon behind the proxy, and what was done to it."""

    chain: ChainClient
    devnet: Devnet
    db: dbm.Database
    daemon: Daemon
    proxy: RpcProxy
    since_block: int
    portfolios: tuple[str, ...]
    logs: list[MutableMapping[str, Any]]
    moves: int = 0
    other_faults: int = 0
    """Faults done directly to the node (not through a proxy rule): drops, fee spikes…"""
    rules: list[Rule] = attrs.Factory(list)
    foreign_hashes: list[str] = attrs.Factory(list)

    # --- faults ---

    def inject(
        self, method: str | None, fault: Fault, *, times: int | None = 1, every: int | None = None
    ) -> Rule:
        rule = self.proxy.inject(method, fault, times=times, every=every)
        self.rules.append(rule)
        return rule

    @property
    def faults(self) -> int:
        return sum(rule.applied for rule in self.rules) + self.other_faults

    async def move(self) -> None:
        """The scenario's market move: WETH 30 % up (the portfolio drifts ~20 %)."""
        await move_price(self.chain, self.devnet, "WETH", Decimal("1.3"))
        self.moves += 1

    # --- what the daemon did ---

    async def rows(self, name: str = "main") -> list[dbm.RebalanceLogEntry]:
        """Every row of the portfolio, oldest first."""
        portfolio_id = (await self.db.portfolio(name)).id
        return list(reversed(await self.db.rebalance_history(portfolio_id, limit=1000)))

    async def finished(self, name: str = "main") -> list[dbm.RebalanceLogEntry]:
        return [row for row in await self.rows(name) if row.status != "PENDING"]

    async def intents(self) -> list[dbm.TxIntent]:
        """Every recorded intent, by nonce then id."""
        return await self.db.intents_by_status(*ALL_INTENTS)

    async def intents_with(self, *statuses: dbm.IntentStatus) -> list[dbm.TxIntent]:
        return await self.db.intents_by_status(*statuses)

    def idle(self) -> bool:
        """No request in the executor and no nonce unsettled."""
        executor = self.daemon.executor
        return (
            executor.status.pending == 0
            and executor.status.recovering == 0
            and not executor.transactions.slots
        )

    def evaluations(self, name: str = "main") -> int:
        actor = self.daemon.supervisor.actors.get(name)
        return -1 if actor is None else actor.state.evaluations

    def events(self, name: str) -> list[MutableMapping[str, Any]]:
        return [entry for entry in self.logs if entry.get("event") == name]

    async def until(
        self, predicate: Callable[[], Awaitable[T | None]], what: str, within: float = WAIT_LIMIT
    ) -> T:
        with trio.move_on_after(within):
            while True:
                result = await predicate()
                if result:
                    return result
                await trio.sleep(0.05)
        statuses = {name: [r.status for r in await self.rows(name)] for name in self.portfolios}
        intents = [(i.nonce, i.purpose, i.status) for i in await self.intents()]
        raise AssertionError(
            f"timed out after {within} s waiting for {what}; rows {statuses}; intents {intents}; "
            f"blocked {self.daemon.executor.transactions.blocked()!r}; "
            f"slots {sorted(self.daemon.executor.transactions.slots)}"
        )

    async def broadcast(self, purpose: str = "swap") -> dbm.TxIntent:
        """Our transaction of ``purpose``, once the node is seen to have it."""

        async def found() -> dbm.TxIntent | None:
            live = await self.intents_with("BROADCAST")
            return next((i for i in live if i.purpose == purpose), None)

        return await self.until(found, f"a {purpose} transaction in the pool")

    async def rows_are(self, name: str, count: int) -> list[dbm.RebalanceLogEntry] | None:
        rows = await self.finished(name)
        return rows if len(rows) >= count else None

    async def settled(self, name: str = "main", rows: int = 1) -> list[dbm.RebalanceLogEntry]:
        """Once ``name`` has at least ``rows`` terminal rows, no PENDING row is left and the
        executor is idle: a few more evaluations of every portfolio, which must not add an
        attempt or sign anything. Returns the portfolio's terminal rows, oldest first."""

        async def done() -> bool:
            if len(await self.finished(name)) < rows or not self.idle():
                return False
            for portfolio in self.portfolios:
                if any(r.status == "PENDING" for r in await self.rows(portfolio)):
                    return False
            return True

        await self.until(done, f"{rows} terminal row(s) of {name} and an idle executor")
        before = {p: [r.id for r in await self.finished(p)] for p in self.portfolios}
        intents_before = len(await self.intents())
        seen = {p: self.evaluations(p) for p in self.portfolios}

        async def evaluated() -> bool:
            return all(self.evaluations(p) >= seen[p] + QUIET_EVALUATIONS for p in seen)

        await self.until(evaluated, "more evaluations")
        for portfolio in self.portfolios:
            assert [r.id for r in await self.finished(portfolio)] == before[portfolio], (
                f"{portfolio}: a new attempt after the outcome: "
                f"{[(r.status, r.error or r.skip_reason) for r in await self.rows(portfolio)]}"
            )
        assert len(await self.intents()) == intents_before, "signed again after the outcome"
        assert self.idle()
        return await self.finished(name)

    async def outcome_words(self) -> str:
        parts = []
        for name in self.portfolios:
            statuses = [r.status for r in await self.finished(name)]
            parts.append(f"{name}: {', '.join(statuses) or 'no row'}")
        return "; ".join(parts)


@asynccontextmanager
async def trading(
    chain: ChainClient,
    devnet: Devnet,
    db_config: DatabaseConfig,
    db: dbm.Database,
    tmp_path: Path,
    scenario: Scenario,
    *,
    portfolios: Sequence[str] = ("main",),
    automine: bool = True,
    move_first: bool = False,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> AsyncIterator[Run]:
    """Register the portfolio(s), start the proxy and the daemon behind it; on leaving, stop
    both and record the referee's checks in ``scenario``.

    ``move_first``: the market move is made before the daemon starts (needed when blocks are
    mined by hand: the move's own swaps need automine). ``automine=False`` then turns automine
    off before the daemon starts: nothing is mined until the scenario calls ``evm_mine``.
    """
    for index, name in enumerate(portfolios):
        await setup_portfolio(
            chain, devnet, db_config, tmp_path, name, index, register_tokens_too=index == 0
        )
    moves = 0
    if move_first:
        await move_price(chain, devnet, "WETH", Decimal("1.3"))
        moves = 1
    since_block = hex_int(await chain.request("eth_blockNumber"))
    run: Run | None = None
    try:
        if not automine:
            await evm_set_automine(chain, False)
        with structlog.testing.capture_logs() as logs:
            async with rpc_proxy(devnet.rpc_url) as proxy:
                config = _merged(BASE_OVERRIDES, {"chain": {"rpc_url": proxy.url}}, overrides or {})
                async with running_daemon(devnet, db_config, Clock(), **config) as daemon:
                    run = Run(
                        chain=chain,
                        devnet=devnet,
                        db=db,
                        daemon=daemon,
                        proxy=proxy,
                        since_block=since_block,
                        portfolios=tuple(portfolios),
                        logs=logs,
                        moves=moves,
                    )
                    try:
                        yield run
                    finally:
                        # As on SIGTERM: no new attempt; the one in flight (after a failed
                        # expectation) gets a few seconds to end its row.
                        await daemon.gate.drain(5.0)
    finally:
        # The daemon and the proxy are stopped. The referee runs whatever happened (a failed
        # expectation still gets its invariants in the report), shielded from a timeout.
        with trio.CancelScope(shield=True), trio.move_on_after(20):
            await evm_set_automine(chain, True)
            if run is not None:
                scenario.faults = run.faults
                words = await run.outcome_words()
                scenario.outcome = f"{words}; {scenario.outcome}" if scenario.outcome else words
                scenario.checks.extend(
                    await check_invariants(
                        chain,
                        db,
                        devnet.signer,
                        since_block=since_block,
                        max_swaps=run.moves * len(portfolios),
                        foreign_hashes=run.foreign_hashes,
                    )
                )


def assert_invariants(scenario: Scenario) -> None:
    assert scenario.checks, "the invariants were not checked"
    assert all(c.ok for c in scenario.checks), scenario.checks


async def one_mined_swap(
    run: Run, row: dbm.RebalanceLogEntry, *, versions: int | None = 1
) -> dbm.TxIntent:
    """``row`` is SUCCESS and its one swap transaction is mined, successfully, with the hash
    the row names; ``versions`` signed versions of that nonce (None: any)."""
    assert row.status == "SUCCESS", (row.error, row.skip_reason)
    intents = await run.db.intents_for_rebalance(row.id)
    confirmed = [i for i in intents if i.status == "CONFIRMED"]
    assert [i.purpose for i in confirmed] == ["swap"], intents
    (swap,) = confirmed
    assert swap.tx_hash == row.transaction_hash
    assert len({i.nonce for i in intents}) == 1
    if versions is not None:
        assert len(intents) == versions, intents
    receipt = await run.chain.get_transaction_receipt(swap.tx_hash)
    assert receipt is not None
    assert receipt.succeeded
    assert receipt.gas_used == row.gas_used
    return swap


async def nothing_traded(run: Run, row: dbm.RebalanceLogEntry) -> None:
    """``row`` is FAILED and no swap of it was mined."""
    assert row.status == "FAILED", (row.status, row.error)
    intents = await run.db.intents_for_rebalance(row.id)
    assert not [i for i in intents if i.purpose == "swap" and i.status == "CONFIRMED"], intents


# --- the send: the node may or may not have the transaction -------------------------------------

SEND_FAULTS: Final = [
    pytest.param(
        "7",
        LoseReply(),
        1,
        "the node accepted the send, its reply was lost (connection closed)",
        id="send_reply_lost_after_the_node_accepted",
    ),
    pytest.param(
        "1",
        HangAfterForward(2.0),
        1,
        "the node accepted the send, its reply was held past the client's 1 s timeout",
        id="send_timeout_after_the_node_accepted",
    ),
    pytest.param(
        "7",
        GarbageAfterForward(),
        1,
        "the node accepted the send, the reply was an HTML page",
        id="send_garbage_reply_after_the_node_accepted",
    ),
    pytest.param(
        "1",
        RpcErrorReply(-32003, "insufficient funds for gas * price + value"),
        1,
        "the first send refused with -32003 insufficient funds (not forwarded)",
        id="send_refused_once_with_insufficient_funds",
    ),
    pytest.param(
        "1",
        Latency(1.5),
        2,
        "two sends held 1.5 s (past the client's 1 s timeout), then forwarded: the node gets "
        "the transaction after the client gave up",
        id="send_reaches_the_node_after_the_client_gave_up",
    ),
    pytest.param(
        "7",
        RpcErrorReply(-32000, "already known"),
        1,
        "the first send answered 'already known' although the node never got it",
        id="send_falsely_answered_already_known",
    ),
    pytest.param(
        "7",
        RpcErrorReply(-32000, "nonce too low"),
        1,
        "the first send answered 'nonce too low' although the node never got it",
        id="send_falsely_answered_nonce_too_low",
    ),
    pytest.param(
        "",
        RateLimited(0.3),
        2,
        "two sends answered 429 with Retry-After 0.3 s (not forwarded)",
        id="send_rate_limited_with_retry_after",
    ),
    pytest.param(
        "",
        ServerError(503),
        2,
        "two sends answered 503 (not forwarded)",
        id="send_server_error_503",
    ),
    pytest.param(
        "",
        DropConnection(),
        2,
        "two sends dropped without an answer (not forwarded)",
        id="send_connection_dropped",
    ),
]


@pytest.mark.parametrize(("finding", "fault", "times", "words"), SEND_FAULTS)
async def test_a_failed_send_never_abandons_the_transaction(
    chain: ChainClient,
    devnet: Devnet,
    db_config: DatabaseConfig,
    db: dbm.Database,
    tmp_path: Path,
    scenario: Scenario,
    finding: str,
    fault: Fault,
    times: int,
    words: str,
) -> None:
    """Whatever the send's answer, the next observation asks the node: one SUCCESS row, one
    signed version, the swap mined once."""
    scenario.finding, scenario.injected = finding, words
    with trio.fail_after(SCENARIO_LIMIT):
        async with trading(chain, devnet, db_config, db, tmp_path, scenario) as run:
            rule = run.inject("eth_sendRawTransaction", fault, times=times)
            await run.move()
            (row,) = await run.settled()
            await one_mined_swap(run, row)
            assert rule.applied == times
            assert run.proxy.count("eth_sendRawTransaction") > times or isinstance(
                fault, LoseReply | HangAfterForward | GarbageAfterForward | Latency
            )
    assert_invariants(scenario)


async def test_sends_refused_until_the_signer_blocks_then_resume_at_the_same_nonce(
    chain: ChainClient,
    devnet: Devnet,
    db_config: DatabaseConfig,
    db: dbm.Database,
    tmp_path: Path,
    scenario: Scenario,
) -> None:
    """Three refused sends (not forwarded): the nonce blocks the signer for a while, nothing new
    is signed, then the same signed bytes go through."""
    scenario.finding = "1"
    scenario.injected = "three sends refused with -32003 insufficient funds (not forwarded)"
    with trio.fail_after(SCENARIO_LIMIT):
        async with trading(chain, devnet, db_config, db, tmp_path, scenario) as run:
            refusal = RpcErrorReply(-32003, "insufficient funds for gas * price + value")
            rule = run.inject("eth_sendRawTransaction", refusal, times=3)

            async def blocked() -> str | None:
                return run.daemon.executor.transactions.blocked()

            await run.move()
            reason = await run.until(blocked, "the signer to be blocked")
            assert "insufficient funds" in reason
            (row,) = await run.settled()
            await one_mined_swap(run, row)
            assert rule.applied == 3
            assert run.daemon.executor.transactions.blocked() is None
    assert_invariants(scenario)


# --- watching for the receipt --------------------------------------------------------------------


async def test_garbled_receipt_checks_are_asked_again(
    chain: ChainClient,
    devnet: Devnet,
    db_config: DatabaseConfig,
    db: dbm.Database,
    tmp_path: Path,
    scenario: Scenario,
) -> None:
    """Every third observation (the JSON-RPC batch with eth_getTransactionReceipt) answered
    with an HTML page, while the transaction waits in the pool and after it is mined."""
    scenario.finding = "7"
    scenario.injected = (
        "every 3rd receipt check answered with a non-JSON page (whole run); blocks mined by hand"
    )
    with trio.fail_after(SCENARIO_LIMIT):
        async with trading(
            chain, devnet, db_config, db, tmp_path, scenario, automine=False, move_first=True
        ) as run:
            rule = run.inject("eth_getTransactionReceipt", Garbage(), times=None, every=3)
            await run.broadcast()
            await run.until(_at_least(rule, 2), "two garbled checks")
            await evm_mine(chain)
            await evm_set_automine(chain, True)
            (row,) = await run.settled()
            await one_mined_swap(run, row)
            assert rule.applied >= 2
    assert_invariants(scenario)


def _at_least(rule: Rule, count: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return rule.applied >= count

    return check


@pytest.mark.parametrize(
    ("method", "fault", "words"),
    [
        pytest.param(
            "eth_getTransactionReceipt",
            ServerError(503),
            "every receipt check answered 503 for ~1.5 s after the swap was mined",
            id="receipt_checks_503",
        ),
        pytest.param(
            "eth_getTransactionReceipt",
            DropConnection(),
            "every receipt check dropped for ~1.5 s after the swap was mined",
            id="receipt_checks_dropped",
        ),
        pytest.param(
            None,
            ServerError(502),
            "the whole node answered 502 for ~1.5 s after the swap was mined",
            id="whole_node_down",
        ),
    ],
)
async def test_an_outage_while_waiting_for_the_receipt_ends_nothing(
    chain: ChainClient,
    devnet: Devnet,
    db_config: DatabaseConfig,
    db: dbm.Database,
    tmp_path: Path,
    scenario: Scenario,
    method: str | None,
    fault: Fault,
    words: str,
) -> None:
    scenario.finding, scenario.injected = "1", words
    with trio.fail_after(SCENARIO_LIMIT):
        async with trading(
            chain, devnet, db_config, db, tmp_path, scenario, automine=False, move_first=True
        ) as run:
            ours = await run.broadcast()
            rule = run.inject(method, fault, times=None)
            await evm_mine(chain)  # mined, but the daemon cannot see it
            await run.until(_at_least(rule, 3), "three failed checks")
            await trio.sleep(0.5)
            assert [r.status for r in await run.rows()] == ["PENDING"]
            assert [i.tx_hash for i in await run.intents()] == [ours.tx_hash]
            run.proxy.remove(rule)
            await evm_set_automine(chain, True)
            (row,) = await run.settled()
            swap = await one_mined_swap(run, row)
            assert swap.tx_hash == ours.tx_hash
    assert_invariants(scenario)


async def test_latency_on_every_call(
    chain: ChainClient,
    devnet: Devnet,
    db_config: DatabaseConfig,
    db: dbm.Database,
    tmp_path: Path,
    scenario: Scenario,
) -> None:
    scenario.injected = "0.2 s latency on every JSON-RPC request (whole run)"
    with trio.fail_after(SCENARIO_LIMIT):
        async with trading(chain, devnet, db_config, db, tmp_path, scenario) as run:
            rule = run.inject(None, Latency(0.2), times=None)
            await run.move()
            (row,) = await run.settled()
            await one_mined_swap(run, row)
            assert rule.applied > 10
    assert_invariants(scenario)


# --- a node that is wrong -------------------------------------------------------------------------


async def test_a_node_of_another_chain_gets_nothing_signed_and_trading_resumes(
    chain: ChainClient,
    devnet: Devnet,
    db_config: DatabaseConfig,
    db: dbm.Database,
    tmp_path: Path,
    scenario: Scenario,
) -> None:
    """The node says chain 1 from the market move on (a failover to another chain): nothing
    is signed; once it is right again the move is traded, once."""
    scenario.finding = "1"
    scenario.injected = "eth_chainId answered 1 (not 31337) for ~1.5 s around the market move"
    with trio.fail_after(SCENARIO_LIMIT):
        async with trading(chain, devnet, db_config, db, tmp_path, scenario) as run:
            rule = run.inject("eth_chainId", WrongChainId(1), times=None)
            await run.move()

            async def refused() -> bool:
                return rule.applied >= 1 and run.daemon.executor.transactions.blocked() is not None

            await run.until(refused, "the executor to notice the wrong chain")
            await trio.sleep(1.0)
            assert await run.intents() == []  # nothing signed for the wrong chain
            assert all(r.status in ("FAILED", "SKIPPED") for r in await run.finished())
            run.proxy.remove(rule)
            await run.until(lambda: _has_status(run, "SUCCESS"), "a trade after the node is right")
            rows = await run.settled(rows=len(await run.finished()))
            await one_mined_swap(run, rows[-1])
            for row in rows[:-1]:
                if row.status == "FAILED":
                    await nothing_traded(run, row)
    assert_invariants(scenario)


async def test_a_failover_to_another_chain_while_idle_stops_trading_with_an_alert(
    chain: ChainClient,
    devnet: Devnet,
    db_config: DatabaseConfig,
    db: dbm.Database,
    tmp_path: Path,
    scenario: Scenario,
) -> None:
    """Nothing in flight when the node starts answering another chain id: the executor's own
    periodic check notices it before any trade is planned (CHAIN_MISMATCH, health degraded); a
    market move meanwhile writes no row and signs nothing; once the node is right again, the
    move is traded once."""
    scenario.injected = "eth_chainId answered 1 (not 31337) while the daemon was idle"
    with trio.fail_after(SCENARIO_LIMIT):
        async with trading(chain, devnet, db_config, db, tmp_path, scenario) as run:
            executor = run.daemon.executor
            executor.chain_recheck = 0.2
            rule = run.inject("eth_chainId", WrongChainId(1), times=None)

            async def alerted() -> bool:
                return any(e.get("kind") == "CHAIN_MISMATCH" for e in run.events("alert"))

            await run.until(alerted, "the CHAIN_MISMATCH alert")
            health = DaemonControls(run.daemon).health()
            assert any("serves chain 1, not 31337" in p for p in health["problems"]), health
            await run.move()
            await trio.sleep(1.5)
            assert await run.intents() == []
            assert await run.finished() == []
            run.proxy.remove(rule)
            await run.until(lambda: _has_status(run, "SUCCESS"), "a trade after the node is right")
            (row,) = await run.settled()
            await one_mined_swap(run, row)
            assert run.events("chain_id_restored")
            assert [e for e in run.events("alert") if e.get("kind") == "CHAIN_MISMATCH"][1:] == []
    assert_invariants(scenario)


async def _has_status(run: Run, status: str, name: str = "main") -> bool:
    return any(r.status == status for r in await run.finished(name))


async def test_a_node_of_another_chain_while_the_swap_is_in_flight(
    chain: ChainClient,
    devnet: Devnet,
    db_config: DatabaseConfig,
    db: dbm.Database,
    tmp_path: Path,
    scenario: Scenario,
) -> None:
    scenario.finding = "1"
    scenario.injected = "eth_chainId answered 1 for ~1.5 s while our swap waited in the pool"
    with trio.fail_after(SCENARIO_LIMIT):
        async with trading(
            chain, devnet, db_config, db, tmp_path, scenario, automine=False, move_first=True
        ) as run:
            await run.broadcast()
            rule = run.inject("eth_chainId", WrongChainId(1), times=None)
            await run.until(_at_least(rule, 3), "three observations from the wrong chain")
            await evm_mine(chain)
            await trio.sleep(0.5)
            # A node of another chain settles nothing: the row waits.
            assert [r.status for r in await run.rows()] == ["PENDING"]
            assert run.daemon.executor.transactions.blocked() is not None
            run.proxy.remove(rule)
            await evm_set_automine(chain, True)
            (row,) = await run.settled()
            await one_mined_swap(run, row)
    assert_invariants(scenario)


async def test_a_stale_head_while_the_swap_is_mined(
    chain: ChainClient,
    devnet: Devnet,
    db_config: DatabaseConfig,
    db: dbm.Database,
    tmp_path: Path,
    scenario: Scenario,
) -> None:
    """The node is stuck at the block before our swap for ~1.5 s: the swap looks pending, the
    mined nonce old; nothing is decided, nothing re-signed; then it catches up."""
    scenario.injected = "the node's head frozen just before our swap was mined, for ~1.5 s"
    with trio.fail_after(SCENARIO_LIMIT):
        async with trading(
            chain, devnet, db_config, db, tmp_path, scenario, automine=False, move_first=True
        ) as run:
            ours = await run.broadcast()
            rule = run.inject(None, StaleHead(), times=None)
            await run.until(_at_least(rule, 1), "the head to freeze")
            await evm_mine(chain)
            await trio.sleep(1.5)
            assert [r.status for r in await run.rows()] == ["PENDING"]
            run.proxy.remove(rule)
            await evm_set_automine(chain, True)
            (row,) = await run.settled()
            swap = await one_mined_swap(run, row)
            assert swap.tx_hash == ours.tx_hash
    assert_invariants(scenario)


async def test_a_stale_head_hides_the_market_move_until_it_catches_up(
    chain: ChainClient,
    devnet: Devnet,
    db_config: DatabaseConfig,
    db: dbm.Database,
    tmp_path: Path,
    scenario: Scenario,
) -> None:
    scenario.injected = "the node's head frozen before the market move, for ~1.5 s"
    with trio.fail_after(SCENARIO_LIMIT):
        async with trading(chain, devnet, db_config, db, tmp_path, scenario) as run:
            rule = run.inject(None, StaleHead(), times=None)
            await run.until(_at_least(rule, 1), "the head to freeze")
            await run.move()
            await trio.sleep(1.5)
            assert await run.rows() == []  # a node that has not seen the move: nothing to do
            run.proxy.remove(rule)
            (row,) = await run.settled()
            await one_mined_swap(run, row)
    assert_invariants(scenario)


async def test_state_reads_from_a_lagging_backend_do_not_trade_the_move_again(
    chain: ChainClient,
    devnet: Devnet,
    db_config: DatabaseConfig,
    db: dbm.Database,
    tmp_path: Path,
    scenario: Scenario,
) -> None:
    """A load-balanced node whose eth_call backend lags behind the one answering
    eth_blockNumber: after our swap is mined, balances and prices are still read at the block
    before it. The plan made from them must not be traded again."""
    scenario.finding = "2"
    scenario.injected = (
        "eth_call (balances, prices, quotes) frozen at the block before our swap, while "
        "eth_blockNumber and receipts are current"
    )
    with trio.fail_after(SCENARIO_LIMIT):
        async with trading(
            chain, devnet, db_config, db, tmp_path, scenario, automine=False, move_first=True
        ) as run:
            ours = await run.broadcast()
            rule = run.inject("eth_call", StaleHead(), times=None)
            await run.until(_at_least(rule, 1), "the state reads to freeze")
            await evm_set_automine(chain, True)
            await evm_mine(chain)
            rows = await run.settled()
            swap = await one_mined_swap(run, rows[0])
            assert swap.tx_hash == ours.tx_hash
            assert [r.status for r in rows] == ["SUCCESS"]
    assert_invariants(scenario)


async def test_an_rpc_outage_with_oracle_prices_does_not_stop_the_portfolio(
    chain: ChainClient,
    devnet: Devnet,
    db_config: DatabaseConfig,
    db: dbm.Database,
    tmp_path: Path,
    scenario: Scenario,
    coingecko_from_pools: str,
) -> None:
    """Prices from the oracle keep coming while the node is down for ~2 s, so every
    evaluation fails to read balances. Once the node is back the daemon trades by itself."""
    scenario.finding = "1"
    scenario.injected = (
        "every JSON-RPC request answered 503 for ~2 s (prices from the CoinGecko-compatible "
        "oracle keep arriving)"
    )
    overrides = {"prices": {"source": "oracle", "coingecko_base_url": coingecko_from_pools}}
    with trio.fail_after(SCENARIO_LIMIT):
        async with trading(
            chain, devnet, db_config, db, tmp_path, scenario, overrides=overrides
        ) as run:
            await run.until(_evaluated(run, 1), "a first evaluation")
            rule = run.inject(None, ServerError(503), times=None)
            await trio.sleep(2.0)
            run.proxy.remove(rule)
            actor = run.daemon.supervisor.actors["main"]
            assert actor.status != "parked", (actor.restart_count, actor.last_error)
            await run.move()
            (row,) = await run.settled()
            await one_mined_swap(run, row)
            assert rule.applied > 0
    assert_invariants(scenario)


# --- gas estimates, gas money and fees ------------------------------------------------------------


async def test_a_failed_gas_estimate_fails_the_attempt_then_the_next_one_trades(
    chain: ChainClient,
    devnet: Devnet,
    db_config: DatabaseConfig,
    db: dbm.Database,
    tmp_path: Path,
    scenario: Scenario,
) -> None:
    scenario.injected = "eth_estimateGas answered a JSON-RPC error once"
    with trio.fail_after(SCENARIO_LIMIT):
        async with trading(chain, devnet, db_config, db, tmp_path, scenario) as run:
            rule = run.inject("eth_estimateGas", RpcErrorReply(-32000, "header not found"))
            await run.move()
            failed, succeeded = await run.settled(rows=2)
            await nothing_traded(run, failed)
            assert "header not found" in (failed.error or "")
            assert await db.intents_for_rebalance(failed.id) == []  # nothing was signed
            await one_mined_swap(run, succeeded)
            assert rule.applied == 1
    assert_invariants(scenario)


async def test_a_failing_portfolio_backs_off_instead_of_retrying_every_tick(
    chain: ChainClient,
    devnet: Devnet,
    db_config: DatabaseConfig,
    db: dbm.Database,
    tmp_path: Path,
    scenario: Scenario,
) -> None:
    scenario.finding = "9"
    scenario.injected = "eth_estimateGas always answered a JSON-RPC error; failure_backoff 60 s"
    overrides = {"execution": {"failure_backoff": 60.0, "failure_backoff_max": 600.0}}
    with trio.fail_after(SCENARIO_LIMIT):
        async with trading(
            chain, devnet, db_config, db, tmp_path, scenario, overrides=overrides
        ) as run:
            run.inject("eth_estimateGas", RpcErrorReply(-32000, "header not found"), times=None)
            await run.move()
            (row,) = await run.settled()
            await nothing_traded(run, row)
            seen = run.evaluations()
            await run.until(_evaluated(run, seen + 5), "five more evaluations")
            assert [r.status for r in await run.finished()] == ["FAILED"]
            assert run.proxy.count("eth_estimateGas") == 1  # one attempt, not one per tick
            state = run.daemon.supervisor.actors["main"].state
            assert state.failures == 1
            assert state.retry_at is not None
    assert_invariants(scenario)


def _evaluated(run: Run, count: int, name: str = "main") -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return run.evaluations(name) >= count

    return check


async def test_a_signer_out_of_gas_money_blocks_and_resumes_at_the_same_nonce(
    chain: ChainClient,
    devnet: Devnet,
    db_config: DatabaseConfig,
    db: dbm.Database,
    tmp_path: Path,
    scenario: Scenario,
) -> None:
    """Finding 1's first reproduction: the estimate passes, every send fails (-32003). No
    FAILED row for a trade that is later mined, no new nonce meanwhile; the signer is blocked
    (health degraded) until a top-up, then the same nonce goes through: one trade, no gap."""
    scenario.finding = "1"
    scenario.injected = "the signer's ETH cut to 1e12 wei before the move, topped up ~1 s later"
    with trio.fail_after(SCENARIO_LIMIT):
        async with trading(chain, devnet, db_config, db, tmp_path, scenario) as run:
            nonce = await chain.get_transaction_count(devnet.signer, "latest")
            await set_eth_balance(chain, devnet.signer, 10**12)
            run.other_faults += 1
            await run.move()
            executor = run.daemon.executor

            async def blocked() -> bool:
                return executor.transactions.blocked() is not None and (
                    executor.status.blocked is not None
                )

            await run.until(blocked, "the signer to be blocked")
            health = DaemonControls(run.daemon).health()
            assert health["status"] == "degraded", health["problems"]
            assert any("signer blocked" in p for p in health["problems"]), health["problems"]
            assert "insufficient funds" in (executor.transactions.blocked() or "").lower()
            assert run.events("signer_blocked")
            assert any(e.get("kind") == "SIGNER_BLOCKED" for e in run.events("alert"))
            await trio.sleep(1.0)  # blocked for a while: nothing else is signed, no row ends
            (intent,) = await run.intents()
            assert intent.nonce == nonce
            assert executor.transactions.next_nonce == nonce + 1
            assert [r.status for r in await run.rows()] == ["PENDING"]
            await set_eth_balance(chain, devnet.signer, 10**20)
            (row,) = await run.settled()
            swap = await one_mined_swap(run, row)
            assert swap.nonce == nonce
            assert swap.tx_hash == intent.tx_hash  # the same signed bytes
            assert executor.transactions.blocked() is None
            assert run.events("signer_unblocked")
    assert await chain.get_transaction_count(devnet.signer, "latest") == nonce + 1
    assert_invariants(scenario)


async def test_a_base_fee_spike_above_our_max_fee_is_re_signed_at_market_fees(
    chain: ChainClient,
    devnet: Devnet,
    db_config: DatabaseConfig,
    db: dbm.Database,
    tmp_path: Path,
    scenario: Scenario,
) -> None:
    scenario.finding = "1"
    scenario.injected = (
        "base fee spiked to 100 gwei (an empty block) while our swap, bidding less, was in the "
        "pool: anvil evicts it"
    )
    with trio.fail_after(SCENARIO_LIMIT):
        async with trading(
            chain, devnet, db_config, db, tmp_path, scenario, automine=False, move_first=True
        ) as run:
            ours = await run.broadcast()
            assert (ours.max_fee_per_gas or 0) < HIGH_BASE_FEE
            await chain.request("anvil_setNextBlockBaseFeePerGas", [hex(HIGH_BASE_FEE)])
            await evm_mine(chain)
            run.other_faults += 1
            assert await chain.get_transaction_receipt(ours.tx_hash) is None
            replacement = await run.until(
                lambda: _newer_broadcast(run, ours), "a re-signed version in the pool"
            )
            assert (replacement.max_fee_per_gas or 0) > HIGH_BASE_FEE
            assert replacement.nonce == ours.nonce
            await evm_set_automine(chain, True)
            await evm_mine(chain)
            (row,) = await run.settled()
            swap = await one_mined_swap(run, row, versions=2)
            assert swap.id == replacement.id
    assert_invariants(scenario)


async def _newer_broadcast(run: Run, than: dbm.TxIntent) -> dbm.TxIntent | None:
    live = await run.intents_with("BROADCAST")
    return next((i for i in live if i.id > than.id), None)


async def test_a_fee_ceiling_below_the_base_fee_signs_nothing(
    chain: ChainClient,
    devnet: Devnet,
    db_config: DatabaseConfig,
    db: dbm.Database,
    tmp_path: Path,
    scenario: Scenario,
) -> None:
    """max_fee_gwei 50 while the base fee is 100 gwei: nothing is signed (FAILED, with the
    reason), the portfolio backs off; as the base fee decays below the ceiling it trades."""
    scenario.injected = "base fee spiked to 100 gwei with execution.max_fee_gwei = 50"
    overrides = {"execution": {"max_fee_gwei": 50}}
    with trio.fail_after(SCENARIO_LIMIT):
        async with trading(
            chain, devnet, db_config, db, tmp_path, scenario, move_first=True, overrides=overrides
        ) as run:
            await chain.request("anvil_setNextBlockBaseFeePerGas", [hex(HIGH_BASE_FEE)])
            await evm_mine(chain)
            run.other_faults += 1
            first = await run.until(lambda: run.rows_are("main", 1), "a refused attempt")
            await nothing_traded(run, first[0])
            assert "fee ceiling" in (first[0].error or ""), first[0].error
            assert await run.intents() == []
            await evm_mine(chain, 8)  # 100 gwei × 0.875^8 ≈ 34 gwei: below the ceiling
            await run.until(lambda: _has_status(run, "SUCCESS"), "a trade")
            rows = await run.settled(rows=len(await run.finished()))
            await one_mined_swap(run, rows[-1])
            for row in rows[:-1]:
                await nothing_traded(run, row)
    assert_invariants(scenario)


# --- the pool loses it, the deadline passes, someone else takes the nonce -------------------------


async def test_a_transaction_dropped_from_the_pool_is_rebroadcast(
    chain: ChainClient,
    devnet: Devnet,
    db_config: DatabaseConfig,
    db: dbm.Database,
    tmp_path: Path,
    scenario: Scenario,
) -> None:
    scenario.injected = "our swap dropped from anvil's pool (anvil_dropTransaction)"
    with trio.fail_after(SCENARIO_LIMIT):
        async with trading(
            chain, devnet, db_config, db, tmp_path, scenario, automine=False, move_first=True
        ) as run:
            ours = await run.broadcast()
            sends = run.proxy.count("eth_sendRawTransaction")
            await chain.request("anvil_dropTransaction", [ours.tx_hash])
            run.other_faults += 1

            async def back_in_the_pool() -> bool:
                known = await chain.request("eth_getTransactionByHash", [ours.tx_hash])
                return run.proxy.count("eth_sendRawTransaction") > sends and known is not None

            await run.until(back_in_the_pool, "the same bytes sent again")
            await evm_set_automine(chain, True)
            await evm_mine(chain)
            (row,) = await run.settled()
            swap = await one_mined_swap(run, row)
            assert swap.tx_hash == ours.tx_hash
    assert_invariants(scenario)


async def test_a_swap_stuck_past_its_deadline_is_cancelled(
    chain: ChainClient,
    devnet: Devnet,
    db_config: DatabaseConfig,
    db: dbm.Database,
    tmp_path: Path,
    scenario: Scenario,
) -> None:
    """The swap cannot be mined (base fee spike) and chain time passes its deadline: the nonce
    is replaced by a 0-value cancel; once mined the row is FAILED "cancelled", nothing traded;
    after the backoff the drift is traded, once."""
    scenario.finding = "6"
    scenario.injected = (
        "base fee spiked to 100 gwei and chain time moved 120 s past the swap's 60 s deadline"
    )
    overrides = {"execution": {"deadline_seconds": 60, "failure_backoff": 0.5}}
    with trio.fail_after(SCENARIO_LIMIT):
        async with trading(
            chain,
            devnet,
            db_config,
            db,
            tmp_path,
            scenario,
            automine=False,
            move_first=True,
            overrides=overrides,
        ) as run:
            ours = await run.broadcast()
            await chain.request("anvil_setNextBlockBaseFeePerGas", [hex(HIGH_BASE_FEE)])
            await evm_increase_time(chain, 180)
            await evm_mine(chain)
            run.other_faults += 1
            cancel = await run.broadcast("cancel")
            assert cancel.nonce == ours.nonce
            await evm_mine(chain)
            (first,) = await run.until(lambda: run.rows_are("main", 1), "the cancel to be mined")
            await nothing_traded(run, first)
            assert "cancelled" in (first.error or ""), first.error
            intents = {i.purpose: i.status for i in await db.intents_for_rebalance(first.id)}
            assert intents == {"swap": "DROPPED", "cancel": "CONFIRMED"} or intents == {
                "swap": "REPLACED",
                "cancel": "CONFIRMED",
            }, intents
            assert await chain.get_transaction_receipt(ours.tx_hash) is None
            await evm_set_automine(chain, True)
            await evm_mine(chain)  # the next attempt, if it is already in the pool
            failed, succeeded = await run.settled(rows=2)
            assert failed.id == first.id
            await one_mined_swap(run, succeeded)
    assert_invariants(scenario)


async def test_a_nonce_taken_by_another_sender(
    chain: ChainClient,
    devnet: Devnet,
    db_config: DatabaseConfig,
    db: dbm.Database,
    tmp_path: Path,
    scenario: Scenario,
) -> None:
    scenario.injected = "another sender with the daemon's key mined a self-transfer at our nonce"
    with trio.fail_after(SCENARIO_LIMIT):
        async with trading(
            chain, devnet, db_config, db, tmp_path, scenario, automine=False, move_first=True
        ) as run:
            ours = await run.broadcast()
            fees = await chain.fee_data()
            theirs = TxSigner(key=devnet.signer_key).sign(
                TxRequest(
                    to=devnet.signer,
                    data=b"",
                    nonce=ours.nonce,
                    gas=21_000,
                    max_fee_per_gas=(ours.max_fee_per_gas or 0) * 3 + fees.max_fee(),
                    max_priority_fee_per_gas=(ours.max_priority_fee_per_gas or 0) * 3 + 1,
                    chain_id=devnet.chain_id,
                )
            )
            await chain.send_raw_transaction(theirs)
            run.foreign_hashes.append(theirs.hash)
            run.other_faults += 1
            await evm_mine(chain)
            (first,) = await run.until(lambda: run.rows_are("main", 1), "the verdict")
            await nothing_traded(run, first)
            assert "not ours" in (first.error or ""), first.error
            assert {i.status for i in await db.intents_for_rebalance(first.id)} == {"DROPPED"}
            assert await chain.get_transaction_receipt(ours.tx_hash) is None
            await evm_set_automine(chain, True)
            await evm_mine(chain)  # the next attempt, if it is already in the pool
            failed, succeeded = await run.settled(rows=2)
            assert failed.id == first.id
            swap = await one_mined_swap(run, succeeded)
            assert swap.nonce == ours.nonce + 1
    assert_invariants(scenario)


# --- requests that must be refused ----------------------------------------------------------


async def test_a_request_that_waited_past_max_age_is_refused(
    chain: ChainClient,
    devnet: Devnet,
    db_config: DatabaseConfig,
    db: dbm.Database,
    tmp_path: Path,
    scenario: Scenario,
) -> None:
    """One executor worker, two portfolios: while the first one's swap waits in the pool the
    second one's request waits for the worker longer than prices.max_age; it is refused
    (SKIPPED with the reason), re-planned on fresh prices and traded once."""
    scenario.finding = "2"
    scenario.injected = (
        "one executor worker busy with alpha's unmined swap for 2.5 s; prices.max_age 1.5 s"
    )
    overrides: dict[str, dict[str, Any]] = {
        # Packing off: the scenario is a request queued behind another one (packed, the two
        # would be carried out together and neither would wait).
        "execution": {"max_in_flight": 1, "pack_max_gas": 0},
        "prices": {"max_age": 1.5},
    }
    with trio.fail_after(SCENARIO_LIMIT):
        async with trading(
            chain,
            devnet,
            db_config,
            db,
            tmp_path,
            scenario,
            portfolios=("alpha", "beta"),
            automine=False,
            move_first=True,
            overrides=overrides,
        ) as run:
            first = await run.broadcast()
            names = {(await run.db.portfolio(n)).id: n for n in ("alpha", "beta")}
            (pending,) = [r for n in names.values() for r in await run.rows(n)]
            served, waiting = names[pending.portfolio_id], names.keys() - {pending.portfolio_id}
            (other,) = [names[i] for i in waiting]

            async def queued() -> bool:
                return run.daemon.supervisor.actors[other].state.in_flight

            await run.until(queued, f"{other}'s request to wait for the executor")
            await trio.sleep(2.5)
            await evm_set_automine(chain, True)
            await evm_mine(chain)
            # The refused plan is made again on fresh prices and traded (automine is on).
            await run.until(lambda: _has_status(run, "SUCCESS", other), f"{other}'s trade")
            rows = await run.settled(other, rows=2)
            (row,) = await run.finished(served)
            swap = await one_mined_swap(run, row)
            assert swap.tx_hash == first.tx_hash
            assert [r.status for r in rows] == ["SKIPPED", "SUCCESS"], rows
            assert "prices are" in (rows[0].skip_reason or ""), rows[0].skip_reason
            assert "max_age" in (rows[0].skip_reason or "")
            await one_mined_swap(run, rows[1])
    assert_invariants(scenario)


async def test_an_actor_restarted_mid_flight_does_not_trade_twice(
    chain: ChainClient,
    devnet: Devnet,
    db_config: DatabaseConfig,
    db: dbm.Database,
    tmp_path: Path,
    scenario: Scenario,
) -> None:
    """Finding 2: the weights change while the swap waits in the pool, so the actor restarts
    and plans again from pre-trade balances; the executor refuses that plan."""
    scenario.finding = "2"
    scenario.injected = (
        "target weights edited (0.5/0.3/0.2 → 0.49/0.31/0.2) while our swap waited in the pool"
    )
    with trio.fail_after(SCENARIO_LIMIT):
        async with trading(
            chain, devnet, db_config, db, tmp_path, scenario, automine=False, move_first=True
        ) as run:
            ours = await run.broadcast()
            portfolio = await db.portfolio("main")
            actor = run.daemon.supervisor.actors["main"]
            await db.set_allocations(
                portfolio.id,
                {"USDC": Decimal("0.49"), "WBTC": Decimal("0.31"), "WETH": Decimal("0.2")},
            )
            run.other_faults += 1

            async def replanned() -> bool:
                restarted = run.daemon.supervisor.actors.get("main")
                return (
                    restarted is not None
                    and restarted is not actor
                    and restarted.state.last_decision
                    == "No trade: a rebalance of this portfolio is in flight"
                )

            # The restarted actor sees the drift again, and is told the attempt is in flight
            # (were it to ask anyway, the database would refuse: a second PENDING row).
            await run.until(replanned, "the restarted actor to evaluate again")
            await evm_set_automine(chain, True)
            await evm_mine(chain)
            rows = await run.settled(rows=1)
            swaps = [r for r in rows if r.status != "SKIPPED"]
            assert [r.status for r in swaps] == ["SUCCESS"], rows
            swap = await one_mined_swap(run, swaps[0])
            assert swap.tx_hash == ours.tx_hash
            for row in rows:
                if row.status == "SKIPPED":
                    assert row.skip_reason, row
                    assert row.id > swaps[0].id
                    assert await db.intents_for_rebalance(row.id) == []
    assert_invariants(scenario)

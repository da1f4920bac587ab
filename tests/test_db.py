"""Tests of daemon.db against a real PostgreSQL: the bridge, repositories, NOTIFY, errors."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
import trio

from daemon.config import DatabaseConfig
from daemon.db import (
    PORTFOLIO_CHANNEL,
    REBALANCING_PARAMS,
    SYSTEM_CONFIG_CHANNEL,
    ConstraintViolation,
    Database,
    DatabaseUnavailable,
    FinishedAttempt,
    HoldingValue,
    LeaseHeld,
    LeaseLost,
    NewTxIntent,
    NotFound,
    Notification,
    PortfolioSnapshot,
    PriceObservation,
    QueryTimeout,
    RebalanceRefused,
    TxReceipt,
    migrate,
    open_database,
)
from daemon.devtools.pgserver import running_server

WETH = "0x" + "11" * 20
USDC = "0x" + "22" * 20
WBTC = "0x" + "44" * 20
ACCOUNT = "0x" + "33" * 20
SIGNER = "0x" + "55" * 20
DELEGATION = [
    {
        "delegate": SIGNER,
        "delegator": ACCOUNT,
        "authority": "0x" + "ff" * 32,
        "caveats": [],
        "salt": "1",
        "signature": "0x" + "ab" * 65,
    }
]


async def _seed(db: Database) -> int:
    await db.add_token("WETH", WETH, chain_id=1, decimals=18, coingecko_id="weth")
    await db.add_token("USDC", USDC, chain_id=1, decimals=6, is_quote=True)
    await db.add_token("WBTC", WBTC, chain_id=1, decimals=8)
    portfolio = await db.add_portfolio(
        "main",
        ACCOUNT,
        chain_id=1,
        targets={"WETH": Decimal("0.5"), "USDC": Decimal("0.3"), "WBTC": Decimal("0.2")},
        delegation=DELEGATION,
    )
    return portfolio.id


async def _activity(db: Database) -> list[dict[str, object]]:
    """Other sessions on this test's database."""
    return await db.fetch(
        "SELECT state, query FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        " AND backend_type = 'client backend'"
    )


async def _wait_for_sleep_on_server(db: Database) -> None:
    while not any(
        "pg_sleep" in str(a["query"]) and a["state"] == "active" for a in await _activity(db)
    ):
        await trio.sleep(0.01)


# --- the bridge: cancellation ---


async def test_cancelling_a_query_cancels_it_on_the_server(db: Database) -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            scope = trio.CancelScope()

            async def sleeper() -> None:
                with scope:
                    await db.fetchval("SELECT pg_sleep(30)")

            nursery.start_soon(sleeper)
            await _wait_for_sleep_on_server(db)
            started = trio.current_time()
            scope.cancel()
        # The Trio task only returned once asyncpg had cancelled the query: nothing is left.
        assert scope.cancelled_caught
        assert trio.current_time() - started < 2
        activity = await _activity(db)
        assert not [a for a in activity if "pg_sleep" in str(a["query"]) and a["state"] == "active"]
        assert not [a for a in activity if str(a["state"]).startswith("idle in transaction")]


async def test_cancelled_transaction_leaves_nothing_behind(db: Database) -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            scope = trio.CancelScope()

            async def writer() -> None:
                with scope:
                    await db.transaction(
                        [
                            (
                                "INSERT INTO token (symbol, address, chain_id, decimals)"
                                " VALUES ('GHOST', $1, 1, 18)",
                                [WETH],
                            ),
                            ("SELECT pg_sleep(30)", []),
                        ]
                    )

            nursery.start_soon(writer)
            await _wait_for_sleep_on_server(db)
            scope.cancel()
        assert scope.cancelled_caught
        assert await db.tokens() == []
        activity = await _activity(db)
        assert not [a for a in activity if str(a["state"]).startswith("idle in transaction")]
        # The pool is healthy afterwards.
        assert await db.fetchval("SELECT 41 + 1") == 42


async def test_cancel_before_the_call_starts_runs_nothing(db: Database) -> None:
    with trio.CancelScope() as scope:
        scope.cancel()
        await db.add_token("NOPE", WETH, chain_id=1, decimals=18)
    assert scope.cancelled_caught
    assert await db.tokens() == []


async def test_statement_timeout_is_a_typed_error(db_config: DatabaseConfig) -> None:
    config = DatabaseConfig(url=db_config.url, command_timeout=0.2)
    with trio.fail_after(10):
        async with open_database(config) as db:
            with pytest.raises(QueryTimeout):
                await db.fetchval("SELECT pg_sleep(5)")
            assert await db.fetchval("SELECT 1") == 1


async def test_many_concurrent_calls(db: Database) -> None:
    results: list[int] = []
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for i in range(200):

                async def one(i: int = i) -> None:
                    results.append(await db.fetchval("SELECT $1::int", i))

                nursery.start_soon(one)
    assert sorted(results) == list(range(200))


async def test_queries_progress_while_the_trio_thread_is_cpu_busy(db: Database) -> None:
    # Starvation guard: with the lowered switch interval the loop thread still gets the GIL.
    import time

    done = trio.Event()

    async def burn() -> None:
        while not done.is_set():
            end = time.perf_counter() + 0.002
            while time.perf_counter() < end:
                pass
            await trio.lowlevel.checkpoint()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(burn)
            started = time.perf_counter()
            for i in range(50):
                assert await db.fetchval("SELECT $1::int", i) == i
            elapsed = time.perf_counter() - started
            done.set()
    assert elapsed < 5


# --- availability ---


async def test_unreachable_server_is_a_typed_error_without_the_password() -> None:
    with running_server() as server:
        port = server.port
    url = f"postgresql://driftd:hunter2@127.0.0.1:{port}/driftd"
    with trio.fail_after(15), pytest.raises(DatabaseUnavailable) as info:
        async with open_database(DatabaseConfig(url=url)):
            pass  # pragma: no cover
    assert "hunter2" not in str(info.value)
    assert "***" in str(info.value)


async def test_pool_and_listener_recover_after_server_restart() -> None:
    with trio.fail_after(30), running_server() as server:
        config = DatabaseConfig(url=server.url(), min_connections=2, max_connections=4)
        await migrate(config)
        async with open_database(config) as db, db.listen(SYSTEM_CONFIG_CHANNEL) as stream:
            assert await db.fetchval("SELECT 1") == 1
            await trio.to_thread.run_sync(server.restart)
            # Stale connections fail with a typed error, then the pool reconnects.
            failures = 0
            while True:
                try:
                    assert await db.fetchval("SELECT 2") == 2
                    break
                except DatabaseUnavailable:
                    failures += 1
                    await trio.sleep(0.05)
            assert failures <= 2
            assert await db.fetchval("SELECT 3") == 3
            # The listener reconnects and says it may have missed something.
            assert await stream.receive() == Notification(SYSTEM_CONFIG_CHANNEL, "", resync=True)
            await db.set_system_config("X", 1)
            assert await stream.receive() == Notification(SYSTEM_CONFIG_CHANNEL, "X")

            await trio.to_thread.run_sync(server.stop)
            with pytest.raises(DatabaseUnavailable):
                await db.fetchval("SELECT 4")
            await trio.to_thread.run_sync(server.start)
            while True:
                try:
                    assert await db.fetchval("SELECT 5") == 5
                    break
                except DatabaseUnavailable:
                    await trio.sleep(0.05)


# --- NOTIFY ---


async def test_notify_reaches_a_trio_task(db: Database) -> None:
    with trio.fail_after(10):
        async with db.listen(PORTFOLIO_CHANNEL, SYSTEM_CONFIG_CHANNEL) as stream:
            await db.set_system_config(REBALANCING_PARAMS, {"driftThreshold": Decimal("0.2")})
            assert await stream.receive() == Notification(SYSTEM_CONFIG_CHANNEL, REBALANCING_PARAMS)
            portfolio_id = await _seed(db)
            # Insert of the portfolio and its allocations: one notification (deduplicated).
            assert await stream.receive() == Notification(PORTFOLIO_CHANNEL, str(portfolio_id))
            await db.set_portfolio_active("main", False)
            async for note in stream:
                assert note == Notification(PORTFOLIO_CHANNEL, str(portfolio_id))
                break


async def test_notify_overflow_becomes_resync(db: Database) -> None:
    with trio.fail_after(10):
        async with db.listen(SYSTEM_CONFIG_CHANNEL, capacity=3) as stream:
            for i in range(6):
                await db.set_system_config(f"K{i}", i)
            while stream.dropped == 0:
                await trio.sleep(0.01)
            notes = [await stream.receive()]
            assert notes[0] == Notification(SYSTEM_CONFIG_CHANNEL, "", resync=True)


async def test_listen_on_closed_stream_ends_iteration(db: Database) -> None:
    with trio.fail_after(10):
        async with db.listen(SYSTEM_CONFIG_CHANNEL) as stream:
            pass
        with pytest.raises(trio.EndOfChannel):
            await stream.receive()


# --- constraints ---


async def test_weights_must_sum_to_one(db: Database) -> None:
    await db.add_token("WETH", WETH, chain_id=1, decimals=18)
    await db.add_token("USDC", USDC, chain_id=1, decimals=6)
    with pytest.raises(ConstraintViolation) as info:
        await db.add_portfolio(
            "bad",
            ACCOUNT,
            chain_id=1,
            targets={"WETH": Decimal("0.5"), "USDC": Decimal("0.4")},
            delegation=DELEGATION,
        )
    assert info.value.constraint == "allocation_weights_sum_to_one"
    assert "0.9" in str(info.value)
    assert await db.portfolios() == []  # the whole transaction rolled back


async def test_weight_range_and_unknown_symbol(db: Database) -> None:
    await db.add_token("WETH", WETH, chain_id=1, decimals=18)
    with pytest.raises(ConstraintViolation) as info:
        await db.add_portfolio(
            "p", ACCOUNT, chain_id=1, targets={"WETH": Decimal("1.5")}, delegation=DELEGATION
        )
    assert info.value.constraint == "allocation_weight_range"
    with pytest.raises(NotFound, match="DOGE"):
        await db.add_portfolio(
            "p", ACCOUNT, chain_id=1, targets={"DOGE": Decimal(1)}, delegation=DELEGATION
        )


async def test_duplicate_symbol(db: Database) -> None:
    await db.add_token("WETH", WETH, chain_id=1, decimals=18)
    with pytest.raises(ConstraintViolation) as info:
        await db.add_token("WETH", USDC, chain_id=1, decimals=18)
    assert info.value.constraint == "token_symbol_key"
    assert "already exists" in str(info.value)


async def test_bad_status_is_rejected(db: Database) -> None:
    portfolio_id = await _seed(db)
    with pytest.raises(ConstraintViolation) as info:
        await db.execute(
            "INSERT INTO rebalance_log (portfolio_id, status, finished_at)"
            " VALUES ($1, 'DONE', now())",
            portfolio_id,
        )
    assert info.value.constraint == "rebalance_log_status_check"
    with pytest.raises(ConstraintViolation) as info:
        await db.record_rebalance(
            portfolio_id, FinishedAttempt(status="SKIPPED"), drift_percentage=None
        )
    assert info.value.constraint == "rebalance_log_skip_has_reason"


def _intent(nonce: int, tag: str, fee: int = 10, token: int = 1) -> NewTxIntent:
    return NewTxIntent(
        chain_id=1,
        signer=SIGNER,
        nonce=nonce,
        raw_tx=bytes.fromhex("02f8") + tag.encode(),
        tx_hash="0x" + tag * (64 // len(tag)),
        fencing_token=token,
        max_fee_per_gas=fee * 10**9,
        max_priority_fee_per_gas=10**9,
    )


async def test_duplicate_live_nonce_is_rejected(db: Database) -> None:
    await db.acquire_signer_lease(1, SIGNER, "test:1", 60)
    await db.insert_intent(_intent(5, "a1"))
    with pytest.raises(ConstraintViolation) as info:
        await db.insert_intent(_intent(5, "b2"))
    assert info.value.constraint == "tx_intent_live_nonce"
    # Another nonce is fine; a finished intent frees its nonce for bookkeeping.
    await db.insert_intent(_intent(6, "c3"))


# --- repositories ---


async def test_tokens_and_portfolios(db: Database) -> None:
    portfolio_id = await _seed(db)
    assert [t.symbol for t in await db.tokens()] == ["USDC", "WBTC", "WETH"]
    [portfolio] = await db.active_portfolios()
    assert portfolio.id == portfolio_id
    assert portfolio.delegation == DELEGATION
    assert {a.token.symbol: a.weight for a in portfolio.allocations} == {
        "USDC": Decimal("0.3"),
        "WBTC": Decimal("0.2"),
        "WETH": Decimal("0.5"),
    }
    assert await db.portfolio("main") == portfolio
    assert await db.portfolio(portfolio_id) == portfolio
    updated = await db.set_allocations(
        portfolio_id, {"WETH": Decimal("0.7"), "USDC": Decimal("0.3")}
    )
    assert [a.token.symbol for a in updated.allocations] == ["USDC", "WETH"]
    inactive = await db.set_portfolio_active("main", False)
    assert not inactive.is_active
    assert inactive.updated_at >= portfolio.updated_at
    assert await db.active_portfolios() == []
    assert len(await db.portfolios()) == 1
    with pytest.raises(NotFound):
        await db.portfolio("nope")


async def test_rebalance_log_lifecycle_and_cooldown_source(db: Database) -> None:
    portfolio_id = await _seed(db)
    assert await db.last_successful_rebalances() == {}
    rebalance_id = await db.start_rebalance(
        portfolio_id,
        drift_percentage=Decimal("0.1834"),
        token_amounts=[{"sell": "WETH", "amount_in": 10**18}],
    )
    assert [r.id for r in await db.pending_rebalances()] == [rebalance_id]
    done = await db.finish_rebalance(
        rebalance_id,
        FinishedAttempt(
            status="SUCCESS",
            transaction_hash="0x" + "ab" * 32,
            gas_used=210_000,
            gas_cost_wei=21 * 10**14,
            gas_cost_usd=Decimal("6.3021"),
            actual_outputs=[{"token": "USDC", "amount": 3_000_000_000}],
            execution_time_ms=1234,
        ),
    )
    assert done.status == "SUCCESS"
    assert done.finished_at is not None
    assert done.token_amounts == [{"sell": "WETH", "amount_in": 10**18}]
    assert done.gas_cost_usd == Decimal("6.3021")
    assert await db.pending_rebalances() == []
    # A terminal row is final.
    with pytest.raises(ConstraintViolation) as info:
        await db.finish_rebalance(rebalance_id, FinishedAttempt(status="FAILED", error="x"))
    assert info.value.constraint == "rebalance_log_terminal_is_final"
    skipped = await db.record_rebalance(
        portfolio_id,
        FinishedAttempt(status="SKIPPED", skip_reason="cooldown active"),
        drift_percentage=Decimal("0.2"),
    )
    assert skipped.status == "SKIPPED"
    assert await db.last_successful_rebalances() == {portfolio_id: done.finished_at}
    last = await db.last_successful_rebalance(portfolio_id)
    assert last is not None
    assert last.id == rebalance_id
    history = await db.rebalance_history(portfolio_id)
    assert [r.id for r in history] == [skipped.id, rebalance_id]
    with pytest.raises(NotFound):
        await db.finish_rebalance(10**9, FinishedAttempt(status="DRY_RUN"))


async def test_drift_report(db: Database) -> None:
    portfolio_id = await _seed(db)
    for drift, gas in (("0.2", "5.5"), ("0.3", "4.5")):
        await db.record_rebalance(
            portfolio_id,
            FinishedAttempt(
                status="SUCCESS", transaction_hash="0x" + "cd" * 32, gas_cost_usd=Decimal(gas)
            ),
            drift_percentage=Decimal(drift),
        )
    await db.record_rebalance(
        portfolio_id,
        FinishedAttempt(status="FAILED", error="reverted"),
        drift_percentage=Decimal("0.4"),
    )
    # Older than 30 days: not reported.
    await db.execute(
        'INSERT INTO rebalance_log (portfolio_id, "timestamp", finished_at, status, error,'
        " drift_percentage) VALUES ($1, now() - interval '40 days', now(), 'FAILED', 'old', 9)",
        portfolio_id,
    )
    [today] = await db.drift_report()
    assert today.date == dt.datetime.now(dt.UTC).date()
    assert today.avg_drift == Decimal("0.3")
    assert today.rebalance_count == 2
    assert today.attempt_count == 3
    assert today.total_gas_cost_usd == Decimal("10.0")
    assert await db.drift_report(portfolio_id=portfolio_id + 1) == []


async def test_intents_replace_and_receipt(db: Database) -> None:
    portfolio_id = await _seed(db)
    rebalance_id = await db.start_rebalance(portfolio_id, drift_percentage=Decimal("0.2"))
    await db.acquire_signer_lease(1, SIGNER, "test:1", 60)
    first = await db.insert_intent(attrs_evolve_rebalance(_intent(3, "01"), rebalance_id))
    assert first.status == "SIGNED"
    assert first.raw_tx == _intent(3, "01").raw_tx
    assert first.max_fee_per_gas == 10 * 10**9
    first = await db.mark_intent(first.id, "BROADCAST")
    bumped = await db.replace_intent(first.id, _intent(3, "02", fee=12))
    assert bumped.replaces_id == first.id
    assert bumped.rebalance_id == rebalance_id
    assert [i.id for i in await db.intents_by_status()] == [bumped.id]
    assert [i.status for i in await db.intents_for_rebalance(rebalance_id)] == [
        "REPLACED",
        "SIGNED",
    ]
    with pytest.raises(ConstraintViolation) as info:
        await db.replace_intent(first.id, _intent(3, "03"))
    assert info.value.constraint == "tx_intent_replace_live"
    with pytest.raises(ConstraintViolation) as info:
        await db.replace_intent(bumped.id, _intent(4, "04"))
    assert info.value.constraint == "tx_intent_replace_same_nonce"
    # The original (replaced) transaction won the race: it is confirmed, the bump dropped.
    receipt = TxReceipt(
        block_number=100, gas_used=150_000, effective_gas_price=11 * 10**9, succeeded=True
    )
    confirmed = await db.record_intent_receipt(first.id, receipt)
    assert confirmed.status == "CONFIRMED"
    assert confirmed.effective_gas_price == 11 * 10**9
    statuses = {i.id: i.status for i in await db.intents_for_rebalance(rebalance_id)}
    assert statuses == {first.id: "CONFIRMED", bumped.id: "DROPPED"}
    assert await db.intents_by_status() == []
    assert [i.id for i in await db.intents_by_status("CONFIRMED", signer="0x" + "66" * 20)] == []
    assert [i.id for i in await db.intents_by_status("CONFIRMED", signer=SIGNER)] == [first.id]


def attrs_evolve_rebalance(intent: NewTxIntent, rebalance_id: int) -> NewTxIntent:
    import attrs

    return attrs.evolve(intent, rebalance_id=rebalance_id)


async def test_prices_batch_and_latest(db: Database) -> None:
    await _seed(db)
    tokens = {t.symbol: t.id for t in await db.tokens()}
    now = dt.datetime.now(dt.UTC)
    observations = [
        PriceObservation(
            tokens["WETH"], "oracle", Decimal("3000.12"), now - dt.timedelta(minutes=1)
        ),
        PriceObservation(tokens["WETH"], "oracle", Decimal("3001.5"), now),
        PriceObservation(tokens["WETH"], "router", Decimal("2999.999999"), now, block_number=123),
        PriceObservation(tokens["USDC"], "router", Decimal("1"), now, block_number=123),
    ]
    assert await db.insert_prices(observations) == 4
    assert await db.insert_prices([]) == 0
    latest = {(p.symbol, p.source): p for p in await db.latest_prices()}
    assert latest[("WETH", "oracle")].usd == Decimal("3001.5")
    assert latest[("WETH", "router")].block_number == 123
    assert len(latest) == 3
    assert {p.symbol for p in await db.latest_prices("router")} == {"WETH", "USDC"}
    with pytest.raises(ConstraintViolation):
        await db.insert_prices([PriceObservation(tokens["WETH"], "oracle", Decimal(0), now)])


async def test_system_config_roundtrip_is_exact(db: Database) -> None:
    assert await db.get_system_config(REBALANCING_PARAMS) is None
    params = {
        "driftThreshold": Decimal("0.15"),
        "cooldownMinutes": 15,
        "nested": [Decimal("1E-18")],
    }
    await db.set_system_config(REBALANCING_PARAMS, params)
    assert await db.get_system_config(REBALANCING_PARAMS) == params
    await db.set_system_config(REBALANCING_PARAMS, {"driftThreshold": Decimal("0.2")})
    assert await db.get_system_config(REBALANCING_PARAMS) == {"driftThreshold": Decimal("0.2")}
    with pytest.raises(TypeError):
        await db.set_system_config("F", {"x": 0.1})


async def test_snapshots(db: Database) -> None:
    portfolio_id = await _seed(db)
    assert await db.latest_snapshot(portfolio_id) is None
    snapshot = PortfolioSnapshot(
        portfolio_id=portfolio_id,
        total_usd=Decimal("5000.25"),
        max_drift=Decimal("0.05"),
        price_source="router",
        holdings=(HoldingValue(1, 10**18, Decimal("3000"), Decimal("0.6"), Decimal("0.2")),),
    )
    await db.insert_snapshots([snapshot, attrs_evolve_total(snapshot, Decimal("5100"))])
    latest = await db.latest_snapshot(portfolio_id)
    assert latest is not None
    assert latest.total_usd in {Decimal("5000.25"), Decimal("5100")}
    assert latest.holdings == snapshot.holdings
    assert latest.taken_at is not None


def attrs_evolve_total(snapshot: PortfolioSnapshot, total: Decimal) -> PortfolioSnapshot:
    import attrs

    return attrs.evolve(snapshot, total_usd=total)


# --- signer lease (one nonce owner across processes) ---


async def test_signer_lease_fences_out_a_superseded_process(db: Database) -> None:
    first = await db.acquire_signer_lease(1, SIGNER, "host-a:1", 60)
    assert first.fencing_token == 1
    await db.insert_intent(_intent(1, "d1", token=first.fencing_token))
    # A second process cannot take a live lease...
    with pytest.raises(LeaseHeld) as info:
        await db.acquire_signer_lease(1, SIGNER, "host-b:2", 60)
    assert info.value.holder == "host-a:1"
    # ...unless the holder is known to be gone; then the old token is dead.
    second = await db.acquire_signer_lease(
        1, SIGNER, "host-b:2", 60, take_over_from=lambda holder: holder == "host-a:1"
    )
    assert second.fencing_token == 2
    with pytest.raises(ConstraintViolation) as violation:
        await db.insert_intent(_intent(2, "d2", token=first.fencing_token))
    assert violation.value.constraint == "tx_intent_fencing_token"
    with pytest.raises(LeaseLost):
        await db.renew_signer_lease(first, 60)
    await db.insert_intent(_intent(2, "d3", token=second.fencing_token))


async def test_expired_or_released_lease_can_be_taken_and_refuses_intents(db: Database) -> None:
    lease = await db.acquire_signer_lease(1, SIGNER, "host-a:1", 0.05)
    await trio.sleep(0.1)
    with pytest.raises(ConstraintViolation) as violation:
        await db.insert_intent(_intent(1, "e1", token=lease.fencing_token))
    assert violation.value.constraint == "tx_intent_fencing_token"
    taken = await db.acquire_signer_lease(1, SIGNER, "host-b:2", 60)
    await db.release_signer_lease(taken)
    again = await db.acquire_signer_lease(1, SIGNER, "host-c:3", 60)
    assert again.fencing_token == 3


async def test_one_pending_attempt_per_portfolio_is_enforced_by_the_database(
    db: Database,
) -> None:
    """Finding 2 of issue 10: a restarted actor planned again while its first request was in
    the executor, and both traded. The second PENDING row is refused by a unique index."""
    portfolio_id = await _seed(db)
    first = await db.start_rebalance(
        portfolio_id, drift_percentage=Decimal("0.2"), chain_id=1, signer=SIGNER
    )
    with pytest.raises(RebalanceRefused, match="in flight"):
        await db.start_rebalance(
            portfolio_id, drift_percentage=Decimal("0.2"), chain_id=1, signer=SIGNER
        )
    assert [r.id for r in await db.rebalance_history()] == [first]
    await db.finish_rebalance(first, FinishedAttempt(status="FAILED", error="test"))
    second = await db.start_rebalance(portfolio_id, drift_percentage=Decimal("0.2"))
    assert second != first


async def test_a_plan_older_than_the_last_mined_swap_is_refused(db: Database) -> None:
    portfolio_id = await _seed(db)
    await db.acquire_signer_lease(1, SIGNER, "test:1", 60)
    rebalance_id = await db.start_rebalance(
        portfolio_id, drift_percentage=Decimal("0.2"), chain_id=1, signer=SIGNER, balances_block=90
    )
    intent = await db.insert_intent(attrs_evolve_rebalance(_intent(0, "0a"), rebalance_id))
    receipt = TxReceipt(block_number=100, gas_used=1, effective_gas_price=1, succeeded=True)
    await db.record_intent_receipt(intent.id, receipt)
    await db.finish_rebalance(
        rebalance_id, FinishedAttempt(status="SUCCESS", transaction_hash=intent.tx_hash)
    )
    # Balances read before block 100 do not include that swap: the plan is stale.
    with pytest.raises(RebalanceRefused, match="block 99"):
        await db.start_rebalance(portfolio_id, drift_percentage=Decimal("0.2"), balances_block=99)
    assert [r.status for r in await db.rebalance_history()] == ["SUCCESS"]
    fresh = await db.start_rebalance(
        portfolio_id, drift_percentage=Decimal("0.2"), balances_block=100
    )
    assert fresh > rebalance_id


async def test_recovery_sees_only_its_own_signers_pending_rows(db: Database) -> None:
    """Finding 3 of issue 10: process B's recovery finished process A's in-flight row."""
    portfolio_id = await _seed(db)
    other = await db.add_portfolio(
        "other",
        "0x" + "77" * 20,  # one active portfolio per account
        chain_id=1,
        targets={"WETH": Decimal("1")},
        delegation=DELEGATION,
    )
    mine = await db.start_rebalance(portfolio_id, drift_percentage=None, chain_id=1, signer=SIGNER)
    theirs = await db.start_rebalance(
        other.id, drift_percentage=None, chain_id=1, signer="0x" + "66" * 20
    )
    assert [r.id for r in await db.pending_rebalances(1, SIGNER)] == [mine]
    assert [r.id for r in await db.pending_rebalances(1, "0x" + "66" * 20)] == [theirs]
    assert await db.pending_rebalances(5, SIGNER) == []
    assert {r.id for r in await db.pending_rebalances()} == {mine, theirs}


async def test_nonce_versions_keep_replaced_versions_of_live_nonces(db: Database) -> None:
    await _seed(db)
    await db.acquire_signer_lease(1, SIGNER, "test:1", 60)
    settled = await db.insert_intent(_intent(1, "b1"))
    receipt = TxReceipt(block_number=5, gas_used=1, effective_gas_price=1, succeeded=True)
    await db.record_intent_receipt(settled.id, receipt)
    first = await db.insert_intent(_intent(2, "b2"))
    bumped = await db.replace_intent(first.id, _intent(2, "b3", fee=12))
    versions = await db.nonce_versions(1, SIGNER)
    assert [(v.nonce, v.id, v.status) for v in versions] == [
        (2, first.id, "REPLACED"),
        (2, bumped.id, "SIGNED"),
    ]
    assert await db.nonce_versions(2, SIGNER) == []
    await db.drop_nonce(1, SIGNER, 2, "consumed")
    assert await db.nonce_versions(1, SIGNER) == []
    assert {i.status for i in await db.intents_by_status("DROPPED")} == {"DROPPED"}


async def test_pause_is_stored_in_the_portfolio(db: Database) -> None:
    await _seed(db)
    paused = await db.set_portfolio_paused("main", True)
    assert paused.is_paused
    [again] = await db.active_portfolios(chain_id=1)
    assert again.is_paused
    assert await db.active_portfolios(chain_id=2) == []
    assert not (await db.set_portfolio_paused("main", False)).is_paused
    with pytest.raises(NotFound):
        await db.set_portfolio_paused("nope", True)


async def test_failure_streaks_count_failures_since_the_last_trade(db: Database) -> None:
    portfolio_id = await _seed(db)
    for status in ("FAILED", "SUCCESS", "FAILED", "SKIPPED", "FAILED"):
        outcome = FinishedAttempt(
            status=status,  # type: ignore[arg-type]
            error="x" if status == "FAILED" else None,
            skip_reason="y" if status == "SKIPPED" else None,
            transaction_hash="0x" + "ab" * 32 if status == "SUCCESS" else None,
        )
        await db.record_rebalance(portfolio_id, outcome, drift_percentage=None)
    streaks = await db.failure_streaks()
    count, at = streaks[portfolio_id]
    assert count == 2
    assert at == (await db.rebalance_history(portfolio_id))[0].finished_at

"""No trade on bad prices (issue 12): the block time of router prices, cross-check coverage,
price sanity, and the PRICE_STALE alert of an oracle outage.

Real servers throughout: CoinGecko answers come from a loopback HTTP server
(:mod:`http_server`), router prices from the anvil devnet, a node stuck on an old head is the
JSON-RPC fault proxy (:mod:`rpc_proxy`) in front of anvil, and the end-to-end cases run the real
daemon against PostgreSQL. :data:`COINGECKO_CASES` lists every bad CoinGecko answer tested, with
the outcome it must have, for the bad-input catalogue.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

import attrs
import httpx
import pytest
import structlog
import trio
from daemon_harness import Clock, move_price
from http_server import Request, Response, loopback_http
from reliability import BadInput
from rpc_proxy import StaleHead, rpc_proxy
from schema_defaults import config, engine_params, feed_settings, holder
from test_daemon import evaluated, finished_rows, running_daemon, setup_portfolio, wait_for

from daemon import db as dbm
from daemon.alerts import AlertSink
from daemon.chain import ChainClient, RetryPolicy
from daemon.coingecko import CoinGeckoSource, PriceSourceError, RateLimited
from daemon.config import Config, DatabaseConfig
from daemon.control import DaemonControls
from daemon.devtools.devnet_anvil import evm_increase_time, evm_mine
from daemon.devtools.devnet_records import Devnet
from daemon.drift import Holding, evaluate
from daemon.latest import Latest
from daemon.messages import NoPrices, PricePoint, PriceSnapshot, PriceSourceName, Token
from daemon.prices import (
    DIVERGED,
    UNVERIFIED,
    OracleSource,
    RouterSource,
    poll_once,
    run_price_feed,
)
from daemon.uniswap import UniswapV2

T0: Final = datetime(2026, 11, 24, tzinfo=UTC)
T0_UNIX: Final = int(T0.timestamp())
TOKENS: Final = [
    Token("WETH", "0x" + "11" * 20, 18, "weth"),
    Token("WBTC", "0x" + "33" * 20, 8, "wrapped-bitcoin"),
    Token("USDC", "0x" + "22" * 20, 6, "usd-coin", is_quote=True),
]
COINGECKO_IDS: Final = {"weth": "WETH", "wrapped-bitcoin": "WBTC", "usd-coin": "USDC"}
FEED: Final = feed_settings(max_head_age=0.0)
"""The schema's ``[prices]``, heads not judged unless a test says so."""
REFERENCE: Final = {"WETH": Decimal(3000), "WBTC": Decimal(60000), "USDC": Decimal(1)}
"""The last accepted prices the CoinGecko cases are checked against (the move check)."""

# Outcomes of one CoinGecko answer for WETH, the token every bad answer is about.
PRICED: Final = "priced"
"""WETH is in the snapshot and usable."""
STALE: Final = "stale"
"""WETH is in the snapshot but too old to trade on (``No trade: price for WETH is stale``)."""
PROBLEM: Final = "problem"
"""WETH has no price this tick; a problem line says why; the other tokens are priced."""
REFUSED: Final = "refused"
"""WETH's price was refused by the feed's checks (``price_refused`` warning, problem line)."""
TICK_FAILED: Final = "tick_failed"
"""The whole answer is unusable: the tick fails (PriceSourceError), nothing is published."""
RATE_LIMITED: Final = "rate_limited"
"""HTTP 429: the tick fails and the feed waits as long as asked (Retry-After, else 60 s)."""


def coingecko_text(**weth: str) -> bytes:
    """A CoinGecko /simple/price body; ``weth`` replaces WETH's entry (raw JSON value texts;
    ``entry`` replaces the whole entry, ``omit`` leaves WETH out)."""
    entries = {
        "usd-coin": f'{{"usd": 1.0001, "last_updated_at": {T0_UNIX}}}',
        "wrapped-bitcoin": f'{{"usd": 60000.5, "last_updated_at": {T0_UNIX}}}',
    }
    if "omit" not in weth:
        usd = weth.get("usd", "3001.25")
        updated = weth.get("updated", str(T0_UNIX))
        entries["weth"] = weth.get("entry", f'{{"usd": {usd}, "last_updated_at": {updated}}}')
    return ("{" + ", ".join(f'"{k}": {v}' for k, v in entries.items()) + "}").encode()


COINGECKO_CASES: Final[tuple[tuple[str, int, bytes, str], ...]] = (
    # (name, HTTP status, body, outcome for WETH)
    ("valid_answer", 200, coingecko_text(), PRICED),
    ("http_500", 500, b"Internal Server Error", TICK_FAILED),
    ("http_502_html", 502, b"<html><body>Bad Gateway</body></html>", TICK_FAILED),
    ("http_503", 503, b'{"status": {"error_code": 503}}', TICK_FAILED),
    (
        "http_429",
        429,
        b'{"status": {"error_code": 429, "error_message": "rate limit"}}',
        RATE_LIMITED,
    ),
    ("http_404", 404, b'{"error": "Not Found"}', TICK_FAILED),
    ("garbage_text", 200, b"this is not json", TICK_FAILED),
    ("garbage_html", 200, b"<!DOCTYPE html><title>Just a moment...</title>", TICK_FAILED),
    ("empty_body", 200, b"", TICK_FAILED),
    ("truncated_json", 200, coingecko_text()[:40], TICK_FAILED),
    ("not_utf8", 200, b'{"weth": {"usd": \xff\xfe}}', TICK_FAILED),
    ("json_array", 200, b"[]", TICK_FAILED),
    ("json_string", 200, b'"ok"', TICK_FAILED),
    ("json_null", 200, b"null", TICK_FAILED),
    ("deeply_nested_json", 200, b"[" * 100_000, TICK_FAILED),
    ("oversized_body", 200, b'{"pad": "' + b"x" * (2 << 20) + b'"}', TICK_FAILED),
    ("missing_all_ids", 200, b"{}", PROBLEM),
    ("missing_one_id", 200, coingecko_text(omit="1"), PROBLEM),
    ("entry_not_an_object", 200, coingecko_text(entry="3001.25"), PROBLEM),
    ("entry_without_usd", 200, coingecko_text(entry=f'{{"last_updated_at": {T0_UNIX}}}'), PROBLEM),
    ("usd_as_string", 200, coingecko_text(usd='"3001.25"'), PROBLEM),
    ("usd_null", 200, coingecko_text(usd="null"), PROBLEM),
    ("usd_true", 200, coingecko_text(usd="true"), PROBLEM),
    ("last_updated_at_missing", 200, coingecko_text(entry='{"usd": 3001.25}'), PROBLEM),
    ("last_updated_at_string", 200, coingecko_text(updated=f'"{T0_UNIX}"'), PROBLEM),
    ("last_updated_at_huge", 200, coingecko_text(updated="1e20"), PROBLEM),
    ("last_updated_at_exponent", 200, coingecko_text(updated="1e999999999"), PROBLEM),
    ("last_updated_at_negative", 200, coingecko_text(updated="-1"), PROBLEM),
    ("last_updated_at_nan", 200, coingecko_text(updated="NaN"), PROBLEM),
    ("last_updated_at_in_the_future", 200, coingecko_text(updated=str(T0_UNIX + 86_400)), PROBLEM),
    ("stale_last_updated_at", 200, coingecko_text(updated=str(T0_UNIX - 3600)), STALE),
    ("usd_zero", 200, coingecko_text(usd="0"), REFUSED),
    ("usd_negative", 200, coingecko_text(usd="-3001.25"), REFUSED),
    ("usd_nan", 200, coingecko_text(usd="NaN"), REFUSED),
    ("usd_infinity", 200, coingecko_text(usd="Infinity"), REFUSED),
    ("usd_absurdly_large", 200, coingecko_text(usd="1e400"), REFUSED),
    ("usd_above_the_ceiling", 200, coingecko_text(usd="2e9"), REFUSED),
    ("usd_moved_20x_up", 200, coingecko_text(usd="60000"), REFUSED),
    ("usd_moved_20x_down", 200, coingecko_text(usd="150"), REFUSED),
)
"""Bad CoinGecko answers and what each must lead to (for the bad-input catalogue)."""


def outcome_of(snapshot: PriceSnapshot, logs: list[dict[str, Any]]) -> str:
    if "WETH" in snapshot.prices:
        usable = snapshot.usable_prices(["WETH"], T0, 300)
        if isinstance(usable, NoPrices):
            assert usable.stale, usable
            assert usable.reason.startswith("No trade: price for WETH is stale"), usable
            return STALE
        return PRICED
    assert any(p.startswith("WETH: ") for p in snapshot.problems), snapshot.problems
    refused = [e for e in logs if e.get("event") == "price_refused" and e["token"] == "WETH"]
    return REFUSED if refused else PROBLEM


@pytest.mark.parametrize(
    ("name", "status", "body", "expected"), COINGECKO_CASES, ids=[c[0] for c in COINGECKO_CASES]
)
@pytest.mark.bad_input
async def test_every_bad_coingecko_answer_has_a_clear_outcome(
    name: str, status: int, body: bytes, expected: str, bad_input: BadInput
) -> None:
    bad_input.area = "coingecko"
    shown = body[:50].decode("utf-8", "backslashreplace")
    bad_input.given = f"{name}: HTTP {status}, {len(body)} bytes `{shown}`" + (
        "…" if len(body) > 50 else ""
    )
    bad_input.expected = expected

    async def handler(request: Request) -> Response:
        return Response(status=status, body=body)

    outcome = None
    with trio.fail_after(15):
        async with loopback_http(handler) as server, httpx.AsyncClient() as client:
            source = OracleSource(CoinGeckoSource(client, server.url, now=lambda: T0))
            with structlog.testing.capture_logs() as logs:
                error: PriceSourceError | None = None
                try:
                    snapshot = await poll_once(source, None, TOKENS, FEED, lambda: T0, REFERENCE)
                except RateLimited as exc:
                    outcome, error = RATE_LIMITED, exc
                except PriceSourceError as exc:
                    outcome, error = TICK_FAILED, exc
                else:
                    outcome = outcome_of(snapshot, logs)
                    if name != "missing_all_ids":  # the other tokens keep their prices
                        assert snapshot.usable_prices(["USDC", "WBTC"], T0, 300) == {
                            "USDC": Decimal("1.0001"),
                            "WBTC": Decimal("60000.5"),
                        }
    bad_input.observed = f"{outcome}" + (f": {error}" if error is not None else "")
    bad_input.unharmed = (
        "tick skipped: the last snapshot stands (and ages into staleness)"
        if error is not None
        else "no price published for the bad token; the others' unchanged"
    )
    assert outcome == expected
    if isinstance(error, RateLimited):
        assert error.retry_after == 60  # no Retry-After: the default
    elif error is not None:
        assert str(error).startswith("CoinGecko "), error  # names the source, never the key
    if expected == REFUSED:
        (warning,) = [e for e in logs if e.get("event") == "price_refused"]
        assert warning["log_level"] == "warning"
        assert warning["token"] == "WETH"
        assert warning["old_usd"] == "3000"
        assert warning["new_usd"] == str(
            Decimal(body.split(b'"usd": ')[-1].split(b",")[0].decode())
        )
        usable = snapshot.usable_prices(["WETH"], T0, 300)
        assert isinstance(usable, NoPrices)
        assert not usable.stale
        assert usable.reason.startswith("No trade: price for WETH is missing (WETH: price ")
        assert "refused" in usable.reason


# --- 3. price sanity: refused, logged, and only the bad token's portfolios skip --------------


@attrs.define
class ScriptedSource:
    """A price source answering from a script (one answer per call; the last one repeats)."""

    answers: list[dict[str, str] | Exception]
    name: PriceSourceName = "router"
    at: datetime = T0

    async def fetch(self, tokens: list[Token]) -> tuple[dict[str, PricePoint], list[str]]:
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return {
            symbol: PricePoint(symbol, Decimal(usd), self.at, self.name)
            for symbol, usd in answer.items()
        }, []


@attrs.define
class FeedFakes:
    """What the feed is wired to besides its source: the tokens, a store that keeps nothing,
    and a listener that collects the published snapshots (and the failed ticks' None)."""

    published: list[PriceSnapshot | None]
    failed_ticks: bool = False

    async def load(self) -> list[Token]:
        return TOKENS

    async def store(self, points: list[PricePoint]) -> None:
        await trio.lowlevel.checkpoint()

    def ticked(self, snapshot: PriceSnapshot | None) -> None:
        if snapshot is not None or self.failed_ticks:
            self.published.append(snapshot)

    def fire(self, kind: str, fields: Mapping[str, object]) -> bool:
        raise AssertionError(f"unexpected alert {kind}: {fields}")


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ("0", "zero"),
        ("-3000", "negative"),
        ("NaN", "not a number"),
        ("Infinity", "infinite"),
        ("-Infinity", "infinite"),
        ("1e13", "above prices.max_price_usd (1000000000)"),
        ("3000001", "moved 1000x from the last accepted price in one poll"),
        ("30001", "moved 10x from the last accepted price in one poll"),
        ("299.99", "moved 0.1x from the last accepted price in one poll"),
    ],
)
async def test_a_bad_price_is_refused_with_a_warning_and_the_others_keep_trading(
    bad: str, reason: str
) -> None:
    source = ScriptedSource([{"WETH": bad, "WBTC": "60000", "USDC": "1"}])
    with trio.fail_after(5), structlog.testing.capture_logs() as logs:
        snapshot = await poll_once(source, None, TOKENS, FEED, lambda: T0, {"WETH": Decimal(3000)})
    assert "WETH" not in snapshot.prices
    (warning,) = [e for e in logs if e.get("event") == "price_refused"]
    assert warning["log_level"] == "warning"
    assert (warning["token"], warning["old_usd"], warning["new_usd"]) == (
        "WETH",
        "3000",
        str(Decimal(bad)),
    )
    assert warning["reason"].startswith(reason)
    assert [p for p in snapshot.problems if p.startswith("WETH: ")] == [
        f"WETH: price {Decimal(bad)} refused: {warning['reason']}"
    ]
    # A portfolio holding WETH skips, naming WETH and why; one without WETH trades on.
    holding_weth = snapshot.usable_prices(["USDC", "WETH"], T0, 300)
    assert isinstance(holding_weth, NoPrices)
    assert holding_weth.reason.startswith("No trade: price for WETH is missing (WETH: price ")
    assert snapshot.usable_prices(["USDC", "WBTC"], T0, 300) == {
        "USDC": Decimal(1),
        "WBTC": Decimal(60000),
    }


async def test_a_move_within_the_factor_is_accepted_and_the_reference_follows() -> None:
    source = ScriptedSource([{"WETH": "29999"}])  # 9.9999x: inside the factor
    with trio.fail_after(5):
        snapshot = await poll_once(source, None, TOKENS, FEED, lambda: T0, {"WETH": Decimal(3000)})
    assert snapshot.prices["WETH"].usd == Decimal(29999)


async def test_a_refused_move_stays_refused_until_back_within_the_factor() -> None:
    """The feed remembers the last accepted price: a bad price repeated is still refused (a
    manipulation that lasts two polls does not become the reference), a price back within the
    factor is accepted, and raising prices.max_move_factor (live) lets a real move through."""
    answers: list[dict[str, str] | Exception] = [
        {"WETH": "3000"},
        {"WETH": "300000"},
        {"WETH": "300000"},
        {"WETH": "3100"},
        {"WETH": "300000"},
        {"WETH": "300000"},
    ]
    source = ScriptedSource(answers)
    factors = iter([10, 10, 10, 10, 10, 1000])
    published: list[PriceSnapshot] = []
    cell: Latest[PriceSnapshot] = Latest()

    class Reloaded:
        """prices.max_move_factor raised (live) for the last tick."""

        @property
        def current(self) -> Config:
            factor = Decimal(next(factors, 1000))
            return config(
                prices={"poll_interval": 0.01, "max_head_age": 0.0, "max_move_factor": factor}
            )

    feed = FeedFakes(published=published)
    with trio.fail_after(10), structlog.testing.capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                functools.partial(
                    run_price_feed,
                    primary=source,
                    secondary=None,
                    tokens=feed,
                    history=feed,
                    snapshots=cell,
                    config=Reloaded(),
                    now=lambda: T0,
                    ticks=feed,
                    alerts=feed,
                )
            )
            while len(published) < 6:
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    seen = [s.prices["WETH"].usd if "WETH" in s.prices else None for s in published[:6]]
    assert seen == [3000, None, None, 3100, None, 300000]
    refused = [e for e in logs if e.get("event") == "price_refused"]
    assert [(e["old_usd"], e["new_usd"]) for e in refused] == [
        ("3000", "300000"),
        ("3000", "300000"),
        ("3100", "300000"),
    ]


async def test_a_router_price_pumped_between_polls_is_refused(
    chain: ChainClient, devnet: Devnet
) -> None:
    """On the devnet's real pools: WETH pumped 20x between two polls is refused, the other
    tokens are published as before."""
    tokens = devnet_tokens(devnet)
    router = RouterSource(UniswapV2(chain, devnet.router, devnet.quote.address), utc_now)
    with trio.fail_after(60), structlog.testing.capture_logs() as logs:
        first = await poll_once(router, None, tokens, FEED, utc_now)
        await move_price(chain, devnet, "WETH", Decimal(20))
        previous = {s: p.usd for s, p in first.prices.items()}
        second = await poll_once(router, None, tokens, FEED, utc_now, previous)
    assert set(first.prices) == {"USDC", "WETH", "WBTC"}
    assert set(second.prices) == {"USDC", "WBTC"}
    assert second.prices["WBTC"].usd == first.prices["WBTC"].usd
    (warning,) = [e for e in logs if e.get("event") == "price_refused"]
    assert warning["token"] == "WETH"
    assert Decimal(warning["new_usd"]) / Decimal(warning["old_usd"]) > 19


# --- 1. router prices carry their block's timestamp; an old head is stale --------------------


def utc_now() -> datetime:
    return datetime.now(UTC)


def devnet_tokens(devnet: Devnet) -> list[Token]:
    ids = {symbol: coin for coin, symbol in COINGECKO_IDS.items()}
    return [
        Token(t.symbol, t.address, t.decimals, ids.get(t.symbol), t.symbol == devnet.quote_symbol)
        for t in devnet.tokens
        if t.symbol in ids
    ]


async def test_router_prices_carry_the_timestamp_of_the_block_they_were_read_at(
    chain: ChainClient, devnet: Devnet
) -> None:
    """The devnet's clock is moved an hour ahead: the prices carry the block's time."""
    uniswap = UniswapV2(chain, devnet.router, devnet.quote.address)
    router = RouterSource(uniswap, utc_now)
    with trio.fail_after(30):
        before = await chain.latest_block()
        await evm_increase_time(chain, 3600)
        await evm_mine(chain)
        head = await chain.latest_block()
        prices, problems = await router.fetch(devnet_tokens(devnet))
    assert problems == []
    stamp = datetime.fromtimestamp(head.timestamp, UTC)
    assert head.timestamp - before.timestamp >= 3600  # chain time, not the wall clock
    for point in prices.values():
        assert point.block_number == head.number
        assert point.block_timestamp == stamp
        assert abs((point.observed_at - utc_now()).total_seconds()) < 30  # when it was read


async def test_router_prices_from_a_node_stuck_on_an_old_head_are_stale(
    chain: ChainClient, devnet: Devnet
) -> None:
    """A node frozen at block N (the fault proxy) while the chain moves on 10 minutes: with
    prices.max_head_age the router prices read through it are stale, named with the block."""
    tokens = devnet_tokens(devnet)
    settings = feed_settings(max_head_age=120.0)
    with trio.fail_after(60):
        async with rpc_proxy(devnet.rpc_url) as proxy:
            config = attrs.evolve(devnet.chain_config(), rpc_url=proxy.url)
            async with ChainClient(config, retry=RetryPolicy(max_retries=0)) as stuck:
                frozen = await chain.latest_block()
                proxy.inject(None, StaleHead(), times=None)
                assert (await stuck.latest_block()).number == frozen.number
                await evm_increase_time(chain, 600)
                await evm_mine(chain)
                # The daemon's wall clock reads the chain's time (the devnet's clock is not ours).
                head = await chain.latest_block()
                chain_now = datetime.fromtimestamp(head.timestamp, UTC)

                def clock() -> datetime:
                    return chain_now

                uniswap = UniswapV2(stuck, devnet.router, devnet.quote.address)
                snapshot = await poll_once(
                    RouterSource(uniswap, clock), None, tokens, settings, clock
                )
                healthy = await poll_once(
                    RouterSource(UniswapV2(chain, devnet.router, devnet.quote.address), clock),
                    None,
                    tokens,
                    settings,
                    clock,
                )
    assert {p.block_number for p in snapshot.prices.values()} == {frozen.number}
    assert snapshot.max_head_age == 120
    refusal = snapshot.usable_prices(["USDC", "WETH"], chain_now, 300)
    assert isinstance(refusal, NoPrices)
    assert refusal.stale
    usable = refusal.reason
    assert usable.startswith(f"No trade: price for USDC is stale (read at block {frozen.number}, ")
    assert usable.endswith(" s old, max_head_age 120 s)")
    age = int(usable.split(", ")[1].split(" s old")[0])
    assert age >= 600
    assert any(f"head block {frozen.number} is " in p for p in snapshot.problems)
    # The same chain read through a node at the real head is fresh.
    assert isinstance(healthy.usable_prices(["USDC", "WETH", "WBTC"], chain_now, 300), dict)
    assert healthy.problems == ()


def test_health_judges_the_head_age_and_with_router_prices_an_old_head_is_failing() -> None:
    from test_health import document  # the health tests' document builder

    old = T0 - timedelta(minutes=10)
    now = {"now": T0, "started_at": T0 - timedelta(hours=1), "last_tick_at": T0}
    router = document(**now, price_source="router", head_block_at=old, max_head_age=120.0)
    assert router["status"] == "failing"
    assert "chain: head block 600 s old (max 120 s): router prices are stale" in router["problems"]
    assert router["chain"]["head_block_age_seconds"] == 600
    oracle = document(**now, price_source="oracle", head_block_at=old, max_head_age=120.0)
    assert oracle["status"] == "degraded"


async def test_a_node_stuck_on_an_old_head_stops_router_trading_and_says_so(
    chain: ChainClient,
    devnet: Devnet,
    db_config: DatabaseConfig,
    db: dbm.Database,
    tmp_path: Path,
) -> None:
    """The real daemon behind a node stuck at the block of a market move that the market has
    since undone (two minutes later on the real chain): it does not trade on the old prices,
    the portfolio's decision and a PRICE_STALE alert name the block, health is failing with the
    head's age, and the metrics export it."""
    with trio.fail_after(120):
        await setup_portfolio(chain, devnet, db_config, tmp_path)
        async with rpc_proxy(devnet.rpc_url) as proxy:
            await move_price(chain, devnet, "WETH", Decimal("1.3"))
            frozen = await chain.latest_block()
            proxy.inject(None, StaleHead(), times=None)
            async with ChainClient(
                attrs.evolve(devnet.chain_config(), rpc_url=proxy.url)
            ) as through_proxy:
                assert (await through_proxy.latest_block()).number == frozen.number
            await move_price(chain, devnet, "WETH", Decimal(1) / Decimal("1.3"))
            await evm_increase_time(chain, 120)
            await evm_mine(chain)
            head = await chain.latest_block()
            clock = Clock(offset=timedelta(seconds=head.timestamp - time.time()))
            overrides: dict[str, Any] = {
                "chain": {"rpc_url": proxy.url},
                "prices": {"max_head_age": 30},
            }
            async with running_daemon(devnet, db_config, clock, **overrides) as daemon:
                await wait_for(lambda: evaluated(daemon, "main", 5), "evaluations")
                state = daemon.supervisor.actors["main"].state
                health = DaemonControls(daemon).health()
                metrics = daemon.metrics.render()
        assert await finished_rows(db, "main") == []
    decision = state.last_decision or ""
    assert decision.startswith("No trade: price for "), decision
    assert f"is stale (read at block {frozen.number}, " in decision
    assert "max_head_age 30 s)" in decision
    assert daemon.alerts is not None
    stale = [a for a in daemon.alerts.fired if a.kind == "PRICE_STALE"]
    assert any(a.portfolio == "main" and str(frozen.number) in a.text for a in stale), stale
    assert health["status"] == "failing"
    assert health["chain"]["head_block"] == frozen.number
    assert health["chain"]["head_block_age_seconds"] >= 120
    assert any("router prices are stale" in p for p in health["problems"]), health["problems"]
    (age_line,) = [
        line
        for line in metrics.splitlines()
        if line.startswith("driftd_price_head_block_age_seconds ")
    ]
    assert float(age_line.split()[1]) >= 120


# --- 2. with cross-checking, a token the second source cannot price is UNVERIFIED -------------


async def test_cross_check_a_token_without_a_second_price_is_unverified_and_not_traded() -> None:
    router = ScriptedSource([{"WETH": "3000000", "WBTC": "60000", "USDC": "1"}])  # WETH 1000x
    oracle = ScriptedSource([{"WBTC": "60100", "USDC": "1.0002"}], name="oracle")
    with trio.fail_after(5):
        snapshot = await poll_once(router, oracle, TOKENS, FEED, lambda: T0)
    assert snapshot.health == {"WETH": UNVERIFIED}
    assert "WETH: UNVERIFIED, not traded: oracle has no price for it" in snapshot.problems
    # The engine neither buys nor sells it.
    prices = snapshot.usable_prices(["WETH", "WBTC", "USDC"], T0, 300)
    assert isinstance(prices, dict)
    holdings = [Holding("WETH", 10**18, 18), Holding("WBTC", 10**7, 8), Holding("USDC", 10**9, 6)]
    targets = {"WETH": Decimal("0.2"), "WBTC": Decimal("0.3"), "USDC": Decimal("0.5")}
    decision = evaluate(holdings, targets, prices, snapshot.health, params=engine_params())
    (weth,) = [d for d in decision.drifts if d.symbol == "WETH"]
    assert (weth.tradable, weth.health) == (False, UNVERIFIED)
    assert all("WETH" not in (leg.sell, leg.buy) for leg in getattr(decision, "legs", ()))


@pytest.mark.parametrize(
    ("oracle_answer", "why"),
    [
        ({"WETH": "0", "WBTC": "60000", "USDC": "1"}, "oracle price 0 is zero"),
        ({"WETH": "NaN", "WBTC": "60000", "USDC": "1"}, "oracle price NaN is not a number"),
        (PriceSourceError("CoinGecko answered HTTP 503"), None),
    ],
)
async def test_cross_check_an_unusable_second_price_is_unverified(
    oracle_answer: dict[str, str] | Exception, why: str | None
) -> None:
    router = ScriptedSource([{"WETH": "3000", "WBTC": "60000", "USDC": "1"}])
    oracle = ScriptedSource([oracle_answer], name="oracle")
    with trio.fail_after(5):
        snapshot = await poll_once(router, oracle, TOKENS, FEED, lambda: T0)
    if why is None:  # the whole second source failed: nothing is verified
        assert snapshot.health == dict.fromkeys(["WETH", "WBTC", "USDC"], UNVERIFIED)
        assert any("cross-check source oracle failed" in p for p in snapshot.problems)
    else:
        assert snapshot.health == {"WETH": UNVERIFIED}
        assert f"WETH: UNVERIFIED, not traded: {why}" in snapshot.problems


async def test_cross_check_a_stale_second_price_verifies_nothing() -> None:
    router = ScriptedSource([{"WETH": "3000", "USDC": "1"}])
    oracle = ScriptedSource(
        [{"WETH": "3000", "USDC": "1"}], name="oracle", at=T0 - timedelta(hours=1)
    )
    with trio.fail_after(5):
        snapshot = await poll_once(router, oracle, TOKENS, FEED, lambda: T0)
    assert snapshot.health == {"WETH": UNVERIFIED, "USDC": UNVERIFIED}
    assert "WETH: UNVERIFIED, not traded: oracle price is 3600 s old (max_age 300 s)" in (
        snapshot.problems
    )


async def test_cross_check_divergence_is_still_diverged() -> None:
    router = ScriptedSource([{"WETH": "3000", "USDC": "1"}])
    oracle = ScriptedSource([{"WETH": "3300", "USDC": "1.001"}], name="oracle")
    with trio.fail_after(5):
        snapshot = await poll_once(router, oracle, TOKENS, FEED, lambda: T0)
    assert snapshot.health == {"WETH": DIVERGED}
    assert any(
        p.startswith("WETH: DIVERGED, not traded: router 3000 vs oracle 3300")
        for p in snapshot.problems
    )


async def test_cross_check_a_pumped_router_price_without_an_oracle_price_over_real_servers(
    chain: ChainClient, devnet: Devnet
) -> None:
    """The issue's case on the devnet's pools and a loopback CoinGecko that does not know WETH:
    WETH pumped 1000x on its pool (the first tick after a start: no move reference) is
    UNVERIFIED, the tokens the oracle confirms stay healthy."""
    tokens = devnet_tokens(devnet)
    uniswap = UniswapV2(chain, devnet.router, devnet.quote.address)

    async def handler(request: Request) -> Response:
        ids = parse_qs(urlsplit(request.target).query)["ids"][0].split(",")
        body = {}
        for coin in ids:
            symbol = COINGECKO_IDS[coin]
            if symbol == "WETH":
                continue  # CoinGecko has no price for it
            token = devnet.token(symbol)
            price = (
                Decimal(1)
                if symbol == devnet.quote_symbol
                else await uniswap.spot_price(
                    token.address, token.decimals, devnet.quote.address, devnet.quote.decimals
                )
            )
            body[coin] = {"usd": float(price), "last_updated_at": int(time.time())}
        return Response(body=json.dumps(body).encode())

    with trio.fail_after(60):
        await move_price(chain, devnet, "WETH", Decimal(1000))
        async with loopback_http(handler) as server, httpx.AsyncClient() as client:
            oracle = OracleSource(CoinGeckoSource(client, server.url))
            router = RouterSource(uniswap, utc_now)
            snapshot = await poll_once(router, oracle, tokens, FEED, utc_now)
    assert snapshot.prices["WETH"].usd > 1_000_000  # pumped ~1000x, and published
    assert snapshot.health == {"WETH": UNVERIFIED}
    assert any(
        p.startswith("WETH: UNVERIFIED, not traded: CoinGecko has no USD price")
        for p in snapshot.problems
    )


# --- 4. an oracle outage longer than max_age raises PRICE_STALE ------------------------------

OUTAGES: Final = (
    # One of each way an outage reaches the feed (every bad answer's own outcome is checked by
    # test_every_bad_coingecko_answer_has_a_clear_outcome): the tick fails, it is rate limited,
    # the price is stale, one token is missing, the price is refused.
    "http_503",
    "http_429",
    "stale_last_updated_at",
    "missing_one_id",
    "usd_zero",
)
"""The COINGECKO_CASES an outage is made of."""


@pytest.mark.parametrize("outage", OUTAGES)
async def test_an_oracle_outage_longer_than_max_age_raises_price_stale_once(outage: str) -> None:
    """The real feed over a loopback CoinGecko, on a clock running 100x faster than real time
    (max_age 60 s = 0.6 s real). Fresh answers, then the outage: PRICE_STALE once the last usable
    WETH price is older than max_age (not before), one alert however long it lasts (the sink
    suppresses repeats), and one ``price_feed_fresh_again`` line when the answers are good again."""
    (case,) = [c for c in COINGECKO_CASES if c[0] == outage]
    _, status, body, _ = case
    start = trio.current_time()

    def now() -> datetime:
        return T0 + timedelta(seconds=100 * (trio.current_time() - start))

    phase = "fresh"
    outage_began: datetime | None = None

    async def handler(request: Request) -> Response:
        if phase == "outage":
            headers = {"retry-after": "0.05"} if status == 429 else {}
            return Response(status=status, body=body, headers=headers)
        updated = int(now().timestamp())
        return Response(
            body=coingecko_text(updated=str(updated)).replace(
                str(T0_UNIX).encode(), str(updated).encode()
            )
        )

    sink = AlertSink(holder(), now)
    published: list[PriceSnapshot | None] = []
    cell: Latest[PriceSnapshot] = Latest()
    feed = FeedFakes(published=published, failed_ticks=True)

    with trio.fail_after(20), structlog.testing.capture_logs() as logs:
        async with loopback_http(handler) as server, httpx.AsyncClient() as client:
            source = OracleSource(CoinGeckoSource(client, server.url, now=now))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    functools.partial(
                        run_price_feed,
                        primary=source,
                        secondary=None,
                        tokens=feed,
                        history=feed,
                        snapshots=cell,
                        config=holder(
                            prices={"poll_interval": 0.05, "max_age": 60.0, "max_head_age": 0.0}
                        ),
                        now=now,
                        ticks=feed,
                        alerts=sink,
                    )
                )
                while len([s for s in published if s is not None]) < 3:
                    await trio.sleep(0.01)
                assert sink.fired == []
                phase, outage_began = "outage", now()
                while not sink.fired:
                    await trio.sleep(0.01)
                alerted_after = (now() - outage_began).total_seconds()
                await trio.sleep(0.5)  # 50 s more of the outage: no second alert
                assert len(sink.fired) == 1
                phase = "fresh"
                while not any(e.get("event") == "price_feed_fresh_again" for e in logs):
                    await trio.sleep(0.01)
                nursery.cancel_scope.cancel()
    (alert,) = sink.fired
    assert alert.kind == "PRICE_STALE"
    assert alert.portfolio is None
    assert alert.fields["source"] == "oracle"
    assert "WETH" in alert.fields["tokens"].split(", ")
    assert "(max_age 60 s)" in alert.fields["reason"]
    # Not before max_age since the last usable price (an outage shorter than max_age is quiet).
    assert alerted_after >= 60 - 10
    assert len([e for e in logs if e.get("event") == "price_feed_fresh_again"]) == 1


async def test_an_oracle_outage_in_the_running_daemon_is_alerted_and_health_is_failing(
    chain: ChainClient,
    devnet: Devnet,
    db_config: DatabaseConfig,
    db: dbm.Database,
    tmp_path: Path,
) -> None:
    """The real daemon with oracle prices from a loopback CoinGecko that starts answering 503:
    within max_age + a few polls a PRICE_STALE alert is fired (before, health said failing and
    nothing was sent), and it stops once CoinGecko answers again."""
    uniswap = UniswapV2(chain, devnet.router, devnet.quote.address)
    down = False

    async def handler(request: Request) -> Response:
        if down:
            return Response(status=503, body=b"Service Unavailable", content_type="text/plain")
        ids = parse_qs(urlsplit(request.target).query)["ids"][0].split(",")
        body = {}
        for coin in ids:
            token = devnet.token(COINGECKO_IDS[coin])
            price = (
                Decimal(1)
                if token.symbol == devnet.quote_symbol
                else await uniswap.spot_price(
                    token.address, token.decimals, devnet.quote.address, devnet.quote.decimals
                )
            )
            body[coin] = {"usd": float(price), "last_updated_at": int(time.time())}
        return Response(body=json.dumps(body).encode())

    with trio.fail_after(90):
        async with loopback_http(handler) as server:
            overrides: dict[str, Any] = {
                "prices": {"source": "oracle", "coingecko_base_url": server.url, "max_age": 2},
            }
            await setup_portfolio(chain, devnet, db_config, tmp_path, **overrides)
            with structlog.testing.capture_logs() as logs:
                async with running_daemon(devnet, db_config, **overrides) as daemon:
                    await wait_for(lambda: evaluated(daemon, "main", 2), "evaluations")
                    assert daemon.alerts is not None
                    down = True

                    async def alerted() -> bool:
                        assert daemon.alerts is not None
                        return any(a.kind == "PRICE_STALE" for a in daemon.alerts.fired)

                    await wait_for(alerted, "a PRICE_STALE alert", within=15)
                    health = DaemonControls(daemon).health()
                    down = False

                    async def fresh_again() -> bool:
                        return any(e.get("event") == "price_feed_fresh_again" for e in logs)

                    await wait_for(fresh_again, "fresh prices again", within=15)
    # The feed's own alert (no portfolio evaluates while no snapshot comes), fired once.
    (alert,) = [a for a in daemon.alerts.fired if a.kind == "PRICE_STALE" and not a.portfolio]
    assert alert.fields["source"] == "oracle"
    assert "CoinGecko answered HTTP 503" in alert.fields["reason"]
    assert health["status"] == "failing"
    assert any(p.startswith("price feed: last tick") for p in health["problems"])

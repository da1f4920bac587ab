"""The price feed: ticks, publishes snapshots, survives failures, cross-checks, staleness."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import attrs
import httpx
import trio
import trio.testing
from http_server import Request, Response, loopback_http
from schema_defaults import feed_settings, holder

from daemon.coingecko import CoinGeckoSource, PriceSourceError, RateLimited
from daemon.latest import Latest
from daemon.messages import NoPrices, PricePoint, PriceSnapshot, PriceSourceName, Token
from daemon.prices import (
    DIVERGED,
    UNVERIFIED,
    OracleSource,
    poll_once,
    run_price_feed,
)

T0 = datetime(2026, 11, 24, tzinfo=UTC)
TOKENS = [
    Token("WETH", "0x" + "11" * 20, 18, "weth"),
    Token("USDC", "0x" + "22" * 20, 6, "usd-coin", is_quote=True),
]


def point(symbol: str, usd: str, source: PriceSourceName = "router") -> PricePoint:
    return PricePoint(symbol, Decimal(usd), T0, source)


@attrs.define
class ScriptedSource:
    """A price source that answers from a script: a dict of prices or an exception per call."""

    answers: list[dict[str, PricePoint] | Exception]
    name: PriceSourceName = "router"
    calls: list[float] = attrs.Factory(list)

    async def fetch(self, tokens: list[Token]) -> tuple[dict[str, PricePoint], list[str]]:
        self.calls.append(trio.current_time())
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return dict(answer), []


@attrs.define
class FeedWorld:
    """What the feed is wired to, as fakes: the tokens it prices, where it stores, who hears."""

    stored: list[list[PricePoint]] = attrs.Factory(list)
    ticks: list[PriceSnapshot | None] = attrs.Factory(list)
    alerts: list[tuple[str, dict[str, object]]] = attrs.Factory(list)

    async def load(self) -> list[Token]:
        return TOKENS

    async def store(self, points: list[PricePoint]) -> None:
        self.stored.append(points)

    def ticked(self, snapshot: PriceSnapshot | None) -> None:
        self.ticks.append(snapshot)

    def fire(self, kind: str, fields: Mapping[str, object]) -> bool:
        self.alerts.append((kind, dict(fields)))
        return True


async def run_feed(
    source: ScriptedSource, seconds: float, secondary: ScriptedSource | None = None
) -> tuple[list[PriceSnapshot], list[list[PricePoint]]]:
    cell: Latest[PriceSnapshot] = Latest()
    world = FeedWorld()
    published: list[PriceSnapshot] = []

    async def watch() -> None:
        version = 0
        while True:
            version, snapshot = await cell.wait_newer(version)
            published.append(snapshot)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        await nursery.start(
            functools.partial(
                run_price_feed,
                primary=source,
                secondary=secondary,
                tokens=world,
                history=world,
                snapshots=cell,
                config=holder(prices={"poll_interval": 10.0}),
                now=lambda: T0,
                ticks=world,
                alerts=world,
            )
        )
        await trio.sleep(seconds)
        nursery.cancel_scope.cancel()
    return published, world.stored


async def test_feed_stores_and_publishes_every_tick(autojump_clock: trio.testing.MockClock) -> None:
    source = ScriptedSource([{"WETH": point("WETH", "3000"), "USDC": point("USDC", "1")}])
    with trio.fail_after(100):
        published, stored = await run_feed(source, 35)
    assert len(published) == 4  # t = 0, 10, 20, 30
    assert published[-1].prices["WETH"].usd == Decimal(3000)
    assert len(stored) == 4
    assert {p.symbol for p in stored[0]} == {"WETH", "USDC"}


async def test_failed_tick_is_skipped_and_feed_keeps_going(
    autojump_clock: trio.testing.MockClock,
) -> None:
    good = {"WETH": point("WETH", "3000")}
    source = ScriptedSource([good, PriceSourceError("down"), good])
    with trio.fail_after(100):
        published, stored = await run_feed(source, 25)
    assert len(source.calls) == 3
    assert len(published) == 2
    assert len(stored) == 2


async def test_rate_limit_waits_as_long_as_asked(autojump_clock: trio.testing.MockClock) -> None:
    good = {"WETH": point("WETH", "3000")}
    source = ScriptedSource([RateLimited(45), good])
    with trio.fail_after(100):
        await run_feed(source, 50)
    assert source.calls[1] - source.calls[0] == 45


async def test_cross_check_marks_divergent_tokens_unhealthy(
    autojump_clock: trio.testing.MockClock,
) -> None:
    primary = ScriptedSource([{"WETH": point("WETH", "3000"), "USDC": point("USDC", "1")}])
    oracle = ScriptedSource(
        [{"WETH": point("WETH", "3300", "oracle"), "USDC": point("USDC", "1.001", "oracle")}],
        name="oracle",
    )
    with trio.fail_after(10):
        snapshot = await poll_once(
            primary, oracle, TOKENS, feed_settings(max_divergence=Decimal("0.05")), lambda: T0
        )
    assert snapshot.health == {"WETH": DIVERGED}  # 10 % apart; USDC 0.1 % apart is fine


async def test_cross_check_failure_trusts_nothing() -> None:
    primary = ScriptedSource([{"WETH": point("WETH", "3000")}])
    broken = ScriptedSource([PriceSourceError("down")], name="oracle")
    with trio.fail_after(10):
        snapshot = await poll_once(primary, broken, TOKENS, feed_settings(), lambda: T0)
    assert snapshot.health == {"WETH": UNVERIFIED}
    assert any("cross-check" in p for p in snapshot.problems)


def test_usable_prices_rejects_stale_missing_and_invalid() -> None:
    snapshot = PriceSnapshot(
        prices={
            "WETH": point("WETH", "3000"),
            "USDC": point("USDC", "1"),
            "BAD": point("BAD", "0"),
        },
        taken_at=T0,
        source="router",
    )
    assert snapshot.usable_prices(["WETH", "USDC"], T0 + timedelta(seconds=60), 300) == {
        "WETH": Decimal(3000),
        "USDC": Decimal(1),
    }
    stale = snapshot.usable_prices(["WETH"], T0 + timedelta(seconds=301), 300)
    assert stale == NoPrices("No trade: price for WETH is stale (301 s old, max_age 300 s)", True)
    missing = NoPrices("No trade: price for WBTC is missing", stale=False)
    assert snapshot.usable_prices(["WBTC"], T0, 300) == missing
    why = attrs.evolve(snapshot, problems=("WBTC: no router price (NoRoute: no pair)",))
    assert why.usable_prices(["WBTC"], T0, 300) == NoPrices(
        "No trade: price for WBTC is missing (WBTC: no router price (NoRoute: no pair))", False
    )
    invalid = NoPrices("No trade: price for BAD is invalid: 0", stale=False)
    assert snapshot.usable_prices(["BAD"], T0, 300) == invalid


async def test_oracle_source_over_loopback_coingecko() -> None:
    async def handler(request: Request) -> Response:
        return Response(
            body=b'{"weth": {"usd": 3001.5, "last_updated_at": 1732406400},'
            b' "usd-coin": {"usd": 1.0001, "last_updated_at": 1732406400}}'
        )

    tokens = [*TOKENS, Token("XYZ", "0x" + "33" * 20, 18)]
    with trio.fail_after(10):
        async with loopback_http(handler) as server, httpx.AsyncClient() as client:
            source = OracleSource(CoinGeckoSource(client, server.url))
            prices, problems = await source.fetch(tokens)
    assert prices["WETH"].usd == Decimal("3001.5")
    assert prices["USDC"].usd == Decimal("1.0001")
    assert problems == ["XYZ: no coingecko_id registered"]


def test_router_prices_from_an_old_head_are_stale_with_max_head_age() -> None:
    """A router price carries its block's timestamp; read at a head older than max_head_age it
    is stale even though it was read just now (and not judged when max_head_age is unset)."""
    read_now = PricePoint(
        "WETH", Decimal(3000), T0, "router", 19_000_000, T0 - timedelta(seconds=400)
    )
    snapshot = PriceSnapshot({"WETH": read_now}, T0, "router", max_head_age=120)
    assert snapshot.usable_prices(["WETH"], T0 + timedelta(seconds=5), 300) == NoPrices(
        "No trade: price for WETH is stale (read at block 19000000, 405 s old, max_head_age 120 s)",
        stale=True,
    )
    fresh_head = attrs.evolve(read_now, block_timestamp=T0 - timedelta(seconds=12))
    assert attrs.evolve(snapshot, prices={"WETH": fresh_head}).usable_prices(
        ["WETH"], T0 + timedelta(seconds=5), 300
    ) == {"WETH": Decimal(3000)}
    unjudged = attrs.evolve(snapshot, max_head_age=None)
    assert unjudged.usable_prices(["WETH"], T0, 300) == {"WETH": Decimal(3000)}

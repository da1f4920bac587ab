"""The CoinGecko source against a loopback server speaking CoinGecko's wire format."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import trio
from http_server import Request, Response, loopback_http

from daemon.coingecko import CoinGeckoSource, PriceSourceError, RateLimited, parse_retry_after
from daemon.config import Secret

IDS = {"WETH": "weth", "WBTC": "wrapped-bitcoin", "USDC": "usd-coin"}


def coingecko_body(request: Request) -> bytes:
    """What /simple/price answers, for the ids asked."""
    query = parse_qs(urlsplit(request.target).query)
    known = {
        "weth": ("3012.123456789012345", 1732400000),
        "wrapped-bitcoin": ("97000.5", 1732400010),
        "usd-coin": ("0.999912", 1732400020),
    }
    body = {}
    for coin in query["ids"][0].split(","):
        if coin in known:
            price, updated = known[coin]
            body[coin] = {"usd": price, "last_updated_at": updated}
    # Numbers on the wire are JSON numbers, as CoinGecko sends them.
    text = json.dumps(body)
    for price, _ in known.values():
        text = text.replace(f'"{price}"', price)
    return text.encode()


async def test_prices_are_exact_decimals_with_source_time() -> None:
    async def handler(request: Request) -> Response:
        return Response(body=coingecko_body(request))

    with trio.fail_after(10):
        async with loopback_http(handler) as server, httpx.AsyncClient() as client:
            source = CoinGeckoSource(client, server.url + "/api/v3", Secret("cg-demo-key"), "demo")
            prices, problems = await source.fetch(IDS)
    assert problems == []
    assert prices["WETH"].usd == Decimal("3012.123456789012345")  # not rounded through float
    assert prices["WETH"].observed_at == datetime.fromtimestamp(1732400000, UTC)
    assert prices["USDC"].source == "oracle"
    (request,) = server.requests
    assert request.target.startswith("/api/v3/simple/price?")
    query = parse_qs(urlsplit(request.target).query)
    assert query["vs_currencies"] == ["usd"]
    assert query["include_last_updated_at"] == ["true"]
    assert sorted(query["ids"][0].split(",")) == sorted(IDS.values())
    assert request.headers["x-cg-demo-api-key"] == "cg-demo-key"


async def test_pro_plan_uses_the_pro_header() -> None:
    async def handler(request: Request) -> Response:
        return Response(body=coingecko_body(request))

    with trio.fail_after(10):
        async with loopback_http(handler) as server, httpx.AsyncClient() as client:
            await CoinGeckoSource(client, server.url, Secret("pro"), "pro").fetch({"WETH": "weth"})
    assert server.requests[0].headers["x-cg-pro-api-key"] == "pro"
    assert "x-cg-demo-api-key" not in server.requests[0].headers


async def test_missing_and_malformed_prices_are_problems_invalid_numbers_are_passed_on() -> None:
    """A missing id or a value that is not a number is a problem line; a number that makes no
    sense as a price (0, negative) is passed on as it is: the feed refuses it with a logged
    reason (tests/test_price_checks.py)."""

    async def handler(request: Request) -> Response:
        body = {
            "weth": {"usd": 0, "last_updated_at": 1},
            "wrapped-bitcoin": {"usd": "-5", "last_updated_at": 1},
        }
        return Response(body=json.dumps(body).encode())

    with trio.fail_after(10):
        async with loopback_http(handler) as server, httpx.AsyncClient() as client:
            prices, problems = await CoinGeckoSource(client, server.url).fetch(IDS)
    assert prices["WETH"].usd == 0
    assert sorted(problems) == [
        "USDC: CoinGecko has no USD price for 'usd-coin'",
        "WBTC: CoinGecko has no USD price for 'wrapped-bitcoin'",
    ]


async def test_a_slow_drip_answer_times_out() -> None:
    """A server that never finishes its answer cannot hold the feed: the whole request is
    bounded, not each read."""

    async def handler(request: Request) -> Response:
        await trio.sleep(5)
        return Response(body=b"{}")

    with trio.fail_after(10):
        async with loopback_http(handler) as server, httpx.AsyncClient() as client:
            source = CoinGeckoSource(client, server.url, timeout=0.3)
            with pytest.raises(PriceSourceError, match=r"did not answer within 0.3 s"):
                await source.fetch(IDS)


async def test_a_future_last_updated_at_is_a_problem_and_a_small_skew_counts_as_now() -> None:
    now = datetime(2026, 11, 24, tzinfo=UTC)

    async def handler(request: Request) -> Response:
        at = int(now.timestamp())
        body = {
            "weth": {"usd": 3000, "last_updated_at": at + 86_400},
            "usd-coin": {"usd": 1, "last_updated_at": at + 30},
        }
        return Response(body=json.dumps(body).encode())

    with trio.fail_after(10):
        async with loopback_http(handler) as server, httpx.AsyncClient() as client:
            source = CoinGeckoSource(client, server.url, now=lambda: now)
            prices, problems = await source.fetch({"WETH": "weth", "USDC": "usd-coin"})
    assert set(prices) == {"USDC"}
    assert prices["USDC"].observed_at == now
    assert problems == [
        f"WETH: CoinGecko gave last_updated_at {int(now.timestamp()) + 86_400} for 'weth', "
        "86400 s in the future"
    ]


async def test_429_reports_retry_after() -> None:
    async def handler(request: Request) -> Response:
        return Response(
            status=429, body=b'{"status":{"error_code":429}}', headers={"retry-after": "17"}
        )

    with trio.fail_after(10):
        async with loopback_http(handler) as server, httpx.AsyncClient() as client:
            with pytest.raises(RateLimited) as info:
                await CoinGeckoSource(client, server.url).fetch(IDS)
    assert info.value.retry_after == 17


async def test_server_error_and_garbage_are_typed_errors_without_the_key() -> None:
    answers = [Response(status=500, body=b"oops"), Response(body=b"not json")]

    async def handler(request: Request) -> Response:
        return answers.pop(0)

    with trio.fail_after(10):
        async with loopback_http(handler) as server, httpx.AsyncClient() as client:
            source = CoinGeckoSource(client, server.url, Secret("very-secret-key"))
            with pytest.raises(PriceSourceError, match="HTTP 500") as first:
                await source.fetch(IDS)
            with pytest.raises(PriceSourceError, match="invalid JSON") as second:
                await source.fetch(IDS)
    assert "very-secret-key" not in str(first.value) + str(second.value)


async def test_unreachable_is_a_typed_error() -> None:
    with trio.fail_after(10):
        async with httpx.AsyncClient() as client:
            # Port 9 (discard) on loopback: nothing listens there.
            source = CoinGeckoSource(client, "http://127.0.0.1:9")
            with pytest.raises(PriceSourceError, match="unreachable"):
                await source.fetch(IDS)


def test_retry_after_parsing() -> None:
    assert parse_retry_after("5") == 5
    assert parse_retry_after(None) == 60
    assert parse_retry_after("garbage") == 60
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0

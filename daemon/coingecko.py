"""CoinGecko's simple-price API as a price source (``prices.source = "oracle"``).

``GET {base}/simple/price?ids=a,b&vs_currencies=usd&include_last_updated_at=true`` answers
``{"a": {"usd": 3012.5, "last_updated_at": 1732400000}, …}``. Prices are parsed from the JSON text
as Decimal (never through float), ``last_updated_at`` becomes the price's time so a frozen feed
shows up as stale, and HTTP 429 is reported with its ``Retry-After`` so the feed backs off as the
API asks. The API key goes in ``x-cg-demo-api-key`` or ``x-cg-pro-api-key`` and never into a log
line or an error message.

Whatever the server sends is bounded before it is parsed: the whole answer within
:data:`FETCH_TIMEOUT` seconds, at most :data:`MAX_BODY_BYTES`, JSON nested at most
:data:`MAX_JSON_DEPTH` deep (a deeply nested answer would overflow the C JSON decoder's stack, and
the process raises the recursion limit for py_ecc). A ``last_updated_at`` that is not a plausible
Unix time, or lies more than :data:`MAX_FUTURE_SKEW` seconds ahead of our clock, is a problem,
not a price (a future time would never age into staleness). The USD value is passed on as the
number it is — zero, negative, ``NaN`` or huge included — for the feed to refuse with a logged
reason (:func:`daemon.prices.price_refusal`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Final

import httpx
import trio

from daemon.config import Secret
from daemon.messages import PricePoint

DEFAULT_RETRY_AFTER: Final = 60.0
FETCH_TIMEOUT: Final = 30.0
"""Seconds the whole request may take (httpx's timeouts are per read: a server dripping one
byte at a time would hold the feed forever)."""
MAX_BODY_BYTES: Final = 1 << 20
"""A simple-price answer for a few dozen ids is a few kB."""
MAX_JSON_DEPTH: Final = 32
"""The answer is two levels deep."""
MAX_FUTURE_SKEW: Final = 300.0
"""Seconds ``last_updated_at`` may lie ahead of our clock (then it counts as now)."""
LATEST_PLAUSIBLE_TIME: Final = 2**33
"""Unix seconds in the year 2242: a larger ``last_updated_at`` is garbage."""
_JSON_STRING_RE: Final = re.compile(r'"(?:[^"\\]|\\.)*"')
_JSON_BRACKET_RE: Final = re.compile(r"[\[\]{}]")


class PriceSourceError(Exception):
    """The source gave no usable answer this time."""


class RateLimited(PriceSourceError):
    """HTTP 429: wait ``retry_after`` seconds before asking again."""

    def __init__(self, retry_after: float) -> None:
        self.retry_after = retry_after
        super().__init__(f"rate limited by the price source; retry after {retry_after:g} s")


def parse_retry_after(value: str | None) -> float:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return DEFAULT_RETRY_AFTER
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return DEFAULT_RETRY_AFTER
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def json_depth(text: str) -> int:
    """How deeply ``text``'s arrays and objects nest (brackets inside strings do not count).

    Computed without parsing, so that an answer nested too deeply is refused before the JSON
    decoder recurses into it."""
    depth = deepest = 0
    for match in _JSON_BRACKET_RE.finditer(_JSON_STRING_RE.sub("", text)):
        if match.group() in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def _decimal_constant(name: str) -> Decimal:
    # NaN, Infinity and -Infinity (Python's json accepts them) as Decimal, for the feed to refuse.
    return Decimal(name)


class CoinGeckoSource:
    """Fetches USD prices for tokens by CoinGecko id over a shared ``httpx.AsyncClient``."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        base_url: str,
        api_key: Secret | None = None,
        plan: str = "demo",
        *,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        timeout: float = FETCH_TIMEOUT,
    ) -> None:
        self._client = client
        self._base_url = base_url.rstrip("/")
        self._api_key = api_key
        self._header = "x-cg-pro-api-key" if plan == "pro" else "x-cg-demo-api-key"
        self._now = now
        self._timeout = timeout

    async def fetch(self, ids: Mapping[str, str]) -> tuple[dict[str, PricePoint], list[str]]:
        """Prices for ``{symbol: coingecko_id}``; returns (prices, problems for missing ones)."""
        if not ids:
            return {}, []
        headers = {"accept": "application/json"}
        if self._api_key is not None:
            headers[self._header] = self._api_key.reveal()
        params = {
            "ids": ",".join(sorted(set(ids.values()))),
            "vs_currencies": "usd",
            "include_last_updated_at": "true",
        }
        with trio.move_on_after(self._timeout):
            text = await self._get(f"{self._base_url}/simple/price", params, headers)
            return self._parse(text, ids)
        raise PriceSourceError(f"CoinGecko did not answer within {self._timeout:g} s")

    async def _get(self, url: str, params: dict[str, str], headers: dict[str, str]) -> str:
        """The answer's text, read no further than :data:`MAX_BODY_BYTES`."""
        try:
            async with self._client.stream("GET", url, params=params, headers=headers) as response:
                if response.status_code == 429:
                    raise RateLimited(parse_retry_after(response.headers.get("retry-after")))
                if response.status_code != 200:
                    raise PriceSourceError(f"CoinGecko answered HTTP {response.status_code}")
                too_big = PriceSourceError(f"CoinGecko answered more than {MAX_BODY_BYTES} bytes")
                length = response.headers.get("content-length", "")
                if length.isdigit() and int(length) > MAX_BODY_BYTES:
                    raise too_big
                # Read to the end (bounded in time by the caller) but keep at most the limit:
                # leaving httpx's nested stream generators half-read leaks them.
                body = bytearray()
                over = False
                async for chunk in response.aiter_bytes():
                    if not over:
                        body += chunk
                        over = len(body) > MAX_BODY_BYTES
                if over:
                    raise too_big
        except httpx.HTTPError as exc:
            # The exception text may quote the request; keep only its kind.
            raise PriceSourceError(f"CoinGecko unreachable: {type(exc).__name__}") from None
        try:
            return body.decode()
        except UnicodeDecodeError:
            raise PriceSourceError("CoinGecko answered with invalid JSON (not UTF-8)") from None

    def _parse(self, text: str, ids: Mapping[str, str]) -> tuple[dict[str, PricePoint], list[str]]:
        if json_depth(text) > MAX_JSON_DEPTH:
            raise PriceSourceError(f"CoinGecko answered JSON nested deeper than {MAX_JSON_DEPTH}")
        try:
            body = json.loads(
                text,
                parse_float=Decimal,
                parse_int=Decimal,
                parse_constant=_decimal_constant,
            )
        except (ValueError, RecursionError):
            raise PriceSourceError("CoinGecko answered with invalid JSON") from None
        if not isinstance(body, dict):
            raise PriceSourceError("CoinGecko answered with an unexpected JSON shape")
        now = self._now()
        prices: dict[str, PricePoint] = {}
        problems: list[str] = []
        for symbol, coin_id in ids.items():
            entry = body.get(coin_id)
            usd = entry.get("usd") if isinstance(entry, dict) else None
            updated = entry.get("last_updated_at") if isinstance(entry, dict) else None
            if not isinstance(usd, Decimal):
                problems.append(f"{symbol}: CoinGecko has no USD price for {coin_id!r}")
                continue
            if not isinstance(updated, Decimal):
                problems.append(f"{symbol}: CoinGecko gave no last_updated_at for {coin_id!r}")
                continue
            if not (updated.is_finite() and 0 < updated < LATEST_PLAUSIBLE_TIME):
                problems.append(
                    f"{symbol}: CoinGecko gave last_updated_at {_short(updated)} for {coin_id!r},"
                    " which is not a time"
                )
                continue
            observed_at = datetime.fromtimestamp(int(updated), UTC)
            ahead = (observed_at - now).total_seconds()
            if ahead > MAX_FUTURE_SKEW:
                problems.append(
                    f"{symbol}: CoinGecko gave last_updated_at {int(updated)} for {coin_id!r}, "
                    f"{ahead:.0f} s in the future"
                )
                continue
            prices[symbol] = PricePoint(
                symbol=symbol,
                usd=usd,
                observed_at=min(observed_at, now),
                source="oracle",
            )
        return prices, problems


def _short(value: Decimal) -> str:
    text = str(value)
    return text if len(text) <= 24 else text[:20] + "…"

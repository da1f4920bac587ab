"""CoinGecko's simple-price API as a price source (``prices.source = "oracle"``).

``GET {base}/simple/price?ids=a,b&vs_currencies=usd&include_last_updated_at=true`` answers
``{"a": {"usd": 3012.5, "last_updated_at": 1732400000}, …}``. Prices are parsed from the JSON text
as Decimal (never through float), ``last_updated_at`` becomes the price's time so a frozen feed
shows up as stale, and HTTP 429 is reported with its ``Retry-After`` so the feed backs off as the
API asks. The API key goes in ``x-cg-demo-api-key`` or ``x-cg-pro-api-key`` and never into a log
line or an error message.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Final

import httpx

from daemon.config import Secret
from daemon.messages import PricePoint

DEFAULT_RETRY_AFTER: Final = 60.0


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


class CoinGeckoSource:
    """Fetches USD prices for tokens by CoinGecko id over a shared ``httpx.AsyncClient``."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        base_url: str,
        api_key: Secret | None = None,
        plan: str = "demo",
    ) -> None:
        self._client = client
        self._base_url = base_url.rstrip("/")
        self._api_key = api_key
        self._header = "x-cg-pro-api-key" if plan == "pro" else "x-cg-demo-api-key"

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
        try:
            response = await self._client.get(
                f"{self._base_url}/simple/price", params=params, headers=headers
            )
        except httpx.HTTPError as exc:
            # The exception text may quote the request; keep only its kind.
            raise PriceSourceError(f"CoinGecko unreachable: {type(exc).__name__}") from None
        if response.status_code == 429:
            raise RateLimited(parse_retry_after(response.headers.get("retry-after")))
        if response.status_code != 200:
            raise PriceSourceError(f"CoinGecko answered HTTP {response.status_code}")
        try:
            body = json.loads(response.text, parse_float=Decimal, parse_int=Decimal)
        except ValueError:
            raise PriceSourceError("CoinGecko answered with invalid JSON") from None
        if not isinstance(body, dict):
            raise PriceSourceError("CoinGecko answered with an unexpected JSON shape")
        prices: dict[str, PricePoint] = {}
        problems: list[str] = []
        for symbol, coin_id in ids.items():
            entry = body.get(coin_id)
            usd = entry.get("usd") if isinstance(entry, dict) else None
            updated = entry.get("last_updated_at") if isinstance(entry, dict) else None
            if not isinstance(usd, Decimal) or not usd.is_finite() or usd <= 0:
                problems.append(f"{symbol}: CoinGecko has no valid USD price for {coin_id!r}")
                continue
            if not isinstance(updated, Decimal):
                problems.append(f"{symbol}: CoinGecko gave no last_updated_at for {coin_id!r}")
                continue
            prices[symbol] = PricePoint(
                symbol=symbol,
                usd=usd,
                observed_at=datetime.fromtimestamp(int(updated), UTC),
                source="oracle",
            )
        return prices, problems

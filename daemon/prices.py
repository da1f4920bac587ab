"""The price-feed actor: poll a source, store the prices, publish one immutable snapshot.

The snapshot goes into a latest-value cell (:class:`daemon.latest.Latest`): the feed never blocks
on a slow portfolio actor and every actor always sees the newest snapshot. Validation of
freshness happens on the reading side (:meth:`PriceSnapshot.usable_prices`) against the reader's
clock, so a feed that stops ticking makes prices stale instead of silently trusted.

Sources (``prices.source``): ``oracle`` (CoinGecko, :mod:`daemon.coingecko`) and ``router``
(Uniswap V2 spot prices in the quote token). With ``prices.cross_check`` the other source is
fetched too and a token whose two prices diverge by more than ``prices.max_divergence`` is marked
``DIVERGED`` — unhealthy, so the engine neither buys nor sells it.

A failing source never kills the feed: the tick is logged and skipped (the previous snapshot
ages into staleness); HTTP 429 waits as long as the source asks.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from decimal import Decimal
from typing import NoReturn, Protocol

import attrs
import trio

from daemon.chain import ChainError
from daemon.coingecko import CoinGeckoSource, PriceSourceError, RateLimited
from daemon.latest import Latest
from daemon.logs import get_logger
from daemon.messages import PricePoint, PriceSnapshot, PriceSourceName, Token
from daemon.uniswap import InsufficientLiquidity, NoRoute, UniswapV2, spot_price

DIVERGED = "DIVERGED"


class PriceSource(Protocol):
    """Anything that prices tokens in USD."""

    name: PriceSourceName

    async def fetch(self, tokens: list[Token]) -> tuple[dict[str, PricePoint], list[str]]:
        """Prices by symbol, and a problem line for each token it could not price."""
        ...


@attrs.define
class OracleSource:
    """CoinGecko as a :class:`PriceSource`: tokens without a ``coingecko_id`` are problems."""

    client: CoinGeckoSource
    name: PriceSourceName = "oracle"

    async def fetch(self, tokens: list[Token]) -> tuple[dict[str, PricePoint], list[str]]:
        ids = {t.symbol: t.coingecko_id for t in tokens if t.coingecko_id}
        missing = [f"{t.symbol}: no coingecko_id registered" for t in tokens if not t.coingecko_id]
        prices, problems = await self.client.fetch(ids)
        return prices, missing + problems


def divergent_tokens(
    primary: Mapping[str, PricePoint], secondary: Mapping[str, PricePoint], max_divergence: Decimal
) -> dict[str, str]:
    """Tokens whose two prices differ by more than ``max_divergence`` (relative to the smaller)."""
    health: dict[str, str] = {}
    for symbol, point in primary.items():
        other = secondary.get(symbol)
        if other is None:
            continue
        low = min(point.usd, other.usd)
        if low <= 0 or abs(point.usd - other.usd) / low > max_divergence:
            health[symbol] = DIVERGED
    return health


@attrs.define
class FeedSettings:
    """The live-reloadable part of the feed's configuration."""

    poll_interval: float = 30.0
    max_divergence: Decimal = Decimal("0.05")


async def run_price_feed(
    *,
    primary: PriceSource,
    secondary: PriceSource | None,
    load_tokens: Callable[[], Awaitable[list[Token]]],
    store: Callable[[list[PricePoint]], Awaitable[None]],
    snapshots: Latest[PriceSnapshot],
    settings: Callable[[], FeedSettings],
    now: Callable[[], datetime],
    on_tick: Callable[[PriceSnapshot | None], None] = lambda snapshot: None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Poll forever. ``started()`` after the first tick was attempted (success or not).

    ``on_tick`` hears about every attempt: the published snapshot, or None when it failed
    (liveness and metrics)."""
    log = get_logger(actor="price_feed", source=primary.name)
    started = False
    while True:
        wait = settings().poll_interval
        try:
            snapshot = await poll_once(
                primary, secondary, await load_tokens(), settings().max_divergence, now
            )
        except RateLimited as exc:
            log.warning("price_source_rate_limited", retry_after=exc.retry_after)
            wait = max(wait, exc.retry_after)
            on_tick(None)
        except PriceSourceError as exc:
            log.warning("price_tick_failed", error=str(exc))
            on_tick(None)
        else:
            await store(list(snapshot.prices.values()))
            snapshots.publish(snapshot)
            on_tick(snapshot)
            log.info(
                "price_tick",
                tokens=len(snapshot.prices),
                problems=list(snapshot.problems),
                unhealthy=dict(snapshot.health),
            )
        if not started:
            task_status.started()
            started = True
        await trio.sleep(wait)


async def poll_once(
    primary: PriceSource,
    secondary: PriceSource | None,
    tokens: list[Token],
    max_divergence: Decimal,
    now: Callable[[], datetime],
) -> PriceSnapshot:
    """One tick: fetch, cross-check, and build the snapshot."""
    prices, problems = await primary.fetch(tokens)
    health: dict[str, str] = {}
    if secondary is not None:
        try:
            other, _ = await secondary.fetch(tokens)
        except PriceSourceError as exc:
            # Without the cross-check nothing can be confirmed: no token is trusted this tick.
            problems.append(f"cross-check source failed: {exc}")
            health = dict.fromkeys(prices, DIVERGED)
        else:
            health = divergent_tokens(prices, other, max_divergence)
    return PriceSnapshot(
        prices=prices,
        taken_at=now(),
        source=primary.name,
        health=health,
        problems=tuple(problems),
    )


@attrs.define
class RouterSource:
    """Spot prices from the Uniswap V2 pools against the quote token (a USD stablecoin).

    The quote token itself is priced at 1 USD: the router cannot see a depeg, which is what the
    cross-check against the oracle is for. A price's time is when it was read (reserves do not
    change between blocks, so a quiet chain is not a stale one); the block number is recorded.
    """

    uniswap: UniswapV2
    now: Callable[[], datetime]
    name: PriceSourceName = "router"

    async def fetch(self, tokens: list[Token]) -> tuple[dict[str, PricePoint], list[str]]:
        quotes = [t for t in tokens if t.is_quote]
        if len(quotes) != 1:
            raise PriceSourceError(
                f"the router source needs exactly one quote token (--quote), found {len(quotes)}"
            )
        (quote,) = quotes
        prices: dict[str, PricePoint] = {}
        problems: list[str] = []
        for token in tokens:
            if token.is_quote:
                continue
            try:
                hops, block = await self.uniswap.reserves([token.address, quote.address])
            except (NoRoute, ChainError) as exc:
                problems.append(f"{token.symbol}: no router price ({type(exc).__name__}: {exc})")
                continue
            ((reserve_token, reserve_quote),) = hops
            try:
                usd = spot_price(reserve_token, reserve_quote, token.decimals, quote.decimals)
            except InsufficientLiquidity:
                problems.append(f"{token.symbol}: pool against {quote.symbol} has no liquidity")
                continue
            prices[token.symbol] = PricePoint(token.symbol, usd, self.now(), "router", block)
        newest = max((p.block_number or 0 for p in prices.values()), default=None)
        prices[quote.symbol] = PricePoint(quote.symbol, Decimal(1), self.now(), "router", newest)
        return prices, problems

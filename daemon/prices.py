"""The price-feed actor: poll a source, store the prices, publish one immutable snapshot.

The snapshot goes into a latest-value cell (:class:`daemon.latest.Latest`): the feed never blocks
on a slow portfolio actor and every actor always sees the newest snapshot. Validation of
freshness happens on the reading side (:meth:`PriceSnapshot.usable_prices`) against the reader's
clock, so a feed that stops ticking makes prices stale instead of silently trusted.

Sources (``prices.source``): ``oracle`` (CoinGecko, :mod:`daemon.coingecko`) and ``router``
(Uniswap V2 spot prices in the quote token, stamped with the block they were read at).

No trade on bad data. Every price the primary source gives is checked before it is published
(:func:`price_refusal`): zero, negative, NaN, infinite, above ``prices.max_price_usd``, or more
than ``prices.max_move_factor`` times up or down from the token's last accepted price is refused —
left out of the snapshot with a problem line and a ``price_refused`` warning naming the token and
both prices — so only the portfolios holding that token skip. A refused move stays refused until
the price comes back within the factor (or the factor is raised: it is live on SIGHUP). With
``prices.cross_check`` the other source is fetched too: a token it prices more than
``prices.max_divergence`` away is ``DIVERGED``; a token it cannot price (no price, an invalid or
stale one, or the whole source failed) is ``UNVERIFIED``. Both are unhealthy: the engine neither
buys nor sells them. Router prices read at a head older than ``prices.max_head_age`` are stale.

A failing source never kills the feed: the tick is logged and skipped (the previous snapshot
ages into staleness); HTTP 429 waits as long as the source asks. Once some token has had no usable
price for longer than ``prices.max_age`` — the source is down, or answers without it — the feed
raises ``PRICE_STALE`` (repeats are suppressed by the alert sink) and logs
``price_feed_fresh_again`` when every token is usable again.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, NoReturn, Protocol

import attrs
import trio

from daemon.amm import InsufficientLiquidity, spot_price
from daemon.chain_errors import ChainError
from daemon.coingecko import CoinGeckoSource, PriceSourceError, RateLimited
from daemon.latest import Latest
from daemon.logs import get_logger
from daemon.messages import NoPrices, PricePoint, PriceSnapshot, PriceSourceName, Token
from daemon.uniswap import NoRoute, UniswapV2

if TYPE_CHECKING:
    from daemon.alerts import Alerter
    from daemon.config import Config
    from daemon.live_config import ConfigSource

DIVERGED = "DIVERGED"
UNVERIFIED = "UNVERIFIED"
"""With cross-checking: the second source has no usable price for the token."""


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


@attrs.frozen
class FeedSettings:
    """The live-reloadable part of the feed's configuration (``[prices]``)."""

    poll_interval: float
    max_divergence: Decimal
    max_age: float
    max_head_age: float
    """Router prices read at a block older than this are stale; 0: not judged."""
    max_price_usd: Decimal
    max_move_factor: Decimal

    @classmethod
    def from_config(cls, config: Config) -> FeedSettings:
        prices = config.prices
        return cls(
            poll_interval=prices.poll_interval,
            max_divergence=prices.max_divergence,
            max_age=prices.max_age,
            max_head_age=prices.max_head_age,
            max_price_usd=prices.max_price_usd,
            max_move_factor=prices.max_move_factor,
        )


class TokenLoader(Protocol):
    """The tokens to price (implemented by :class:`daemon.tokens.TokenBook`)."""

    async def load(self) -> list[Token]:
        """The registered tokens (the last ones known while they cannot be read)."""


class PriceRecorder(Protocol):
    """Stores each tick's prices (implemented by :class:`daemon.history.PriceStore`)."""

    async def store(self, points: list[PricePoint]) -> None:
        """Store them; never raises for a database problem."""


class TickListener(Protocol):
    """Hears about every attempted tick (implemented by :class:`daemon.feed_status.FeedStatus`)."""

    def ticked(self, snapshot: PriceSnapshot | None) -> None:
        """The published snapshot, or None when the tick failed."""


def price_refusal(usd: Decimal, previous: Decimal | None, settings: FeedSettings) -> str | None:
    """Why ``usd`` must not be used (None: it may). ``previous`` is the token's last accepted
    price from the same source (None: no comparison, e.g. the first tick after a start)."""
    if usd.is_nan():
        return "not a number"
    if usd.is_infinite():
        return "infinite"
    if usd == 0:
        return "zero"
    if usd < 0:
        return "negative"
    if usd > settings.max_price_usd:
        return f"above prices.max_price_usd ({settings.max_price_usd:f})"
    if previous is not None and previous > 0:
        factor = settings.max_move_factor
        if usd > previous * factor or usd * factor < previous:
            ratio = usd / previous
            return (
                f"moved {float(ratio):.4g}x from the last accepted price in one poll "
                f"(prices.max_move_factor {factor})"
            )
    return None


def _head_age(point: PricePoint, now: datetime) -> float | None:
    if point.block_timestamp is None:
        return None
    return (now - point.block_timestamp).total_seconds()


def _unusable_reference(
    point: PricePoint, now: datetime, settings: FeedSettings, source: str
) -> str | None:
    """Why the cross-check source's ``point`` cannot verify anything (None: it can)."""
    refusal = price_refusal(point.usd, None, settings)
    if refusal is not None:
        return f"{source} price {point.usd} is {refusal}"
    age = (now - point.observed_at).total_seconds()
    if age > settings.max_age:
        return (
            f"{source} price is {math.floor(age)} s old (max_age {math.floor(settings.max_age)} s)"
        )
    head_age = _head_age(point, now)
    if settings.max_head_age and head_age is not None and head_age > settings.max_head_age:
        return (
            f"{source} price was read at block {point.block_number}, {math.floor(head_age)} s "
            f"old (max_head_age {math.floor(settings.max_head_age)} s)"
        )
    return None


def divergent_tokens(
    primary: Mapping[str, PricePoint], secondary: Mapping[str, PricePoint], max_divergence: Decimal
) -> dict[str, str]:
    """Tokens whose two prices differ by more than ``max_divergence`` (relative to the smaller).

    Tokens without a second price are not judged here (see :func:`cross_check`)."""
    health: dict[str, str] = {}
    for symbol, point in primary.items():
        other = secondary.get(symbol)
        if other is None:
            continue
        if not (point.usd.is_finite() and other.usd.is_finite()):
            health[symbol] = DIVERGED
            continue
        low = min(point.usd, other.usd)
        if low <= 0 or abs(point.usd - other.usd) / low > max_divergence:
            health[symbol] = DIVERGED
    return health


def cross_check(
    primary: Mapping[str, PricePoint],
    secondary: Mapping[str, PricePoint],
    secondary_problems: list[str],
    secondary_name: str,
    settings: FeedSettings,
    now: datetime,
) -> tuple[dict[str, str], list[str]]:
    """Health of each primary price against the second source, and a problem line for each
    unhealthy token (``SYMBOL: …``): ``UNVERIFIED`` without a usable second price, ``DIVERGED``
    when the two differ by more than ``max_divergence``."""
    health: dict[str, str] = {}
    problems: list[str] = []
    usable: dict[str, PricePoint] = {}
    for symbol in primary:
        other = secondary.get(symbol)
        why: str | None
        if other is None:
            why = next(
                (
                    p.removeprefix(f"{symbol}: ")
                    for p in secondary_problems
                    if p.startswith(f"{symbol}: ")
                ),
                f"{secondary_name} has no price for it",
            )
        else:
            why = _unusable_reference(other, now, settings, secondary_name)
            if why is None:
                usable[symbol] = other
                continue
        health[symbol] = UNVERIFIED
        problems.append(f"{symbol}: {UNVERIFIED}, not traded: {why}")
    for symbol in divergent_tokens(primary, usable, settings.max_divergence):
        health[symbol] = DIVERGED
        problems.append(
            f"{symbol}: {DIVERGED}, not traded: {primary[symbol].source} {primary[symbol].usd} vs "
            f"{secondary_name} {usable[symbol].usd} (max_divergence {settings.max_divergence})"
        )
    return health, problems


async def run_price_feed(
    *,
    primary: PriceSource,
    secondary: PriceSource | None,
    tokens: TokenLoader,
    history: PriceRecorder,
    snapshots: Latest[PriceSnapshot],
    config: ConfigSource,
    now: Callable[[], datetime],
    ticks: TickListener,
    alerts: Alerter,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Poll forever. ``started()`` after the first tick was attempted (success or not).

    ``config`` gives the settings afresh at every tick (:meth:`FeedSettings.from_config`).
    ``ticks`` hears about every attempt: the published snapshot, or None when it failed
    (liveness and metrics). ``alerts`` gets ``PRICE_STALE`` (see :class:`StaleWatch`)."""
    log = get_logger(actor="price_feed", source=primary.name)
    started = False
    accepted: dict[str, Decimal] = {}
    watch = StaleWatch(since=now())
    while True:
        current = FeedSettings.from_config(config.current)
        wait = current.poll_interval
        error: str | None = None
        priced = await tokens.load()
        try:
            snapshot = await poll_once(primary, secondary, priced, current, now, accepted)
        except RateLimited as exc:
            log.warning("price_source_rate_limited", retry_after=exc.retry_after)
            wait = max(wait, exc.retry_after)
            error = str(exc)
            ticks.ticked(None)
        except PriceSourceError as exc:
            log.warning("price_tick_failed", error=str(exc))
            error = str(exc)
            ticks.ticked(None)
        else:
            await history.store(list(snapshot.prices.values()))
            snapshots.publish(snapshot)
            accepted.update({symbol: point.usd for symbol, point in snapshot.prices.items()})
            ticks.ticked(snapshot)
            log.info(
                "price_tick",
                tokens=len(snapshot.prices),
                problems=list(snapshot.problems),
                unhealthy=dict(snapshot.health),
            )
        stale = watch.observe(
            snapshots.value, [t.symbol for t in priced], now(), current.max_age, error
        )
        if stale:
            alerts.fire("PRICE_STALE", {"source": primary.name, **stale})
        elif watch.recovered:
            log.info("price_feed_fresh_again", after_seconds=round(watch.recovered, 1))
        if not started:
            task_status.started()
            started = True
        await trio.sleep(wait)


@attrs.define
class StaleWatch:
    """When to raise ``PRICE_STALE`` for the feed as a whole.

    A token is stale once it has had no usable price (present, refused by nobody, fresh by
    :meth:`PriceSnapshot.usable_prices`) for longer than ``max_age``: every tick failed (an
    outage), the source answered without it, or with old prices only. The portfolio actors alert
    too, but only when a new snapshot makes them evaluate — a feed that publishes nothing never
    does."""

    since: datetime
    """When watching began: a token never priced counts as unusable since then."""
    usable_at: dict[str, datetime] = attrs.Factory(dict)
    stale_since: datetime | None = None
    recovered: float | None = None
    """After :meth:`observe` found the feed usable again: for how long it was stale."""

    def observe(
        self,
        snapshot: PriceSnapshot | None,
        symbols: list[str],
        now: datetime,
        max_age: float,
        error: str | None,
    ) -> dict[str, str] | None:
        """After each tick: the alert's fields while some token is stale, else None."""
        self.recovered = None
        reasons: dict[str, str] = {}
        for symbol in symbols:
            usable = (
                snapshot.usable_prices([symbol], now, max_age)
                if snapshot
                else NoPrices("no price yet", stale=False)
            )
            if not isinstance(usable, NoPrices):
                self.usable_at[symbol] = now
            elif (now - self.usable_at.get(symbol, self.since)).total_seconds() > max_age:
                reasons[symbol] = usable.reason
        if not reasons:
            if self.stale_since is not None:
                self.recovered = (now - self.stale_since).total_seconds()
                self.stale_since = None
            return None
        if self.stale_since is None:
            self.stale_since = now
        oldest = min(self.usable_at.get(symbol, self.since) for symbol in reasons)
        age = (now - oldest).total_seconds()
        reason = next(iter(reasons.values()))
        return {
            "tokens": ", ".join(sorted(reasons)),
            "reason": (
                f"no usable price for {math.floor(age)} s (max_age {math.floor(max_age)} s): "
                + (f"the source failed: {error}" if error else reason.removeprefix("No trade: "))
            ),
        }


async def poll_once(
    primary: PriceSource,
    secondary: PriceSource | None,
    tokens: list[Token],
    settings: FeedSettings,
    now: Callable[[], datetime],
    previous: Mapping[str, Decimal] | None = None,
) -> PriceSnapshot:
    """One tick: fetch, check every price, cross-check, and build the snapshot.

    ``previous`` holds each token's last accepted price (the move check's reference)."""
    log = get_logger(actor="price_feed", source=primary.name)
    fetched, problems = await primary.fetch(tokens)
    previous = previous or {}
    prices: dict[str, PricePoint] = {}
    for symbol, point in fetched.items():
        old = previous.get(symbol)
        refusal = price_refusal(point.usd, old, settings)
        if refusal is None:
            prices[symbol] = point
            continue
        problems.append(f"{symbol}: price {point.usd} refused: {refusal}")
        log.warning(
            "price_refused",
            token=symbol,
            old_usd=None if old is None else str(old),
            new_usd=str(point.usd),
            reason=refusal,
            block_number=point.block_number,
        )
    taken_at = now()
    heads = {(p.block_number, p.block_timestamp) for p in prices.values() if p.block_timestamp}
    for number, stamp in sorted(heads, key=lambda head: head[0] or 0):
        age = (taken_at - stamp).total_seconds() if stamp else 0.0
        if settings.max_head_age and age > settings.max_head_age:
            problems.append(
                f"{primary.name}: head block {number} is {math.floor(age)} s old (max_head_age "
                f"{math.floor(settings.max_head_age)} s): its prices are stale"
            )
    health: dict[str, str] = {}
    if secondary is not None:
        try:
            other, other_problems = await secondary.fetch(tokens)
        except PriceSourceError as exc:
            # Without the cross-check nothing can be confirmed: no token is trusted this tick.
            problems.append(f"cross-check source {secondary.name} failed: {exc}")
            health = dict.fromkeys(prices, UNVERIFIED)
        else:
            health, checked = cross_check(
                prices, other, other_problems, secondary.name, settings, now()
            )
            problems.extend(checked)
    return PriceSnapshot(
        prices=prices,
        taken_at=taken_at,
        source=primary.name,
        health=health,
        problems=tuple(problems),
        max_head_age=settings.max_head_age or None,
    )


@attrs.define
class RouterSource:
    """Spot prices from the Uniswap V2 pools against the quote token (a USD stablecoin).

    The quote token itself is priced at 1 USD: the router cannot see a depeg, which is what the
    cross-check against the oracle is for. Every pool is read in one round trip together with
    the head block; each price carries that block's number and timestamp
    (:attr:`PricePoint.block_timestamp`), so a node stuck on an old head yields stale prices
    (``prices.max_head_age``), not fresh ones. ``observed_at`` is the read time: reserves do not
    change between blocks, so on a current head a quiet pool is not a stale one.
    """

    uniswap: UniswapV2
    now: Callable[[], datetime]
    name: PriceSourceName = "router"
    max_batch_calls: int = 500

    async def fetch(self, tokens: list[Token]) -> tuple[dict[str, PricePoint], list[str]]:
        quotes = [t for t in tokens if t.is_quote]
        if len(quotes) != 1:
            raise PriceSourceError(
                f"the router source needs exactly one quote token (--quote), found {len(quotes)}"
            )
        (quote,) = quotes
        problems: list[str] = []
        pooled: list[Token] = []
        for token in tokens:
            if token.is_quote:
                continue
            try:
                if await self.uniswap.pair(token.address, quote.address) is None:
                    raise NoRoute(f"no pair for {token.address}/{quote.address}")
            except (NoRoute, ChainError) as exc:
                problems.append(f"{token.symbol}: no router price ({type(exc).__name__}: {exc})")
                continue
            pooled.append(token)
        prices: dict[str, PricePoint] = {}
        head = None
        step = max(1, self.max_batch_calls)
        for start in range(0, max(1, len(pooled)), step):
            chunk = pooled[start : start + step]
            try:
                head, results = await self.uniswap.reserves_at_head(
                    [(token.address, quote.address) for token in chunk]
                )
            except (NoRoute, ChainError) as exc:
                raise PriceSourceError(
                    f"router prices unavailable ({type(exc).__name__}: {exc})"
                ) from None
            read_at = self.now()
            try:
                stamp = datetime.fromtimestamp(head.timestamp, read_at.tzinfo)
            except (OverflowError, OSError, ValueError):
                raise PriceSourceError(
                    f"router prices unavailable: block {head.number} has timestamp "
                    f"{head.timestamp}, which is not a time"
                ) from None
            for token, result in zip(chunk, results, strict=True):
                if isinstance(result, ChainError):
                    problems.append(
                        f"{token.symbol}: no router price ({type(result).__name__}: {result})"
                    )
                    continue
                reserve_token, reserve_quote = result
                try:
                    usd = spot_price(reserve_token, reserve_quote, token.decimals, quote.decimals)
                except InsufficientLiquidity:
                    problems.append(f"{token.symbol}: pool against {quote.symbol} has no liquidity")
                    continue
                prices[token.symbol] = PricePoint(
                    token.symbol, usd, read_at, "router", head.number, stamp
                )
        assert head is not None  # the loop ran at least once
        prices[quote.symbol] = PricePoint(
            quote.symbol, Decimal(1), read_at, "router", head.number, stamp
        )
        return prices, problems

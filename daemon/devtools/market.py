"""The demo's market: a seeded random walk of prices, carried out as real swaps on the pools.

Why real swaps: the daemon's router price source reads the pools' reserves, its executor quotes
and trades against the same pools, and the demo should show exactly that. So a "price move" here
is a ``swapExactTokensForTokens`` from a trader account that buys or sells just enough of a token
against the quote token (USDC) to move its pool price by the walk's factor.

The walk (:class:`RandomWalk`) is pure and seeded: the same seed draws the same delays and moves.
Each move of each token is a Gaussian log return plus, now and then, a jump, with a weak pull back
towards the starting price and hard bounds, so a two-minute demo sees the drift threshold crossed
several times without prices running off to absurd values. It is time-compressed: a move every
second or two is roughly a day of crypto volatility.

How much to sell for a target price (exact Uniswap V2 arithmetic, 0.3 % fee, γ = 0.997): selling
``x`` of the reserve ``r`` side moves the price of the other side by
``g = (r + x)(r + γx) / r²``, so ``x = r · (√((1 + γ)² + 4γ(g − 1)) − (1 + γ)) / (2γ)``; buying
the token (price up by ``f``) sells quote with ``g = f``, selling it (price down) sells the token
with ``g = 1 / f``. Amounts on chain are integers in base units.

The oracle feeds follow the pools: the demo's feeds are mock Chainlink aggregators, and the
guard (:mod:`daemon.guard`) values every rebalance at their prices, so after each move the
trader posts the token's new pool price to its feed
(:func:`daemon.devtools.devnet.set_feed_price`), and every :data:`FEED_REFRESH_SECONDS` it posts
the current pool price of every feed again, so no feed goes stale however long the demo runs.
"""

from __future__ import annotations

import decimal
import math
import random
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import Final, NoReturn

import attrs
import trio

from daemon.amm import deadline_from
from daemon.chain import ChainClient
from daemon.config import Secret
from daemon.devtools.devnet_anvil import set_eth_balance
from daemon.devtools.devnet_deploy import fund, set_feed_price
from daemon.devtools.devnet_records import Devnet, DevnetToken
from daemon.signer import TxRequest, TxSigner
from daemon.uniswap import UniswapV2, encode_approve, encode_swap_exact_tokens_for_tokens

SWAP_GAS: Final = 250_000
"""Gas limit of one single-hop swap (uses ~100k; no estimate round trip)."""
APPROVE_GAS: Final = 100_000
MAX_UINT256: Final = 2**256 - 1
FEE_FACTOR: Final = Decimal("0.997")
"""Uniswap V2's 0.3 % swap fee: the share of the input that counts."""
RECEIPT_POLL_SECONDS: Final = 0.02
RECEIPT_TIMEOUT_SECONDS: Final = 30.0
FEED_REFRESH_SECONDS: Final = 300.0
"""Longest a feed goes without a new round while the market runs (far below any staleness)."""
_PRECISION: Final = 50


class MarketError(RuntimeError):
    """A market move could not be made (a swap reverted or was not mined)."""


@attrs.frozen
class WalkParams:
    """Shape of the random walk (time-compressed crypto volatility)."""

    interval_min: float = 1.0
    """Shortest wait between two rounds of moves, in seconds."""
    interval_max: float = 2.0
    """Longest wait between two rounds of moves, in seconds."""
    volatility: float = 0.03
    """Standard deviation of one move's log return."""
    jump_probability: float = 0.25
    """Chance that a move also carries a jump."""
    jump_min: float = 0.10
    """Smallest jump, as a log return (either sign)."""
    jump_max: float = 0.20
    """Largest jump, as a log return (either sign)."""
    reversion: float = 0.05
    """Fraction of the log distance to the starting price pulled back per move."""
    floor: float = 0.5
    """Lowest price, as a multiple of the starting price."""
    ceiling: float = 2.0
    """Highest price, as a multiple of the starting price."""
    min_move: float = 0.001
    """Moves smaller than this relative change are not traded."""


@attrs.frozen
class Step:
    """One planned move of one token's price: multiply it by ``factor``."""

    symbol: str
    factor: Decimal
    jump: bool


class RandomWalk:
    """Seeded, pure: delays and steps; the caller supplies where prices are now."""

    def __init__(self, symbols: Sequence[str], params: WalkParams, seed: int) -> None:
        self.symbols = tuple(symbols)
        self.params = params
        self._rng = random.Random(seed)  # noqa: S311 - a market simulation, not cryptography

    def delay(self) -> float:
        """Seconds until the next round of moves."""
        return self._rng.uniform(self.params.interval_min, self.params.interval_max)

    def steps(self, relative: Mapping[str, float]) -> list[Step]:
        """The next round: ``relative`` is each token's price divided by its starting price.

        Every token draws the same random numbers whether or not it moves, so a seed gives
        the same sequence whatever happened on chain in between.
        """
        p = self.params
        out: list[Step] = []
        for symbol in self.symbols:
            noise = self._rng.gauss(0.0, p.volatility)
            jumps = self._rng.random() < p.jump_probability
            size = self._rng.uniform(p.jump_min, p.jump_max)
            sign = 1.0 if self._rng.random() < 0.5 else -1.0
            now = relative[symbol]
            log_return = noise - p.reversion * math.log(now) + (sign * size if jumps else 0.0)
            target = min(p.ceiling, max(p.floor, now * math.exp(log_return)))
            factor = target / now
            if abs(factor - 1.0) >= p.min_move:
                out.append(Step(symbol, Decimal(repr(round(factor, 6))), jumps))
        return out


def amount_to_move(reserve_in: int, growth: Decimal) -> int:
    """Base units of the ``reserve_in`` side to sell so the other side's price × ``growth``.

    ``growth`` > 1 (see the module docstring). Returns 0 when there is nothing to do.
    """
    if growth <= 1:
        return 0
    with decimal.localcontext(prec=_PRECISION):
        one_plus = 1 + FEE_FACTOR
        root = (one_plus * one_plus + 4 * FEE_FACTOR * (growth - 1)).sqrt()
        amount = Decimal(reserve_in) * (root - one_plus) / (2 * FEE_FACTOR)
    return int(amount)


@attrs.frozen
class PriceMove:
    """A move that happened: a mined swap and the pool price before and after."""

    symbol: str
    price_before: Decimal
    price_after: Decimal
    jump: bool
    tx_hash: str
    sold: str
    """Symbol of the token the trader sold."""
    amount_in: int
    """Base units sold."""


class Trader:
    """The market's account: holds stock of every token and swaps it on the pools."""

    def __init__(
        self,
        chain: ChainClient,
        devnet: Devnet,
        key: Secret,
        *,
        feed_refresh: float = FEED_REFRESH_SECONDS,
    ) -> None:
        self.chain = chain
        self.devnet = devnet
        self.signer = TxSigner(key=key)
        self.uniswap = UniswapV2(chain, devnet.router, devnet.quote.address)
        self.feed_refresh = feed_refresh
        self._nonce: int | None = None
        self._feed_posted: dict[str, float] = {}
        """Symbol → trio time its feed last got a round from us."""

    @property
    def address(self) -> str:
        return self.signer.address

    async def prepare(self, stock: Mapping[str, int]) -> None:
        """Gas money, ``stock`` (symbol → base units) of tokens and router approvals."""
        await set_eth_balance(self.chain, self.address, 10**24)
        await fund(self.chain, self.devnet, self.address, stock)
        for token in self.devnet.tokens:
            await self._send(
                token.address, encode_approve(self.devnet.router, MAX_UINT256), APPROVE_GAS
            )

    async def price(self, symbol: str) -> Decimal:
        """``symbol``'s spot price in the quote token on its pool."""
        token, quote = self.devnet.token(symbol), self.devnet.quote
        if token == quote:
            return Decimal(1)
        return await self.uniswap.spot_price(
            token.address, token.decimals, quote.address, quote.decimals
        )

    async def move(self, step: Step) -> PriceMove | None:
        """Swap on ``step.symbol``'s pool so its price becomes about ``factor`` × today's."""
        token, quote = self.devnet.token(step.symbol), self.devnet.quote
        before = await self.price(step.symbol)
        (((reserve_token, reserve_quote),), _) = await self.uniswap.reserves(
            [token.address, quote.address]
        )
        sell: DevnetToken
        buy: DevnetToken
        if step.factor > 1:
            sell, buy, amount = quote, token, amount_to_move(reserve_quote, step.factor)
        else:
            with decimal.localcontext(prec=_PRECISION):
                growth = 1 / step.factor
            sell, buy, amount = token, quote, amount_to_move(reserve_token, growth)
        if amount <= 0:
            return None
        await self._ensure_stock(sell, amount)
        block = await self.chain.latest_block()
        data = encode_swap_exact_tokens_for_tokens(
            amount,
            1,
            [sell.address, buy.address],
            self.address,
            deadline_from(block.timestamp, 600),
        )
        tx_hash = await self._send(self.devnet.router, data, SWAP_GAS)
        after = await self.price(step.symbol)
        await self.post_feed(step.symbol, after)
        return PriceMove(
            symbol=step.symbol,
            price_before=before,
            price_after=after,
            jump=step.jump,
            tx_hash=tx_hash,
            sold=sell.symbol,
            amount_in=amount,
        )

    async def post_feed(self, symbol: str, usd: Decimal) -> None:
        """Post ``usd`` to ``symbol``'s mock feed (the quote token is taken as 1 USD)."""
        if symbol not in self.devnet.feeds:
            return
        await set_feed_price(self.chain, self.devnet, symbol, usd)
        self._feed_posted[symbol] = trio.current_time()

    async def refresh_feeds(self) -> None:
        """Post the current pool price to every feed not posted for ``feed_refresh`` seconds."""
        now = trio.current_time()
        for symbol in self.devnet.feeds:
            posted = self._feed_posted.get(symbol)
            if posted is None or now - posted >= self.feed_refresh:
                await self.post_feed(symbol, await self.price(symbol))

    async def _ensure_stock(self, token: DevnetToken, amount: int) -> None:
        (balance,) = (await self.chain.balances(self.address, [token.address])).values()
        if balance < amount:
            await fund(self.chain, self.devnet, self.address, {token.symbol: 2 * amount - balance})

    async def _send(self, to: str, data: bytes, gas: int) -> str:
        """Sign, send and wait for the receipt; raise :class:`MarketError` if it reverted."""
        if self._nonce is None:
            self._nonce = await self.chain.get_transaction_count(self.address)
        fees = await self.chain.fee_data()
        signed = self.signer.sign(
            TxRequest(
                to=to,
                data=data,
                nonce=self._nonce,
                gas=gas,
                max_fee_per_gas=fees.max_fee(),
                max_priority_fee_per_gas=fees.priority_fee,
                chain_id=self.chain.chain_id,
            )
        )
        tx_hash = await self.chain.send_raw_transaction(signed)
        self._nonce += 1
        with trio.move_on_after(RECEIPT_TIMEOUT_SECONDS):
            receipt = await self.chain.wait_for_receipt(tx_hash, poll_interval=RECEIPT_POLL_SECONDS)
            if not receipt.succeeded:
                raise MarketError(f"market transaction {tx_hash} reverted")
            return tx_hash
        raise MarketError(
            f"market transaction {tx_hash} was not mined in {RECEIPT_TIMEOUT_SECONDS} s"
        )


async def run_market(
    trader: Trader,
    walk: RandomWalk,
    on_move: Callable[[PriceMove], None],
    *,
    task_status: trio.TaskStatus[Mapping[str, Decimal]] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Move prices forever: a round of steps, then the walk's delay. Started with the opening
    prices (the walk's reference) once they are read and every feed is at its pool's price.
    Each move also posts the token's new pool price to its feed; feeds the walk left alone get
    their price again every ``trader.feed_refresh`` seconds."""
    start = {symbol: await trader.price(symbol) for symbol in walk.symbols}
    await trader.refresh_feeds()
    task_status.started(start)
    while True:
        await trio.sleep(walk.delay())
        relative = {
            symbol: float(await trader.price(symbol) / start[symbol]) for symbol in walk.symbols
        }
        for step in walk.steps(relative):
            move = await trader.move(step)
            if move is not None:
                on_move(move)
        await trader.refresh_feeds()

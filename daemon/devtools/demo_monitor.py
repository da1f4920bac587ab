"""The demo's monitor: what the chain, ``rebalance_log`` and the daemon's actors say, turned
into rebalance events and the live board (:mod:`daemon.devtools.demo_stats`).

It reads the chain and the database itself (its own clients), and from the daemon only the actor
registry's states (the cooldown clock). Every event is kept in memory, so the summary survives
the database going away at the end (a terminal's Ctrl-C reaches PostgreSQL too).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Final, NoReturn

import attrs
import trio

from daemon.abi import encode_call, function_selector
from daemon.address import to_address
from daemon.amm import spot_price as pool_spot_price
from daemon.app import Daemon
from daemon.cooldown import cooldown_remaining
from daemon.db import RebalanceLogEntry
from daemon.devtools.demo_setup import DemoEnvironment, spot_prices
from daemon.devtools.demo_stats import (
    Board,
    DemoPortfolio,
    PortfolioRow,
    RebalanceEvent,
    leg_slippages,
    mean,
)
from daemon.devtools.demo_view import Reporter, describe_move
from daemon.devtools.devnet_records import Devnet
from daemon.devtools.market import MarketError, PriceMove
from daemon.drift import EngineParams, Holding, InvalidPortfolio, NoRebalance, evaluate
from daemon.uniswap import sort_tokens

MONITOR_SECONDS: Final = 0.5
"""How often the view is refreshed and rebalance_log is read."""
RECENT_ROWS: Final = 8
"""Rebalances shown in the live view."""


@attrs.frozen
class Valuation:
    """A portfolio's current weights, value and max drift, by the daemon's own engine."""

    weights: Mapping[str, Decimal]
    value_usd: Decimal | None
    max_drift: Decimal | None


def value_of(
    portfolio: DemoPortfolio,
    devnet: Devnet,
    balances: Mapping[str, int],
    prices: Mapping[str, Decimal],
    params: EngineParams,
) -> Valuation:
    """Weights and max drift with the daemon's own engine (an independent reading)."""
    holdings = [
        Holding(symbol, balances[devnet.token(symbol).address], devnet.token(symbol).decimals)
        for symbol in portfolio.targets
    ]
    try:
        decision = evaluate(
            holdings,
            portfolio.targets,
            prices,
            params=params,
        )
    except InvalidPortfolio:
        return Valuation({}, None, None)
    if isinstance(decision, NoRebalance) and decision.total_usd is None:
        return Valuation({}, None, decision.max_drift)
    return Valuation(
        weights={d.symbol: d.current_weight for d in decision.drifts},
        value_usd=decision.total_usd,
        max_drift=decision.max_drift,
    )


async def valuation_at(
    env: DemoEnvironment, portfolio: DemoPortfolio, block: int, params: EngineParams
) -> Valuation:
    """The portfolio at the end of ``block`` (balances and pool prices read at that block):
    the drift a rebalance left, before the market moved again."""
    devnet, quote = env.devnet, env.devnet.quote
    held = [devnet.token(symbol) for symbol in portfolio.targets]
    priced = [token for token in devnet.tokens if token != quote]
    calls = [(t.address, encode_call("balanceOf(address)", portfolio.account)) for t in held]
    for token in priced:
        pair = await env.trader.uniswap.pair(token.address, quote.address)
        if pair is None:
            raise MarketError(f"no {token.symbol}/{quote.symbol} pool")
        calls.append((pair, function_selector("getReserves()")))
    results = await env.chain.call_many(calls, block=block)
    balances = {
        t.address: int.from_bytes(raw[:32], "big")
        for t, raw in zip(held, results[: len(held)], strict=True)
    }
    prices = {quote.symbol: Decimal(1)}
    for token, raw in zip(priced, results[len(held) :], strict=True):
        reserve0, reserve1 = int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:64], "big")
        token0, _ = sort_tokens(token.address, quote.address)
        mine_first = to_address(token0) == to_address(token.address)
        reserve_token, reserve_quote = (reserve0, reserve1) if mine_first else (reserve1, reserve0)
        prices[token.symbol] = pool_spot_price(
            reserve_token, reserve_quote, token.decimals, quote.decimals
        )
    return value_of(portfolio, devnet, balances, prices, params)


@attrs.define(eq=False)
class Monitor:
    """Reads the chain, ``rebalance_log`` and the actors; keeps every event in memory."""

    env: DemoEnvironment
    reporter: Reporter
    duration: float
    events: list[RebalanceEvent] = attrs.Factory(list)
    seen: set[int] = attrs.Factory(set)
    pending: int = 0
    price_moves: int = 0
    last_move: str | None = None
    start_prices: dict[str, Decimal] = attrs.Factory(dict)
    started_at: float = 0.0
    """trio.current_time() when the run began."""
    started_wall: datetime | None = None
    first_success_seconds: float | None = None
    names: dict[int, str] = attrs.Factory(dict)

    @property
    def threshold(self) -> Decimal:
        return self.env.config.rebalance.drift_threshold

    @property
    def params(self) -> EngineParams:
        """The engine's knobs as the daemon under demonstration has them."""
        return EngineParams.from_config(self.env.config)

    def on_move(self, move: PriceMove) -> None:
        self.price_moves += 1
        self.last_move = describe_move(move)
        self.reporter.price_move(move)

    async def begin(self, start_prices: Mapping[str, Decimal]) -> None:
        self.start_prices = dict(start_prices)
        self.started_at = trio.current_time()
        self.started_wall = datetime.now(UTC)
        self.names = {p.id: p.name for p in await self.env.db.portfolios()}

    async def poll(self, daemon: Daemon | None) -> Board:
        env = self.env
        prices = await spot_prices(env.trader)
        valuations: dict[str, Valuation] = {}
        for portfolio in env.portfolios:
            addresses = [env.devnet.token(symbol).address for symbol in portfolio.targets]
            balances = await env.chain.balances(portfolio.account, addresses)
            valuations[portfolio.name] = value_of(
                portfolio, env.devnet, balances, prices, self.params
            )
        rows = await env.db.rebalance_history(limit=100)
        self.pending = sum(1 for row in rows if row.status == "PENDING")
        for row in sorted(rows, key=lambda r: r.id):
            if row.status != "PENDING" and row.id not in self.seen:
                self.seen.add(row.id)
                event = await self._event(row, valuations)
                self.events.append(event)
                self.reporter.rebalance(event)
        return self._board(prices, valuations, daemon)

    async def _event(
        self, row: RebalanceLogEntry, valuations: Mapping[str, Valuation]
    ) -> RebalanceEvent:
        name = self.names.get(row.portfolio_id, f"#{row.portfolio_id}")
        on_chain, block, drift_after = False, None, None
        if row.status == "SUCCESS" and row.transaction_hash:
            receipt = await self.env.chain.get_transaction_receipt(row.transaction_hash)
            if receipt is not None:
                on_chain, block = receipt.succeeded, receipt.block_number
                portfolio = next(p for p in self.env.portfolios if p.name == name)
                after = await valuation_at(self.env, portfolio, block, self.params)
                drift_after = after.max_drift
            if self.first_success_seconds is None and self.started_wall and row.finished_at:
                self.first_success_seconds = (row.finished_at - self.started_wall).total_seconds()
        legs = row.expected_outputs if isinstance(row.expected_outputs, list) else []
        return RebalanceEvent(
            id=row.id,
            portfolio=name,
            status=row.status,
            finished_at=row.finished_at,
            tx_hash=row.transaction_hash,
            on_chain=on_chain,
            block_number=block,
            gas_used=row.gas_used,
            gas_cost_usd=row.gas_cost_usd,
            drift_before=row.drift_percentage,
            drift_after=drift_after,
            slippage=mean(leg_slippages(row.expected_outputs)),
            legs=len(legs),
            error=row.error or row.skip_reason,
        )

    def _board(
        self,
        prices: Mapping[str, Decimal],
        valuations: Mapping[str, Valuation],
        daemon: Daemon | None,
    ) -> Board:
        now = datetime.now(UTC)
        actors = daemon.supervisor.actors if daemon is not None else {}
        cooldown = self.env.config.rebalance.cooldown_minutes
        rows = []
        for portfolio in self.env.portfolios:
            valuation = valuations[portfolio.name]
            entry = actors.get(portfolio.name)
            remaining = 0.0
            if entry is not None:
                last_success = entry.state.last_success_at
                remaining = cooldown_remaining(last_success, now, cooldown).total_seconds()
            mine = [e for e in self.events if e.portfolio == portfolio.name]
            rows.append(
                PortfolioRow(
                    name=portfolio.name,
                    targets=portfolio.targets,
                    weights=valuation.weights,
                    value_usd=valuation.value_usd,
                    max_drift=valuation.max_drift,
                    cooldown_seconds=remaining,
                    last=mine[-1] if mine else None,
                    successes=sum(1 for e in mine if e.status == "SUCCESS"),
                )
            )
        return Board(
            elapsed=trio.current_time() - self.started_at,
            duration=self.duration,
            threshold=self.threshold,
            prices=prices,
            start_prices=self.start_prices,
            rows=tuple(rows),
            recent=tuple(self.events[-RECENT_ROWS:]),
            price_moves=self.price_moves,
            last_move=self.last_move,
        )

    async def run(self, daemon: Daemon) -> NoReturn:
        while True:
            self.reporter.frame(await self.poll(daemon))
            await trio.sleep(MONITOR_SECONDS)

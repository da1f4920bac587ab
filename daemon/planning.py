"""Planning one rebalance attempt: the engine's legs turned into swaps at fresh quotes.

For each leg of the plan (DESIGN.md §4.9): a fresh quote along the router's path → the pools'
mid price within ``rebalance.max_quote_deviation`` of the plan's price → price impact within
``rebalance.price_impact_threshold`` → ``amountOutMin`` from ``rebalance.slippage_tolerance`` →
the deadline from chain time. A leg that fails a check is left out with its reason (the others
are sent). Then the holder's allowances to the router, and — in delegation mode with the oracle
guard — whether the guard could revert the redemption at the worst case the router allows
(every swap paid its ``amountOutMin``): such a plan is not sent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any, Protocol

import attrs

from daemon.abi import encode_call
from daemon.amm import deadline_from
from daemon.attempt import Prepared, quote_deviation
from daemon.chain import ChainClient
from daemon.chain_errors import ChainError
from daemon.drift import Leg
from daemon.guard import PlannedSwap, guard_refusal
from daemon.messages import RebalanceRequest, Token
from daemon.txbuild import DelegationMode, ExecutionMode, SwapLeg
from daemon.uniswap import Quote, UniswapV2


class PlanSettings(Protocol):
    """The settings planning reads (of :class:`daemon.executor.ExecutorSettings`)."""

    @property
    def deadline_seconds(self) -> int: ...

    @property
    def max_quote_deviation(self) -> Decimal: ...

    @property
    def price_impact_threshold(self) -> Decimal: ...

    @property
    def slippage_tolerance(self) -> Decimal: ...


class TokenSource(Protocol):
    """The registered tokens (implemented by :class:`daemon.tokens.TokenBook`)."""

    def by_symbol(self) -> Mapping[str, Token]:
        """By symbol: the addresses and decimals of the legs."""


class ModeSource(Protocol):
    """How each portfolio is traded (implemented by :class:`daemon.modes.ExecutionModeBook`)."""

    def mode_for(self, request: RebalanceRequest) -> ExecutionMode:
        """The execution mode of a request's portfolio (its delegations, or the wallet)."""

    def delegation_problem(self, portfolio_id: int) -> str | None:
        """Why a portfolio's delegations cannot be redeemed now (expired), or None."""


@attrs.frozen
class Planner:
    """Quotes and checks the legs of a request (see the module docstring)."""

    chain: ChainClient
    uniswap: UniswapV2
    tokens: TokenSource
    modes: ModeSource
    log: Any

    async def prepare(self, request: RebalanceRequest, settings: PlanSettings) -> Prepared:
        """The legs that pass their checks, as swaps; the others in ``rejected``. Raises
        :class:`~daemon.chain.ChainError`, :class:`~daemon.uniswap.NoRoute`, ``KeyError``
        (an unknown token or portfolio) or ``ValueError``."""
        tokens = self.tokens.by_symbol()
        mode = self.modes.mode_for(request)
        block = await self.chain.latest_block()
        deadline = deadline_from(block.timestamp, settings.deadline_seconds)
        prepared = Prepared(mode=mode, deadline=deadline, block_timestamp=block.timestamp)
        for leg in request.plan.legs:
            token_in, token_out = tokens[leg.sell], tokens[leg.buy]
            quote = await self.uniswap.quote(token_in.address, token_out.address, leg.amount_in)
            self._add_leg(prepared, leg, token_in, token_out, quote, settings)
        prepared.allowances = await self._allowances(mode, prepared.swap_legs)
        return prepared

    def _add_leg(
        self,
        prepared: Prepared,
        leg: Leg,
        token_in: Token,
        token_out: Token,
        quote: Quote,
        settings: PlanSettings,
    ) -> None:
        deviation = quote_deviation(leg, quote.reserves, token_in, token_out)
        if deviation.fraction > settings.max_quote_deviation:
            prepared.rejected.append(
                deviation.describe(leg, token_in, token_out, settings.max_quote_deviation)
            )
            return
        impact = quote.price_impact
        if impact > settings.price_impact_threshold:
            prepared.rejected.append(
                f"{leg.sell}->{leg.buy}: price impact {impact:.4f} exceeds the cap "
                f"{settings.price_impact_threshold}"
            )
            return
        minimum = quote.amount_out_min(settings.slippage_tolerance)
        prepared.swap_legs.append(
            SwapLeg(
                token_in=token_in.address,
                token_out=token_out.address,
                amount_in=leg.amount_in,
                amount_out_min=minimum,
                path=quote.path,
                deadline=prepared.deadline,
            )
        )
        prepared.expected.append(
            {
                "sell": leg.sell,
                "buy": leg.buy,
                "amount_in": str(leg.amount_in),
                "quoted_out": str(quote.amount_out),
                "amount_out_min": str(minimum),
                "price_impact": str(impact),
                "quote_deviation": str(deviation.fraction),
                "quote_block": quote.block_number,
            }
        )

    async def guard_refusal(self, prepared: Prepared) -> str | None:
        """Why the swap delegation's oracle guard could revert these legs (each paying only its
        ``amount_out_min``), or None: the same bound, feeds and period loss the guard uses."""
        mode = prepared.mode
        if not isinstance(mode, DelegationMode) or mode.guard is None:
            return None
        return await guard_refusal(
            self.chain,
            mode.guard,
            manager=mode.manager,
            account=mode.holder,
            swaps=[
                PlannedSwap(
                    path=leg.path, amount_in=leg.amount_in, amount_out_min=leg.amount_out_min
                )
                for leg in prepared.swap_legs
            ],
            now=prepared.block_timestamp,
        )

    async def _allowances(
        self, mode: ExecutionMode, legs: Sequence[SwapLeg]
    ) -> dict[str, int] | None:
        """The holder's allowances to the router for the tokens it sells (None if they cannot
        be read: each leg then approves exactly its amount)."""
        tokens = sorted({leg.token_in for leg in legs})
        if not tokens:
            return {}
        data = encode_call("allowance(address,address)", mode.holder, mode.router)
        try:
            results = await self.chain.call_many([(token, data) for token in tokens])
        except ChainError as exc:
            self.log.warning("allowances_unread", error=str(exc))
            return None
        return {
            token: int.from_bytes(result[:32], "big")
            for token, result in zip(tokens, results, strict=True)
            if len(result) >= 32
        }

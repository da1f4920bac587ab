"""The executor's live-reloadable settings, derived from the configuration.

They keep the configuration's names (``rebalance.slippage_tolerance`` is ``slippage_tolerance``
here) and declare no defaults of their own: the configuration schema is the one source of
defaults and limits, and :meth:`ExecutorSettings.from_config` is the one way to build them.
"""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING

import attrs

from daemon.transactions_values import LifecycleSettings

if TYPE_CHECKING:
    from daemon.config import Config


@attrs.frozen
class ExecutorSettings:
    """The live-reloadable parameters of execution, named as in the configuration (whose schema
    holds their defaults: build them with :meth:`from_config`)."""

    slippage_tolerance: Decimal
    price_impact_threshold: Decimal
    max_quote_deviation: Decimal
    dry_run: bool
    deadline_seconds: int
    gas_price_symbol: str
    """The token whose USD price values gas (the chain's native coin, wrapped)."""
    gas_cost_factor: Decimal
    expected_gas_cost_usd: Decimal
    """0: expect the median of recent rebalances of the same kind."""
    max_age: float
    """``prices.max_age``: a plan on older prices is refused."""
    stuck_after: float
    pack_max_gas: int
    """0: no packing (and always 0 in wallet mode)."""
    lifecycle: LifecycleSettings

    @classmethod
    def from_config(cls, config: Config) -> ExecutorSettings:
        execution, rebalance = config.execution, config.rebalance
        return cls(
            slippage_tolerance=rebalance.slippage_tolerance,
            price_impact_threshold=rebalance.price_impact_threshold,
            max_quote_deviation=rebalance.max_quote_deviation,
            dry_run=execution.dry_run,
            deadline_seconds=execution.deadline_seconds,
            gas_price_symbol=execution.gas_price_symbol,
            gas_cost_factor=config.alerts.gas_cost_factor,
            expected_gas_cost_usd=config.alerts.expected_gas_cost_usd,
            max_age=config.prices.max_age,
            stuck_after=execution.stuck_after,
            # Only redeemDelegations calls can be packed: a wallet-mode daemon never packs.
            pack_max_gas=execution.pack_max_gas if execution.mode == "delegation" else 0,
            lifecycle=LifecycleSettings(
                max_fee_per_gas=int(execution.max_fee_gwei * 10**9),
                fee_bump=execution.fee_bump,
                receipt_timeout=execution.receipt_timeout,
                poll_interval=execution.poll_interval,
            ),
        )

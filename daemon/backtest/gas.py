"""What a rebalance costs in gas, from a model of the daemon's real transaction.

The daemon sends one ``redeemDelegations`` transaction per rebalance: a fixed part (the
transaction, the DelegationManager's bookkeeping, the oracle guard's snapshot and check of the
portfolio's tokens and feeds) plus one guarded swap execution per leg (the caveats' hooks and the
router's swap). Router allowances are standing (one unlimited approve per token, sent once), so
a rebalance pays no approval.

The constants are the least-squares line through guarded 1-, 2- and 3-leg rebalances of a
3-token portfolio measured on the devnet (the real Delegation Framework, the guard and the
Uniswap V2 router; ``tests/test_guard.py::test_gas_of_guarded_and_unguarded_rebalances`` measures
them afresh and checks this model within 5 %). A routed leg's second hop measured within the
noise of a direct leg's first touch of a cold pool, so the model charges per leg only.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Final

import attrs

GWEI: Final = Decimal("1e-9")


@attrs.frozen
class GasModel:
    """Gas units of one rebalance (see the module docstring)."""

    base: int = 135_000
    per_leg: int = 176_600

    def rebalance(self, legs: int) -> int:
        return self.base + self.per_leg * legs if legs > 0 else 0


@attrs.frozen
class GasPrice:
    """Gas price and the native token's price: gas units → USD."""

    gwei: Decimal = Decimal(20)
    native_usd: Decimal | None = None
    """The native token's USD price; None: taken from the series (``native_symbol``)."""
    native_symbol: str = "WETH"

    def usd(self, gas: int, native_usd: Decimal) -> Decimal:
        return Decimal(gas) * self.gwei * GWEI * native_usd

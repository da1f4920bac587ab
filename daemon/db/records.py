"""The row records: frozen attrs classes and the Literal types of their fields.

Everything a repository returns is one of these or plain data; asyncpg ``Record`` objects never
leave the package.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any, Final, Literal

import attrs

from daemon.messages import PriceSourceName, ValuationKind

RebalanceStatus = Literal["PENDING", "SUCCESS", "PARTIAL", "FAILED", "DRY_RUN", "SKIPPED"]
TerminalStatus = Literal["SUCCESS", "PARTIAL", "FAILED", "DRY_RUN", "SKIPPED"]
RebalanceTrigger = Literal["drift", "manual", "recovery"]
IntentStatus = Literal["SIGNED", "BROADCAST", "CONFIRMED", "REVERTED", "REPLACED", "DROPPED"]
IntentPurpose = Literal["approve", "swap", "cancel"]
"""What a transaction does: an ERC-20 approve, a swap (or a redemption of swaps), or a 0-value
self-transfer that consumes a nonce whose trade must not happen any more."""
TRADED_STATUSES: Final[tuple[str, ...]] = ("SUCCESS", "PARTIAL")
"""Attempts that moved tokens: they start the cooldown."""
LIVE_INTENT_STATUSES: Final[frozenset[str]] = frozenset({"SIGNED", "BROADCAST"})


@attrs.frozen
class TokenRecord:
    """A token the daemon can price and trade."""

    id: int
    symbol: str
    address: str
    """Checksummed 0x address."""
    chain_id: int
    decimals: int
    coingecko_id: str | None
    is_quote: bool
    """The stablecoin router prices are quoted in."""
    price_feed: str | None = None
    """Checksummed address of the token's USD price feed (AggregatorV3), if registered."""


@attrs.frozen
class Allocation:
    """One target weight of a portfolio."""

    token: TokenRecord
    weight: Decimal
    """In (0, 1]; a portfolio's weights sum to 1."""


@attrs.frozen
class Portfolio:
    """A smart account, its delegations and its target allocation."""

    id: int
    name: str
    smart_account: str
    chain_id: int
    owner: str | None
    is_active: bool
    delegation: list[dict[str, Any]]
    """The signed delegations, as stored (a JSON array)."""
    allocations: tuple[Allocation, ...]
    """Sorted by token symbol."""
    created_at: dt.datetime
    updated_at: dt.datetime
    is_paused: bool = False
    """``driftd pause``: evaluated, never traded, until resumed (survives restarts)."""


@attrs.frozen
class PriceObservation:
    """One USD price of one token from one source."""

    token_id: int
    source: PriceSourceName
    usd: Decimal
    observed_at: dt.datetime
    block_number: int | None = None


@attrs.frozen
class LatestPrice:
    """The newest observation per (token, source)."""

    token_id: int
    symbol: str
    source: PriceSourceName
    usd: Decimal
    observed_at: dt.datetime
    block_number: int | None


@attrs.frozen
class HoldingValue:
    """One token's position inside a valuation snapshot."""

    token_id: int
    amount: int
    """Base units."""
    usd: Decimal
    weight: Decimal
    drift: Decimal | None = None
    price_usd: Decimal | None = None
    """USD per whole token the value was computed with (None in rows before schema v6)."""
    target: Decimal | None = None
    """The token's target weight at the time (None in rows before schema v6)."""


@attrs.frozen
class PortfolioSnapshot:
    """A valuation of a portfolio at a moment."""

    portfolio_id: int
    total_usd: Decimal
    holdings: tuple[HoldingValue, ...]
    max_drift: Decimal | None = None
    price_source: PriceSourceName | None = None
    taken_at: dt.datetime | None = None
    """None on insert: the server's now()."""
    kind: ValuationKind = "interval"


@attrs.frozen
class FinishedAttempt:
    """What a finished attempt writes (terminal status and its details)."""

    status: TerminalStatus
    skip_reason: str | None = None
    """Required when SKIPPED (e.g. 'cooldown active', 'stale price for WETH')."""
    error: str | None = None
    """Required when FAILED. Never contains secrets."""
    transaction_hash: str | None = None
    """Required when SUCCESS."""
    gas_used: int | None = None
    gas_cost_wei: int | None = None
    gas_cost_usd: Decimal | None = None
    token_amounts: Any = None
    """JSON: the legs as planned (amounts in base units)."""
    swap_path: Any = None
    expected_outputs: Any = None
    actual_outputs: Any = None
    execution_time_ms: int | None = None


@attrs.frozen
class RebalanceLogEntry:
    """One row of ``rebalance_log``: one attempt."""

    id: int
    portfolio_id: int
    timestamp: dt.datetime
    """When the attempt started."""
    finished_at: dt.datetime | None
    status: RebalanceStatus
    trigger: RebalanceTrigger
    drift_percentage: Decimal | None
    """The max drift that triggered the attempt, as a fraction (0.15 = 15 %), like the seed."""
    skip_reason: str | None
    error: str | None
    transaction_hash: str | None
    gas_used: int | None
    gas_cost_wei: int | None
    gas_cost_usd: Decimal | None
    token_amounts: Any
    swap_path: Any
    expected_outputs: Any
    actual_outputs: Any
    execution_time_ms: int | None
    chain_id: int | None = None
    signer: str | None = None
    """Lower-case address of the signer whose process owns the attempt (None: before v3)."""
    planned_txs: int | None = None
    """Transactions the attempt planned to send (None until its calls were built)."""
    planned_swap_txs: int | None = None
    """Of those, the ones that swap."""
    balances_block: int | None = None
    """The block the plan's balances were read at."""


@attrs.frozen
class NewTxIntent:
    """A signed transaction about to be broadcast for the first time, and what it was signed
    from (so it can be re-signed with other fees, or cancelled, after a restart too)."""

    chain_id: int
    signer: str
    nonce: int
    raw_tx: bytes
    tx_hash: str
    fencing_token: int
    rebalance_id: int | None = None
    max_fee_per_gas: int | None = None
    max_priority_fee_per_gas: int | None = None
    purpose: IntentPurpose = "swap"
    call_index: int | None = None
    """Position of this transaction among its attempt's planned transactions."""
    tx_to: str | None = None
    tx_data: bytes | None = None
    tx_value: int | None = None
    gas_limit: int | None = None
    deadline: int | None = None
    """Chain time (unix seconds) after which the trade is void and the nonce is cancelled."""
    packed_rebalance_ids: tuple[int, ...] = ()
    """Every attempt a packed transaction carries, ``rebalance_id`` first (empty: not packed)."""
    packed_weights: tuple[int, ...] = ()
    """Each packed attempt's number of executions: its share of the gas."""


@attrs.frozen
class TxIntent:
    """A recorded signed transaction and what became of it."""

    id: int
    rebalance_id: int | None
    chain_id: int
    signer: str
    nonce: int
    raw_tx: bytes
    tx_hash: str
    status: IntentStatus
    fencing_token: int
    max_fee_per_gas: int | None
    max_priority_fee_per_gas: int | None
    replaces_id: int | None
    block_number: int | None
    gas_used: int | None
    effective_gas_price: int | None
    error: str | None
    created_at: dt.datetime
    updated_at: dt.datetime
    purpose: IntentPurpose = "swap"
    call_index: int | None = None
    tx_to: str | None = None
    tx_data: bytes | None = attrs.field(default=None, repr=False)
    tx_value: int | None = None
    gas_limit: int | None = None
    deadline: int | None = None
    packed_rebalance_ids: tuple[int, ...] = ()
    """Every attempt a packed transaction carries, ``rebalance_id`` first (empty: not packed)."""
    packed_weights: tuple[int, ...] = ()
    """Each packed attempt's number of executions: its share of the gas."""

    @property
    def live(self) -> bool:
        return self.status in LIVE_INTENT_STATUSES


@attrs.frozen
class TxReceipt:
    """The parts of a mined transaction's receipt we keep."""

    block_number: int
    gas_used: int
    effective_gas_price: int
    succeeded: bool


@attrs.frozen
class DailyDriftStats:
    """One day (UTC) of the analytics report (the seed's dashboard query)."""

    date: dt.date
    avg_drift: Decimal | None
    rebalance_count: int
    """Successful rebalances."""
    attempt_count: int
    """All finished attempts (including skips, dry runs and failures)."""
    total_gas_cost_usd: Decimal


@attrs.frozen
class AppliedMigration:
    """A schema migration applied by :meth:`Database.migrate`."""

    version: int
    name: str


@attrs.frozen
class SignerLease:
    """This process's right to allocate the signer's nonces (DESIGN.md §4.1)."""

    chain_id: int
    signer: str
    holder: str
    fencing_token: int
    """Carried by every intent; the database refuses intents with a superseded token."""
    expires_at: dt.datetime

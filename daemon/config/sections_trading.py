"""The schema's trading sections: how trades reach the chain, when and how much to trade, and
the prices trades are planned on.

Each key is declared once with its default, parser, limits and documentation
(:func:`~daemon.config.declare.setting`).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Final

import attrs

from daemon.config.checks import (
    at_least,
    greater_than_one,
    half_open_unit,
    http_url,
    non_negative,
    open_unit,
    positive,
)
from daemon.config.declare import setting
from daemon.config.values import (
    choice,
    parse_bool,
    parse_decimal,
    parse_float,
    parse_int,
    parse_str,
)

_MIN_FEE_BUMP: Final = Decimal("0.125")
"""Nodes refuse a replacement transaction that bids less than 12.5 % more; also the default."""


@attrs.frozen
class ExecutionConfig:
    """How trades reach the chain."""

    mode: str = setting(
        "delegation",
        choice("delegation", "wallet"),
        "delegation: redeem the owner's delegation on their smart account (ERC-7710). "
        "wallet: the signer's own address holds the funds and swaps directly.",
    )
    dry_run: bool = setting(
        False, parse_bool, "Plan and quote but send nothing (rows with status DRY_RUN).", live=True
    )
    receipt_timeout: float = setting(
        120.0,
        parse_float,
        "Seconds to wait for a receipt before the transaction is replaced with higher fees.",
        check=positive,
        live=True,
    )
    fee_bump: Decimal = setting(
        _MIN_FEE_BUMP,
        parse_decimal,
        "Fractional fee increase of a replacement transaction (nodes require >= 0.125).",
        check=at_least(_MIN_FEE_BUMP),
        live=True,
    )
    max_fee_gwei: Decimal = setting(
        Decimal(500),
        parse_decimal,
        "Ceiling on maxFeePerGas, in gwei; a replacement never bids above it.",
        check=positive,
        live=True,
    )
    deadline_seconds: int = setting(
        300,
        parse_int,
        "Swap deadline, in seconds after the latest block's timestamp.",
        check=positive,
    )
    shutdown_grace: float = setting(
        30.0,
        parse_float,
        "On SIGTERM, seconds to let an in-flight transaction reach its receipt before stopping "
        "(it is recorded either way; the next start settles it).",
        check=non_negative,
        live=True,
    )
    gas_price_symbol: str = setting(
        "WETH",
        parse_str,
        "Registered token whose USD price values gas costs (the chain's wrapped native token).",
        live=True,
    )
    max_in_flight: int = setting(
        4,
        parse_int,
        "Executor workers: each carries out one rebalance at a time, or, with packing, the "
        "rebalances waiting together (consecutive nonces of the one signer, receipts awaited "
        "concurrently).",
        check=positive,
    )
    pack_max_gas: int = setting(
        3_000_000,
        parse_int,
        "Gas limit of a packed transaction: rebalances of several portfolios that fall due "
        "together go into one redeemDelegations call up to this much estimated gas (0: every "
        "rebalance is its own transaction). Delegation mode only; a pack that would revert is "
        "never sent, and one that reverts when mined is followed by each portfolio alone.",
        check=non_negative,
        live=True,
    )
    poll_interval: float = setting(
        1.0,
        parse_float,
        "Seconds between checks of an unsettled transaction (receipt, nonce, pool).",
        check=positive,
        live=True,
    )
    stuck_after: float = setting(
        900.0,
        parse_float,
        "Seconds a transaction may stay unsettled before health turns degraded and TX_STUCK "
        "is alerted.",
        check=positive,
        live=True,
    )
    failure_backoff: float = setting(
        60.0,
        parse_float,
        "Seconds a portfolio waits after a FAILED attempt before trying again; doubled after "
        "each further failure, up to failure_backoff_max.",
        check=non_negative,
        live=True,
    )
    failure_backoff_max: float = setting(
        3600.0,
        parse_float,
        "Longest wait after repeated FAILED attempts of one portfolio.",
        check=non_negative,
        live=True,
    )


@attrs.frozen
class RebalanceConfig:
    """When to trade and how much (the engine's parameters)."""

    drift_threshold: Decimal = setting(
        Decimal("0.15"),
        parse_decimal,
        "Rebalance when the largest |drift| of a tradable token reaches this fraction.",
        check=open_unit,
        env=("DRIFT_THRESHOLD",),
        live=True,
    )
    cooldown_minutes: Decimal = setting(
        Decimal(15),
        parse_decimal,
        "Minutes after a successful rebalance before a portfolio may trade again.",
        check=non_negative,
        env=("COOLDOWN_MINUTES",),
        live=True,
    )
    slippage_tolerance: Decimal = setting(
        Decimal("0.01"),
        parse_decimal,
        "amountOutMin = fresh on-chain quote × (1 − this).",
        check=open_unit,
        env=("SLIPPAGE_TOLERANCE",),
        live=True,
    )
    max_trade_usd: Decimal = setting(
        Decimal(10000),
        parse_decimal,
        "Largest USD size of one leg; larger legs are capped to it, not skipped.",
        check=positive,
        env=("MAX_TRADE_SIZE_USD",),
        live=True,
    )
    min_trade_usd: Decimal = setting(
        Decimal(50),
        parse_decimal,
        "Legs smaller than this many USD are dropped (dust).",
        check=non_negative,
        env=("MIN_TRADE_SIZE_USD",),
        live=True,
    )
    price_impact_threshold: Decimal = setting(
        Decimal("0.05"),
        parse_decimal,
        "A leg whose price impact on the pool exceeds this fraction is not sent.",
        check=open_unit,
        env=("PRICE_IMPACT_THRESHOLD",),
        live=True,
    )
    max_quote_deviation: Decimal = setting(
        Decimal("0.03"),
        parse_decimal,
        "A leg is not sent when the pool's mid price differs from the price the plan was made "
        "with by more than this fraction (either way): a pool pushed off-market, or stale or "
        "wrong plan prices. Fees and impact are bounded separately.",
        check=open_unit,
        live=True,
    )
    rebalance_to: str = setting(
        "band",
        choice("target", "band"),
        "target: trade back to the target weights. band: every token into the band of "
        "band_fraction × drift_threshold around its target, with the least turnover.",
        live=True,
    )
    band_fraction: Decimal = setting(
        Decimal("0.5"),
        parse_decimal,
        "With rebalance_to = band: the band's half-width as a fraction of drift_threshold.",
        check=half_open_unit,
        live=True,
    )


@attrs.frozen
class PricesConfig:
    """Where USD prices come from and when they are too old to trade on."""

    source: str = setting(
        "router",
        # The seed spells the source ORACLE / ROUTER ($PRICE_SOURCE); choice() takes any case.
        choice("oracle", "router"),
        "oracle: CoinGecko's HTTP API. router: spot prices on the Uniswap V2 router, in the "
        "quote token.",
        env=("PRICE_SOURCE",),
    )
    poll_interval: float = setting(
        30.0, parse_float, "Seconds between price polls.", check=positive, live=True
    )
    max_age: float = setting(
        300.0,
        parse_float,
        "A price older than this many seconds is stale: no trade on it.",
        check=positive,
        live=True,
    )
    cross_check: bool = setting(
        False,
        parse_bool,
        "Also fetch the other source: a token whose two prices differ by more than "
        "max_divergence is DIVERGED, one it cannot price (no price, an invalid or stale one, "
        "the source down) is UNVERIFIED; neither is traded. Needs every token's coingecko_id.",
    )
    max_divergence: Decimal = setting(
        Decimal("0.05"),
        parse_decimal,
        "With cross_check: largest tolerated |oracle − router| / router before a token is "
        "unhealthy.",
        check=open_unit,
        live=True,
    )
    max_head_age: float = setting(
        120.0,
        parse_float,
        "Router prices read at a block whose timestamp is older than this many seconds are "
        "stale: no trade on them (a node stuck on an old head serves old reserves as current). "
        "Ten 12-second blocks by default; raise it on a chain with slower blocks. 0: not judged "
        "(a devnet that mines no blocks while idle).",
        check=non_negative,
        live=True,
    )
    max_price_usd: Decimal = setting(
        Decimal(1_000_000_000),
        parse_decimal,
        "A price above this many USD per whole token is refused as garbage (logged as "
        "price_refused; portfolios holding the token skip).",
        check=positive,
        live=True,
    )
    max_move_factor: Decimal = setting(
        Decimal(10),
        parse_decimal,
        "A price more than this many times above or below the token's last accepted price is "
        "refused (logged as price_refused; portfolios holding the token skip) until it is back "
        "within the factor. Raise it to accept a real move.",
        check=greater_than_one,
        live=True,
    )
    coingecko_base_url: str = setting(
        "https://api.coingecko.com/api/v3",
        parse_str,
        "CoinGecko API base URL (pro: https://pro-api.coingecko.com/api/v3).",
        check=http_url,
    )
    coingecko_plan: str = setting(
        "demo",
        choice("demo", "pro"),
        "Which API-key header to send: x-cg-demo-api-key or x-cg-pro-api-key.",
    )
    coingecko_api_key_file: str = setting(
        "",
        parse_str,
        "File holding the CoinGecko API key. Else $CREDENTIALS_DIRECTORY/coingecko-api-key, "
        "else DRIFTD_COINGECKO_API_KEY. Optional on the public API.",
    )

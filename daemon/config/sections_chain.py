"""The schema's chain sections: the node, the signer, the delegation contracts and the guard.

Each key is declared once with its default, parser, limits and documentation
(:func:`~daemon.config.declare.setting`).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Final

import attrs

from daemon.config.checks import at_least, basis_points, http_url, non_negative, positive
from daemon.config.declare import setting
from daemon.config.values import (
    parse_address,
    parse_bool,
    parse_decimal,
    parse_float,
    parse_int,
    parse_optional_address,
    parse_str,
)


@attrs.frozen
class ChainConfig:
    """The EVM chain and the DEX driftd trades on."""

    rpc_url: str = setting(
        "http://127.0.0.1:8545", parse_str, "JSON-RPC endpoint (http or https).", check=http_url
    )
    chain_id: int = setting(
        1, parse_int, "Expected chain id; checked against the node at start.", check=positive
    )
    router: str = setting(
        "0x7a250d5630B4cF539739dF2C5dAcb4c659F2488D",
        parse_address,
        "Uniswap V2 router (Router02) address. Default: Ethereum mainnet's.",
        env=("UNISWAP_V2_ROUTER",),
    )
    request_timeout: float = setting(
        10.0, parse_float, "Seconds to wait for one JSON-RPC response.", check=positive
    )
    max_retries: int = setting(
        4,
        parse_int,
        "Retries of a transient RPC failure before it is reported.",
        check=non_negative,
    )
    max_batch_calls: int = setting(
        500,
        parse_int,
        "Most eth_calls in one JSON-RPC batch (portfolios' balance reads are coalesced into "
        "batches; some hosted nodes accept fewer).",
        check=at_least(1),
    )
    follow_transfers: bool = setting(
        True,
        parse_bool,
        "Keep portfolio balances from the tokens' Transfer logs (one eth_getLogs per tick, "
        "whatever the number of portfolios) instead of reading every balance every tick; "
        "tokens whose balances change without Transfer events are detected and read in full.",
    )


@attrs.frozen
class SignerConfig:
    """The daemon's signing key: the delegate of every portfolio's delegation."""

    key_file: str = setting(
        "",
        parse_str,
        "File holding the hex private key. Else $CREDENTIALS_DIRECTORY/signer-key (systemd "
        "LoadCredential=), else the DRIFTD_SIGNER_KEY environment variable.",
    )


_CANONICAL_V1_3_0: Final = {
    # MetaMask Delegation Framework v1.3.0: the same CREATE2 addresses on every chain it is on
    # (npm @metamask/delegation-deployments).
    "manager": "0xdb9B1e94B5b69Df7e401DDbedE43491141047dB3",
    "allowed_targets": "0x7F20f61b1f09b08D970938F6fa563634d65c4EeB",
    "allowed_methods": "0x2c21fD0Cb9DC8445CB3fb0DC5E7Bb0Aca01842B5",
    "allowed_calldata": "0xc2b0d624c1c4319760C96503BA27C347F3260f55",
    "limited_calls": "0x04658B29F6b82ed55274221a06Fc97D318E25416",
    "redeemer": "0xE144b0b2618071B4E56f746313528a669c7E65c5",
    "timestamp": "0x1046bb45C8d673d4ea75321280DB34899413c069",
    "value_lte": "0x92Bf12322527cAA612fd31a0e810472BBB106A8F",
    "nonce": "0xDE4f2FAC4B3D87A1d9953Ca5FC09FCa7F366254f",
}


def _enforcer(name: str, doc: str) -> Any:
    return setting(_CANONICAL_V1_3_0[name], parse_address, doc)


@attrs.frozen
class DelegationConfig:
    """Delegation Framework contracts (defaults: canonical v1.3.0; override on a devnet)."""

    manager: str = _enforcer("manager", "DelegationManager address.")
    allowed_targets: str = _enforcer("allowed_targets", "AllowedTargetsEnforcer address.")
    allowed_methods: str = _enforcer("allowed_methods", "AllowedMethodsEnforcer address.")
    allowed_calldata: str = _enforcer("allowed_calldata", "AllowedCalldataEnforcer address.")
    limited_calls: str = _enforcer("limited_calls", "LimitedCallsEnforcer address.")
    redeemer: str = _enforcer("redeemer", "RedeemerEnforcer address.")
    timestamp: str = _enforcer("timestamp", "TimestampEnforcer address.")
    value_lte: str = _enforcer("value_lte", "ValueLteEnforcer address.")
    nonce: str = _enforcer(
        "nonce",
        "NonceEnforcer address (one-step revocation: the owner's smart account calls "
        "incrementNonce(manager) and every delegation signed at the old nonce stops working).",
    )


@attrs.frozen
class GuardConfig:
    """The oracle guard (DriftGuardEnforcer) on the swap delegation, and the caveats around it.

    ``delegation build`` writes these bounds into the delegations; ``delegation verify`` and
    ``portfolio add`` refuse delegations whose bounds are weaker. Each token's USD feed is
    registered with it (``driftd token add … --feed 0xFEED``).
    """

    enforcer: str = setting(
        "",
        parse_optional_address,
        "DriftGuardEnforcer address: `driftd guard address` prints it (one CREATE2 address per "
        "source on every chain), `driftd guard deploy` deploys it; the devnet sets its own. "
        "Empty: delegations cannot be built or verified.",
    )
    max_loss_bps: int = setting(
        100,
        parse_int,
        "Largest loss of one redemption, in 1/10 000 of the portfolio's value at oracle prices "
        "(fees, slippage and price impact must fit in it). Verification refuses a higher bound.",
        check=basis_points,
    )
    max_staleness: int = setting(
        90000,
        parse_int,
        "Seconds a price feed's answer may lag the block's timestamp before the guard reverts. "
        "Chainlink feeds update on a price deviation or at their heartbeat (ETH/USD 1 h, "
        "USDC/USD 24 h on mainnet): this must exceed the longest heartbeat of a portfolio's "
        "feeds, or the guard refuses every trade between updates.",
        check=positive,
    )
    period: int = setting(
        86400, parse_int, "Seconds per period of the guard's cumulative loss cap.", check=positive
    )
    period_cap_usd: Decimal = setting(
        Decimal(5000),
        parse_decimal,
        "Total loss, in USD at oracle prices, that all redemptions of one period may make.",
        check=non_negative,
    )
    valid_days: int = setting(
        90,
        parse_int,
        "Days until the delegations built by `delegation build` expire (TimestampEnforcer).",
        check=positive,
    )

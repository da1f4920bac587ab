"""What the devnet is once deployed: the addresses of its contracts, its tokens and smart
accounts, the public test keys it made up, the pools it was seeded with and the reference prices
its mock feeds start at; and the ``[chain]``, ``[delegation]`` and ``[guard]`` settings that point
driftd at it. Plain values: tests and the demo read them without the deployment machinery.
:mod:`daemon.devtools.devnet` re-exports the public names.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from decimal import ROUND_FLOOR, Decimal
from typing import Any, Final

import attrs
from eth_utils.crypto import keccak

from daemon.config import ChainConfig, DelegationConfig, GuardConfig, Secret
from daemon.guard import GuardToken

FEED_DECIMALS: Final = 8
"""Decimals of the devnet's mock feeds, as Chainlink's USD feeds."""


@attrs.frozen
class DevnetToken:
    """One ERC20 on the devnet."""

    symbol: str
    address: str
    decimals: int

    def units(self, amount: Decimal | int | str) -> int:
        """Whole tokens → base units (exact; raises if not representable)."""
        value = Decimal(amount) * (Decimal(10) ** self.decimals)
        if value != value.to_integral_value():
            raise ValueError(f"{amount} {self.symbol} is not a whole number of base units")
        return int(value)


@attrs.frozen
class SmartAccount:
    """A HybridDeleGator smart account (ERC1967 proxy) and its owner's key."""

    address: str
    owner: str
    owner_key: Secret = attrs.field(repr=False)


@attrs.frozen
class Devnet:
    """Addresses of everything deployed, and the keys the devnet made up for tests and the demo.

    The keys are derived from fixed labels: they are public test keys, never real funds.
    """

    rpc_url: str
    chain_id: int
    deployer: str
    """anvil's unlocked first account: deploys, mints and funds."""
    weth: str
    factory: str
    router: str
    tokens: tuple[DevnetToken, ...]
    quote_symbol: str
    """The token prices are quoted in (USDC)."""
    manager: str
    entry_point: str
    simple_factory: str
    hybrid_implementation: str
    enforcers: Mapping[str, str]
    """DelegationConfig field name → enforcer address."""
    signer: str
    """The daemon's signer (the delegate), funded with ETH for gas."""
    signer_key: Secret = attrs.field(repr=False)
    accounts: tuple[SmartAccount, ...] = ()
    deploy_seconds: float = 0.0
    guard: str = ""
    """DriftGuardEnforcer, the oracle-bounded caveat enforcer (:mod:`daemon.guard`), at its
    CREATE2 address through the proxy (:func:`daemon.create2.create2_address`, ``GUARD_SALT``)."""
    feeds: Mapping[str, str] = attrs.field(factory=dict)
    """Token symbol → its mock Chainlink USD feed (:data:`FEED_DECIMALS` decimals)."""
    reference_usd: Mapping[str, Decimal] = attrs.field(factory=dict)
    """Token symbol → the USD price the pools were created at (and the feeds start at)."""

    def token(self, symbol: str) -> DevnetToken:
        for token in self.tokens:
            if token.symbol == symbol:
                return token
        raise KeyError(f"no devnet token {symbol}")

    @property
    def quote(self) -> DevnetToken:
        return self.token(self.quote_symbol)

    def chain_config(self, base: ChainConfig | None = None) -> ChainConfig:
        """``[chain]`` for this devnet (other keys from ``base``)."""
        return attrs.evolve(
            base or ChainConfig(), rpc_url=self.rpc_url, chain_id=self.chain_id, router=self.router
        )

    def delegation_config(self) -> DelegationConfig:
        """``[delegation]`` pointing at this devnet's DelegationManager and enforcers."""
        return DelegationConfig(manager=self.manager, **self.enforcers)

    def guard_config(self, base: GuardConfig | None = None) -> GuardConfig:
        """``[guard]`` pointing at this devnet's DriftGuardEnforcer (other keys from ``base``)."""
        return attrs.evolve(base or GuardConfig(), enforcer=self.guard)

    def guarded_tokens(self, symbols: Iterable[str]) -> list[GuardToken]:
        """The oracle guard's token set for a portfolio of ``symbols`` at this devnet's feeds,
        the quote token included (routes go through it), as `driftd delegation build` lists
        them."""
        listed = dict.fromkeys([*symbols, self.quote_symbol])
        return [
            GuardToken(self.token(s).address, self.feeds[s], self.token(s).decimals, FEED_DECIMALS)
            for s in listed
        ]

    def config_overrides(self) -> dict[str, dict[str, Any]]:
        """The TOML keys a config for this devnet needs (``[chain]``, ``[delegation]``, and
        ``[guard]``'s enforcer)."""
        return {
            "chain": {"rpc_url": self.rpc_url, "chain_id": self.chain_id, "router": self.router},
            "delegation": {"manager": self.manager, **self.enforcers},
            "guard": {"enforcer": self.guard},
        }


def devnet_key(label: str) -> Secret:
    """A deterministic test key (public by construction: never hold real funds with it)."""
    return Secret("0x" + keccak(text=f"driftd devnet key: {label}").hex())


@attrs.frozen
class PoolSpec:
    """A pool to create: ``amount_a`` of ``symbol_a`` against ``amount_b`` of ``symbol_b``."""

    symbol_a: str
    amount_a: Decimal
    symbol_b: str
    amount_b: Decimal


DEFAULT_POOLS: Final = (
    # ~$20M deep each side, near real prices; no WETH/WBTC pair, so that route hops via USDC.
    PoolSpec("WETH", Decimal(3_000), "USDC", Decimal(9_000_000)),
    PoolSpec("WBTC", Decimal(150), "USDC", Decimal(9_000_000)),
)
DEFAULT_TOKENS: Final = (("USDC", "USD Coin", 6), ("WBTC", "Wrapped BTC", 8))


def reference_prices(pools: Sequence[PoolSpec], *, quote_symbol: str) -> dict[str, Decimal]:
    """USD per token implied by the pools against the quote token (taken as $1)."""
    prices = {quote_symbol: Decimal(1)}
    for pool in pools:
        if pool.symbol_b == quote_symbol:
            prices[pool.symbol_a] = pool.amount_b / pool.amount_a
        elif pool.symbol_a == quote_symbol:
            prices[pool.symbol_b] = pool.amount_a / pool.amount_b
    return prices


def feed_answer(usd: Decimal | int | str) -> int:
    """A USD price as a feed's ``answer`` (:data:`FEED_DECIMALS` decimals, rounded down)."""
    return int(Decimal(usd).scaleb(FEED_DECIMALS).to_integral_value(rounding=ROUND_FLOOR))

"""ERC-7710 delegations (MetaMask Delegation Framework v1.3.0): build, hash, sign, verify, redeem.

The daemon never holds a portfolio's funds. The owner's smart account (a HybridDeleGator) signs a
*delegation* naming the daemon's signer as delegate, and the daemon redeems it through the
DelegationManager, which makes the smart account execute the call — but only if every caveat's
enforcer agrees. Least authority (DESIGN.md §4.6) is therefore a property of the caveats, and a
stolen daemon key must not be able to move funds out. Caveats are ANDed within one delegation, and
AllowedCalldataEnforcer pins one byte range each, so "approve only to the router" and "swap only
to the account" cannot both be expressed in one delegation; the daemon asks for two:

* **approve**: AllowedTargets = the portfolio's tokens, AllowedMethods = ``approve``,
  AllowedCalldata pins bytes 4..36 (``spender``) to the router.
* **swap**: AllowedTargets = the router, AllowedMethods = ``swapExactTokensForTokens``,
  AllowedCalldata pins bytes 100..132 (``to``) to the smart account.

Without the calldata pins a stolen key could approve itself or swap the account's tokens to its
own address. What remains possible with a stolen key is a *bad* swap that still pays the account
(a low ``amountOutMin``, or a path through a pool the thief controls): bounded by the tokens the
account approved, not a transfer out; see the README's "Delegation" section for the residual risk.

The enforcers reject batch mode, so ``redeemDelegations`` gets several single-call executions
(``target ‖ value ‖ calldata``), one permission context each.

Hashing follows EIP-712 with the DelegationManager's domain ``{name: "DelegationManager",
version: "1", chainId, verifyingContract: manager}``; the digest equals eth-account's
``encode_typed_data`` of :meth:`Delegation.typed_data` and the manager's ``getDelegationHash``.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, Literal

import attrs
from eth_abi.abi import encode as abi_encode
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils.crypto import keccak

from daemon.chain import ChainClient, Reverted, encode_call, hex_of, to_address
from daemon.config import DelegationConfig, GuardConfig, Secret
from daemon.uniswap import (
    APPROVE_SELECTOR,
    APPROVE_SPENDER_OFFSET,
    SWAP_EXACT_TOKENS_FOR_TOKENS_SELECTOR,
    SWAP_RECIPIENT_OFFSET,
)

ROOT_AUTHORITY: Final = b"\xff" * 32
"""``authority`` of a delegation signed directly by the delegator (not a re-delegation)."""
DOMAIN_NAME: Final = "DelegationManager"
DOMAIN_VERSION: Final = "1"
SINGLE_DEFAULT_MODE: Final = b"\x00" * 32
"""ERC-7579 execution mode: call type single (0x00), exec type default (revert on failure)."""
ERC1271_MAGIC_VALUE: Final = bytes.fromhex("1626ba7e")

CAVEAT_TYPE: Final = "Caveat(address enforcer,bytes terms)"
DELEGATION_TYPE: Final = (
    "Delegation(address delegate,address delegator,bytes32 authority,Caveat[] caveats,uint256 salt)"
)
CAVEAT_TYPEHASH: Final = keccak(text=CAVEAT_TYPE)
DELEGATION_TYPEHASH: Final = keccak(text=DELEGATION_TYPE + CAVEAT_TYPE)
DOMAIN_TYPEHASH: Final = keccak(
    text="EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
)
_DELEGATION_ABI: Final = "(address,address,bytes32,(address,bytes,bytes)[],uint256,bytes)"

Kind = Literal["approve", "swap"]


class DelegationFormatError(ValueError):
    """A delegation file or document is malformed; the message names the offending field."""


# --- value types ------------------------------------------------------------------------------


@attrs.frozen
class Caveat:
    """One restriction: ``enforcer`` checks ``terms`` (signed) and ``args`` (chosen at redeem)."""

    enforcer: str = attrs.field(converter=to_address)
    terms: bytes
    args: bytes = b""

    def struct_hash(self) -> bytes:
        return keccak(
            abi_encode(
                ["bytes32", "address", "bytes32"],
                [CAVEAT_TYPEHASH, self.enforcer, keccak(self.terms)],
            )
        )


@attrs.frozen
class DelegationDomain:
    """The EIP-712 domain delegations are signed in: one DelegationManager on one chain."""

    chain_id: int
    manager: str = attrs.field(converter=to_address)

    def separator(self) -> bytes:
        return keccak(
            abi_encode(
                ["bytes32", "bytes32", "bytes32", "uint256", "address"],
                [
                    DOMAIN_TYPEHASH,
                    keccak(text=DOMAIN_NAME),
                    keccak(text=DOMAIN_VERSION),
                    self.chain_id,
                    self.manager,
                ],
            )
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "name": DOMAIN_NAME,
            "version": DOMAIN_VERSION,
            "chainId": self.chain_id,
            "verifyingContract": self.manager,
        }


@attrs.frozen
class Delegation:
    """A delegation as the DelegationManager sees it; ``signature`` empty until signed."""

    delegate: str = attrs.field(converter=to_address)
    delegator: str = attrs.field(converter=to_address)
    authority: bytes
    caveats: tuple[Caveat, ...]
    salt: int
    signature: bytes = b""

    def struct_hash(self) -> bytes:
        """EIP-712 ``hashStruct`` (the manager's ``getDelegationHash``; keys disabled ones)."""
        caveats_hash = keccak(b"".join(caveat.struct_hash() for caveat in self.caveats))
        return keccak(
            abi_encode(
                ["bytes32", "address", "address", "bytes32", "bytes32", "uint256"],
                [
                    DELEGATION_TYPEHASH,
                    self.delegate,
                    self.delegator,
                    self.authority,
                    caveats_hash,
                    self.salt,
                ],
            )
        )

    def digest(self, domain: DelegationDomain) -> bytes:
        """The EIP-712 digest the delegator signs."""
        return keccak(b"\x19\x01" + domain.separator() + self.struct_hash())

    def typed_data(self, domain: DelegationDomain) -> dict[str, Any]:
        """The ``eth_signTypedData_v4`` document an owner signs in their wallet."""
        return {
            "types": {
                "EIP712Domain": [
                    {"name": "name", "type": "string"},
                    {"name": "version", "type": "string"},
                    {"name": "chainId", "type": "uint256"},
                    {"name": "verifyingContract", "type": "address"},
                ],
                "Delegation": [
                    {"name": "delegate", "type": "address"},
                    {"name": "delegator", "type": "address"},
                    {"name": "authority", "type": "bytes32"},
                    {"name": "caveats", "type": "Caveat[]"},
                    {"name": "salt", "type": "uint256"},
                ],
                "Caveat": [
                    {"name": "enforcer", "type": "address"},
                    {"name": "terms", "type": "bytes"},
                ],
            },
            "primaryType": "Delegation",
            "domain": domain.as_json(),
            "message": {
                "delegate": self.delegate,
                "delegator": self.delegator,
                "authority": hex_of(self.authority),
                "caveats": [
                    {"enforcer": caveat.enforcer, "terms": hex_of(caveat.terms)}
                    for caveat in self.caveats
                ],
                "salt": str(self.salt),
            },
        }

    def to_json(self) -> dict[str, Any]:
        """The MetaMask Delegation Toolkit's shape (the delegation file format)."""
        return {
            "delegate": self.delegate,
            "delegator": self.delegator,
            "authority": hex_of(self.authority),
            "caveats": [
                {
                    "enforcer": caveat.enforcer,
                    "terms": hex_of(caveat.terms),
                    "args": hex_of(caveat.args),
                }
                for caveat in self.caveats
            ],
            "salt": hex(self.salt),
            "signature": hex_of(self.signature),
        }

    def abi_tuple(self) -> tuple[Any, ...]:
        return (
            self.delegate,
            self.delegator,
            self.authority,
            [(caveat.enforcer, caveat.terms, caveat.args) for caveat in self.caveats],
            self.salt,
            self.signature,
        )


def sign_delegation(
    delegation: Delegation, domain: DelegationDomain, owner_key: Secret
) -> Delegation:
    """Sign as the smart account's owner would in their wallet (demo and tests only)."""
    signable = encode_typed_data(full_message=_signable_document(delegation, domain))
    signed = Account.sign_message(signable, owner_key.reveal())
    return attrs.evolve(delegation, signature=bytes(signed.signature))


def _signable_document(delegation: Delegation, domain: DelegationDomain) -> dict[str, Any]:
    document = delegation.typed_data(domain)
    document["message"]["salt"] = delegation.salt  # eth-account wants the int
    return document


def recover_signer(delegation: Delegation, domain: DelegationDomain) -> str:
    """The address whose ECDSA key made ``signature`` (an owner key, for an EOA-owned account)."""
    if len(delegation.signature) != 65:
        raise ValueError("signature is not a 65-byte ECDSA signature")
    return to_address(
        Account._recover_hash(delegation.digest(domain), signature=delegation.signature)
    )


# --- caveat terms -----------------------------------------------------------------------------


def allowed_targets_terms(targets: Iterable[str]) -> bytes:
    """AllowedTargetsEnforcer terms: the 20-byte addresses, concatenated."""
    return b"".join(bytes.fromhex(to_address(target)[2:]) for target in targets)


def allowed_methods_terms(selectors: Iterable[bytes]) -> bytes:
    """AllowedMethodsEnforcer terms: the 4-byte selectors, concatenated."""
    out = b""
    for selector in selectors:
        if len(selector) != 4:
            raise ValueError("a selector is 4 bytes")
        out += selector
    return out


def allowed_calldata_terms(start_index: int, value: bytes) -> bytes:
    """AllowedCalldataEnforcer terms: ``uint256 startIndex ‖ value`` (packed)."""
    return start_index.to_bytes(32, "big") + value


def timestamp_terms(*, expires_at: int, not_before: int = 0) -> bytes:
    """TimestampEnforcer terms: ``uint128 after ‖ uint128 before`` (valid strictly between)."""
    return not_before.to_bytes(16, "big") + expires_at.to_bytes(16, "big")


def decode_timestamp(terms: bytes) -> tuple[int, int]:
    """TimestampEnforcer terms → (not_before, expires_at); 0 means no bound."""
    if len(terms) != 32:
        raise ValueError("Timestamp terms are not 32 bytes")
    return int.from_bytes(terms[:16], "big"), int.from_bytes(terms[16:], "big")


def value_lte_terms(max_value: int = 0) -> bytes:
    """ValueLteEnforcer terms: ``uint256 maxValue`` (wei an execution may carry)."""
    return max_value.to_bytes(32, "big")


def nonce_terms(nonce: int) -> bytes:
    """NonceEnforcer terms: ``uint256 nonce``, the delegator's current nonce when signing."""
    return nonce.to_bytes(32, "big")


def decode_nonce(terms: bytes) -> int:
    if len(terms) != 32:
        raise ValueError("Nonce terms are not 32 bytes")
    return int.from_bytes(terms, "big")


def increment_nonce_call(manager: str) -> bytes:
    """What the owner's smart account calls on the NonceEnforcer to revoke, in one step, every
    delegation it signed at its current nonce: ``incrementNonce(address delegationManager)``."""
    return encode_call("incrementNonce(address)", to_address(manager))


async def current_nonce(client: ChainClient, enforcers: DelegationConfig, delegator: str) -> int:
    """The delegator's current nonce in the NonceEnforcer (the one new delegations carry)."""
    raw = await client.call(
        enforcers.nonce,
        encode_call("currentNonce(address,address)", enforcers.manager, to_address(delegator)),
    )
    if len(raw) < 32:
        raise ValueError(f"NonceEnforcer at {enforcers.nonce} returned no currentNonce")
    return int.from_bytes(raw[:32], "big")


async def nonce_problems(
    client: ChainClient, delegation: Delegation, enforcers: DelegationConfig
) -> list[str]:
    """A delegation whose NonceEnforcer terms are not the delegator's current nonce on chain is
    revoked (the owner incremented it) or not yet valid: the enforcer reverts either way."""
    problems: list[str] = []
    current: int | None = None
    for caveat in delegation.caveats:
        if caveat.enforcer != enforcers.nonce:
            continue
        try:
            signed_at = decode_nonce(caveat.terms)
        except ValueError:
            continue  # reported by least_authority_problems
        if current is None:
            try:
                current = await current_nonce(client, enforcers, delegation.delegator)
            except (Reverted, ValueError):
                return [f"NonceEnforcer at {enforcers.nonce} does not answer currentNonce"]
        if signed_at < current:
            problems.append(
                f"revoked: the owner incremented the nonce (signed at nonce {signed_at}, "
                f"current {current})"
            )
        elif signed_at != current:
            problems.append(f"nonce {signed_at} is not the current nonce {current}")
    return problems


def address_word(address: str) -> bytes:
    """An address as its 32-byte ABI word."""
    return b"\x00" * 12 + bytes.fromhex(to_address(address)[2:])


def decode_targets(terms: bytes) -> list[str]:
    if len(terms) == 0 or len(terms) % 20:
        raise ValueError("AllowedTargets terms are not a list of 20-byte addresses")
    return [to_address(terms[i : i + 20]) for i in range(0, len(terms), 20)]


def decode_methods(terms: bytes) -> list[bytes]:
    if len(terms) == 0 or len(terms) % 4:
        raise ValueError("AllowedMethods terms are not a list of 4-byte selectors")
    return [terms[i : i + 4] for i in range(0, len(terms), 4)]


def decode_calldata_pin(terms: bytes) -> tuple[int, bytes]:
    if len(terms) < 33:
        raise ValueError("AllowedCalldata terms are shorter than startIndex + 1 byte")
    return int.from_bytes(terms[:32], "big"), terms[32:]


# --- building -------------------------------------------------------------------------------


@attrs.frozen
class PortfolioDelegations:
    """The two delegations a portfolio needs (see the module docstring)."""

    approve: Delegation
    swap: Delegation

    def as_list(self) -> list[Delegation]:
        return [self.approve, self.swap]


def build_portfolio_delegations(
    *,
    account: str,
    delegate: str,
    router: str,
    tokens: Sequence[str],
    enforcers: DelegationConfig,
    salt: int,
    guard: Caveat | None = None,
    expires_at: int | None = None,
    nonce: int | None = None,
) -> PortfolioDelegations:
    """The minimal unsigned delegations for ``account``'s portfolio of ``tokens`` on ``router``.

    ``guard`` (:func:`daemon.guard.guard_caveat`) goes on the swap delegation; ``expires_at``
    (unix seconds) adds a TimestampEnforcer expiry to both; ``nonce`` (the delegator's
    :func:`current_nonce`) adds a NonceEnforcer caveat to both, so the owner revokes both in one
    ``incrementNonce``. The delegations driftd asks owners to sign carry all of them
    (:func:`least_authority_problems` refuses them otherwise).

    Under the guard, the swap delegation leaves out the stock caveats whose rule the guard
    enforces itself on every execution (one method, the account as recipient, zero ETH:
    ``AllowedMethods``, ``AllowedCalldata``, ``ValueLte``): each caveat costs ~22 000 gas per
    redeemed swap, and a redundant one protects nothing. Without the guard (or with
    ``expires_at`` and no guard), the swap delegation keeps those pins, and ``ValueLte(0)``.
    """
    if not tokens:
        raise ValueError("a portfolio needs at least one token")
    token_addresses = sorted({to_address(token) for token in tokens}, key=str.lower)
    router = to_address(router)
    common: tuple[Caveat, ...] = ()
    if expires_at is not None:
        common = (Caveat(enforcers.timestamp, timestamp_terms(expires_at=expires_at)),)
    if nonce is not None:
        common += (Caveat(enforcers.nonce, nonce_terms(nonce)),)
    no_value = (Caveat(enforcers.value_lte, value_lte_terms(0)),) if expires_at is not None else ()
    approve = Delegation(
        delegate=delegate,
        delegator=account,
        authority=ROOT_AUTHORITY,
        caveats=(
            Caveat(enforcers.allowed_targets, allowed_targets_terms(token_addresses)),
            Caveat(enforcers.allowed_methods, allowed_methods_terms([APPROVE_SELECTOR])),
            Caveat(
                enforcers.allowed_calldata,
                allowed_calldata_terms(APPROVE_SPENDER_OFFSET, address_word(router)),
            ),
            *common,
            *no_value,
        ),
        salt=salt,
    )
    pins: tuple[Caveat, ...] = (
        Caveat(
            enforcers.allowed_methods,
            allowed_methods_terms([SWAP_EXACT_TOKENS_FOR_TOKENS_SELECTOR]),
        ),
        Caveat(
            enforcers.allowed_calldata,
            allowed_calldata_terms(SWAP_RECIPIENT_OFFSET, address_word(account)),
        ),
    )
    swap = Delegation(
        delegate=delegate,
        delegator=account,
        authority=ROOT_AUTHORITY,
        caveats=(
            Caveat(enforcers.allowed_targets, allowed_targets_terms([router])),
            *(pins + common + no_value if guard is None else common),
            *((guard,) if guard is not None else ()),
        ),
        salt=salt,
    )
    return PortfolioDelegations(approve=approve, swap=swap)


# --- checking -------------------------------------------------------------------------------


@attrs.frozen
class Authority:
    """What a delegation's caveats allow, as far as the three enforcers we rely on say."""

    targets: frozenset[str] | None
    """None: no AllowedTargets caveat (any target)."""
    methods: frozenset[bytes] | None
    """None: no AllowedMethods caveat (any method)."""
    calldata_pins: frozenset[tuple[int, bytes]]


def authority_of(delegation: Delegation, enforcers: DelegationConfig) -> Authority:
    """Intersect the caveats (they are ANDed) into what the delegation allows."""
    targets: frozenset[str] | None = None
    methods: frozenset[bytes] | None = None
    pins: set[tuple[int, bytes]] = set()
    for caveat in delegation.caveats:
        if caveat.enforcer == enforcers.allowed_targets:
            found = frozenset(decode_targets(caveat.terms))
            targets = found if targets is None else targets & found
        elif caveat.enforcer == enforcers.allowed_methods:
            selectors = frozenset(decode_methods(caveat.terms))
            methods = selectors if methods is None else methods & selectors
        elif caveat.enforcer == enforcers.allowed_calldata:
            pins.add(decode_calldata_pin(caveat.terms))
    return Authority(targets=targets, methods=methods, calldata_pins=frozenset(pins))


def kind_of(delegation: Delegation, enforcers: DelegationConfig) -> Kind | None:
    """``approve`` when the delegation allows exactly ``approve``; ``swap`` when it allows
    exactly ``swapExactTokensForTokens`` or has no AllowedMethods caveat (the guarded swap
    delegation: the oracle guard allows only exact-input swaps, and a delegation taken for the
    swap one must carry it, see :func:`least_authority_problems`)."""
    methods = authority_of(delegation, enforcers).methods
    if methods == frozenset({APPROVE_SELECTOR}):
        return "approve"
    if methods is None or methods == frozenset({SWAP_EXACT_TOKENS_FOR_TOKENS_SELECTOR}):
        return "swap"
    return None


def least_authority_problems(
    delegation: Delegation,
    *,
    account: str,
    delegate: str,
    router: str,
    enforcers: DelegationConfig,
    guard: GuardConfig,
    tokens: Sequence[str] | None = None,
    guard_feeds: Mapping[str, str] | None = None,
    token_decimals: Mapping[str, int] | None = None,
    now: int | None = None,
) -> list[str]:
    """Why ``delegation`` grants more than DESIGN.md §4.6 and issue 11 allow (empty: it does not).

    Extra caveats are fine (each only restricts further); missing or wider ones are not. Both
    delegations must expire (TimestampEnforcer, after ``now``) and carry a NonceEnforcer caveat
    (one-step revocation; whether its nonce is still the current one is an on-chain question:
    :func:`nonce_problems`); the approve delegation ``ValueLteEnforcer(0)`` and its spender pin;
    the swap delegation the router as its only target and the oracle guard at
    ``guard.enforcer`` with bounds no weaker than ``guard``'s (the guard refuses ETH, other
    methods and other recipients itself, so stock pins for those are optional there).
    ``guard_feeds`` (token → feed: the portfolio's tokens and the quote token)
    is the exact token set the guard must list, each with its registered feed; ``token_decimals``
    the tokens' decimals. Without them, the token set is not checked (``delegation verify``
    without ``--token``).
    """
    problems: list[str] = []
    if delegation.delegator != to_address(account):
        problems.append(f"delegator is {delegation.delegator}, expected {to_address(account)}")
    if delegation.delegate != to_address(delegate):
        problems.append(f"delegate is {delegation.delegate}, expected {to_address(delegate)}")
    if delegation.authority != ROOT_AUTHORITY:
        problems.append("authority is not the root authority (re-delegations are not supported)")
    try:
        authority = authority_of(delegation, enforcers)
    except ValueError as exc:
        return [*problems, f"caveat terms: {exc}"]
    router = to_address(router)
    kind = kind_of(delegation, enforcers)
    if authority.targets is None:
        problems.append("no AllowedTargets caveat: any contract could be called")
    if kind is None:
        problems.append(
            "AllowedMethods must allow exactly one of approve or swapExactTokensForTokens"
        )
        return problems
    if kind == "approve":
        if (APPROVE_SPENDER_OFFSET, address_word(router)) not in authority.calldata_pins:
            problems.append("approve: spender is not pinned to the router by AllowedCalldata")
        if authority.targets is not None and tokens is not None:
            extra = authority.targets - {to_address(token) for token in tokens}
            if extra:
                problems.append(f"approve: targets beyond the portfolio's tokens: {sorted(extra)}")
    else:
        # The guard (required below) allows one method family, the account as recipient and
        # zero ETH on every execution: the stock pins for those are optional here.
        if authority.targets is not None and authority.targets - {router}:
            problems.append(f"swap: targets beyond the router: {sorted(authority.targets)}")
        problems += guard_problems(
            delegation, guard=guard, feeds=guard_feeds, token_decimals=token_decimals
        )
    problems += _expiry_problems(
        delegation, kind, enforcers, now=int(time.time()) if now is None else now
    )
    if not delegation.signature:
        problems.append("not signed")
    return problems


def _expiry_problems(
    delegation: Delegation, kind: Kind, enforcers: DelegationConfig, *, now: int
) -> list[str]:
    problems: list[str] = []
    expiries: list[int] = []
    value_caps: list[int] = []
    nonces = 0
    for caveat in delegation.caveats:
        if caveat.enforcer == enforcers.timestamp:
            try:
                expiries.append(decode_timestamp(caveat.terms)[1])
            except ValueError as exc:
                problems.append(f"{kind}: {exc}")
        elif caveat.enforcer == enforcers.value_lte:
            if len(caveat.terms) != 32:
                problems.append(f"{kind}: ValueLte terms are not 32 bytes")
            else:
                value_caps.append(int.from_bytes(caveat.terms, "big"))
        elif caveat.enforcer == enforcers.nonce:
            if len(caveat.terms) != 32:
                problems.append(f"{kind}: Nonce terms are not 32 bytes")
            else:
                nonces += 1
    bounded = [expiry for expiry in expiries if expiry > 0]
    if not bounded:
        problems.append(f"{kind}: no expiry (TimestampEnforcer caveat with a 'before' bound)")
    elif min(bounded) <= now:
        problems.append(f"{kind}: expired at {min(bounded)} (now {now})")
    if not value_caps:
        if kind == "approve":  # on the swap delegation, the guard refuses ETH itself
            problems.append(f"{kind}: no ValueLteEnforcer(0) caveat: the call could carry ETH")
    elif min(value_caps) != 0:
        problems.append(f"{kind}: ValueLte allows {min(value_caps)} wei per call, expected 0")
    if not nonces:
        problems.append(
            f"{kind}: no one-step revocation (NonceEnforcer): the owner could not revoke it and "
            "its sibling with one incrementNonce"
        )
    return problems


def guard_problems(
    delegation: Delegation,
    *,
    guard: GuardConfig,
    feeds: Mapping[str, str] | None = None,
    token_decimals: Mapping[str, int] | None = None,
) -> list[str]:
    """Why the swap delegation's oracle guard is missing or weaker than ``guard`` requires."""
    from daemon.guard import GuardTermsError, guard_terms_of, usd

    if not guard.enforcer:
        return ["swap: guard.enforcer is not configured, so the oracle guard cannot be checked"]
    try:
        found = guard_terms_of(delegation, guard.enforcer)
    except GuardTermsError as exc:
        return [f"swap: guard terms: {exc}"]
    if not found:
        others = [c.enforcer for c in delegation.caveats if c.enforcer != guard.enforcer]
        return [
            f"swap: no oracle guard caveat (DriftGuardEnforcer at {guard.enforcer}); "
            f"caveats name only {sorted(set(others))}"
        ]
    problems: list[str] = []
    # Several guard caveats are ANDed: the delegation is at least as strict as the strictest, so
    # it is acceptable when any one of them satisfies every requirement.
    for terms in found:
        mine: list[str] = []
        if terms.max_loss_bps > guard.max_loss_bps:
            mine.append(
                f"swap: guard max_loss_bps is {terms.max_loss_bps}, above the configured "
                f"{guard.max_loss_bps}"
            )
        if terms.max_staleness > guard.max_staleness:
            mine.append(
                f"swap: guard max_staleness is {terms.max_staleness} s, above the configured "
                f"{guard.max_staleness} s"
            )
        if terms.period_cap > usd(guard.period_cap_usd):
            mine.append(
                f"swap: guard period cap is {terms.period_cap} (USD·1e18), above the configured "
                f"{usd(guard.period_cap_usd)}"
            )
        if feeds is not None:
            want = {to_address(token): to_address(feed) for token, feed in feeds.items()}
            have = {token.token: token for token in terms.tokens}
            missing, extra = sorted(want.keys() - have.keys()), sorted(have.keys() - want.keys())
            if missing or extra:
                mine.append(
                    "swap: guard tokens are not exactly the portfolio's tokens and the quote "
                    f"token (missing {missing}, extra {extra})"
                )
            for token, entry in have.items():
                if token in want and entry.feed != want[token]:
                    mine.append(
                        f"swap: guard feed of {token} is {entry.feed}, the registered feed is "
                        f"{want[token]}"
                    )
                expected = None if token_decimals is None else token_decimals.get(token)
                if expected is not None and entry.token_decimals != expected:
                    mine.append(
                        f"swap: guard decimals of {token} are {entry.token_decimals}, the "
                        f"token has {expected}"
                    )
        if not mine:
            return []
        problems = problems or mine
    return problems


async def signature_is_valid_on_chain(
    client: ChainClient, delegation: Delegation, domain: DelegationDomain
) -> bool:
    """Ask the delegator (an ERC-1271 smart account) whether it accepts the signature.

    This is the check the DelegationManager makes at redemption.
    """
    data = encode_call(
        "isValidSignature(bytes32,bytes)", delegation.digest(domain), delegation.signature
    )
    try:
        result = await client.call(delegation.delegator, data)
    except Reverted:
        return False
    return result[:4] == ERC1271_MAGIC_VALUE


async def is_disabled_on_chain(
    client: ChainClient, delegation: Delegation, domain: DelegationDomain
) -> bool:
    """Whether the owner disabled the delegation on the DelegationManager."""
    data = encode_call("disabledDelegations(bytes32)", delegation.struct_hash())
    return (await client.call(domain.manager, data))[31:32] == b"\x01"


# --- redemption -----------------------------------------------------------------------------


@attrs.frozen
class Execution:
    """One call the smart account makes: ``target.call{value}(calldata)``."""

    target: str = attrs.field(converter=to_address)
    calldata: bytes
    value: int = 0

    def encode_single(self) -> bytes:
        """ERC-7579 single execution calldata: ``target ‖ uint256 value ‖ calldata`` (packed)."""
        return bytes.fromhex(self.target[2:]) + self.value.to_bytes(32, "big") + self.calldata


def permission_context(chain: Sequence[Delegation]) -> bytes:
    """``abi.encode(Delegation[])``, leaf first (for a root delegation: just that one)."""
    return abi_encode([f"{_DELEGATION_ABI}[]"], [[d.abi_tuple() for d in chain]])


def encode_redeem_delegations(redemptions: Sequence[tuple[Delegation, Execution]]) -> bytes:
    """``redeemDelegations`` calldata: one single-mode execution per (delegation, execution)."""
    if not redemptions:
        raise ValueError("nothing to redeem")
    return encode_call(
        "redeemDelegations(bytes[],bytes32[],bytes[])",
        [permission_context([delegation]) for delegation, _ in redemptions],
        [SINGLE_DEFAULT_MODE] * len(redemptions),
        [execution.encode_single() for _, execution in redemptions],
    )


# --- the delegation file --------------------------------------------------------------------

_HEX_RE: Final = re.compile(r"^0x([0-9a-fA-F]{2})*$")
_ADDRESS_RE: Final = re.compile(r"^0x[0-9a-fA-F]{40}$")


def _field(item: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in item:
        raise DelegationFormatError(f"{where}: missing field {key!r}")
    return item[key]


def _hex_field(
    item: Mapping[str, Any], key: str, where: str, *, length: int | None = None
) -> bytes:
    value = _field(item, key, where)
    if not isinstance(value, str) or not _HEX_RE.match(value):
        raise DelegationFormatError(f"{where}.{key}: must be a 0x-prefixed hex string")
    data = bytes.fromhex(value[2:])
    if length is not None and len(data) != length:
        raise DelegationFormatError(f"{where}.{key}: must be {length} bytes, got {len(data)}")
    return data


def _address_field(item: Mapping[str, Any], key: str, where: str) -> str:
    value = _field(item, key, where)
    if not isinstance(value, str) or not _ADDRESS_RE.match(value):
        raise DelegationFormatError(f"{where}.{key}: must be a 0x-prefixed 20-byte address")
    try:
        return to_address(value)
    except ValueError:
        raise DelegationFormatError(f"{where}.{key}: invalid address checksum") from None


def _salt_field(item: Mapping[str, Any], where: str) -> int:
    value = _field(item, "salt", where)
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise DelegationFormatError(f"{where}.salt: must be a decimal or 0x-hex string")
    try:
        salt = value if isinstance(value, int) else int(value, 16 if value.startswith("0x") else 10)
    except ValueError:
        raise DelegationFormatError(f"{where}.salt: not a decimal or 0x-hex number") from None
    if not 0 <= salt < 2**256:
        raise DelegationFormatError(f"{where}.salt: out of uint256 range")
    return salt


def delegation_from_json(item: Any, where: str = "delegation") -> Delegation:
    """One signed delegation in the Delegation Toolkit's shape (see DESIGN.md §6)."""
    if not isinstance(item, Mapping):
        raise DelegationFormatError(f"{where}: must be a JSON object")
    caveats_raw = _field(item, "caveats", where)
    if not isinstance(caveats_raw, list):
        raise DelegationFormatError(f"{where}.caveats: must be an array")
    caveats = []
    for index, caveat in enumerate(caveats_raw):
        caveat_where = f"{where}.caveats[{index}]"
        if not isinstance(caveat, Mapping):
            raise DelegationFormatError(f"{caveat_where}: must be a JSON object")
        args = _hex_field(caveat, "args", caveat_where) if "args" in caveat else b""
        caveats.append(
            Caveat(
                enforcer=_address_field(caveat, "enforcer", caveat_where),
                terms=_hex_field(caveat, "terms", caveat_where),
                args=args,
            )
        )
    return Delegation(
        delegate=_address_field(item, "delegate", where),
        delegator=_address_field(item, "delegator", where),
        authority=_hex_field(item, "authority", where, length=32),
        caveats=tuple(caveats),
        salt=_salt_field(item, where),
        signature=_hex_field(item, "signature", where),
    )


def parse_delegation_file(text: str) -> list[Delegation]:
    """A delegation file: a JSON array of signed delegations. Errors name the field."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DelegationFormatError(
            f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None
    if not isinstance(document, list) or not document:
        raise DelegationFormatError("must be a non-empty JSON array of signed delegations")
    delegations = [delegation_from_json(item, f"[{index}]") for index, item in enumerate(document)]
    for index, delegation in enumerate(delegations):
        if not delegation.signature:
            raise DelegationFormatError(f"[{index}].signature: empty (the delegation is unsigned)")
    return delegations


def dump_delegation_file(delegations: Iterable[Delegation]) -> str:
    return json.dumps([delegation.to_json() for delegation in delegations], indent=2) + "\n"

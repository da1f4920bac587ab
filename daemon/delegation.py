"""ERC-7710 delegations (MetaMask Delegation Framework v1.3.0): build, hash, sign, verify, redeem.

The daemon never holds a portfolio's funds. The owner's smart account (a HybridDeleGator) signs a
*delegation* naming the daemon's signer as delegate, and the daemon redeems it through the
DelegationManager, which makes the smart account execute the call — but only if every caveat's
enforcer agrees. Least authority (DESIGN.md §4.6, issue 11) is therefore a property of the caveats:
a stolen daemon key must not be able to move funds out. Caveats are ANDed within one delegation,
so the daemon asks for two:

* **approve**: AllowedTargets = the portfolio's tokens, AllowedMethods = ``approve``,
  AllowedCalldata pins bytes 4..36 (``spender``) to the router, ``ValueLte(0)``.
* **swap**: AllowedTargets = the router, and driftd's oracle guard (:mod:`daemon.guard`), which
  itself allows only exact-input swaps paid to the account without ETH, along paths of the
  portfolio's tokens, and bounds the value each redemption and period may lose at oracle prices.

Both expire (TimestampEnforcer) and carry the account's NonceEnforcer nonce (one
``incrementNonce`` revokes both). What is *enough* authority, and what is too much, is decided
in :mod:`daemon.authority`; this module knows the format.

The enforcers reject batch mode, so ``redeemDelegations`` gets several single-call executions
(``target ‖ value ‖ calldata``), one permission context each.

Hashing follows EIP-712 with the DelegationManager's domain ``{name: "DelegationManager",
version: "1", chainId, verifyingContract: manager}``; the digest equals eth-account's
``encode_typed_data`` of :meth:`Delegation.typed_data` and the manager's ``getDelegationHash``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

import attrs
from eth_abi.abi import encode as abi_encode
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils.crypto import keccak

from daemon.abi import encode_call, hex_of
from daemon.address import checked_address, to_address
from daemon.chain import ChainClient
from daemon.chain_errors import Reverted
from daemon.config import DelegationConfig, Secret
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
        caveats=(*_approve_scope(enforcers, token_addresses, router), *common, *no_value),
        salt=salt,
    )
    swap = Delegation(
        delegate=delegate,
        delegator=account,
        authority=ROOT_AUTHORITY,
        caveats=(
            Caveat(enforcers.allowed_targets, allowed_targets_terms([router])),
            *(_swap_pins(enforcers, account) + common + no_value if guard is None else common),
            *((guard,) if guard is not None else ()),
        ),
        salt=salt,
    )
    return PortfolioDelegations(approve=approve, swap=swap)


def _approve_scope(
    enforcers: DelegationConfig, token_addresses: Sequence[str], router: str
) -> tuple[Caveat, ...]:
    """The approve delegation's scope: the tokens, ``approve`` only, the router as spender."""
    return (
        Caveat(enforcers.allowed_targets, allowed_targets_terms(token_addresses)),
        Caveat(enforcers.allowed_methods, allowed_methods_terms([APPROVE_SELECTOR])),
        Caveat(
            enforcers.allowed_calldata,
            allowed_calldata_terms(APPROVE_SPENDER_OFFSET, address_word(router)),
        ),
    )


def _swap_pins(enforcers: DelegationConfig, account: str) -> tuple[Caveat, ...]:
    """The stock pins of a swap delegation without the guard: the exact-input swap method, and
    the account as the swap's recipient."""
    return (
        Caveat(
            enforcers.allowed_methods,
            allowed_methods_terms([SWAP_EXACT_TOKENS_FOR_TOKENS_SELECTOR]),
        ),
        Caveat(
            enforcers.allowed_calldata,
            allowed_calldata_terms(SWAP_RECIPIENT_OFFSET, address_word(account)),
        ),
    )


# --- on chain ---------------------------------------------------------------------------------


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
    # A delegation file is written by people and their tools: the strict rule, as for the
    # configuration (a wrong EIP-55 checksum or the zero address is refused).
    try:
        return checked_address(_field(item, key, where))
    except ValueError as exc:
        raise DelegationFormatError(f"{where}.{key}: {exc}") from None


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

"""driftd's oracle guard: a caveat that bounds what any redemption may cost the owner's account.

The stock caveats pin *where* a delegated call goes (router, method, recipient) but not *how bad*
a swap may be: with the daemon's key a thief could still swap the account's tokens through a pool
of a worthless token they mint, or sandwich a full-balance swap at ``amountOutMin = 1``.
:file:`contracts/DriftGuardEnforcer.sol` closes that. On the swap delegation, it requires of every
redemption (whatever executions the redeemer batches or nests):

* each execution is a single-call, zero-ETH Uniswap V2 exact-input swap paid to the account,
  along a path of listed tokens only;
* the account's holdings of the listed tokens, valued at Chainlink prices taken before the first
  execution, lose at most ``max_loss_bps`` of that value by the end of the redemption;
* the losses of all redemptions in the current period (``[k·period, (k+1)·period)`` of block
  time) add up to at most ``period_cap``;
* every feed's answer is positive and at most ``max_staleness`` seconds old.

Units: values and ``period_cap`` are USD with 18 decimals (``usd(1) == 10**18``); a token's value
is ``balance × answer × 10**18 // 10**(token_decimals + feed_decimals)``, as the contract computes
it (see :func:`value_of`, which the daemon can use to check a trade before sending it).

Terms, packed big-endian (26 + 42·n bytes): ``uint16 max_loss_bps ‖ uint32 max_staleness ‖
uint32 period ‖ uint128 period_cap`` then per token ``address token ‖ address feed ‖
uint8 token_decimals ‖ uint8 feed_decimals``. Packed, like the stock enforcers' terms: they are
copied into every hook call and into the transaction's calldata for each guarded execution.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Final

import attrs
from eth_abi.abi import encode as abi_encode
from eth_utils.crypto import keccak

from daemon.abi import encode_call, function_selector
from daemon.address import to_address
from daemon.chain import ChainClient
from daemon.delegation import Caveat, Delegation

USD_DECIMALS: Final = 18
BPS: Final = 10_000
MAX_TOKENS: Final = 16
MAX_DECIMALS: Final = 36
HEADER_LENGTH: Final = 26
ENTRY_LENGTH: Final = 42

GUARD_ERRORS: Final[Mapping[bytes, str]] = {
    function_selector(signature): signature
    for signature in (
        "InvalidTerms()",
        "InvalidExecutionMode(bytes32)",
        "NativeValueNotAllowed()",
        "MethodNotAllowed(bytes4)",
        "RecipientNotAllowed(address)",
        "TokenNotAllowed(address)",
        "StalePrice(address,uint256)",
        "InvalidPrice(address,int256)",
        "NoOpenWindow()",
        "LossAboveBound(uint256,uint256)",
        "PeriodCapExceeded(uint256,uint256)",
    )
}
"""The guard's custom errors by selector (revert data → name)."""


def guard_error(data: bytes) -> str | None:
    """The guard error's name (``"LossAboveBound"``) if ``data`` is one of its reverts."""
    signature = GUARD_ERRORS.get(data[:4])
    return None if signature is None else signature.split("(", 1)[0]


def usd(amount: Decimal | int | str) -> int:
    """Dollars → the guard's USD units (18 decimals), rounded down."""
    return int(Decimal(amount).scaleb(USD_DECIMALS))


class GuardTermsError(ValueError):
    """Guard terms are malformed or out of range."""


def _check_uint(name: str, value: int, bits: int, *, positive: bool = False) -> None:
    if not 0 <= value < 2**bits:
        raise GuardTermsError(f"{name} must fit in uint{bits}, got {value}")
    if positive and value == 0:
        raise GuardTermsError(f"{name} must be positive")


@attrs.frozen
class GuardToken:
    """One listed token: its Chainlink-compatible USD feed and both decimals."""

    token: str = attrs.field(converter=to_address)
    feed: str = attrs.field(converter=to_address)
    token_decimals: int
    feed_decimals: int

    def __attrs_post_init__(self) -> None:
        for name, decimals in (
            ("token_decimals", self.token_decimals),
            ("feed_decimals", self.feed_decimals),
        ):
            if not 0 <= decimals <= MAX_DECIMALS:
                raise GuardTermsError(f"{name} must be 0..{MAX_DECIMALS}, got {decimals}")

    def encode(self) -> bytes:
        return (
            bytes.fromhex(self.token[2:])
            + bytes.fromhex(self.feed[2:])
            + bytes([self.token_decimals, self.feed_decimals])
        )


def _token_tuple(tokens: Iterable[GuardToken]) -> tuple[GuardToken, ...]:
    return tuple(tokens)


@attrs.frozen
class GuardTerms:
    """What the owner signs into the guard caveat (see the module docstring for units)."""

    tokens: tuple[GuardToken, ...] = attrs.field(converter=_token_tuple)
    max_loss_bps: int
    """Loss bound per redemption, in 1/10 000 of the listed tokens' value before it."""
    max_staleness: int
    """Seconds a feed's ``updatedAt`` may lag the block's timestamp."""
    period: int
    """Seconds per period of the loss cap."""
    period_cap: int
    """Total loss allowed per period, USD with 18 decimals (:func:`usd`)."""

    def __attrs_post_init__(self) -> None:
        if not 1 <= len(self.tokens) <= MAX_TOKENS:
            raise GuardTermsError(f"the guard lists 1..{MAX_TOKENS} tokens, got {len(self.tokens)}")
        addresses = [token.token for token in self.tokens]
        if len(set(addresses)) != len(addresses):
            raise GuardTermsError("a token is listed twice")
        if not 0 <= self.max_loss_bps <= BPS:
            raise GuardTermsError(f"max_loss_bps must be 0..{BPS}, got {self.max_loss_bps}")
        _check_uint("max_staleness", self.max_staleness, 32, positive=True)
        _check_uint("period", self.period, 32, positive=True)
        _check_uint("period_cap", self.period_cap, 128)

    @property
    def token_addresses(self) -> tuple[str, ...]:
        return tuple(token.token for token in self.tokens)

    def encode(self) -> bytes:
        """The caveat's ``terms`` bytes."""
        header = (
            self.max_loss_bps.to_bytes(2, "big")
            + self.max_staleness.to_bytes(4, "big")
            + self.period.to_bytes(4, "big")
            + self.period_cap.to_bytes(16, "big")
        )
        return header + b"".join(token.encode() for token in self.tokens)

    @classmethod
    def decode(cls, terms: bytes) -> GuardTerms:
        """Parse ``terms`` back (raises :class:`GuardTermsError` on any malformed input)."""
        if len(terms) < HEADER_LENGTH + ENTRY_LENGTH or (len(terms) - HEADER_LENGTH) % ENTRY_LENGTH:
            raise GuardTermsError(
                f"guard terms are {HEADER_LENGTH} + {ENTRY_LENGTH}·n bytes, got {len(terms)}"
            )
        tokens = []
        for offset in range(HEADER_LENGTH, len(terms), ENTRY_LENGTH):
            entry = terms[offset : offset + ENTRY_LENGTH]
            tokens.append(
                GuardToken(
                    token=to_address(entry[:20]),
                    feed=to_address(entry[20:40]),
                    token_decimals=entry[40],
                    feed_decimals=entry[41],
                )
            )
        return cls(
            tokens=tuple(tokens),
            max_loss_bps=int.from_bytes(terms[0:2], "big"),
            max_staleness=int.from_bytes(terms[2:6], "big"),
            period=int.from_bytes(terms[6:10], "big"),
            period_cap=int.from_bytes(terms[10:26], "big"),
        )

    def hash(self) -> bytes:
        return keccak(self.encode())

    def max_loss(self, value_before: int) -> int:
        """The largest loss one redemption may make from ``value_before`` (USD, 18 decimals)."""
        return value_before * self.max_loss_bps // BPS


def guard_caveat(guard: str, terms: GuardTerms) -> Caveat:
    """The caveat that puts ``terms`` under the guard deployed at ``guard``."""
    return Caveat(enforcer=guard, terms=terms.encode())


def guard_terms_of(delegation: Delegation, guard: str) -> list[GuardTerms]:
    """The guard caveats' terms on ``delegation`` (raises :class:`GuardTermsError` if malformed)."""
    guard = to_address(guard)
    return [
        GuardTerms.decode(caveat.terms) for caveat in delegation.caveats if caveat.enforcer == guard
    ]


# --- valuation, as the contract does it --------------------------------------------------------


class OracleError(RuntimeError):
    """A feed's answer the guard would refuse (zero, negative or stale)."""


@attrs.frozen
class FeedAnswer:
    answer: int
    updated_at: int


def check_answer(feed: str, answer: FeedAnswer, *, now: int, max_staleness: int) -> int:
    """The price the guard would use, or :class:`OracleError` where it reverts."""
    if answer.answer <= 0:
        raise OracleError(f"feed {feed} answers {answer.answer} (InvalidPrice)")
    if answer.updated_at > now or now - answer.updated_at > max_staleness:
        raise OracleError(f"feed {feed} was updated at {answer.updated_at}, now {now} (StalePrice)")
    return answer.answer


async def read_feeds(client: ChainClient, feeds: Iterable[str]) -> list[FeedAnswer]:
    """``latestRoundData`` of each feed, one round trip."""
    data = encode_call("latestRoundData()")
    results = await client.call_many([(feed, data) for feed in feeds])
    return [_feed_answer(raw) for raw in results]


def value_of(balances: Mapping[str, int], prices: Sequence[int], terms: GuardTerms) -> int:
    """The listed tokens' value in USD (18 decimals), rounded down per token as on chain."""
    total = 0
    for token, price in zip(terms.tokens, prices, strict=True):
        scale = 10 ** (token.token_decimals + token.feed_decimals)
        total += balances[token.token] * price * 10**USD_DECIMALS // scale
    return total


def checked_prices(terms: GuardTerms, answers: Sequence[FeedAnswer], *, now: int) -> list[int]:
    """The listed tokens' prices from their feeds' ``answers`` (in the terms' order), checked as
    the guard checks them at ``now`` (:class:`OracleError` where it would revert)."""
    return [
        check_answer(token.feed, answer, now=now, max_staleness=terms.max_staleness)
        for token, answer in zip(terms.tokens, answers, strict=True)
    ]


async def oracle_prices(client: ChainClient, terms: GuardTerms, *, now: int) -> list[int]:
    """The listed tokens' feed answers, checked as the guard checks them at ``now``."""
    answers = await read_feeds(client, [token.feed for token in terms.tokens])
    return checked_prices(terms, answers, now=now)


async def oracle_value(
    client: ChainClient, terms: GuardTerms, account: str, *, prices: Sequence[int] | None = None
) -> int:
    """``account``'s listed tokens at oracle prices (given ``prices``, or the feeds' latest)."""
    if prices is None:
        prices = await oracle_prices(client, terms, now=(await client.latest_block()).timestamp)
    balances = await client.balances(account, terms.token_addresses)
    return value_of(balances, prices, terms)


def period_key(manager: str, delegator: str, terms: GuardTerms) -> bytes:
    """The guard's storage key for the period loss of ``delegator``'s delegations with ``terms``."""
    return keccak(abi_encode(["address", "address", "bytes32"], [manager, delegator, terms.hash()]))


async def period_loss(
    client: ChainClient, guard: str, *, manager: str, delegator: str, terms: GuardTerms
) -> int:
    """The loss already counted in the current period (USD, 18 decimals), read from the guard."""
    raw = await client.call(
        guard,
        encode_call("periodLoss(address,address,bytes)", manager, delegator, terms.encode()),
    )
    return int.from_bytes(raw[:32], "big")


def loss_refusal(value_before: int, value_after: int, terms: GuardTerms, spent: int) -> str | None:
    """Why the guard would revert a redemption taking the value from before to after, or None.

    ``spent`` is the period's loss so far (:func:`period_loss`); the daemon can run this on a
    simulated outcome before it sends, so it never pays gas for a redemption the guard reverts.
    """
    if value_after >= value_before:
        return None
    loss = value_before - value_after
    if loss * BPS > value_before * terms.max_loss_bps:
        return f"LossAboveBound: loses {loss} of {value_before} (> {terms.max_loss_bps} bps)"
    if spent + loss > terms.period_cap:
        return f"PeriodCapExceeded: {spent} + {loss} > {terms.period_cap}"
    return None


# --- the daemon's check before it sends --------------------------------------------------------


@attrs.frozen
class GuardBound:
    """The oracle guards on a portfolio's swap delegation: the enforcer and each caveat's terms
    (several guard caveats are ANDed on chain, so a redemption must satisfy every one)."""

    enforcer: str = attrs.field(converter=to_address)
    terms: tuple[GuardTerms, ...]


@attrs.frozen
class PlannedSwap:
    """What one swap can do to the account at worst: ``amount_in`` out, ``amount_out_min`` in."""

    path: tuple[str, ...]
    amount_in: int
    amount_out_min: int


def worst_case_balances(
    balances: Mapping[str, int], swaps: Sequence[PlannedSwap]
) -> dict[str, int]:
    """``balances`` after every swap pays exactly ``amount_out_min`` (the router's floor)."""
    after = dict(balances)
    for swap in swaps:
        token_in, token_out = to_address(swap.path[0]), to_address(swap.path[-1])
        after[token_in] = after.get(token_in, 0) - swap.amount_in
        after[token_out] = after.get(token_out, 0) + swap.amount_out_min
    return after


def worst_case_refusal(
    terms: GuardTerms,
    swaps: Sequence[PlannedSwap],
    balances: Mapping[str, int],
    prices: Sequence[int],
    spent: int,
) -> str | None:
    """Why the guard with ``terms`` could revert these swaps, or None.

    The worst case the router allows is every swap paying its ``amount_out_min``; if that is
    within the bound, the guard reverts only if the feeds move before the transaction is mined.
    """
    listed = set(terms.token_addresses)
    for swap in swaps:
        for token in swap.path:
            if to_address(token) not in listed:
                return f"TokenNotAllowed: {to_address(token)} is not in the guard's token set"
    before = value_of(balances, prices, terms)
    after = value_of(worst_case_balances(balances, swaps), prices, terms)
    return loss_refusal(before, after, terms, spent)


async def guard_refusal(
    client: ChainClient,
    bound: GuardBound,
    *,
    manager: str,
    account: str,
    swaps: Sequence[PlannedSwap],
    now: int,
) -> str | None:
    """Why the guard could revert a redemption of ``swaps`` from ``account`` now, or None.

    One round trip: every guard's feeds, the account's balances of the listed tokens and the
    period's loss so far. Raises :class:`~daemon.chain.ChainError` if the chain cannot answer.
    """
    tokens = sorted({t for terms in bound.terms for t in terms.token_addresses})
    feeds = [token.feed for terms in bound.terms for token in terms.tokens]
    balance_of = encode_call("balanceOf(address)", account)
    calls = [(token, balance_of) for token in tokens]
    calls += [(feed, encode_call("latestRoundData()")) for feed in feeds]
    calls += [
        (
            bound.enforcer,
            encode_call("periodLoss(address,address,bytes)", manager, account, terms.encode()),
        )
        for terms in bound.terms
    ]
    results = await client.call_many(calls)
    balances = {
        token: int.from_bytes(raw[:32], "big")
        for token, raw in zip(tokens, results[: len(tokens)], strict=True)
    }
    answers = [_feed_answer(raw) for raw in results[len(tokens) : len(tokens) + len(feeds)]]
    spent = [int.from_bytes(raw[:32], "big") for raw in results[len(tokens) + len(feeds) :]]
    first = 0
    for terms, period_spent in zip(bound.terms, spent, strict=True):
        mine, first = answers[first : first + len(terms.tokens)], first + len(terms.tokens)
        try:
            prices = checked_prices(terms, mine, now=now)
        except OracleError as exc:
            return str(exc)
        refusal = worst_case_refusal(terms, swaps, balances, prices, period_spent)
        if refusal is not None:
            return refusal
    return None


def _feed_answer(raw: bytes) -> FeedAnswer:
    return FeedAnswer(
        answer=int.from_bytes(raw[32:64], "big", signed=True),
        updated_at=int.from_bytes(raw[96:128], "big"),
    )

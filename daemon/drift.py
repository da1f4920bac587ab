"""The rebalancing engine: valuation, drift, the decision and the trade plan. Pure.

No I/O, no Trio, no clock: the same inputs always give the same decision, so the logic that
decides what goes on chain is covered by unit and property tests alone.

Why the plan looks the way it does (DESIGN.md §3):

- drift_i = (value_i − target_i · total) / (target_i · total), as the seed defines it; the
  decision looks at the largest |drift| over tradable (healthy) tokens.
- Once the threshold is passed, *every* token above its target may fund *every* token below
  it. The seed only traded tokens individually beyond the threshold, which leaves a portfolio
  at +14 % / +14 % / −28 % (threshold 15 %) stuck for good.
- Legs pair the largest excess with the largest need; a leg's size is min(excess, need), so
  executing the plan brings tokens back to target (or, with ``rebalance_to = "band"``, every
  token into a band around it with the least turnover: see :func:`trade_goals`). Each
  sell/buy pair trades at most once per plan.
- Legs above ``max_trade_usd`` are capped, not skipped: skipping means a large portfolio never
  rebalances, while capped legs spread over cooldown windows keep price impact bounded.
- Legs below ``min_trade_usd`` are dust and dropped. Unhealthy tokens are neither bought nor sold,
  but their value still counts in the total.
- Bad input never becomes a trade: structural problems raise :class:`InvalidPortfolio`; a price
  that is missing, non-positive or non-finite gives :class:`NoRebalance` naming the token (the
  seed valued such a token at 0 and then bought it).

USD math is :class:`~decimal.Decimal` in a local context with ample precision; amounts that go on
chain are integers in base units, rounded down, so a leg never sells more than is held.
"""

from __future__ import annotations

import decimal
import math
import operator
import sys
from collections.abc import Mapping, Sequence
from decimal import Decimal
from enum import StrEnum
from typing import TYPE_CHECKING, Final, Literal

import attrs

if TYPE_CHECKING:
    from daemon.config import Config

WITHIN_TOLERANCE: Final = "All tokens within drift tolerance"
HEALTHY: Final = "HEALTHY"
WEIGHT_SUM_TOLERANCE: Final = Decimal("1e-9")
# Enough digits for 78-digit uint256 balances times prices without rounding before the final floor.
_PRECISION: Final = 120


class Action(StrEnum):
    """What the engine decided."""

    NO_REBALANCE = "NO_REBALANCE"
    REBALANCE = "REBALANCE"


class InvalidPortfolio(ValueError):
    """The portfolio or its targets are malformed; the message names the problem."""


@attrs.frozen
class Holding:
    """One token position of a portfolio."""

    symbol: str
    """Token symbol, the key shared with targets, prices and health."""
    balance: int
    """Balance in the token's base units (wei for an 18-decimals token)."""
    decimals: int
    """The token's ERC-20 decimals."""


@attrs.frozen
class EngineParams:
    """The engine's knobs (``[rebalance]`` in the configuration, whose schema holds their
    defaults: build them with :meth:`from_config`)."""

    drift_threshold: Decimal
    """Rebalance when the largest |drift| of a tradable token reaches this."""
    min_trade_usd: Decimal
    """Legs smaller than this are dropped."""
    max_trade_usd: Decimal
    """Legs larger than this are capped to it."""
    rebalance_to: Literal["target", "band"]
    """Trade back to target, or only back into the band around it."""
    band_fraction: Decimal
    """Band half-width as a fraction of the threshold (``rebalance_to = "band"``)."""

    @classmethod
    def from_config(cls, config: Config) -> EngineParams:
        """``[rebalance]`` of the configuration (the engine reads nothing else of it)."""
        rebalance = config.rebalance
        return cls(
            drift_threshold=rebalance.drift_threshold,
            min_trade_usd=rebalance.min_trade_usd,
            max_trade_usd=rebalance.max_trade_usd,
            rebalance_to="band" if rebalance.rebalance_to == "band" else "target",
            band_fraction=rebalance.band_fraction,
        )

    def __attrs_post_init__(self) -> None:
        if not 0 < self.drift_threshold < 1:
            raise ValueError(f"drift_threshold must be in (0, 1), got {self.drift_threshold}")
        if self.min_trade_usd < 0 or self.max_trade_usd <= 0:
            raise ValueError("trade sizes must be min >= 0 and max > 0")
        if self.min_trade_usd > self.max_trade_usd:
            raise ValueError("min_trade_usd must be <= max_trade_usd")
        if not 0 <= self.band_fraction < 1:
            raise ValueError(f"band_fraction must be in [0, 1), got {self.band_fraction}")
        if self.rebalance_to not in ("target", "band"):
            raise ValueError(f"rebalance_to must be target or band, got {self.rebalance_to!r}")


@attrs.frozen
class TokenDrift:
    """Valuation and drift of one token."""

    symbol: str
    value_usd: Decimal
    target_usd: Decimal
    current_weight: Decimal
    target_weight: Decimal
    drift: Decimal
    """(value − target value) / target value."""
    tradable: bool
    """False when the token's health is not HEALTHY."""
    health: str


@attrs.frozen
class Leg:
    """One swap of the plan: sell ``amount_in`` of ``sell`` for ``buy``."""

    sell: str
    buy: str
    usd: Decimal
    """The leg's size in USD at the evaluated prices (after capping)."""
    amount_in: int
    """Amount of ``sell`` in its base units; never more than held."""
    expected_out: int
    """Amount of ``buy`` in its base units that ``usd`` buys at the evaluated prices (a
    reference for slippage tracking; the on-chain minimum comes from a fresh quote)."""
    capped: bool
    """True when the leg was cut down to ``max_trade_usd``."""


@attrs.frozen
class NoRebalance:
    """Nothing to do, and why."""

    reason: str
    max_drift: Decimal | None = None
    drifts: tuple[TokenDrift, ...] = ()
    total_usd: Decimal | None = None
    action: Literal[Action.NO_REBALANCE] = Action.NO_REBALANCE


@attrs.frozen
class Rebalance:
    """Trade: the drift that triggered it and the legs that correct it."""

    max_drift: Decimal
    drifts: tuple[TokenDrift, ...]
    legs: tuple[Leg, ...]
    total_usd: Decimal
    action: Literal[Action.REBALANCE] = Action.REBALANCE


Decision = NoRebalance | Rebalance


def _as_decimal(value: object) -> Decimal | None:
    """A price as a Decimal, or None when it is not a usable number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, Decimal):
        return value
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        # repr round-trips the float exactly as written, not its binary expansion.
        return Decimal(repr(value))
    return None


def _validate(holdings: Sequence[Holding], targets: Mapping[str, Decimal]) -> None:
    if not holdings:
        raise InvalidPortfolio("portfolio is empty: no holdings")
    if not targets:
        raise InvalidPortfolio("portfolio has no target weights")
    seen: set[str] = set()
    for holding in holdings:
        if holding.symbol in seen:
            raise InvalidPortfolio(f"token {holding.symbol} is held twice")
        seen.add(holding.symbol)
        if isinstance(holding.balance, bool) or not isinstance(holding.balance, int):
            raise InvalidPortfolio(f"balance of {holding.symbol} must be an integer in base units")
        if holding.balance < 0:
            raise InvalidPortfolio(f"balance of {holding.symbol} is negative: {holding.balance}")
        if not 0 <= holding.decimals <= 77:
            raise InvalidPortfolio(f"decimals of {holding.symbol} out of range: {holding.decimals}")
    unknown = sorted(set(targets) - seen)
    if unknown:
        raise InvalidPortfolio(f"target for unknown token(s): {', '.join(unknown)}")
    untargeted = sorted(seen - set(targets))
    if untargeted:
        raise InvalidPortfolio(f"no target weight for held token(s): {', '.join(untargeted)}")
    total = Decimal(0)
    for symbol, raw_weight in targets.items():
        weight = _as_decimal(raw_weight)
        if weight is None or not weight.is_finite() or weight <= 0:
            raise InvalidPortfolio(f"target weight of {symbol} must be > 0, got {raw_weight}")
        if weight > 1:
            raise InvalidPortfolio(f"target weight of {symbol} must be <= 1, got {raw_weight}")
        total += weight
    if abs(total - 1) > WEIGHT_SUM_TOLERANCE:
        raise InvalidPortfolio(f"target weights must sum to 1, got {total}")


def _price_problem(symbol: str, prices: Mapping[str, object]) -> str | None:
    if symbol not in prices:
        return f"No trade: price for {symbol} is missing"
    price = _as_decimal(prices[symbol])
    if price is None:
        return f"No trade: price for {symbol} is not a number: {prices[symbol]!r}"
    if not price.is_finite():
        return f"No trade: price for {symbol} is not finite: {price}"
    if price <= 0:
        return f"No trade: price for {symbol} is not positive: {price}"
    return None


def value_portfolio(
    holdings: Sequence[Holding],
    targets: Mapping[str, Decimal],
    prices: Mapping[str, Decimal],
    health: Mapping[str, str],
) -> tuple[Decimal, tuple[TokenDrift, ...]] | NoRebalance:
    """Each token's USD value and drift, or why the portfolio cannot be valued."""
    _validate(holdings, targets)
    for holding in holdings:
        if (problem := _price_problem(holding.symbol, prices)) is not None:
            return NoRebalance(reason=problem)
    with decimal.localcontext(prec=_PRECISION):
        values = {
            h.symbol: Decimal(h.balance).scaleb(-h.decimals) * Decimal(prices[h.symbol])
            for h in holdings
        }
        total = sum(values.values(), Decimal(0))
        if total <= 0:
            return NoRebalance(reason="No trade: portfolio has no value", total_usd=total)
        drifts = []
        for holding in holdings:
            weight = Decimal(targets[holding.symbol])
            target_usd = weight * total
            status = health.get(holding.symbol, HEALTHY)
            drifts.append(
                TokenDrift(
                    symbol=holding.symbol,
                    value_usd=values[holding.symbol],
                    target_usd=target_usd,
                    current_weight=values[holding.symbol] / total,
                    target_weight=weight,
                    drift=(values[holding.symbol] - target_usd) / target_usd,
                    tradable=status == HEALTHY,
                    health=status,
                )
            )
    return total, tuple(drifts)


SCREEN_MARGIN: Final = 0.01
"""How far below the threshold (in drift, 0.01 = one percentage point) a screened drift must be
for a caller to skip the exact evaluation.

Why it is ample: :func:`screen_drift` only answers when every amount, price, weight and value it
multiplies is a normal float (it refuses subnormals and infinities), so each operation rounds
by at most ``u = 2^-53 ≈ 1.1e-16`` relative. A token's amount ``balance · 10^-decimals`` is
then within 3 roundings of the exact one, its price within 1, amount/weight within 5, a value
amount·price within 5, the total of ``n`` values within ``n + 4``, and a ratio
``(amount/weight) · price / total`` within ``n + 12``. Below the threshold a ratio is below 2,
so the screened drift ``|ratio − 1|`` is off by at most ``2(n + 13)u`` — under 1e-14 for 30
tokens, twelve orders of magnitude inside this margin (``tests/test_drift_screen.py`` checks
the bound on adversarial inputs). The margin is a policy, not an error bound: a portfolio
within a point of its threshold is worth the exact engine on every tick."""
_NORMAL_MIN: Final = sys.float_info.min
"""The smallest normal float: below it (subnormals) a float loses relative precision."""


@attrs.frozen
class ScreenTargets:
    """A portfolio's tokens as the float screen reads them (built once per portfolio)."""

    symbols: tuple[str, ...]
    scales: tuple[float, ...]
    """``10.0 ** -decimals`` per token: base units to whole tokens."""
    weights: tuple[float, ...]

    @classmethod
    def of(
        cls, symbols: Sequence[str], decimals: Sequence[int], weights: Sequence[Decimal]
    ) -> ScreenTargets | None:
        """None when a weight is not a normal float (the exact path alone can judge it)."""
        # Plain loops rather than generators: without the tick screen every actor builds these
        # on every evaluation.
        as_floats = []
        for weight in weights:
            as_float = float(weight)  # NaN fails the range check below, infinities too
            if not _NORMAL_MIN <= as_float < math.inf:
                return None
            as_floats.append(as_float)
        return cls(tuple(symbols), tuple([10.0**-d for d in decimals]), tuple(as_floats))

    def holdings(self, balances: Sequence[int]) -> ScreenHoldings | None:
        """The balances (base units, in :attr:`symbols` order) as amounts; None when one is not
        a normal float."""
        units, per_weight = [], []
        smallest = math.inf
        try:
            for balance, scale, weight in zip(balances, self.scales, self.weights, strict=True):
                unit = balance * scale
                if unit:
                    if not _NORMAL_MIN <= unit < math.inf:
                        return None
                    smallest = min(smallest, unit)
                units.append(unit)
                per_weight.append(unit / weight)
        except OverflowError:  # beyond the float range (no ERC-20 balance is)
            return None
        return ScreenHoldings(tuple(units), tuple(per_weight), smallest)


@attrs.frozen
class ScreenHoldings:
    """A portfolio's balances as the float screen reads them (rebuilt when they change)."""

    units: tuple[float, ...]
    """Whole tokens per token."""
    per_weight: tuple[float, ...]
    """Whole tokens over the target weight: times the price over the total, the token's ratio
    to its target value."""
    smallest: float
    """The smallest non-zero amount (with the smallest price: no value is subnormal)."""


@attrs.frozen
class ScreenPrices:
    """One set of tokens' prices as the float screen reads them (built once per snapshot)."""

    usd: tuple[float, ...]
    tradable: tuple[int, ...] | None
    """Positions of the tokens whose health is HEALTHY, or None when all are."""
    smallest: float

    @classmethod
    def of(
        cls, symbols: Sequence[str], prices: Mapping[str, object], health: Mapping[str, str]
    ) -> ScreenPrices | None:
        """None when a price is missing, not a positive finite Decimal, or outside the normal
        float range (the exact path tells why)."""
        usd = []
        healthy = []
        for position, symbol in enumerate(symbols):
            price = prices.get(symbol)
            if not isinstance(price, Decimal):
                return None
            as_float = float(price)  # NaN and infinities fail the range check
            if not _NORMAL_MIN <= as_float < math.inf:
                return None
            usd.append(as_float)
            if health.get(symbol, HEALTHY) == HEALTHY:
                healthy.append(position)
        if not healthy:
            return None  # no token is tradable: the exact path says so
        tradable = None if len(healthy) == len(usd) else tuple(healthy)
        return cls(tuple(usd), tradable, min(usd))


def screen_drift(holdings: ScreenHoldings, prices: ScreenPrices) -> float | None:
    """The largest |drift| of the tradable tokens, in floats, or None when only the exact path
    can tell (no value, a value outside the normal float range).

    A screen, never a decision: with 10 000 portfolios per tick most are far inside their band,
    and a float estimate well below the threshold (:data:`SCREEN_MARGIN`) lets the caller skip
    the exact Decimal evaluation, which alone decides whether and what to trade. It does not
    validate the portfolio: call it only for one :func:`evaluate` has accepted. Written for
    speed (it runs for every portfolio on every tick): C-level ``map`` over prepared tuples."""
    usd = prices.usd
    if prices.tradable is None:
        scaled = list(map(operator.mul, holdings.per_weight, usd))
    else:
        per_weight = holdings.per_weight
        scaled = [per_weight[i] * usd[i] for i in prices.tradable]
    total = sum(map(operator.mul, holdings.units, usd))
    return _largest_drift(total, holdings.smallest * prices.smallest, scaled)


def screened_max_drift(
    holdings: Sequence[Holding],
    targets: Mapping[str, Decimal],
    prices: Mapping[str, Decimal],
    health: Mapping[str, str],
) -> float | None:
    """:func:`screen_drift` of the engine's inputs, in one pass (what an actor screening its
    own evaluation calls): the same floating-point operations in the same order, so the same
    answer to the last bit (``tests/test_drift_screen.py`` checks it)."""
    values, scaled = [], []
    smallest_unit = smallest_price = math.inf
    try:
        for holding in holdings:
            price, weight = prices.get(holding.symbol), targets.get(holding.symbol)
            if not isinstance(price, Decimal) or weight is None:
                return None
            usd, as_float = float(price), float(weight)
            if not (_NORMAL_MIN <= usd < math.inf and _NORMAL_MIN <= as_float < math.inf):
                return None
            unit = holding.balance * 10.0**-holding.decimals
            if unit:
                if not _NORMAL_MIN <= unit < math.inf:
                    return None
                smallest_unit = min(smallest_unit, unit)
            smallest_price = min(smallest_price, usd)
            values.append(unit * usd)
            if health.get(holding.symbol, HEALTHY) == HEALTHY:
                scaled.append(unit / as_float * usd)
    except OverflowError:  # a balance beyond the float range (no ERC-20 balance is)
        return None
    return _largest_drift(sum(values), smallest_unit * smallest_price, scaled)


def _largest_drift(total: float, smallest_value: float, scaled: list[float]) -> float | None:
    """max |ratio − 1| from each tradable token's ``amount / weight · price`` and the total
    value, or None when they are outside the normal float range (or no token is tradable)."""
    if not scaled or not _NORMAL_MIN <= total < math.inf or smallest_value < _NORMAL_MIN:
        return None
    highest: float = max(scaled) / total - 1
    lowest: float = 1 - min(scaled) / total
    return max(highest, lowest)


def evaluate(
    holdings: Sequence[Holding],
    targets: Mapping[str, Decimal],
    prices: Mapping[str, Decimal],
    health: Mapping[str, str] | None = None,
    *,
    params: EngineParams,
) -> Decision:
    """Decide whether the portfolio needs rebalancing and, if so, plan the trades.

    ``health`` maps symbols to a status; a missing entry means HEALTHY.
    Raises :class:`InvalidPortfolio` for malformed input.
    """
    health = health or {}
    valued = value_portfolio(holdings, targets, prices, health)
    if isinstance(valued, NoRebalance):
        return valued
    total, drifts = valued
    tradable = [d for d in drifts if d.tradable]
    if not tradable:
        return NoRebalance(reason="No trade: no token is healthy", drifts=drifts, total_usd=total)
    max_drift = max(abs(d.drift) for d in tradable)
    if max_drift < params.drift_threshold:
        return NoRebalance(
            reason=WITHIN_TOLERANCE, max_drift=max_drift, drifts=drifts, total_usd=total
        )
    by_symbol = {h.symbol: h for h in holdings}
    legs = plan_legs(tradable, by_symbol, prices, params)
    if not legs:
        skipped = [d.symbol for d in drifts if not d.tradable]
        why = "every leg is below min_trade_usd"
        if skipped:
            why += f" or pairs with an unhealthy token ({', '.join(skipped)})"
        return NoRebalance(
            reason=f"No trade: drift {max_drift:.4f} is over the threshold but {why}",
            max_drift=max_drift,
            drifts=drifts,
            total_usd=total,
        )
    return Rebalance(max_drift=max_drift, drifts=drifts, legs=tuple(legs), total_usd=total)


def plan_legs(
    tradable: Sequence[TokenDrift],
    holdings: Mapping[str, Holding],
    prices: Mapping[str, Decimal],
    params: EngineParams,
) -> list[Leg]:
    """Pair excess with need, largest first, each sell/buy pair at most once."""
    with decimal.localcontext(prec=_PRECISION):
        excess, need = trade_goals(tradable, params)
        legs: list[Leg] = []
        used: set[tuple[str, str]] = set()
        while True:
            candidates = [
                (min(excess[s], need[b]), excess[s], need[b], s, b)
                for s in excess
                for b in need
                if (s, b) not in used and excess[s] > 0 and need[b] > 0
            ]
            if not candidates:
                break
            # Largest excess against largest need; ties broken by symbol for determinism.
            size, _, _, sell, buy = max(candidates, key=lambda c: (c[0], c[1], c[2], c[3], c[4]))
            capped = size > params.max_trade_usd
            usd = min(size, params.max_trade_usd)
            if usd < params.min_trade_usd:
                break  # every other candidate is no larger
            used.add((sell, buy))
            leg = _make_leg(sell, buy, usd, capped, holdings, prices)
            if leg is not None:
                legs.append(leg)
            excess[sell] -= usd
            need[buy] -= usd
    return legs


def trade_goals(
    tradable: Sequence[TokenDrift], params: EngineParams
) -> tuple[dict[str, Decimal], dict[str, Decimal]]:
    """USD each token should sell (``excess``) and buy (``need``) to reach its goal.

    ``target``: every token back to its target. ``band``: every token into the band around its
    target with the least turnover: a token outside the band moves to the band's edge, and when
    the sells and the buys that takes do not match, the other side makes up the difference by
    moving further toward target (never past it), the tokens with the most room first so that
    as few tokens as possible trade. Moving only the violating tokens (the first band mode)
    left the other side short and the portfolio back over the threshold soon after (issue 14's
    backtests: 4–9× more rebalances)."""
    band = params.band_fraction * params.drift_threshold if params.rebalance_to == "band" else 0
    excess = {
        d.symbol: d.value_usd - d.target_usd * (1 + band)
        for d in tradable
        if d.value_usd > d.target_usd * (1 + band)
    }
    need = {
        d.symbol: d.target_usd * (1 - band) - d.value_usd
        for d in tradable
        if d.value_usd < d.target_usd * (1 - band)
    }
    gap = sum(excess.values(), Decimal(0)) - sum(need.values(), Decimal(0))
    if gap > 0:  # more to sell than the band edges take: buy further toward target
        room = {d.symbol: d.target_usd - d.value_usd - need.get(d.symbol, 0) for d in tradable}
        _make_up(need, room, gap)
    elif gap < 0:  # more to buy than the band edges free: sell further toward target
        room = {d.symbol: d.value_usd - d.target_usd - excess.get(d.symbol, 0) for d in tradable}
        _make_up(excess, room, -gap)
    return excess, need


def _make_up(goals: dict[str, Decimal], room: Mapping[str, Decimal], gap: Decimal) -> None:
    """Add up to ``gap`` to ``goals``, from the tokens with the most ``room`` first."""
    for symbol, space in sorted(room.items(), key=lambda item: (-item[1], item[0])):
        if gap <= 0 or space <= 0:
            break
        take = min(space, gap)
        goals[symbol] = goals.get(symbol, Decimal(0)) + take
        gap -= take


def _make_leg(
    sell: str,
    buy: str,
    usd: Decimal,
    capped: bool,
    holdings: Mapping[str, Holding],
    prices: Mapping[str, Decimal],
) -> Leg | None:
    sell_holding = holdings[sell]
    amount_in = to_base_units(usd / Decimal(prices[sell]), sell_holding.decimals)
    amount_in = min(amount_in, sell_holding.balance)
    if amount_in <= 0:
        return None
    expected_out = to_base_units(usd / Decimal(prices[buy]), holdings[buy].decimals)
    return Leg(
        sell=sell, buy=buy, usd=usd, amount_in=amount_in, expected_out=expected_out, capped=capped
    )


def to_base_units(amount: Decimal, decimals: int) -> int:
    """A token amount in whole units → integer base units, rounded down (never over-spend)."""
    with decimal.localcontext(prec=_PRECISION):
        return int(amount.scaleb(decimals).to_integral_value(rounding=decimal.ROUND_FLOOR))


def from_base_units(amount: int, decimals: int) -> Decimal:
    """Integer base units → a Decimal amount of whole tokens (exact)."""
    with decimal.localcontext(prec=_PRECISION):
        return Decimal(amount).scaleb(-decimals)

"""Price series for the backtester: read from a CSV, or generated from a seeded model.

A series is one price in USD per token per step, on a regular clock. Prices here are floats:
they drive a simulation, never an amount that goes on chain; the engine still receives them as
:class:`~decimal.Decimal` (exactly as written) when it decides.

The generator is correlated geometric Brownian motion with market-wide jumps: every risky token
shares one normal factor (pairwise correlation ``correlation``), and with ``jumps_per_year``
expected a year the whole market drops by about ``jump_size`` at once (the crashes that
rebalancers face); the drift compensates the jumps, so each token's expected return is its
``drift`` (0 by default). Stablecoins (volatility 0) stay at their starting price. Identical
parameters and seed give identical series (``random.Random(seed)`` only; no global state).
"""

from __future__ import annotations

import csv
import itertools
import math
import random
from array import array
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Final

import attrs

YEAR_SECONDS: Final = 365 * 86400


class SeriesError(ValueError):
    """The price input is malformed; the message names the file, line and problem."""


@attrs.frozen
class PriceSeries:
    """Prices in USD, one row per step; ``prices[symbol][i]`` is at ``start + i × step``."""

    start: int
    """Unix seconds of the first step."""
    step: int
    """Seconds between steps."""
    prices: Mapping[str, Sequence[float]]

    @property
    def symbols(self) -> tuple[str, ...]:
        return tuple(self.prices)

    @property
    def length(self) -> int:
        return len(next(iter(self.prices.values())))

    def time(self, index: int) -> int:
        return self.start + index * self.step


@attrs.frozen
class TokenModel:
    """One token's price process."""

    symbol: str
    start_usd: float
    volatility: float
    """Annualised volatility (0.7 = 70 % a year); 0 for a stablecoin."""
    drift: float = 0.0
    """Annualised expected log return."""


@attrs.frozen
class MarketModel:
    """The generator's parameters (see the module docstring)."""

    tokens: tuple[TokenModel, ...]
    correlation: float = 0.65
    jumps_per_year: float = 3.0
    jump_size: float = -0.15
    """Mean log move of a jump (negative: a crash)."""
    jump_spread: float = 0.05
    """Standard deviation of a jump's log move."""
    days: float = 365.0
    step: int = 300
    start: int = 1_704_067_200  # 2024-01-01T00:00:00Z

    def __attrs_post_init__(self) -> None:
        if not 0 <= self.correlation < 1:
            raise SeriesError(f"correlation must be in [0, 1), got {self.correlation}")
        if self.step <= 0 or self.days <= 0:
            raise SeriesError("step and days must be positive")
        for token in self.tokens:
            if token.start_usd <= 0 or token.volatility < 0:
                raise SeriesError(f"{token.symbol}: start price must be > 0 and volatility >= 0")


def generate(model: MarketModel, seed: int) -> PriceSeries:
    """A series from ``model``; the same ``(model, seed)`` always gives the same series."""
    rng = random.Random(seed)  # noqa: S311 -- a reproducible simulation, not a secret
    steps = int(model.days * 86400 // model.step) + 1
    dt = model.step / YEAR_SECONDS
    shared = math.sqrt(model.correlation)
    own = math.sqrt(1 - model.correlation)
    jump_probability = model.jumps_per_year * dt
    columns = {t.symbol: array("d", [t.start_usd]) for t in model.tokens}
    logs = [math.log(t.start_usd) for t in model.tokens]
    # Compensate the jumps (E[e^J] − 1 per jump) so that a token's expected return is its
    # ``drift`` and crashes are not a built-in bear market.
    jump_mean = math.exp(model.jump_size + model.jump_spread**2 / 2) - 1
    compensation = model.jumps_per_year * jump_mean
    drifts = [
        (t.drift - t.volatility**2 / 2 - (compensation if t.volatility else 0.0)) * dt
        for t in model.tokens
    ]
    scales = [t.volatility * math.sqrt(dt) for t in model.tokens]
    for _ in range(steps - 1):
        market = rng.gauss(0.0, 1.0)
        jump = (
            rng.gauss(model.jump_size, model.jump_spread)
            if rng.random() < jump_probability
            else 0.0
        )
        for i, token in enumerate(model.tokens):
            if token.volatility == 0:
                columns[token.symbol].append(token.start_usd)
                continue
            shock = shared * market + own * rng.gauss(0.0, 1.0)
            logs[i] += drifts[i] + scales[i] * shock + jump
            columns[token.symbol].append(math.exp(logs[i]))
    return PriceSeries(start=model.start, step=model.step, prices=columns)


def _timestamp(text: str, where: str) -> int:
    text = text.strip()
    try:
        return int(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise SeriesError(
            f"{where}: timestamp {text[:40]!r} is neither unix seconds nor ISO-8601"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp())


def _price(text: str, where: str) -> float:
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise SeriesError(f"{where}: price_usd {text[:40]!r} is not a number") from None
    if not value.is_finite() or value <= 0:
        raise SeriesError(f"{where}: price_usd must be a positive finite number, got {text[:40]}")
    return float(value)


def read_csv(path: Path) -> PriceSeries:
    """A series from ``timestamp,symbol,price_usd`` rows (a header line is required).

    Timestamps are unix seconds or ISO-8601 (UTC unless an offset is given), evenly spaced;
    every symbol needs a price at every timestamp. Rows may come in any order."""
    try:
        handle = path.open(newline="", encoding="utf-8")
    except OSError as exc:
        raise SeriesError(f"{path}: cannot read: {exc.strerror}") from None
    rows: dict[int, dict[str, float]] = {}
    with handle:
        reader = csv.reader(handle)
        header = [cell.strip().lower() for cell in next(reader, [])]
        if header != ["timestamp", "symbol", "price_usd"]:
            raise SeriesError(f"{path}:1: the header must be timestamp,symbol,price_usd")
        for number, row in enumerate(reader, start=2):
            where = f"{path}:{number}"
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) != 3:
                raise SeriesError(f"{where}: expected 3 fields, got {len(row)}")
            symbol = row[1].strip()
            if not symbol:
                raise SeriesError(f"{where}: symbol is empty")
            at = rows.setdefault(_timestamp(row[0], where), {})
            if symbol in at:
                raise SeriesError(f"{where}: a second price for {symbol} at {row[0].strip()}")
            at[symbol] = _price(row[2], where)
    return _series_from_rows(path, rows)


def _series_from_rows(path: Path, rows: dict[int, dict[str, float]]) -> PriceSeries:
    if len(rows) < 2:
        raise SeriesError(f"{path}: needs prices at two timestamps at least, got {len(rows)}")
    times = sorted(rows)
    step = times[1] - times[0]
    symbols = sorted(set().union(*(set(r) for r in rows.values())))
    for previous, current in itertools.pairwise(times):
        if current - previous != step:
            raise SeriesError(
                f"{path}: timestamps must be evenly spaced ({step} s); "
                f"{previous} is followed by {current}"
            )
    for moment in times:
        missing = [s for s in symbols if s not in rows[moment]]
        if missing:
            raise SeriesError(f"{path}: no price for {', '.join(missing)} at {moment}")
    prices = {s: array("d", (rows[t][s] for t in times)) for s in symbols}
    return PriceSeries(start=times[0], step=step, prices=prices)


def write_csv(series: PriceSeries, path: Path) -> None:
    """Write ``series`` in the format :func:`read_csv` reads."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["timestamp", "symbol", "price_usd"])
        for index in range(series.length):
            for symbol, column in series.prices.items():
                writer.writerow([series.time(index), symbol, repr(column[index])])

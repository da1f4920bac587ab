"""Exponential backoff: the one rule for "wait longer after each failure, up to a ceiling".

Every retry loop in driftd uses it with its own numbers — the JSON-RPC client's retries
(:class:`daemon.chain.RetryPolicy`), the supervisor's restarts (:class:`daemon.supervise.
RestartPolicy`), a portfolio's wait after FAILED attempts, the transaction lifecycle's re-checks
and re-sends, the alert webhook and the waits through a database outage — so that what "backoff"
means is written once: ``initial × factor^attempt``, capped at ``maximum``, then, if ``jitter``
is set, multiplied by a random factor in ``[1 − jitter, 1]`` so that many clients failing
together (a flaky RPC node) do not retry in lock-step. Jitter only ever shortens a wait: no
delay is above ``maximum``.

Pure: the random source is passed in (tests pass a seeded one), nothing is kept between calls.
"""

from __future__ import annotations

import math
import random

import attrs


def _non_negative(_instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value >= 0:  # also refuses NaN
        raise ValueError(f"{attribute.name} must be >= 0, got {value!r}")


def _at_least_one(_instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value >= 1 or math.isinf(value):
        raise ValueError(f"{attribute.name} must be a finite number >= 1, got {value!r}")


def _fraction(_instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not 0 <= value <= 1:
        raise ValueError(f"{attribute.name} must be in [0, 1], got {value!r}")


@attrs.frozen
class Backoff:
    """``initial × factor^attempt`` seconds, capped at ``maximum``, shortened by up to
    ``jitter`` (a fraction) at random."""

    initial: float = attrs.field(validator=_non_negative)
    """Seconds of the first wait (attempt 0), before jitter."""
    maximum: float = attrs.field(validator=_non_negative)
    """Ceiling of any wait (``math.inf`` for none). An ``initial`` above it is capped too."""
    factor: float = attrs.field(default=2.0, validator=_at_least_one)
    """Growth per attempt (2: doubling)."""
    jitter: float = attrs.field(default=0.0, validator=_fraction)
    """0: no randomness. 0.5: each wait is multiplied by a random factor in [0.5, 1]."""

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry ``attempt`` (0-based: attempt 0 waits ``initial``).

        ``rng`` is required when the backoff has jitter (``ValueError`` otherwise)."""
        base = self.ceiling(attempt)
        if self.jitter == 0:
            return base
        if rng is None:
            raise ValueError("a backoff with jitter needs a random source")
        return base * rng.uniform(1.0 - self.jitter, 1.0)

    def ceiling(self, attempt: int) -> float:
        """The wait before retry ``attempt`` without jitter (the most :meth:`delay` returns)."""
        if attempt < 0:
            raise ValueError(f"attempt must be >= 0, got {attempt}")
        if self.initial == 0:
            return 0.0
        try:
            grown = self.initial * float(self.factor) ** attempt
        except OverflowError:  # a very late attempt: far past any ceiling
            grown = math.inf
        return min(self.maximum, grown)

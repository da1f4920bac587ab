"""The cooldown rule."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from daemon.cooldown import cooldown_message, cooldown_remaining

T0 = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def test_no_previous_rebalance_means_no_cooldown() -> None:
    assert cooldown_remaining(None, T0, Decimal(15)) == timedelta(0)


def test_cooldown_counts_down_from_the_last_success() -> None:
    assert cooldown_remaining(T0, T0 + timedelta(minutes=5), Decimal(15)) == timedelta(minutes=10)
    assert cooldown_remaining(T0, T0 + timedelta(minutes=15), Decimal(15)) == timedelta(0)
    assert cooldown_remaining(T0, T0 + timedelta(hours=1), Decimal(15)) == timedelta(0)


def test_fractional_minutes_and_zero_cooldown() -> None:
    assert cooldown_remaining(T0, T0, Decimal("0.5")) == timedelta(seconds=30)
    assert cooldown_remaining(T0, T0, Decimal(0)) == timedelta(0)


def test_message_uses_the_seed_wording_rounded_up() -> None:
    assert cooldown_message(timedelta(minutes=9, seconds=1)) == (
        "Cooldown active. Next rebalance available in 10 minutes"
    )
    assert cooldown_message(timedelta(seconds=5)) == (
        "Cooldown active. Next rebalance available in 1 minutes"
    )

"""The one backoff rule (:mod:`daemon.backoff`) and the addresses' one home (:mod:`daemon.address`).

Properties of :class:`Backoff` for any numbers: no wait is above ``maximum``; without jitter the
waits never shrink; with jitter each wait lies in ``[(1 − jitter) × ceiling, ceiling]``. And each
place that retries keeps its own numbers (the cases below are their documented schedules).
"""

from __future__ import annotations

import math
import random
from datetime import timedelta

import pytest
from eth_utils.address import to_checksum_address
from hypothesis import given
from hypothesis import strategies as st

from daemon.address import ZERO_ADDRESS, checked_address, to_address
from daemon.backoff import Backoff
from daemon.chain import RetryPolicy
from daemon.config import Config
from daemon.portfolio import failure_backoff
from daemon.supervise import RestartPolicy

DEFAULT_RESTARTS = RestartPolicy.from_config(Config())

seconds = st.floats(min_value=0, max_value=1e6, allow_nan=False)
factors = st.floats(min_value=1, max_value=10, allow_nan=False)
jitters = st.floats(min_value=0, max_value=1, allow_nan=False)
attempts = st.integers(min_value=0, max_value=5000)


@st.composite
def backoffs(draw: st.DrawFn, jitter: st.SearchStrategy[float] = jitters) -> Backoff:
    return Backoff(
        initial=draw(seconds), maximum=draw(seconds), factor=draw(factors), jitter=draw(jitter)
    )


@given(backoffs(), attempts, st.integers(min_value=0, max_value=2**32))
def test_no_wait_is_above_the_maximum(backoff: Backoff, attempt: int, seed: int) -> None:
    delay = backoff.delay(attempt, random.Random(seed))
    assert 0 <= delay <= backoff.maximum


@given(backoffs(jitter=st.just(0.0)), attempts)
def test_without_jitter_waits_never_shrink(backoff: Backoff, attempt: int) -> None:
    assert backoff.delay(attempt) <= backoff.delay(attempt + 1)


@given(backoffs(), attempts, st.integers(min_value=0, max_value=2**32))
def test_jitter_only_shortens_and_by_at_most_its_fraction(
    backoff: Backoff, attempt: int, seed: int
) -> None:
    ceiling = backoff.ceiling(attempt)
    delay = backoff.delay(attempt, random.Random(seed))
    assert ceiling * (1 - backoff.jitter) * (1 - 1e-12) <= delay <= ceiling


def test_doubling_from_initial_up_to_the_maximum() -> None:
    backoff = Backoff(initial=1.0, maximum=10.0)
    assert [backoff.delay(n) for n in range(6)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert backoff.delay(10**6) == 10.0  # no overflow, however late
    assert Backoff(initial=0.0, maximum=10.0).delay(10**6) == 0.0
    assert Backoff(initial=5.0, maximum=math.inf, factor=3.0).delay(2) == 45.0


def test_a_jittered_backoff_needs_a_random_source() -> None:
    with pytest.raises(ValueError, match="random source"):
        Backoff(initial=1.0, maximum=2.0, jitter=0.5).delay(0)


@pytest.mark.parametrize(
    "fields",
    [
        {"initial": -1.0, "maximum": 1.0},
        {"initial": 1.0, "maximum": math.nan},
        {"initial": 1.0, "maximum": 1.0, "factor": 0.5},
        {"initial": 1.0, "maximum": 1.0, "jitter": 1.5},
    ],
)
def test_nonsense_numbers_are_refused(fields: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must be"):
        Backoff(**fields)


def test_each_place_keeps_its_numbers() -> None:
    rng = random.Random(7)
    # JSON-RPC retries: 0.1 s doubling up to 5 s, "equal jitter" (half fixed, half random).
    for attempt, ceiling in enumerate([0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]):
        assert ceiling / 2 <= RetryPolicy().backoff(attempt, rng) <= ceiling
    # Restarts: 1 s doubling up to 300 s, times a factor in [0.5, 1]; ``consecutive`` is 1-based.
    for consecutive, ceiling in enumerate([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0], 1):
        assert ceiling / 2 <= DEFAULT_RESTARTS.delay(consecutive, rng) <= ceiling
    assert DEFAULT_RESTARTS.delay(50, rng) <= 300.0
    # A portfolio's FAILED attempts: failure_backoff doubling up to failure_backoff_max.
    assert failure_backoff(0, 60, 3600) == timedelta(0)
    assert [failure_backoff(n, 60, 3600).total_seconds() for n in (1, 2, 6, 7, 100)] == [
        60.0,
        120.0,
        1920.0,
        3600.0,
        3600.0,
    ]
    # The doubling stops after 30 steps, whatever the ceiling (as it always has).
    assert failure_backoff(40, 1e-6, 1e9) == timedelta(seconds=1e-6 * 2**30)


# --- addresses ------------------------------------------------------------------------------

ROUTER = "0x7a250d5630B4cF539739dF2C5dAcb4c659F2488D"


def test_the_strict_rule_refuses_typos_and_the_zero_address() -> None:
    assert checked_address(ROUTER.lower()) == ROUTER
    assert checked_address(f"  {ROUTER}\n") == ROUTER
    typo = ROUTER[:-1] + ROUTER[-1].lower()
    with pytest.raises(ValueError, match="does not match its EIP-55 checksum"):
        checked_address(typo)
    with pytest.raises(ValueError, match="is the zero address"):
        checked_address(ZERO_ADDRESS)
    for bad in ("0x12", ROUTER[2:], ROUTER + "00", 42, None):
        with pytest.raises(ValueError, match="must be a 0x-prefixed 20-byte hex address"):
            checked_address(bad)


@given(st.binary(min_size=20, max_size=20))
def test_the_normaliser_is_eip55_as_the_library_writes_it(raw: bytes) -> None:
    expected = to_checksum_address(raw)
    assert to_address(raw) == expected
    assert to_address("0x" + raw.hex()) == expected
    assert to_address("0x" + raw.hex().upper()) == expected
    assert to_address(raw.hex()) == expected


def test_the_normaliser_refuses_what_is_not_an_address() -> None:
    for bad in ("0x12", "0x" + "g" * 40, b"\x00" * 19, b"\x00" * 32, ROUTER + "00"):
        with pytest.raises(ValueError, match="address"):
            to_address(bad)


def test_the_normaliser_judges_nothing() -> None:
    assert to_address(ROUTER.lower()) == ROUTER
    assert to_address(bytes.fromhex(ROUTER[2:])) == ROUTER
    assert to_address(ZERO_ADDRESS) == ZERO_ADDRESS

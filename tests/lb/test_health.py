"""Tests for meshkit.lb.health: rise/fall hysteresis."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshkit.lb.health import HealthState


def test_starts_up_by_default() -> None:
    h = HealthState(rise=2, fall=3)
    assert h.up is True
    assert (h.consecutive_successes, h.consecutive_failures) == (0, 0)
    assert (h.checks_total, h.failures_total) == (0, 0)
    assert (h.rise, h.fall) == (2, 3)


def test_goes_down_after_fall_failures() -> None:
    h = HealthState(rise=2, fall=3)
    assert h.record(False) is None
    assert h.record(False) is None
    assert h.up
    assert h.record(False) is False
    assert not h.up
    # Further failures do not flip again.
    assert h.record(False) is None
    assert h.consecutive_failures == 4
    assert (h.checks_total, h.failures_total) == (4, 4)


def test_comes_back_after_rise_successes() -> None:
    h = HealthState(rise=2, fall=3, up=False)
    assert not h.up
    assert h.record(True) is None
    assert h.record(True) is True
    assert h.up
    assert h.record(True) is None
    assert h.consecutive_successes == 3


def test_success_resets_failure_streak() -> None:
    h = HealthState(rise=2, fall=3)
    for _ in range(10):
        assert h.record(False) is None
        assert h.record(False) is None
        assert h.record(True) is None
    assert h.up
    assert h.consecutive_successes == 1
    assert h.consecutive_failures == 0
    assert (h.checks_total, h.failures_total) == (30, 20)


def test_failure_resets_success_streak() -> None:
    h = HealthState(rise=3, fall=1, up=False)
    for _ in range(5):
        assert h.record(True) is None
        assert h.record(True) is None
        assert h.record(False) is None
    assert not h.up
    assert h.consecutive_failures == 1


def test_rise_fall_of_one_flip_immediately() -> None:
    h = HealthState(rise=1, fall=1)
    assert h.record(False) is False
    assert h.record(True) is True
    assert h.record(False) is False


def test_full_cycle() -> None:
    h = HealthState(rise=2, fall=2)
    results = [h.record(ok) for ok in [False, False, True, False, True, True, True, False]]
    assert results == [None, False, None, None, None, True, None, None]
    assert h.up


@pytest.mark.parametrize(("rise", "fall"), [(0, 1), (1, 0), (-1, 3)])
def test_invalid_thresholds(rise: int, fall: int) -> None:
    with pytest.raises(ValueError, match="must be at least 1"):
        HealthState(rise=rise, fall=fall)


def test_repr_mentions_state() -> None:
    assert "down" in repr(HealthState(1, 1, up=False))


def _model(rise: int, fall: int, up: bool, results: list[bool]) -> list[bool]:
    """Reference: the state after each result, from the definition of the streak rule."""
    states = []
    for i in range(len(results)):
        if up and i + 1 >= fall and not any(results[i + 1 - fall : i + 1]):
            up = False
        elif not up and i + 1 >= rise and all(results[i + 1 - rise : i + 1]):
            up = True
        states.append(up)
    return states


@given(
    rise=st.integers(1, 5),
    fall=st.integers(1, 5),
    up=st.booleans(),
    results=st.lists(st.booleans(), max_size=60),
)
def test_matches_reference_model(rise: int, fall: int, up: bool, results: list[bool]) -> None:
    h = HealthState(rise, fall, up)
    expected = _model(rise, fall, up, results)
    before = up
    for ok, want in zip(results, expected, strict=True):
        flip = h.record(ok)
        assert h.up is want
        # record() reports exactly the flips, with the new state.
        assert flip == (want if want != before else None)
        before = want
        assert h.consecutive_successes == 0 or h.consecutive_failures == 0
    assert h.checks_total == len(results)
    assert h.failures_total == results.count(False)

"""meshkit.base.durations: Go's duration grammar, its refusals, and Go's Duration.String."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshkit.base.durations import (
    DurationError,
    format_duration,
    format_duration_ns,
    go_duration,
    parse_duration,
    parse_duration_ns,
)
from meshkit.base.errors import InvalidValue, MeshkitError

# Go's time.Duration is an int64 count of nanoseconds; only non-negative ones are parsed here.
MAX_NS = 2**63 - 1


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0.0),
        ("+0", 0.0),
        ("0s", 0.0),
        ("5s", 5.0),
        ("300ms", 0.3),
        ("1.5h", 5400.0),
        ("1h2m3.5s", 3723.5),
        ("1m30s", 90.0),
        ("250us", 0.00025),
        ("250\u00b5s", 0.00025),
        ("250\u03bcs", 0.00025),
        ("100ns", 1e-7),
        (".5s", 0.5),
        ("1.s", 1.0),
        ("+3s", 3.0),
        (" 2s ", 2.0),
        ("1s1m", 61.0),
        ("2562047h", 2562047 * 3600.0),
    ],
)
def test_accepted(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds, rel=1e-12)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("5", "a number needs a unit (ns, us, ms, s, m, h), e.g. 5s"),
        ("1.5", "a number needs a unit (ns, us, ms, s, m, h), e.g. 1.5s"),
        ("1s5", "a number needs a unit"),
        ("", "expected a duration"),
        ("-1s", "must not be negative"),
        ("-0", "must not be negative"),
        ("1d", "unknown unit 'd'"),
        ("1S", "expected a duration"),
        ("s", "expected a duration"),
        (".s", "expected a duration"),
        ("1 s", "expected a duration"),
        ("1.2.3s", "expected a duration"),
        ("inf", "expected a duration"),
        ("1e3s", "unknown unit 'e'"),
        ("9999999999999h", "too long"),
        ("2562048h", "too long"),
    ],
)
def test_refused(text: str, reason: str) -> None:
    with pytest.raises(DurationError) as info:
        parse_duration(text, "--grace-period")
    assert reason in info.value.reason
    assert info.value.name == "--grace-period" and info.value.value == text


def test_error_text_names_the_flag() -> None:
    with pytest.raises(DurationError) as info:
        parse_duration("5", "--grace-period")
    assert str(info.value) == (
        'invalid duration "5" for --grace-period: '
        "a number needs a unit (ns, us, ms, s, m, h), e.g. 5s"
    )
    # A usage error: exit code 2, reported by the CLI like any other bad flag value.
    assert isinstance(info.value, InvalidValue) and isinstance(info.value, MeshkitError)
    assert isinstance(info.value, ValueError) and info.value.exit_code == 2


def test_error_without_a_name() -> None:
    with pytest.raises(DurationError, match=r'^invalid duration "soon": expected a duration'):
        parse_duration("soon")


@pytest.mark.parametrize(
    ("ns", "text"),
    [
        (0, "0s"),
        (1, "1ns"),
        (1_500, "1.5\u00b5s"),
        (1_234_000, "1.234ms"),
        (2_500_000_000, "2.5s"),
        (63_200_000_000, "1m3.2s"),
        (3_600_000_000_000, "1h0m0s"),
        (MAX_NS, "2562047h47m16.854775807s"),
    ],
)
def test_format_is_gos_string(ns: int, text: str) -> None:
    assert format_duration_ns(ns) == text


def test_format_seconds_and_caddy_rounding() -> None:
    assert format_duration(90.0) == "1m30s"
    assert go_duration(0.0012345) == "1ms"  # Caddy rounds latencies above 1ms to ms
    assert go_duration(0.0000561) == "56\u00b5s"


@given(st.integers(0, MAX_NS))
def test_format_then_parse_round_trips(ns: int) -> None:
    assert parse_duration_ns(format_duration_ns(ns)) == ns


@given(st.integers(0, 10**15))
def test_format_then_parse_round_trips_in_seconds(ns: int) -> None:
    seconds = ns / 1e9
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds, rel=1e-12, abs=1e-9)


@given(st.text())
def test_never_crashes(text: str) -> None:
    try:
        got = parse_duration(text)
    except DurationError:
        return
    assert got >= 0

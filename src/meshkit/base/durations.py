"""The one duration grammar: Go's time.ParseDuration, as Docker flags and Caddy directives take it.

`1h2m3.5s`, `300ms`, `1.5h`, `250us` (or `µs`), a leading `+`, and a bare `0`. A number without a
unit is refused, as Go refuses it (so `5` must be written `5s`), and so is a negative duration:
nothing here waits for less than no time. `format_duration` is Go's Duration.String, and
`parse_duration(format_duration(x))` gives x back.
"""

from __future__ import annotations

import re
from fractions import Fraction

from meshkit.base.errors import InvalidValue

__all__ = [
    "DURATION_FORM",
    "DurationError",
    "format_duration",
    "format_duration_ns",
    "go_duration",
    "parse_duration",
    "parse_duration_ns",
]

# Go's units, with both micro signs it accepts (U+00B5 and U+03BC).
_UNITS: dict[str, Fraction] = {
    "ns": Fraction(1, 10**9),
    "us": Fraction(1, 10**6),
    "\u00b5s": Fraction(1, 10**6),
    "\u03bcs": Fraction(1, 10**6),
    "ms": Fraction(1, 1000),
    "s": Fraction(1),
    "m": Fraction(60),
    "h": Fraction(3600),
}
_COMPONENT = re.compile(r"([0-9]*(?:\.[0-9]*)?)([a-z\u00b5\u03bc]+)")
_NUMBER = re.compile(r"[0-9]*\.?[0-9]*")
# Go durations are int64 nanoseconds; anything longer is an error there, so it is here too.
_MAX_DURATION = Fraction(2**63 - 1, 10**9)
DURATION_FORM = 'expected a duration such as "300ms", "2s", "1m30s" or "1h"'
UNIT_NAMES = "ns, us, ms, s, m, h"


class DurationError(InvalidValue):
    """A text that is not a duration; `name` is the flag or directive it was given to."""

    def __init__(self, name: str, value: str, reason: str, *, what: str = "duration") -> None:
        super().__init__(name, value, reason, what=what)


def _missing_unit(text: str) -> str:
    example = text + "s" if text[-1:].isdigit() and len(text) <= 20 else "5s"
    return f"a number needs a unit ({UNIT_NAMES}), e.g. {example}"


def _parse(text: str) -> Fraction:
    if text.startswith("-"):
        raise ValueError("a duration must not be negative")
    body = text[1:] if text.startswith("+") else text
    if body == "0":
        return Fraction(0)
    if not body:
        raise ValueError(DURATION_FORM)
    total = Fraction(0)
    pos = 0
    while pos < len(body):
        match = _COMPONENT.match(body, pos)
        if match is None:
            if _NUMBER.fullmatch(body, pos) and body[pos:].strip(".") != "":
                raise ValueError(_missing_unit(text))
            raise ValueError(DURATION_FORM)
        number, unit = match.groups()
        if number.strip(".") == "":
            raise ValueError(DURATION_FORM)
        if unit not in _UNITS:
            raise ValueError(f"unknown unit {unit!r} ({DURATION_FORM})")
        total += Fraction(number.rstrip(".") if number.endswith(".") else number) * _UNITS[unit]
        if total > _MAX_DURATION:
            raise ValueError("the duration is too long (at most 2562047h47m16.854775807s)")
        pos = match.end()
    return total


def parse_duration(text: str, name: str = "") -> float:
    """Seconds in a Go duration; surrounding blanks are ignored. DurationError names `name`."""
    try:
        return float(_parse(text.strip()))
    except ValueError as exc:
        raise DurationError(name, text, str(exc)) from None


def parse_duration_ns(text: str, name: str = "") -> int:
    """Whole nanoseconds in a Go duration (fractions of a nanosecond are dropped, as in Go)."""
    try:
        return int(_parse(text.strip()) * 10**9)
    except ValueError as exc:
        raise DurationError(name, text, str(exc)) from None


def _frac(value: int, unit: int) -> str:
    whole, rest = divmod(value, unit)
    if not rest:
        return str(whole)
    digits = len(str(unit)) - 1
    return f"{whole}." + f"{rest:0{digits}d}".rstrip("0")


def format_duration_ns(ns: int) -> str:
    """Go's Duration.String: `1.234ms`, `56µs`, `2.5s`, `1m3.2s`, `1h0m0s`, `0s`."""
    neg = ns < 0
    ns = abs(ns)
    if ns == 0:
        return "0s"
    if ns < 1_000:
        text = f"{ns}ns"
    elif ns < 1_000_000:
        text = _frac(ns, 1_000) + "\u00b5s"
    elif ns < 1_000_000_000:
        text = _frac(ns, 1_000_000) + "ms"
    else:
        hours, rest = divmod(ns, 3_600_000_000_000)
        minutes, rest = divmod(rest, 60_000_000_000)
        text = _frac(rest, 1_000_000_000) + "s"
        if hours or minutes:
            text = f"{minutes}m" + text
        if hours:
            text = f"{hours}h" + text
    return "-" + text if neg else text


def format_duration(seconds: float) -> str:
    """Go's Duration.String of `seconds`, to the nearest nanosecond."""
    return format_duration_ns(round(seconds * 1e9))


def go_duration(seconds: float) -> str:
    """A duration as Caddy logs it: rounded to ms above 1ms, to µs above 1µs, then Go's String."""
    ns = round(seconds * 1e9)
    sign = -1 if ns < 0 else 1
    ns = abs(ns)
    if ns >= 1_000_000:
        ns = (ns + 500_000) // 1_000_000 * 1_000_000
    elif ns >= 1_000:
        ns = (ns + 500) // 1_000 * 1_000
    return format_duration_ns(sign * ns)

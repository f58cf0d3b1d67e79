"""Go's time.Time as templates see it: `Format` with Go's reference layout
(Mon Jan 2 15:04:05 MST 2006) and the usual accessors."""

from __future__ import annotations

import datetime as dt

_MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]
_DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]

# layout elements, longest first where one is a prefix of another
_ELEMENTS = [
    "January",
    "Jan",
    "Monday",
    "Mon",
    "MST",
    "2006",
    "-070000",
    "-07:00:00",
    "-0700",
    "-07:00",
    "-07",
    "Z070000",
    "Z07:00:00",
    "Z0700",
    "Z07:00",
    "Z07",
    "01",
    "02",
    "03",
    "04",
    "05",
    "06",
    "002",
    "__2",
    "_2",
    "15",
    "PM",
    "pm",
    "1",
    "2",
    "3",
    "4",
    "5",
]


def _offset(t: dt.datetime, elem: str) -> str:
    off = t.utcoffset() or dt.timedelta(0)
    secs = int(off.total_seconds())
    if elem.startswith("Z") and secs == 0:
        return "Z"
    sign = "-" if secs < 0 else "+"
    secs = abs(secs)
    hh, mm, ss = secs // 3600, secs // 60 % 60, secs % 60
    core = elem.lstrip("Z-")
    if core == "07":
        return f"{sign}{hh:02d}"
    if core == "0700":
        return f"{sign}{hh:02d}{mm:02d}"
    if core == "07:00":
        return f"{sign}{hh:02d}:{mm:02d}"
    if core == "070000":
        return f"{sign}{hh:02d}{mm:02d}{ss:02d}"
    return f"{sign}{hh:02d}:{mm:02d}:{ss:02d}"


def _fraction(t: dt.datetime, layout: str, i: int) -> tuple[str, int] | None:
    """.000 / .999 (or , as separator) fractional seconds at layout[i]."""
    if layout[i] not in ".," or i + 1 >= len(layout) or layout[i + 1] not in "09":
        return None
    digit = layout[i + 1]
    j = i + 1
    while j < len(layout) and layout[j] == digit:
        j += 1
    if j < len(layout) and layout[j].isdigit():
        return None
    n = j - i - 1
    frac = f"{t.microsecond:06d}000"[:n]
    if digit == "9":
        frac = frac.rstrip("0")
        return ((layout[i] + frac) if frac else ""), j
    return layout[i] + frac, j


def go_format(t: dt.datetime, layout: str) -> str:
    out: list[str] = []
    i = 0
    n = len(layout)
    while i < n:
        frac = _fraction(t, layout, i)
        if frac is not None:
            out.append(frac[0])
            i = frac[1]
            continue
        for elem in _ELEMENTS:
            if layout.startswith(elem, i):
                break
        else:
            out.append(layout[i])
            i += 1
            continue
        # "Jan" must not match inside words like "January" handled by order; Go also needs
        # "Mon"/"MST" not followed by a lower-case letter
        nxt = layout[i + len(elem) : i + len(elem) + 1]
        if elem in ("Jan", "Mon", "January", "Monday") and nxt.islower():
            out.append(layout[i])
            i += 1
            continue
        out.append(_element(t, elem))
        i += len(elem)
    return "".join(out)


def _element(t: dt.datetime, e: str) -> str:
    h12 = t.hour % 12 or 12
    table = {
        "January": _MONTHS[t.month - 1],
        "Jan": _MONTHS[t.month - 1][:3],
        "Monday": _DAYS[t.weekday()],
        "Mon": _DAYS[t.weekday()][:3],
        "MST": t.tzname() or "UTC",
        "2006": f"{t.year:04d}",
        "06": f"{t.year % 100:02d}",
        "01": f"{t.month:02d}",
        "1": str(t.month),
        "02": f"{t.day:02d}",
        "_2": f"{t.day:2d}",
        "2": str(t.day),
        "002": f"{t.timetuple().tm_yday:03d}",
        "__2": f"{t.timetuple().tm_yday:3d}",
        "15": f"{t.hour:02d}",
        "03": f"{h12:02d}",
        "3": str(h12),
        "04": f"{t.minute:02d}",
        "4": str(t.minute),
        "05": f"{t.second:02d}",
        "5": str(t.second),
        "PM": "PM" if t.hour >= 12 else "AM",
        "pm": "pm" if t.hour >= 12 else "am",
    }
    if e in table:
        return table[e]
    return _offset(t, e)


class GoTime:
    """A time value with Go's method names (what .NowDate and browse's ModTime give)."""

    def __init__(self, t: dt.datetime) -> None:
        self.t = t if t.tzinfo is not None else t.astimezone()

    @staticmethod
    def now() -> GoTime:
        return GoTime(dt.datetime.now().astimezone())

    def Format(self, layout: str) -> str:
        return go_format(self.t, layout)

    def String(self) -> str:
        return go_format(self.t, "2006-01-02 15:04:05.999999999 -0700 MST")

    def Year(self) -> int:
        return self.t.year

    def Month(self) -> int:
        return self.t.month

    def Day(self) -> int:
        return self.t.day

    def Hour(self) -> int:
        return self.t.hour

    def Minute(self) -> int:
        return self.t.minute

    def Second(self) -> int:
        return self.t.second

    def YearDay(self) -> int:
        return self.t.timetuple().tm_yday

    def Weekday(self) -> str:
        return _DAYS[self.t.weekday()]

    def Unix(self) -> int:
        return int(self.t.timestamp())

    def UTC(self) -> GoTime:
        return GoTime(self.t.astimezone(dt.timezone.utc))

    def Local(self) -> GoTime:
        return GoTime(self.t.astimezone())

    def IsZero(self) -> bool:
        return False

    def __str__(self) -> str:
        return self.String()

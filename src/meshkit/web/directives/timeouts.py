"""timeouts: how long a connection may take (Caddy v1's forms).

    timeouts none                 # no timeouts at all
    timeouts DURATION             # all four (Go durations: 30s, 2m, 1m30s; 0 or none: off)
    timeouts {
        header DURATION           # a request head must arrive within this (408 and close);
                                  # also how long a new connection may send nothing
        read   DURATION           # a request body may pause this long (then the connection
                                  # closes)
        write  DURATION           # a response may make no progress this long (a client that
                                  # stops reading is cut off)
        idle   DURATION           # a keep-alive connection may stay idle this long
    }

Defaults (a kind not given): header 10s, read 60s, write 2m, idle 2m. The timeouts belong to
the listener (one port): when the sites of a port set different values, the smallest one of
each kind applies (`none` counts as the smallest, as in Caddy v1). Unlike Go's whole-request
read and whole-response write deadlines, `read` and `write` bound the pauses, so a large
upload or download that keeps moving is never cut off.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from meshkit.base import durations
from meshkit.web.caddyfile.tokens import Dispenser
from meshkit.web.directives import passthrough, register
from meshkit.web.site import Site

KINDS = ("header", "read", "write", "idle")
DEFAULTS = {"header": 10.0, "read": 60.0, "write": 120.0, "idle": 120.0}


@dataclass
class TimeoutsConfig:
    """Seconds per kind; None: not set by this site; 0.0: no timeout (`none`)."""

    keeps_static: ClassVar[bool] = True  # configuration of the listener only
    header: float | None = None
    read: float | None = None
    write: float | None = None
    idle: float | None = None


def _duration(d: Dispenser, text: str) -> float:
    if text == "none":
        return 0.0
    try:
        value = durations.parse_duration(text, "timeouts")
    except durations.DurationError as exc:
        raise d.err(str(exc)) from None
    if value < 0:
        raise d.err(f"timeouts: {text!r} is negative")
    return value


def parse(d: Dispenser, site: Site) -> TimeoutsConfig:
    config = TimeoutsConfig()
    while d.next():
        args = d.remaining_args()
        if len(args) > 1:
            raise d.arg_err()
        if args:
            value = _duration(d, args[0])
            for kind in KINDS:
                setattr(config, kind, value)
            for _ in d.block():
                raise d.err("timeouts DURATION takes no block")
            continue
        had_block = False
        for _ in d.block():
            had_block = True
            kind = d.val()
            more = d.remaining_args()
            if kind not in KINDS:
                raise d.err(
                    f"unknown timeouts option {kind!r} (expecting header, read, write or idle)"
                )
            if len(more) != 1:
                raise d.arg_err()
            setattr(config, kind, _duration(d, more[0]))
        if not had_block:
            raise d.arg_err()
    return config


def merge(configs: list[TimeoutsConfig]) -> dict[str, float]:
    """The timeouts of one listener from its sites': the smallest set value of each kind
    (0: none), else the default; in seconds, `math.inf` for none."""
    out: dict[str, float] = {}
    for kind in KINDS:
        values = [v for c in configs if (v := getattr(c, kind)) is not None]
        value = min(values) if values else DEFAULTS[kind]
        out[kind] = value if value > 0 else float("inf")
    return out


register("timeouts", parse, passthrough)

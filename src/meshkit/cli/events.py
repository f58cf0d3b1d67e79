"""`meshkit events`: the cluster's changes (services, nodes, networks, tasks, secrets, configs),
from the state changes the local manager applies. Without --until it follows."""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

import typer

from meshkit.base.errors import FlagError
from meshkit.cli.node import HostOpt, agent_call

TYPES = ("service", "node", "network", "task", "secret", "config")


def parse_time(flag: str, text: str, now: float) -> float:
    """Docker's --since/--until: a Unix time (seconds, fractions allowed), an RFC 3339 time,
    or a duration back from now (10m)."""
    from datetime import datetime

    from meshkit.base.durations import DurationError, parse_duration

    try:
        return float(text)
    except ValueError:
        pass
    try:
        return now - parse_duration(text, flag)
    except DurationError:
        pass
    try:
        stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise FlagError(
            flag, text, "expected a Unix time, an RFC 3339 time or a duration (10m)"
        ) from None
    if stamp.tzinfo is None:
        raise FlagError(flag, text, "an RFC 3339 time needs its zone (Z or +HH:MM)")
    return stamp.timestamp()


def parse_filters(filters: list[str]) -> list[str]:
    types: list[str] = []
    for text in filters:
        key, sep, value = text.partition("=")
        if not sep or key != "type":
            raise FlagError("--filter", text, "expected type=service|node|network|task|...")
        if value not in TYPES:
            raise FlagError("--filter", text, f"unknown type: expected {', '.join(TYPES)}")
        types.append(value)
    return types


def line(ev: dict[str, Any]) -> str:
    """Docker's text form: time type action id (attributes)."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ev["time"]))
    frac = f"{ev['timeNano'] % 1_000_000_000:09d}"
    attrs = ", ".join(f"{k}={v}" for k, v in sorted(ev["Actor"]["Attributes"].items()))
    return f"{stamp}.{frac}Z {ev['Type']} {ev['Action']} {ev['Actor']['ID']} ({attrs})"


def events(
    since: Annotated[str | None, typer.Option("--since", help="Events from this time.")] = None,
    until: Annotated[
        str | None, typer.Option("--until", help="Events up to this time, then stop.")
    ] = None,
    filters: Annotated[
        list[str] | None, typer.Option("--filter", "-f", help="type=" + "|".join(TYPES))
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="text or json.")] = "text",
    host: HostOpt = None,
) -> None:
    """Show the cluster's events (follows until --until, or Ctrl-C)."""
    if fmt not in ("text", "json"):
        raise FlagError("--format", fmt, "expected text or json")
    now = time.time()
    start = parse_time("--since", since, now) if since is not None else None
    end = parse_time("--until", until, now) if until is not None else None
    if start is None and end is None:
        start = now  # Docker: only what happens from now on
    types = parse_filters(filters or [])
    after = 0
    while True:
        # follow with long polls; with --until, only until then
        wait = 20.0 if end is None else max(0.0, min(20.0, end - time.time()))
        reply = agent_call(
            host,
            "events",
            {"after": after, "since": start, "until": end, "types": types, "wait": wait},
        )
        for ev in reply["events"]:
            typer.echo(json.dumps(ev) if fmt == "json" else line(ev))
        after = int(reply["last"])
        if end is not None and time.time() >= end:
            return

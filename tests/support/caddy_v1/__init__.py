"""Caddy v1's own setup tests as data: each Caddyfile input of a v1 setup test with v1's
outcome (tests/web/test_caddy_v1_setup_cases.py runs them). A Case names the Go test it
comes from (`TestName#N`: the N-th input of its table, from 0, as the Go tests count)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Check = Callable[[dict[str, Any]], Any]


@dataclass(frozen=True)
class Case:
    go: str  # the Go test and the index of the input in its table
    body: str  # the directive's tokens (`@T@`: the folder of test files)
    ok: bool  # whether Caddy v1 accepts it
    check: Check | None = None  # the parsed values v1's test reads (accepted cases)
    diff: str = ""  # meshkit does the opposite on purpose: why
    xfail: str = ""  # a bug in a parser another change owns: which, and what
    acme: bool = False  # load with automatic HTTPS on (a `tls` block naming no certificate)


NEGATIVE = (
    "a negative duration or count meant the same as 0 (off, or no limit) in v1; meshkit asks"
    " for the 0"
)
BROWSE_DOT = (
    "a path scope that is not a URL path (`.`) can never match a request: meshkit refuses it"
    " where v1 took it and never used it"
)
NO_UNVERIFIED_CLIENTS = (
    "Python's ssl module cannot ask for a client certificate without verifying it against"
    " CAs: `clients request|require` need CA files in meshkit (v1 took any certificate)"
)


def _eq(got: Any, want: Any) -> None:
    assert got == want, f"{got!r} != {want!r}"


BRACE_ARG = (
    "v1's RemainingArgs read a `}` on the option's line as an argument; meshkit never reads a"
    " brace as an argument, so the one-line block means what the multi-line one does"
)

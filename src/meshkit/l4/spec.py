"""Parsing of `meshkit ingress` arguments and backends files (sans-IO).

Everything here turns user text into frozen data classes or raises an error that says what was
expected, so the CLI shell never has to second-guess a value it got back.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Ingress's flags take the one grammar of each concept (durations, host:port, --publish);
# re-exported here for the ingress CLI.
from meshkit.base.durations import parse_duration
from meshkit.base.errors import InvalidValue, MeshkitError
from meshkit.base.hostport import Reason, parse_hostport, split_host_optport
from meshkit.base.publish import Publish, parse_publish
from meshkit.base.safefile import MIB, FileReadError, read_text_file

__all__ = [
    "BACKENDS_FILE_MAX",
    "BackendSpec",
    "Publish",
    "parse_backend",
    "parse_backends_file",
    "parse_backends_text",
    "parse_duration",
    "parse_hostport",
    "parse_publish",
    "read_backends_file",
]

# ASCII digits only: int() would also accept "+1", " 1", "1_0" and non-ASCII digits.
_DIGITS = re.compile(r"[0-9]+")


@dataclass(frozen=True)
class BackendSpec:
    """One backend; port None means "use the publish TARGET port"."""

    host: str
    port: int | None
    weight: int = 1


# --- --backend and backends files --------------------------------------------------------


def parse_backend(text: str, flag: str = "--backend") -> BackendSpec:
    """Parse `HOST[:PORT]` (`[IPv6]:PORT` too); weights are only accepted in backends files."""
    try:
        if not text:  # said of the backend, not of its host part
            raise Reason("backend is empty (expected HOST[:PORT])")
        host, port = split_host_optport(text)
    except Reason as exc:
        raise InvalidValue(flag, text, str(exc)) from None
    return BackendSpec(host=host, port=port)


def _weight(token: str) -> int:
    value = token[len("weight=") :]
    if not _DIGITS.fullmatch(value) or len(value) > 5 or not 1 <= int(value) <= 65535:
        raise Reason(f"invalid weight {token!r}: expected weight=N with N in 1-65535")
    return int(value)


def _display(host: str, port: int | None) -> str:
    shown = f"[{host}]" if ":" in host else host
    return shown if port is None else f"{shown}:{port}"


def parse_backends_text(text: str, source: str) -> list[BackendSpec]:
    """Parse a backends file: one `HOST[:PORT][ weight=N]` per line, `#` starts a comment.

    Errors are MeshkitError("SOURCE:LINE: ...") naming the offending token. The same host and
    port listed twice is an error, because silently doubling a backend's share is never meant.
    An empty list is returned for a file with no backends; whether that is allowed is the
    caller's decision (draining everything through a reload can be legitimate).
    """
    backends: list[BackendSpec] = []
    seen: dict[tuple[str, int | None], int] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        tokens = raw.split("#", 1)[0].split()
        if not tokens:
            continue
        try:
            host, port = split_host_optport(tokens[0])
        except Reason as exc:
            raise MeshkitError(f"{source}:{lineno}: invalid backend {tokens[0]!r}: {exc}") from None
        weight: int | None = None
        for token in tokens[1:]:
            if not token.startswith("weight="):
                raise MeshkitError(
                    f"{source}:{lineno}: unexpected {token!r} after backend "
                    f"(expected HOST[:PORT] [weight=N])"
                )
            if weight is not None:
                raise MeshkitError(f"{source}:{lineno}: weight given twice ({token!r})")
            try:
                weight = _weight(token)
            except Reason as exc:
                raise MeshkitError(f"{source}:{lineno}: {exc}") from None
        key = (host, port)
        if key in seen:
            raise MeshkitError(
                f"{source}:{lineno}: duplicate backend {_display(host, port)!r} "
                f"(first listed on line {seen[key]})"
            )
        seen[key] = lineno
        backends.append(BackendSpec(host=host, port=port, weight=1 if weight is None else weight))
    return backends


# A backends file is a list of HOST[:PORT] lines; 1 MiB holds tens of thousands of them, and
# the cap keeps a file pointed at /dev/zero (or one that keeps growing) from eating memory.
BACKENDS_FILE_MAX = MIB


def read_backends_file(path: str) -> str:
    """The text of a backends file: a regular file (symlinks followed) of at most
    BACKENDS_FILE_MAX bytes of UTF-8. A FIFO or device is refused rather than read (it would
    block or never end). The only I/O in this module; callers on an event loop run it in an
    executor."""
    try:
        return read_text_file(path, BACKENDS_FILE_MAX, "backends file")
    except FileReadError as exc:
        raise MeshkitError(f"{path}: {exc.reason}") from None


def parse_backends_file(path: str) -> list[BackendSpec]:
    """Read and parse a backends file; a missing, unreadable, oversized or non-regular file is
    a MeshkitError naming it."""
    return parse_backends_text(read_backends_file(path), path)

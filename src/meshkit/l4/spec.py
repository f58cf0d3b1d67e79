"""Parsing of `meshkit ingress` arguments and backends files (sans-IO).

Everything here turns user text into frozen data classes or raises an error that says what was
expected, so the CLI shell never has to second-guess a value it got back.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from fractions import Fraction

from meshkit.base.errors import FlagError, MeshkitError
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

PUBLISH_FORM = "expected [IP:]PUBLISHED:TARGET[/tcp|/udp]"
BACKEND_FORM = "expected HOST[:PORT]"
HOSTPORT_FORM = "expected IP:PORT or [IPv6]:PORT"

# ASCII digits only: int() would also accept "+1", " 1", "1_0" and non-ASCII digits.
_DIGITS = re.compile(r"[0-9]+")
# RFC 1123 label; underscores are tolerated because service names in the wild use them.
_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


class _Invalid(ValueError):
    """A reason text; callers wrap it in FlagError or MeshkitError with their own context."""


@dataclass(frozen=True)
class Publish:
    """One `--publish` value: listen on host:published, forward to backends' target port."""

    host: str
    published: int
    target: int
    proto: str


@dataclass(frozen=True)
class BackendSpec:
    """One backend; port None means "use the publish TARGET port"."""

    host: str
    port: int | None
    weight: int = 1


def _port(text: str, what: str = "port") -> int:
    if not _DIGITS.fullmatch(text):
        raise _Invalid(f"{what} {text!r} is not a number (expected 1-65535)")
    # Checking the length first keeps absurdly long digit strings cheap and the message short.
    if len(text) > 5 or not 1 <= int(text) <= 65535:
        raise _Invalid(f"{what} {text} is out of range 1-65535")
    return int(text)


def _ip(text: str) -> str:
    """Canonical text of an IP literal, or _Invalid. Zone ids (fe80::1%eth0) are refused."""
    if "%" in text:
        raise _Invalid(f"{text!r}: IPv6 zone ids are not supported")
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise _Invalid(f"{text!r} is not an IP address") from None


def _hostname(text: str) -> str:
    """A DNS name or IP literal, returned in canonical (lower-case) form."""
    if not text:
        raise _Invalid("host is empty")
    if ":" in text:
        return _ip(text)
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        pass
    name = text[:-1] if text.endswith(".") else text
    labels = name.split(".")
    # An all-numeric last label is never a DNS name; it is a mistyped IPv4 address (192.0.2.256).
    if len(name) > 253 or labels[-1].isdigit() or not all(_LABEL.fullmatch(x) for x in labels):
        raise _Invalid(f"{text!r} is not a valid host name or IP address")
    return text.lower()


def _split_bracketed(text: str) -> tuple[str, str | None]:
    """Split "[v6]rest" into ("v6", rest) or return (text, None) when not bracketed."""
    if not text.startswith("["):
        return text, None
    end = text.find("]")
    if end < 0:
        raise _Invalid("missing ']' after IPv6 address")
    return text[1:end], text[end + 1 :]


# --- --publish ---------------------------------------------------------------------------


def _publish(text: str) -> Publish:
    body, slash, proto = text.partition("/")
    if slash:
        proto = proto.lower()
        if proto not in ("tcp", "udp"):
            raise _Invalid(f"protocol {proto!r} is not tcp or udp")
    else:
        proto = "tcp"
    host = "0.0.0.0"
    inner, rest = _split_bracketed(body)
    if rest is not None:
        if not rest.startswith(":"):
            raise _Invalid(PUBLISH_FORM)
        host = _ip(inner)
        if ":" not in host:
            raise _Invalid(f"brackets are only for IPv6 addresses, not {inner!r}")
        parts = rest[1:].split(":")
        if len(parts) != 2:
            raise _Invalid(PUBLISH_FORM)
    else:
        parts = body.split(":")
        if len(parts) == 3:
            host = _ip(parts.pop(0))
        elif len(parts) > 3:
            raise _Invalid(f"{PUBLISH_FORM} (write IPv6 addresses in brackets: [::1]:8080:80)")
        elif len(parts) != 2:
            raise _Invalid(PUBLISH_FORM)
    published = _port(parts[0], "published port")
    target = _port(parts[1], "target port")
    return Publish(host=host, published=published, target=target, proto=proto)


def parse_publish(text: str, flag: str = "--publish") -> Publish:
    """Parse `[IP:]PUBLISHED:TARGET[/tcp|/udp]`; IPv6 listen addresses go in brackets."""
    try:
        return _publish(text)
    except _Invalid as exc:
        raise FlagError(flag, text, str(exc)) from None


# --- --backend and backends files --------------------------------------------------------


def _backend(text: str) -> tuple[str, int | None]:
    if not text:
        raise _Invalid(f"backend is empty ({BACKEND_FORM})")
    inner, rest = _split_bracketed(text)
    if rest is not None:
        host = _ip(inner)
        if ":" not in host:
            raise _Invalid(f"brackets are only for IPv6 addresses, not {inner!r}")
        if rest == "":
            return host, None
        if not rest.startswith(":"):
            raise _Invalid(f"{BACKEND_FORM} or [IPv6]:PORT")
        return host, _port(rest[1:])
    if text.count(":") > 1:
        # More than one colon without brackets can only be a bare IPv6 address (no port).
        return _ip(text), None
    host, colon, port = text.partition(":")
    return _hostname(host), (_port(port) if colon else None)


def parse_backend(text: str, flag: str = "--backend") -> BackendSpec:
    """Parse `HOST[:PORT]` (`[IPv6]:PORT` too); weights are only accepted in backends files."""
    try:
        host, port = _backend(text)
    except _Invalid as exc:
        raise FlagError(flag, text, str(exc)) from None
    return BackendSpec(host=host, port=port)


def _weight(token: str) -> int:
    value = token[len("weight=") :]
    if not _DIGITS.fullmatch(value) or len(value) > 5 or not 1 <= int(value) <= 65535:
        raise _Invalid(f"invalid weight {token!r}: expected weight=N with N in 1-65535")
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
            host, port = _backend(tokens[0])
        except _Invalid as exc:
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
            except _Invalid as exc:
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


# --- durations and listen addresses ------------------------------------------------------

# Go's time.ParseDuration units, including both micro signs it accepts.
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
# Go durations are int64 nanoseconds; anything longer is an error there, so it is here too.
_MAX_DURATION = Fraction(2**63 - 1, 10**9)
DURATION_FORM = 'expected a duration such as "300ms", "2s", "1m30s" or "1h"'


def _duration(text: str) -> float:
    if text.startswith("-"):
        raise _Invalid("duration must not be negative")
    body = text[1:] if text.startswith("+") else text
    if body == "0":
        return 0.0
    if not body:
        raise _Invalid(DURATION_FORM)
    total = Fraction(0)
    pos = 0
    while pos < len(body):
        match = _COMPONENT.match(body, pos)
        if match is None:
            if re.fullmatch(r"[0-9]*\.?[0-9]*", body[pos:]):
                raise _Invalid(f"missing unit ({DURATION_FORM})")
            raise _Invalid(DURATION_FORM)
        number, unit = match.groups()
        if number.strip(".") == "":
            raise _Invalid(DURATION_FORM)
        if unit not in _UNITS:
            raise _Invalid(f"unknown unit {unit!r} ({DURATION_FORM})")
        total += Fraction(number if not number.endswith(".") else number[:-1]) * _UNITS[unit]
        if total > _MAX_DURATION:
            raise _Invalid("duration is too long")
        pos = match.end()
    return float(total)


def parse_duration(text: str, flag: str) -> float:
    """Parse a Go/Docker-style duration ("2s", "1m30s", "250us", bare "0") into seconds."""
    try:
        return _duration(text.strip())
    except _Invalid as exc:
        raise FlagError(flag, text, str(exc)) from None


def _hostport(text: str) -> tuple[str, int]:
    inner, rest = _split_bracketed(text)
    if rest is not None:
        host = _ip(inner)
        if ":" not in host:
            raise _Invalid(f"brackets are only for IPv6 addresses, not {inner!r}")
        if not rest.startswith(":"):
            raise _Invalid(HOSTPORT_FORM)
        return host, _port(rest[1:])
    if text.count(":") != 1:
        raise _Invalid(f"{HOSTPORT_FORM} (write IPv6 addresses in brackets: [::1]:9100)")
    host, _, port = text.partition(":")
    # ":9100" means every interface, as in Go's net.Listen.
    return ("0.0.0.0" if host == "" else _hostname(host)), _port(port)


def parse_hostport(text: str, flag: str) -> tuple[str, int]:
    """Parse a listen address `IP:PORT`, `[IPv6]:PORT`, `localhost:PORT` or `:PORT`."""
    try:
        return _hostport(text)
    except _Invalid as exc:
        raise FlagError(flag, text, str(exc)) from None

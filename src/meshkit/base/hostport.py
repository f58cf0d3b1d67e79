"""The one host:port grammar: ports, IP literals, host names and `HOST:PORT` (sans-IO).

A port is 1-65535 in ASCII digits; an IPv6 address takes brackets when a port follows
(`[::1]:9100`); a host is an IP literal or an RFC 1123 name (returned lower-case). The
`--publish` grammar (meshkit.base.publish), the ingress flags and backends files, and the
agent's address flags all build on these pieces, so that one input gets one answer and one
error text everywhere.

The helpers raise `Reason` (a bare reason text); `parse_hostport` wraps it in InvalidValue
naming the flag. Callers that add their own context (file:line) catch `Reason` themselves.
"""

from __future__ import annotations

import ipaddress
import re

from meshkit.base.errors import InvalidValue

__all__ = [
    "HOSTPORT_FORM",
    "HOST_OPTPORT_FORM",
    "Reason",
    "bracketed_ip",
    "hostname",
    "ip",
    "parse_hostport",
    "port",
    "split_bracketed",
    "split_host_optport",
    "split_hostport",
]

HOSTPORT_FORM = "expected IP:PORT or [IPv6]:PORT"
HOST_OPTPORT_FORM = "expected HOST[:PORT]"

# ASCII digits only: int() would also accept "+1", " 1", "1_0" and non-ASCII digits.
_DIGITS = re.compile(r"[0-9]+")
# RFC 1123 label; underscores are tolerated because service names in the wild use them.
_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


class Reason(ValueError):
    """Why a value does not fit; callers wrap it with the flag, directive or file:line."""


def port(text: str, what: str = "port") -> int:
    """A port number 1-65535 written in ASCII digits (leading zeros allowed)."""
    if not _DIGITS.fullmatch(text):
        raise Reason(f"{what} {text!r} is not a number (expected 1-65535)")
    # Checking the length first keeps absurdly long digit strings cheap and the message short.
    if len(text) > 5 or not 1 <= int(text) <= 65535:
        raise Reason(f"{what} {text} is out of range 1-65535")
    return int(text)


def ip(text: str) -> str:
    """Canonical text of an IP literal. Zone ids (fe80::1%eth0) are refused."""
    if "%" in text:
        raise Reason(f"{text!r}: IPv6 zone ids are not supported")
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise Reason(f"{text!r} is not an IP address") from None


def hostname(text: str) -> str:
    """A DNS name or IP literal, returned in canonical (lower-case) form."""
    if not text:
        raise Reason("host is empty")
    if ":" in text:
        return ip(text)
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        pass
    name = text[:-1] if text.endswith(".") else text
    labels = name.split(".")
    # An all-numeric last label is never a DNS name; it is a mistyped IPv4 address (192.0.2.256).
    if len(name) > 253 or labels[-1].isdigit() or not all(_LABEL.fullmatch(x) for x in labels):
        raise Reason(f"{text!r} is not a valid host name or IP address")
    return text.lower()


def split_bracketed(text: str) -> tuple[str, str | None]:
    """Split "[v6]rest" into ("v6", rest) or return (text, None) when not bracketed."""
    if not text.startswith("["):
        return text, None
    end = text.find("]")
    if end < 0:
        raise Reason("missing ']' after IPv6 address")
    return text[1:end], text[end + 1 :]


def bracketed_ip(inner: str) -> str:
    """The IPv6 address written in brackets; brackets around anything else are an error."""
    host = ip(inner)
    if ":" not in host:
        raise Reason(f"brackets are only for IPv6 addresses, not {inner!r}")
    return host


def split_hostport(text: str, *, empty_host: str = "0.0.0.0") -> tuple[str, int]:
    """`IP:PORT`, `[IPv6]:PORT`, `NAME:PORT` or `:PORT` (host `empty_host`, every interface
    as in Go's net.Listen)."""
    inner, rest = split_bracketed(text)
    if rest is not None:
        host = bracketed_ip(inner)
        if not rest.startswith(":"):
            raise Reason(HOSTPORT_FORM)
        return host, port(rest[1:])
    if text.count(":") != 1:
        raise Reason(f"{HOSTPORT_FORM} (write IPv6 addresses in brackets: [::1]:9100)")
    host, _, number = text.partition(":")
    return (empty_host if host == "" else hostname(host)), port(number)


def split_host_optport(text: str) -> tuple[str, int | None]:
    """`HOST[:PORT]`, `[IPv6][:PORT]` or a bare IPv6 address; port None when left out."""
    if not text:
        raise Reason(f"host is empty ({HOST_OPTPORT_FORM})")
    inner, rest = split_bracketed(text)
    if rest is not None:
        host = bracketed_ip(inner)
        if rest == "":
            return host, None
        if not rest.startswith(":"):
            raise Reason(f"{HOST_OPTPORT_FORM} or [IPv6]:PORT")
        return host, port(rest[1:])
    if text.count(":") > 1:
        # More than one colon without brackets can only be a bare IPv6 address (no port).
        return ip(text), None
    host, colon, number = text.partition(":")
    return hostname(host), (port(number) if colon else None)


def parse_hostport(text: str, flag: str) -> tuple[str, int]:
    """Parse a listen address `IP:PORT`, `[IPv6]:PORT`, `localhost:PORT` or `:PORT`."""
    try:
        return split_hostport(text)
    except Reason as exc:
        raise InvalidValue(flag, text, str(exc)) from None

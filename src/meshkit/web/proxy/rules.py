"""One `proxy` block as parsed (ProxyRule, HeaderOp: what -validate prints), and the
canonical form its configured paths take."""

from __future__ import annotations

from dataclasses import dataclass, field

from meshkit.web.paths import clamp_path
from meshkit.web.proxy.upstream import Upstream


@dataclass
class HeaderOp:
    """`NAME VALUE` sets, `+NAME VALUE` adds, `-NAME` removes, and `NAME REGEX REPLACEMENT`
    (Caddy v1's three-argument form) replaces what REGEX matches in the field's value."""

    op: str  # "set", "add", "del", "replace"
    name: str
    value: str = ""  # the value, or the replacement (Go's `$1`, `${name}` expand)
    regex: str = ""  # for "replace"


@dataclass
class ProxyRule:
    """One `proxy` block as parsed (what -validate prints)."""

    from_path: str
    upstreams: list[Upstream]
    policy: str = "random"
    policy_header: str = ""
    fail_timeout: float = 0.0
    max_fails: int = 1
    max_conns: int = 0
    try_duration: float = 0.0
    try_interval: float = 0.25
    health_check: str = ""
    health_check_interval: float = 30.0
    health_check_timeout: float = 60.0
    health_check_port: int = 0
    health_check_contains: str = ""
    header_upstream: list[HeaderOp] = field(default_factory=list)
    header_downstream: list[HeaderOp] = field(default_factory=list)
    keepalive: int = 128
    timeout: float = 30.0
    without: str = ""
    except_paths: list[str] = field(default_factory=list)
    transparent: bool = False
    websocket: bool = False
    insecure_skip_verify: bool = False
    ca_certificates: list[str] = field(default_factory=list)  # PEM files trusted (only these)
    fallback_delay: float = 0.0  # happy eyeballs: 0 = Go's 300ms, negative = off


def scope(path: str) -> str:
    """A configured path (FROM, `except`, `without`) in the canonical form request paths
    have; one not starting with `/` is left alone (it never matches, as in Caddy v1)."""
    return clamp_path(path) if path.startswith("/") else path

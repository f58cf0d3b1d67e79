"""proxyprotocol CIDR...: the PROXY protocol from trusted load balancers (the Caddy v1 plugin
mastercactapus/caddy-proxyprotocol).

    proxyprotocol 127.0.0.1/32 198.51.100.0/24
    proxyprotocol                 # no range: every source (0.0.0.0/0 ::/0), as the plugin
    proxyprotocol 0.0.0.0/0 ::/0 {
        timeout 5s              # how long the header may take (default 5s; 0 or none: no limit)
    }

A connection from a listed source may start with a PROXY v1 (text) or v2 (binary) header, as
HAProxy, AWS's and meshkit's own load balancers (`meshkit ingress --proxy-protocol v2`, a
published port's `proxy-protocol=v2`) send it: the client address it carries becomes the
connection's, so `{remote}`, the access log, basicauth's failure limits and the proxy's
X-Forwarded-For see the real client. A listed source may also connect without a header (it
is served as itself). A PROXY header from a source that is not listed is refused (the
connection closes) and logged: anyone could otherwise claim any address. The header comes
before TLS on an HTTPS port, as load balancers send it.

It belongs to the listener (the port): the sources of every site on a port are trusted on
that port, and the shortest `timeout` applies (also among the lines of one site: the plugin
kept one timeout per range, a port here has one).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import ClassVar

from meshkit.base import durations
from meshkit.web.caddyfile.tokens import Dispenser
from meshkit.web.directives import passthrough, register
from meshkit.web.site import Site

DEFAULT_TIMEOUT = 5.0
EVERYONE = ("0.0.0.0/0", "::/0")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass
class ProxyProtocolConfig:
    sources: list[str] = field(default_factory=list)  # CIDRs, canonical
    timeout: float = DEFAULT_TIMEOUT  # seconds; 0.0: none

    keeps_static: ClassVar[bool] = True  # the listener's, not per request

    def networks(self) -> list[Network]:
        return [ipaddress.ip_network(s) for s in self.sources]


def _cidr(d: Dispenser, text: str) -> str:
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise d.err(
            f"proxyprotocol: {text!r} is not an address range (CIDR such as 198.51.100.0/24)"
        ) from None
    return str(net)


def parse(d: Dispenser, site: Site) -> ProxyProtocolConfig:
    config = ProxyProtocolConfig()
    line_timeouts: list[float] = []
    while d.next():
        # no range: every source, as the plugin (0.0.0.0/0 and ::/0)
        args = d.remaining_args() or list(EVERYONE)
        for a in args:
            cidr = _cidr(d, a)
            if cidr not in config.sources:
                config.sources.append(cidr)
        timeout = DEFAULT_TIMEOUT
        for _ in d.block():
            option = d.val()
            more = d.remaining_args()
            if option != "timeout":
                raise d.err(f"unknown proxyprotocol option {option!r} (expecting timeout)")
            if len(more) != 1:
                raise d.arg_err()
            timeout = _timeout(d, more[0])
        line_timeouts.append(timeout)
    # the plugin kept a timeout per range; one listener has one, the shortest (0: none)
    config.timeout = min(line_timeouts, default=DEFAULT_TIMEOUT)
    return config


def _timeout(d: Dispenser, text: str) -> float:
    if text == "none":
        return 0.0
    try:
        value = durations.parse_duration(text, "proxyprotocol timeout")
    except durations.DurationError as exc:
        raise d.err(str(exc)) from None
    if value < 0:
        raise d.err(f"proxyprotocol: timeout {text!r} is negative")
    return value


register("proxyprotocol", parse, passthrough)

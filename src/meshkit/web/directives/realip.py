"""realip: the client's address from a header set by trusted proxies (the v1 plugin
captncraig/caddy-realip).

    realip CIDR|PRESET...
    realip {
        from CIDR|PRESET...        # the proxies trusted to set the header (repeatable)
        header NAME                # default X-Forwarded-For
        strict [true|false]        # 403 for what cannot be trusted (see below)
        maxhops N                  # addresses in the header at most (default 5; -1: any)
    }

PRESET is `cloudflare` or `gcp` (the plugin's lists). A request whose peer address is in a
trusted range and that carries the header gets its remote address replaced: the header's
addresses are walked from the right (the one the nearest proxy added) and the first that is
not itself a trusted proxy is the client (all trusted: the leftmost). The original header
value is kept and copied to NAME-Original. {remote}, the access log, basicauth's failure
limits, fastcgi's REMOTE_ADDR and the proxy's X-Forwarded-For all see the new address
(realip runs before log and everything after it).

With `strict`: a peer outside the trusted ranges, an unreadable last address, or an untrusted
hop in the middle of the chain is answered 403, as the plugin did. More addresses than
`maxhops` is always 403.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from meshkit.web.caddyfile.tokens import Dispenser
from meshkit.web.directives import register
from meshkit.web.message import Handler, HandlerResult, Request, Response
from meshkit.web.site import Site

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# From the plugin's presets.go (the providers' published ranges as the plugin shipped them).
# Its `rackspace` preset lists private ranges only and is not carried over: name them with
# `from` instead.
PRESETS: dict[str, tuple[str, ...]] = {
    "cloudflare": (
        "103.21.244.0/22", "103.22.200.0/22", "103.31.4.0/22", "104.16.0.0/12",
        "108.162.192.0/18", "131.0.72.0/22", "141.101.64.0/18", "162.158.0.0/15",
        "172.64.0.0/13", "173.245.48.0/20", "188.114.96.0/20", "190.93.240.0/20",
        "197.234.240.0/22", "198.41.128.0/17", "199.27.128.0/21", "2400:cb00::/32",
        "2405:8100::/32", "2405:b500::/32", "2606:4700::/32", "2803:f800::/32",
        "2a06:98c0::/29", "2c0f:f248::/32",
    ),
    "gcp": ("130.211.0.0/22", "35.191.0.0/16"),
}  # fmt: skip


@dataclass
class RealIPConfig:
    sources: list[str] = field(default_factory=list)  # CIDRs, presets expanded
    header: str = "X-Forwarded-For"
    max_hops: int = 5
    strict: bool = False


def _add_ranges(d: Dispenser, config: RealIPConfig, texts: list[str]) -> None:
    for text in texts:
        preset = PRESETS.get(text)
        if preset is not None:
            config.sources.extend(preset)
            continue
        if "/" not in text:
            raise d.err(f"invalid CIDR address: {text} (a single address is ADDR/32 or ADDR/128)")
        try:
            net = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise d.err(f"invalid CIDR address: {text}") from None
        config.sources.append(str(net))


def _bool(d: Dispenser, args: list[str]) -> bool:
    if len(args) > 1:
        raise d.arg_err()
    if not args or args[0] == "true":
        return True
    if args[0] == "false":
        return False
    raise d.err(f"unexpected bool value: {args[0]}")


def parse(d: Dispenser, site: Site) -> RealIPConfig:
    config: RealIPConfig | None = None
    while d.next():
        if config is not None:
            raise d.err("cannot specify realip more than once")
        config = RealIPConfig()
        _add_ranges(d, config, d.remaining_args())
        for _ in d.block():
            what = d.val()
            args = d.remaining_args()
            if what == "from":
                _add_ranges(d, config, args)
            elif what == "header":
                if len(args) != 1:
                    raise d.arg_err()
                config.header = args[0]
            elif what == "strict":
                config.strict = _bool(d, args)
            elif what == "maxhops":
                if len(args) != 1:
                    raise d.arg_err()
                try:
                    config.max_hops = int(args[0])
                except ValueError:
                    raise d.err(f"maxhops expects a number, got {args[0]!r}") from None
                if config.max_hops < -1:
                    raise d.err("maxhops is -1 (any number) or more")
            elif what == "preserve":
                raise d.err("realip option 'preserve' is not available in meshkit")
            else:
                raise d.err(
                    f"unknown realip option {what!r} (expecting from, header, strict or maxhops)"
                )
    assert config is not None
    if not config.sources:
        raise d.err("realip needs the trusted proxies' addresses (CIDR... or from CIDR)")
    return config


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


class RealIPHandler:
    def __init__(self, config: RealIPConfig, next: Handler) -> None:
        self.nets: tuple[Network, ...] = tuple(ipaddress.ip_network(s) for s in config.sources)
        self.header = config.header
        self.original = config.header + "-Original"
        self.max_hops = config.max_hops
        self.strict = config.strict
        self.next = next

    def trusted(self, addr: ipaddress.IPv4Address | ipaddress.IPv6Address | None) -> bool:
        return addr is not None and any(addr in net for net in self.nets)

    def __call__(self, request: Request) -> HandlerResult:
        if not self.trusted(_ip(request.remote_addr)):
            return Response.error(403) if self.strict else self.next(request)
        value = request.headers.get(self.header)
        if not value:
            return self.next(request)
        request.headers.set(self.original, value)
        parts = value.split(",")
        if self.max_hops != -1 and len(parts) > self.max_hops:
            return Response.error(403)
        if _ip(parts[-1]) is None:
            return Response.error(403) if self.strict else self.next(request)
        for i in range(len(parts) - 1, -1, -1):
            addr = _ip(parts[i])
            if addr is None:
                break  # an unreadable address further left: the last good one stays
            request.remote_addr = str(addr)
            if i > 0 and not self.trusted(addr):
                if self.strict:
                    return Response.error(403)
                break
        return self.next(request)


def build(config: RealIPConfig, next: Handler, site: Site) -> Handler:
    return RealIPHandler(config, next)


register("realip", parse, build)

"""bind HOST: the address the site's listener binds to (Caddy v1).

    bind 127.0.0.1
    bind ::1            # or [::1]
    bind ::             # every IPv6 address and, beside it, every IPv4 address (dual stack)

Without `bind`, a port listens on every IPv4 address and, where the host has IPv6, every IPv6
address too. The listener is per port: when the sites of one port name different addresses,
the port listens on each of them (and serves all of the port's sites there, chosen by Host as
usual); when one site of the port has no `bind`, the port listens on every address. A name
(`bind localhost`) is resolved when the port opens; an address this host does not have is an
error then, naming the address and the port. Several `bind` lines: the last one wins.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import ClassVar

from meshkit.web.caddyfile.tokens import Dispenser
from meshkit.web.directives import passthrough, register
from meshkit.web.site import Site

_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,252})$")


@dataclass
class BindConfig:
    host: str  # an IP address (canonical, no brackets) or a host name

    keeps_static: ClassVar[bool] = True  # configuration of the listener only


def normalize(d: Dispenser, text: str) -> str:
    """An IP address in its canonical form (brackets dropped), or a host name."""
    host = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not _NAME.match(host) or ".." in host:
        raise d.err(f"bind: {text!r} is neither an IP address nor a host name")
    return host.lower()


def parse(d: Dispenser, site: Site) -> BindConfig:
    host = ""
    while d.next():
        args = d.remaining_args()
        if len(args) != 1:
            raise d.arg_err()
        host = normalize(d, args[0])
        for _ in d.block():
            raise d.err("bind takes no block")
    return BindConfig(host)


register("bind", parse, passthrough)

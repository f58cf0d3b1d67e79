"""What the proxy needs from a node agent to follow a swarm service: `service://NAME:PORT`.

A ServiceDirectory is handed to the web server when it runs inside an agent
(meshkit.web.embedded.start_embedded). The proxy reads a service's up task IPs from it,
re-reads them whenever it says something changed, and dials them on sockets it makes (in
the namespace of the overlay network the tasks are on). Without a directory (plain
`meshkit web`) a `service://` upstream is a configuration error.

`expand()` is the pure part: the upstreams a proxy block has right now, its plain ones
as written and each service template replaced by one upstream per up task.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from typing import Protocol

from meshkit.web.proxy.upstream import Upstream

__all__ = ["ServiceDirectory", "expand", "family_of"]


class ServiceDirectory(Protocol):
    """The services of the cluster as the local agent sees them."""

    def known(self, service: str) -> bool:
        """Whether a service of that name exists now."""
        ...

    def endpoints(self, service: str) -> list[str]:
        """The IPs of its up tasks, reachable from sockets made by socket_for."""
        ...

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Run `callback` on the loop after every change; returns the unsubscribe call."""
        ...

    def socket_for(self, service: str, family: int) -> socket.socket:
        """A new non-blocking TCP socket in the namespace where the endpoints are."""
        ...


def family_of(ip: str) -> int | None:
    """AF_INET or AF_INET6 for an IP address text, None when it is not one."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return None
    return socket.AF_INET6 if addr.version == 6 else socket.AF_INET


def expand(
    templates: list[Upstream], endpoints: Callable[[str], list[str]]
) -> tuple[list[Upstream], list[str]]:
    """The upstreams of a block now: plain ones as they are, each `service://NAME:PORT`
    template as one upstream per IP `endpoints(NAME)` gives (its order kept, repeats
    dropped). Also the complaints about endpoints that are not IP addresses."""
    out: list[Upstream] = []
    seen: set[Upstream] = set()
    bad: list[str] = []
    for t in templates:
        if t.scheme != "service":
            items = [t]
        else:
            items = []
            for ip in endpoints(t.host):
                if family_of(ip) is None:
                    bad.append(f"service {t.host!r} gave {ip!r}, which is not an IP address")
                    continue
                items.append(Upstream("http", ip, t.port, service=t.host))
        for u in items:
            if u not in seen:
                seen.add(u)
                out.append(u)
    return out, bad

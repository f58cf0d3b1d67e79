"""Host header and path -> the site that answers (sans-IO; one Router per listening port).

Several sites on one port are virtual hosts. The host is looked up as given (lower-cased,
port and trailing dot dropped), then with its labels replaced by `*` one at a time from the
left (`a.b.example.com`, `*.b.example.com`, `*.*.example.com`, ...), then as the empty host
(sites that match every host). Among a host's sites the longest address path that is a plain
prefix of the request path wins (`/api` also matches `/apix`, as in Caddy). When no site of
that host has a matching path, the next candidate host is tried. No site at all: 404.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from meshkit.web.message import Handler, HandlerResult, Request, Response
from meshkit.web.site import Address


@dataclass(frozen=True)
class Route:
    address: Address
    handler: Handler


def normalize_host(host: str) -> str:
    """The Host header's host part, lower-cased, without port, brackets or trailing dot."""
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        host = host[1:end] if end >= 0 else host[1:]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.rstrip(".")


def host_candidates(host: str) -> list[str]:
    """Exact, then labels replaced by `*` from the left, then the empty host."""
    out = [host] if host else []
    if host and ":" not in host:  # no wildcards for IPv6 literals
        labels = host.split(".")
        for i in range(len(labels)):
            labels[i] = "*"
            out.append(".".join(labels))
    out.append("")
    return out


class Router:
    """Pick a route for a request; calling the router runs the chosen site's handler."""

    def __init__(self, routes: Iterable[Route] = ()) -> None:
        self._hosts: dict[str, list[Route]] = {}
        self._only: Handler | None = None  # one site for every host and path: no lookup
        for route in routes:
            self.add(route)

    def add(self, route: Route) -> None:
        routes = self._hosts.setdefault(route.address.host.lower(), [])
        routes.append(route)
        # longest path first, so the first prefix match is the longest
        routes.sort(key=lambda r: len(r.address.path), reverse=True)
        everything = [r for rs in self._hosts.values() for r in rs]
        only = everything[0] if len(everything) == 1 else None
        catch_all = only is not None and only.address.host == "" and only.address.path == "/"
        self._only = only.handler if only is not None and catch_all else None

    @property
    def routes(self) -> list[Route]:
        return [r for routes in self._hosts.values() for r in routes]

    def match(self, host: str, path: str) -> Route | None:
        hosts = self._hosts
        for candidate in host_candidates(normalize_host(host)):
            routes = hosts.get(candidate)
            if routes is None:
                continue
            for route in routes:
                if path.startswith(route.address.path):
                    return route
        return None

    def __call__(self, request: Request, /) -> HandlerResult:
        if self._only is not None:
            return self._only(request)
        route = self.match(request.host, request.path)
        if route is None:
            return Response.error(404)
        return route.handler(request)

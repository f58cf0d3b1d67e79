"""Host header and path -> the site that answers (sans-IO; one Router per listening port).

Several sites on one port are virtual hosts. The host is looked up as given (lower-cased,
port and trailing dot dropped), then with its labels replaced by `*` one at a time from the
left (`a.b.example.com`, `*.b.example.com`, `*.*.example.com`, ...), then as the empty host
(sites that match every host). Among a host's sites the longest address path that is a plain
prefix of the request path wins (`/api` also matches `/apix`, as in Caddy). When no site of
that host has a matching path, the next candidate host is tried. No site at all: 404.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from meshkit.web.message import Handler, HandlerResult, Request, Response
from meshkit.web.paths import clamp_path
from meshkit.web.site import Address


@dataclass(frozen=True)
class Route:
    """A site address and its handler chain. `static`: the chain has only directives whose
    handlers leave a file response a function of the request head and the files (root,
    index, mime, gzip, browse; see STATIC_DIRECTIVES), plus possibly ones whose only
    per-request effect is an on_complete callback that may be replayed for a later identical
    request head (log; see REPLAYABLE_DIRECTIVES), so the validators the file server puts on
    a response may stay on it (Response.validators); otherwise the router clears them."""

    address: Address
    handler: Handler
    static: bool = False
    # the Site the chain was built from (meshkit.web.ruletable compiles it for the lane)
    site: Any = field(default=None, compare=False, repr=False)


# Directives that keep a site "static" (Route.static): configuration only, or handlers that
# answer from the request head and the files alone, with no per-request side effect.
STATIC_DIRECTIVES = frozenset({"root", "index", "mime", "gzip", "browse"})

# Directives that keep a site static as long as the server replays their request.on_complete
# callbacks for each request answered from a remembered response (with a copy of the request
# that carries the new client address, port and start time; see meshkit.web.respcache): the
# access log, whose line depends on the request head, those and the response alone.
REPLAYABLE_DIRECTIVES = frozenset({"log"})


def site_is_static(directives: dict[str, object]) -> bool:
    """Whether a site with these directives (name -> parsed config) is static: each one is
    in STATIC_DIRECTIVES or REPLAYABLE_DIRECTIVES, or its parsed config says so with a true
    `keeps_static` attribute (e.g. a `header` directive whose values have no placeholders
    could)."""
    return all(
        name in STATIC_DIRECTIVES
        or name in REPLAYABLE_DIRECTIVES
        or getattr(config, "keeps_static", False) is True
        for name, config in directives.items()
    )


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

    # Responses keep validators only from routes that are `static` (see Route). The server
    # answers repeated request heads from remembered responses only for a handler that says
    # so; MESHKIT_NO_RESPCACHE=1 turns that off (benchmarks measure the handlers that way).
    validated_responses = True

    def __init__(self, routes: Iterable[Route] = ()) -> None:
        self.validated_responses = os.environ.get("MESHKIT_NO_RESPCACHE", "") in ("", "0")
        self._hosts: dict[str, list[Route]] = {}
        self._only: Route | None = None  # one site for every host and path: no lookup
        # Host header as received -> the candidate hosts' routes, in order (memoised: a
        # port sees the same few Host values over and over)
        self._by_host: dict[str, list[Route]] = {}
        for route in routes:
            self.add(route)

    def add(self, route: Route) -> None:
        path = clamp_path(route.address.path)
        if path != route.address.path:
            route = replace(route, address=replace(route.address, path=path))
        routes = self._hosts.setdefault(route.address.host.lower(), [])
        routes.append(route)
        # longest path first, so the first prefix match is the longest
        routes.sort(key=lambda r: len(r.address.path), reverse=True)
        everything = [r for rs in self._hosts.values() for r in rs]
        only = everything[0] if len(everything) == 1 else None
        catch_all = only is not None and only.address.host == "" and only.address.path == "/"
        self._only = only if only is not None and catch_all else None
        self._by_host = {}

    @property
    def routes(self) -> list[Route]:
        return [r for routes in self._hosts.values() for r in routes]

    def _candidates(self, host: str) -> list[Route]:
        found = self._by_host.get(host)
        if found is None:
            hosts = self._hosts
            found = []
            for candidate in host_candidates(normalize_host(host)):
                found.extend(hosts.get(candidate, ()))
            if len(self._by_host) >= 1024:
                self._by_host.clear()
            self._by_host[host] = found
        return found

    def match(self, host: str, path: str) -> Route | None:
        for route in self._candidates(host):
            if path.startswith(route.address.path):
                return route
        return None

    def __call__(self, request: Request, /) -> HandlerResult:
        route = self._only
        if route is None:
            for route in self._candidates(request.host):
                if request.path.startswith(route.address.path):
                    break
            else:
                return Response.error(404)
        result = route.handler(request)
        if not route.static and isinstance(result, Response):
            result.validators = None
        return result

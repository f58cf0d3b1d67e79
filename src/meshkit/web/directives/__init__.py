"""The Caddyfile directives: each module holds one directive's `parse` and `build`.

    parse(d: Dispenser, site: Site) -> config   # reads every occurrence of the directive in a
                                                # site; may set site-wide fields; raises
                                                # CaddyfileError naming file:line and token
    build(config, next: Handler, site: Site) -> Handler   # None config never reaches build

Handlers are chained in ORDER whatever order the file uses, the file server last (Caddy v1's
order). A directive that only configures the site (root, index, mime...) returns `next`
from build. `git` runs beside the server, not in the chain.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from meshkit.web.caddyfile.tokens import Dispenser
from meshkit.web.message import Handler
from meshkit.web.site import Site

ORDER = [
    "root",
    "index",
    "limits",
    "log",
    "rewrite",
    "ext",
    "gzip",
    "header",
    "errors",
    "basicauth",
    "redir",
    "status",
    "mime",
    "internal",
    "proxy",
    "fastcgi",
    "browse",
    "git",
]


@dataclass(frozen=True)
class Directive:
    name: str
    parse: Callable[[Dispenser, Site], Any]
    build: Callable[[Any, Handler, Site], Handler]


REGISTRY: dict[str, Directive] = {}


def register(
    name: str,
    parse: Callable[[Dispenser, Site], Any],
    build: Callable[[Any, Handler, Site], Handler],
) -> None:
    if name not in ORDER:
        raise ValueError(f"directive {name!r} has no place in ORDER")
    REGISTRY[name] = Directive(name, parse, build)


def passthrough(config: Any, next: Handler, site: Site) -> Handler:
    """`build` for directives that only configure the site."""
    return next

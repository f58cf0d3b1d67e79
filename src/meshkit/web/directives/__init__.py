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

import difflib
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from meshkit.base.errors import MeshkitError
from meshkit.web.caddyfile.tokens import Dispenser
from meshkit.web.message import Handler
from meshkit.web.site import Site

ORDER = [
    "tls",  # configuration only (the listener's certificates and options)
    "root",
    "index",
    "bind",  # listener options (configuration only)
    "timeouts",
    "startup",  # process events (configuration only)
    "shutdown",
    "on",
    "request_id",
    "proxyprotocol",  # listener middleware: the real client before anything logs it
    "realip",
    "log",  # outside limits (unlike Caddy): the requests limits refuses are logged too
    # before basicauth, rewrite and redir: a site's own protections must not answer its
    # deploy webhook (which checks its secret itself)
    "git",
    "limits",
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
    "expvar",
    "push",
    "templates",
    "proxy",
    "fastcgi",
    "websocket",
    "markdown",
    "browse",
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


# --- loading the directive modules and checking names ------------------------------------

# Directives of Caddy v1 (and its popular plugins) that meshkit does not have: naming one is
# a clear "not available" rather than "unknown".
NOT_IN_MESHKIT = {
    "pprof",
    "maxrequestbody",
    "cors",
    "ipfilter",
    "ratelimit",
    "jwt",
    "minify",
    "prometheus",
    "expires",
    "cache",
    "webdav",
    "upload",
    "filemanager",
    "cgi",
}

_loaded = False


def load_all() -> None:
    """Import every directive module that exists (each registers itself)."""
    global _loaded
    if _loaded:
        return
    for name in ORDER:
        module = f"{__name__}.{name}"
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:  # the module exists but something it imports does not
                raise
    _loaded = True


def check_directive(name: str) -> str | None:
    """None when `name` is a directive this meshkit can parse, else the error message."""
    if name in REGISTRY:
        return None
    if name in ORDER or name in NOT_IN_MESHKIT:
        return f"directive {name!r} is not available in this version of meshkit"
    close = difflib.get_close_matches(name, list(REGISTRY), n=1, cutoff=0.75)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown directive {name!r}{hint}"


# --- the chain ------------------------------------------------------------------------------


def build_chain(site: Site, last: Handler | None = None) -> Handler:
    """The site's handler: each configured directive's handler wrapped around the file server
    (or `last`) in ORDER, the first in ORDER outermost, whatever order the file used."""
    if last is None:
        from meshkit.web.fileserver import build_fileserver

        last = build_fileserver(site)
    handler = last
    for name in reversed(ORDER):
        if name not in site.directives:
            continue
        config = site.directives[name]
        if config is None:
            continue
        directive = REGISTRY.get(name)
        if directive is None:
            raise MeshkitError(f"directive {name!r} is not available in this version of meshkit")
        handler = directive.build(config, handler, site)
    return handler

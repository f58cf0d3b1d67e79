"""One site of a Caddyfile as the handlers see it: where its files are and what it hides.

The parser (meshkit.web.caddyfile) fills a Site from a site block: the addresses, then each
directive's `parse` (which may set site-wide fields such as root or index_files), then
meshkit.web.directives.build_chain() wraps the handlers around the file server in the fixed
order. Everything here is plain data; there is no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from meshkit.web.proxy.services import ServiceDirectory

DEFAULT_PORT = 2015
DEFAULT_INDEX = [
    "index.html",
    "index.htm",
    "index.txt",
    "default.html",
    "default.htm",
    "default.txt",
]


@dataclass(frozen=True)
class Address:
    """`[scheme://]host[:port][/path]` of a site block. host "" matches every host."""

    original: str  # as written, for messages
    scheme: str = "http"
    host: str = ""  # lower-cased; may start with "*." (wildcard label)
    port: int = DEFAULT_PORT
    path: str = "/"  # the base path the site answers under (longest prefix wins)
    # how it was written (Caddy v1's automatic HTTPS looks at these), not part of the config
    scheme_given: bool = field(default=False, compare=False, metadata={"json": False})
    implicit_port: bool = field(default=False, compare=False, metadata={"json": False})


@dataclass
class BodyLimit:
    path: str  # base path (plain prefix); "/" for all
    size: int  # bytes


class Background(Protocol):
    """Work a directive runs beside the server for as long as its site is served (git pulls,
    proxy health checks). `build` adds it to `Site.background`; the app starts it once the
    site's ports are open and stops it when the site goes away (reload, shutdown). Neither
    call may raise for a failure of the work itself: that is logged."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


@dataclass
class Site:
    addresses: list[Address]
    root: str = "."  # absolute once the site is built (relative to the working directory)
    index_files: list[str] = field(default_factory=lambda: list(DEFAULT_INDEX))
    config_path: str | None = None  # the Caddyfile, never served
    hidden: list[str] = field(default_factory=list)  # absolute file paths never served
    internal: list[str] = field(default_factory=list)  # path prefixes only reachable internally
    mime: dict[str, str] = field(default_factory=dict)  # ".ext" -> type, from the mime directive
    browse_on: bool = False  # some browse directive is configured (no welcome page then)
    header_limit: int | None = None  # limits header SIZE (bytes)
    body_limits: list[BodyLimit] = field(default_factory=list)
    # name -> the parsed config of each directive present (in the fixed order); what
    # `meshkit web -validate --json` and the golden tests print
    directives: dict[str, Any] = field(default_factory=dict)
    # filled by the directives' build(): what runs beside the server for this site
    background: list[Background] = field(default_factory=list, metadata={"json": False})
    # the node agent's services when the server runs inside one (service:// upstreams);
    # None for plain `meshkit web`
    services: ServiceDirectory | None = field(default=None, metadata={"json": False})

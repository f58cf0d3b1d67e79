"""The header rules of a proxy block, both ways: the request head sent upstream (origin-form
target from the canonical path, `without` stripped, hop-by-hop fields dropped, Host and
X-Forwarded-* set, header_upstream applied) and the fields of the upstream's response the
client gets (header_downstream applied). Heads and field lists are remembered: clients
repeat the same requests, and upstreams the same responses.

What goes upstream is always an origin-form target made from the canonical `request.path`
(meshkit.web.paths) re-encoded, plus the query: never the target as received, so an
absolute-form target (`GET http://other.example/x`) or a raw `/api/../secret` cannot make
the upstream see another resource than the one the proxy's own scope (and every directive
before it, basicauth included) judged.
"""

from __future__ import annotations

import functools
from typing import Any, Protocol
from urllib.parse import quote

from meshkit.web.message import Headers, Request, Response
from meshkit.web.proxy.client import Reply, Stream
from meshkit.web.proxy.headerops import HeaderOps
from meshkit.web.proxy.rules import ProxyRule, scope
from meshkit.web.proxy.upstream import Upstream


class UpstreamSetLike(Protocol):
    """What ``Heads`` uses of a route's set of upstreams (meshkit.web.proxy.route.UpstreamSet,
    which holds these as plain slots)."""

    @property
    def upstreams(self) -> list[Upstream]: ...

    @property
    def hosts(self) -> list[str]: ...  # `Host: ...\r\n` per upstream

    @property
    def heads(self) -> dict[tuple[Any, ...], tuple[bytes, str | None]]: ...  # remembered heads


# Hop-by-hop fields (RFC 9110 7.6.1): never forwarded either way.
HOP = frozenset(
    (
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    )
)


# What stays unencoded in the path sent upstream: unreserved characters (quote keeps
# letters, digits and `_.-~` always), `/`, and the sub-delims, `:` and `@` that RFC 3986
# allows in a segment. Everything else (`%`, `?`, `#`, spaces, CTLs, non-ASCII) is
# percent-encoded, so the upstream decodes back exactly the canonical path.
_PATH_SAFE = "/:@!$&'()*+,;=~"


@functools.lru_cache(maxsize=4096)
def _encoded(path: str) -> str:
    """The canonical path percent-encoded for the request line (cached: clients repeat)."""
    return quote(path, safe=_PATH_SAFE)


def target(request: Request) -> str:
    """The origin-form target sent upstream (and hashed by uri_hash): canonical path and
    query. `without` is applied on top of it when the head is made."""
    query = request.query
    return _encoded(request.path) + ("?" + query if query else "")


def _downstream(raw: list[tuple[str, str]]) -> tuple[list[tuple[str, str]], str | None]:
    """The upstream's response fields the client gets (hop-by-hop ones dropped, also those
    the upstream's Connection names), and its Content-Length."""
    items: list[tuple[str, str]] = []
    length: str | None = None
    named: set[str] | None = None
    for item in raw:
        low = item[0].lower()
        if low in HOP:
            if low == "connection":
                named = named or set()
                named.update(t.strip().lower() for t in item[1].split(","))
            continue
        if low == "content-length":
            length = item[1]
        items.append(item)
    if named:
        items = [i for i in items if i[0].lower() not in named]
    return items, length


_REMEMBERED = 256  # heads and field lists remembered per proxy block
_REMEMBER_BELOW = 4096  # bytes of a request head worth remembering
_REMEMBER_FIELDS = 32  # fields of a response head worth remembering

# Request fields never copied upstream as they are: hop-by-hop ones, and those the proxy
# sets itself (Host, X-Forwarded-For) or handles (Expect: the server answers 100 Continue).
_SKIP = HOP | {"host", "expect", "x-forwarded-for"}


def _copied(
    headers: Headers, skip: frozenset[str] | set[str]
) -> tuple[list[tuple[str, str]], str, str, str | None]:
    """(fields to copy, X-Forwarded-For so far, Connection, Upgrade) of a request."""
    kept: list[tuple[str, str]] = []
    xff = connection = ""
    upgrade: str | None = None
    for item in headers:
        low = item[0].lower()
        if low in skip:
            if low == "x-forwarded-for":
                xff = f"{xff}, {item[1]}" if xff else item[1]
            elif low == "connection":
                connection = f"{connection}, {item[1]}" if connection else item[1]
            elif low == "upgrade" and upgrade is None:
                upgrade = item[1]
            continue
        kept.append(item)
    return kept, xff, connection, upgrade


class Heads:
    """The header rules of one block, compiled, and the heads and field lists made by them
    lately."""

    __slots__ = (
        "close_upstream",
        "down_ops",
        "filtered",
        "transparent",
        "up_ops",
        "websocket",
        "without",
    )

    def __init__(self, rule: ProxyRule) -> None:
        self.up_ops = HeaderOps(rule.header_upstream) if rule.header_upstream else None
        self.down_ops = HeaderOps(rule.header_downstream) if rule.header_downstream else None
        self.without = scope(rule.without) if rule.without else ""
        self.transparent = rule.transparent
        # Caddy v1 drops Connection and Upgrade like every hop-by-hop field; `websocket`
        # passes them on, so only a block with it lets a client upgrade (to anything)
        # (v1's `websocket` is `header_upstream Connection {>Connection}` and `Upgrade
        # {>Upgrade}`: a block that writes an Upgrade rule itself passes upgrades on too)
        self.websocket = rule.websocket or any(
            o.op in ("set", "add") and o.name.lower() == "upgrade" for o in rule.header_upstream
        )
        self.close_upstream = rule.keepalive <= 0
        # the client's fields for each upstream head seen lately (see response_for)
        self.filtered: dict[int, tuple[list[tuple[str, str]], list[tuple[str, str]], str | None]]
        self.filtered = {}

    def head_for(
        self, uset: UpstreamSetLike, request: Request, index: int
    ) -> tuple[bytes, str | None]:
        """The request head for upstream `index` of `uset`, and the protocol the client
        asked to upgrade to (None when it did not). Remembered by what it is made of
        (clients repeat the same requests) unless header_upstream may use placeholders."""
        if self.up_ops is not None:
            return self._make_head(uset, request, index)
        key = (
            index,
            request.method,
            request.path,
            request.query,
            request.remote_addr,
            request.host,
            request.scheme,
            request.server_port,
            request.body.length is None,
            *request.headers._items,
        )
        heads = uset.heads
        known = heads.get(key)
        if known is None:
            known = self._make_head(uset, request, index)
            # the key holds the request's fields: remember small requests only
            if len(known[0]) <= _REMEMBER_BELOW:
                if len(heads) >= _REMEMBERED:
                    heads.clear()
                heads[key] = known
        return known

    def _make_head(
        self, uset: UpstreamSetLike, request: Request, index: int
    ) -> tuple[bytes, str | None]:
        path = request.path  # canonical (never request.uri: see the module's doc)
        if self.without and path.startswith(self.without):
            path = path[len(self.without) :]
            if not path.startswith("/"):
                path = "/" + path
        uri = _encoded(path)
        query = request.query
        up = uset.upstreams[index]
        if up.base:
            # v1's singleJoiningSlash: the base path, then the request's with one `/` between
            uri = up.base.rstrip("/") + uri if up.base.endswith("/") else up.base + uri
        if up.query:
            query = f"{up.query}&{query}" if query else up.query
        uri += "?" + query if query else ""
        kept, xff, connection, upgrade_to = _copied(request.headers, _SKIP)
        if connection:
            # the fields the client's Connection names are hop-by-hop too (rare: scan again)
            named = {t.strip().lower() for t in connection.split(",")} - HOP
            if named:
                kept = _copied(request.headers, _SKIP | named)[0]
        upgrade = None
        if self.websocket and upgrade_to is not None and "upgrade" in connection.lower():
            upgrade = upgrade_to
        remote = request.remote_addr
        forwarded = f"{xff}, {remote}" if xff else remote
        if self.up_ops is not None:
            return self._head_with_ops(uset, request, index, uri, kept, forwarded, upgrade), upgrade
        parts = [request.method, " ", uri, " HTTP/1.1\r\n"]
        for name, value in kept:
            parts += (name, ": ", value, "\r\n")
        if self.transparent:
            parts += (
                "Host: ",
                request.host,
                "\r\nX-Real-IP: ",
                remote,
                "\r\nX-Forwarded-Proto: ",
                request.scheme,
                "\r\nX-Forwarded-Port: ",
                str(request.server_port),
                "\r\n",
            )
        else:
            parts.append(uset.hosts[index])
        parts += ("X-Forwarded-For: ", forwarded, "\r\n")
        if request.body.length is None:
            parts.append("Transfer-Encoding: chunked\r\n")
        if upgrade is not None:
            parts += ("Connection: Upgrade\r\nUpgrade: ", upgrade, "\r\n")
        elif self.close_upstream:
            parts.append("Connection: close\r\n")
        parts.append("\r\n")
        return "".join(parts).encode("latin-1", "replace"), upgrade

    def _head_with_ops(
        self,
        uset: UpstreamSetLike,
        request: Request,
        index: int,
        uri: str,
        kept: list[tuple[str, str]],
        forwarded: str,
        upgrade: str | None,
    ) -> bytes:
        # header_upstream may target fields copied from the request too: apply it to all
        headers = Headers(kept)
        extra: list[tuple[str, str]] = []
        if self.transparent:
            extra.append(("Host", request.host))
            extra.append(("X-Real-IP", request.remote_addr))
            extra.append(("X-Forwarded-Proto", request.scheme))
            extra.append(("X-Forwarded-Port", str(request.server_port)))
        else:
            extra.append(("Host", uset.upstreams[index].host_header))
        extra.append(("X-Forwarded-For", forwarded))
        if request.body.length is None:
            extra.append(("Transfer-Encoding", "chunked"))
        if upgrade is not None:
            extra.append(("Connection", "Upgrade"))
            extra.append(("Upgrade", upgrade))
        elif self.close_upstream:
            extra.append(("Connection", "close"))
        for name, value in extra:
            headers.set(name, value)
        assert self.up_ops is not None
        self.up_ops.apply(headers, request)
        parts = [request.method, " ", uri, " HTTP/1.1\r\n"]
        for name, value in headers:
            parts += (name, ": ", value, "\r\n")
        parts.append("\r\n")
        return "".join(parts).encode("latin-1", "replace")

    def fields_for(self, raw: list[tuple[str, str]]) -> tuple[list[tuple[str, str]], str | None]:
        """The client's fields for an upstream head (hop-by-hop ones dropped; before
        header_downstream) and its Content-Length. The list is shared: copy to change."""
        known = self.filtered.get(id(raw))
        if known is not None and known[0] is raw:
            # the same (shared, parsed once) upstream head as before
            return known[1], known[2]
        items, length = _downstream(raw)
        if len(raw) <= _REMEMBER_FIELDS:
            if len(self.filtered) >= _REMEMBERED:
                self.filtered.clear()
            self.filtered[id(raw)] = (raw, items, length)
        return items, length

    def response_for(self, request: Request, reply: Reply) -> Response:
        raw = reply.headers
        items, length = self.fields_for(raw)
        headers = Headers(items)
        body = reply.body
        if isinstance(body, Stream) and length is not None and length.isdigit():
            body.content_length = int(length)
        if self.down_ops is not None:
            # `{<Name}` reads the upstream's answer as it came, before these rules
            self.down_ops.apply(headers, request, Response(reply.status, Headers(raw)))
        return Response(reply.status, headers, body)

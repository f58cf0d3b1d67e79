"""The proxy handler: which block takes a request, which upstream, the headers both ways,
retries within try_duration, passive failure marking, and the 502/504 answers.

A request goes to the block with the longest FROM prefix matching its path (unless an
`except` path matches); other requests go on down the chain. Errors name the upstream in the
log (logger "meshkit.web") only; the client gets the plain 502/504 page.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from meshkit.lb.pick import Picker, Ticket
from meshkit.web.message import Handler, HandlerResult, Headers, Request, Response
from meshkit.web.placeholders import Template, compile_template
from meshkit.web.proxy.client import (
    ConnectFailed,
    Pool,
    Reply,
    Stream,
    UpstreamError,
    UpstreamTimeout,
    exchange,
)
from meshkit.web.proxy.tunnel import relay
from meshkit.web.proxy.upstream import Upstream

__all__ = ["HeaderOp", "ProxyRule", "build_handler"]

log = logging.getLogger("meshkit.web")

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
_HOP_BYTES = frozenset(h.encode() for h in HOP)


@dataclass
class HeaderOp:
    """`NAME VALUE` sets, `+NAME VALUE` adds, `-NAME` removes."""

    op: str  # "set", "add", "del"
    name: str
    value: str = ""


@dataclass
class ProxyRule:
    """One `proxy` block as parsed (what -validate prints)."""

    from_path: str
    upstreams: list[Upstream]
    policy: str = "random"
    policy_header: str = ""
    fail_timeout: float = 0.0
    max_fails: int = 1
    max_conns: int = 0
    try_duration: float = 0.0
    try_interval: float = 0.25
    health_check: str = ""
    health_check_interval: float = 30.0
    health_check_timeout: float = 60.0
    health_check_port: int = 0
    health_check_contains: str = ""
    header_upstream: list[HeaderOp] = field(default_factory=list)
    header_downstream: list[HeaderOp] = field(default_factory=list)
    keepalive: int = 32
    timeout: float = 30.0
    without: str = ""
    except_paths: list[str] = field(default_factory=list)
    transparent: bool = False
    websocket: bool = False
    insecure_skip_verify: bool = False


class _Ops:
    __slots__ = ("ops",)

    def __init__(self, ops: list[HeaderOp]) -> None:
        self.ops: list[tuple[str, str, Template]] = [
            (o.op, o.name, compile_template(o.value)) for o in ops
        ]

    def apply(self, headers: Headers, request: Request) -> None:
        for op, name, value in self.ops:
            if op == "del":
                headers.remove(name)
            elif op == "add":
                headers.add(name, value.render(request))
            else:
                headers.set(name, value.render(request))


def _ssl_context(insecure: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class _Route:
    """A parsed rule made ready to serve: pools, picker, compiled header operations."""

    def __init__(self, rule: ProxyRule) -> None:
        self.rule = rule
        self.from_path = rule.from_path
        self.excepts = [e for e in rule.except_paths]
        self.upstreams = rule.upstreams
        ctx = None
        if any(u.scheme == "https" for u in rule.upstreams):
            ctx = _ssl_context(rule.insecure_skip_verify)
        self.pools = [Pool(u, rule.keepalive, rule.timeout, ctx) for u in rule.upstreams]
        self.picker = Picker(
            len(rule.upstreams),
            rule.policy,
            max_conns=rule.max_conns,
            max_fails=rule.max_fails,
            fail_timeout=rule.fail_timeout,
        )
        self.up_ops = _Ops(rule.header_upstream) if rule.header_upstream else None
        self.down_ops = _Ops(rule.header_downstream) if rule.header_downstream else None
        self.header_name = rule.policy_header
        self.without = rule.without
        self.transparent = rule.transparent
        self.close_upstream = rule.keepalive <= 0

    def matches(self, path: str) -> bool:
        if not path.startswith(self.from_path):
            return False
        return all(not path.startswith(e) for e in self.excepts)

    def head_for(self, request: Request, upstream: Upstream, upgrade: str | None) -> bytes:
        uri = request.uri
        if self.without and uri.startswith(self.without):
            uri = uri[len(self.without) :]
            if not uri.startswith("/"):
                uri = "/" + uri
        headers = request.headers
        connection = headers.get("Connection")
        drop = HOP
        if connection:
            drop = HOP | {t.strip().lower() for t in connection.split(",")}
        parts = [f"{request.method} {uri} HTTP/1.1\r\n"]
        xff = ""
        for name, value in headers:
            low = name.lower()
            if low in drop or low == "host" or low == "expect":
                continue
            if low == "x-forwarded-for":
                xff = f"{xff}, {value}" if xff else value
                continue
            parts.append(f"{name}: {value}\r\n")
        remote = request.remote_addr
        # distinct names: a plain list (Headers.set is a scan per call, on the hot path)
        out = Headers()
        extra = out._items
        if self.transparent:
            extra.append(("Host", request.host))
            extra.append(("X-Real-IP", remote))
            extra.append(("X-Forwarded-Proto", request.scheme))
            extra.append(("X-Forwarded-Port", str(request.server_port)))
        else:
            extra.append(("Host", upstream.host_header))
        extra.append(("X-Forwarded-For", f"{xff}, {remote}" if xff else remote))
        if request.body.length is None:
            extra.append(("Transfer-Encoding", "chunked"))
        if upgrade is not None:
            extra.append(("Connection", "Upgrade"))
            extra.append(("Upgrade", upgrade))
        elif self.close_upstream:
            extra.append(("Connection", "close"))
        if self.up_ops is not None:
            # header_upstream may target fields copied from the request too: apply it to all
            copied = Headers(
                [tuple(p[:-2].split(": ", 1)) for p in parts[1:]]  # type: ignore[misc]
            )
            for name, value in out:
                copied.set(name, value)
            self.up_ops.apply(copied, request)
            parts, out = parts[:1], copied
        for name, value in out:
            parts.append(f"{name}: {value}\r\n")
        parts.append("\r\n")
        return "".join(parts).encode("latin-1", "replace")

    def response_for(self, request: Request, reply: Reply, upstream: Upstream) -> Response:
        raw = reply.headers
        connection = b""
        for n, v in raw:
            if n.lower() == b"connection":
                connection = v.lower()
        items: list[tuple[str, str]] = []
        length: str | None = None
        for n, v in raw:
            low = n.lower()
            if low in _HOP_BYTES or (connection and low in connection.split(b",")):
                continue
            name = n.decode("latin-1")
            value = v.decode("latin-1")
            if low == b"content-length":
                length = value
            items.append((name, value))
        headers = Headers(items)
        body = reply.body
        if isinstance(body, Stream) and length is not None and length.isdigit():
            body.content_length = int(length)
        if self.down_ops is not None:
            self.down_ops.apply(headers, request)
        return Response(reply.status, headers, body)


def _gateway_error(status: int) -> Response:
    return Response.error(status)


class ProxyHandler:
    def __init__(self, routes: list[_Route], next: Handler) -> None:
        # longest FROM first: the most specific block wins
        self.routes = sorted(routes, key=lambda r: len(r.from_path), reverse=True)
        self.next = next

    def __call__(self, request: Request) -> HandlerResult:
        path = request.path
        for route in self.routes:
            if route.matches(path):
                return self.serve(route, request)
        return self.next(request)

    async def serve(self, route: _Route, request: Request) -> Response:
        loop = asyncio.get_running_loop()
        rule = route.rule
        picker = route.picker
        start = loop.time()
        deadline = start + rule.try_duration
        exclude: set[int] = set()
        header_value = request.headers.get(route.header_name) if route.header_name else None
        upgrade: str | None = None
        if "Upgrade" in request.headers:
            conn_tokens = (request.headers.get("Connection") or "").lower()
            if "upgrade" in conn_tokens:
                upgrade = request.headers.get("Upgrade")
        method = request.method
        body = None if request.body.length == 0 else request.body
        chunked = request.body.length is None
        status = 502
        while True:
            ticket = picker.pick(
                loop.time(),
                client_ip=request.remote_addr,
                uri=request.uri,
                header_value=header_value,
                exclude=exclude,
            )
            if ticket is None:
                if exclude and loop.time() < deadline:
                    exclude.clear()
                    await asyncio.sleep(rule.try_interval)
                    continue
                if not exclude:
                    log.error(
                        "proxy %s: no upstream available for %s %s",
                        route.from_path,
                        method,
                        request.uri,
                    )
                return _gateway_error(status)
            index = ticket.index
            upstream = route.upstreams[index]
            request.vars["upstream"] = upstream.name
            head = route.head_for(request, upstream, upgrade)
            try:
                reply = await exchange(
                    route.pools[index],
                    head,
                    body,
                    chunked,
                    method == "HEAD",
                    rule.timeout,
                    _done(picker, ticket, upstream, loop),
                )
            except UpstreamError as exc:
                picker.release(ticket)
                picker.fail(index, loop.time())
                status = 504 if isinstance(exc, UpstreamTimeout) else 502
                log.error(
                    "proxy to %s for %s %s failed: %s", upstream.name, method, request.uri, exc
                )
                if isinstance(exc, ConnectFailed) and loop.time() < deadline:
                    exclude.add(index)
                    continue
                return _gateway_error(status)
            response = route.response_for(request, reply, upstream)
            if reply.conn is not None:
                response.upgrade = _taker(reply.conn)
                if upgrade is None:
                    reply.conn.close()
                    return _gateway_error(502)
            return response


def _taker(conn: Any) -> Callable[[socket.socket, bytes], Awaitable[None]]:
    transport = conn.transport
    rest = conn.upgrade_rest or b""

    async def take(sock: socket.socket, client_rest: bytes) -> None:
        await relay(sock, client_rest, transport, rest)

    return take


def _done(
    picker: Picker, ticket: Ticket, upstream: Upstream, loop: asyncio.AbstractEventLoop
) -> Callable[[bool], None]:
    def done(ok: bool) -> None:
        picker.release(ticket)
        if not ok:
            log.error("proxy: the response body from %s broke off", upstream.name)
            picker.fail(ticket.index, loop.time())

    return done


def build_handler(routes: list[_Route], next: Handler) -> ProxyHandler:
    return ProxyHandler(routes, next)


def make_route(rule: ProxyRule) -> _Route:
    return _Route(rule)

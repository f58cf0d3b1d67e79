"""The proxy handler: which block takes a request, which upstream, the headers both ways,
retries within try_duration, passive failure marking, and the 502/504 answers.

A request goes to the block with the longest FROM prefix matching its path (unless an
`except` path matches); other requests go on down the chain.

A request without a body that finds a kept connection to the upstream picked for it takes the
fast path: routing, picking and writing the head happen in the handler call, which returns a
plain Future resolved from the connection's data_received (see meshkit.web.proxy.client).
Everything else (dialling, request bodies, upgrades, retries within try_duration, a stale
kept connection re-dialled) runs in the `serve` coroutine. Both share the head building, the
header rules and the error mapping (`_Route`). Errors name the upstream in the
log (logger "meshkit.web") only; the client gets the plain 502/504 page.
"""

from __future__ import annotations

import asyncio
import functools
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
    Deadlines,
    Pool,
    Reply,
    Stream,
    UpstreamError,
    UpstreamTimeout,
    broken,
    exchange,
    finish,
    may_retry,
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
    keepalive: int = 128
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
    """A parsed rule made ready to serve: pools, picker, compiled header operations and the
    per-upstream static tail of the request head."""

    def __init__(self, rule: ProxyRule) -> None:
        self.rule = rule
        self.from_path = rule.from_path
        self.excepts = [e for e in rule.except_paths]
        self.upstreams = rule.upstreams
        ctx = None
        if any(u.scheme == "https" for u in rule.upstreams):
            ctx = _ssl_context(rule.insecure_skip_verify)
        self.deadlines = Deadlines()
        self.pools = [
            Pool(u, rule.keepalive, rule.timeout, ctx, self.deadlines) for u in rule.upstreams
        ]
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
        # `Host: ...\r\n` per upstream (transparent sends the client's Host instead)
        self.hosts = [f"Host: {u.host_header}\r\n" for u in rule.upstreams]
        self.names = [u.name for u in rule.upstreams]
        # the client's fields for each upstream head seen lately (see response_for)
        self.filtered: dict[int, tuple[list[tuple[str, str]], list[tuple[str, str]], str | None]]
        self.filtered = {}
        # request heads by everything they are made of (see head_for)
        self.heads: dict[tuple[Any, ...], tuple[bytes, str | None]] = {}

    def matches(self, path: str) -> bool:
        if not path.startswith(self.from_path):
            return False
        return not self.excepts or all(not path.startswith(e) for e in self.excepts)

    def head_for(self, request: Request, index: int) -> tuple[bytes, str | None]:
        """The request head for upstream `index`, and the protocol the client asked to
        upgrade to (None when it did not). Remembered by what it is made of (clients repeat
        the same requests) unless header_upstream may use placeholders."""
        if self.up_ops is not None:
            return self._make_head(request, index)
        key = (
            index,
            request.method,
            request.uri,
            request.remote_addr,
            request.host,
            request.scheme,
            request.server_port,
            request.body.length is None,
            *request.headers._items,
        )
        known = self.heads.get(key)
        if known is None:
            known = self._make_head(request, index)
            # the key holds the request's fields: remember small requests only
            if len(known[0]) <= _REMEMBER_BELOW:
                if len(self.heads) >= _REMEMBERED:
                    self.heads.clear()
                self.heads[key] = known
        return known

    def _make_head(self, request: Request, index: int) -> tuple[bytes, str | None]:
        uri = request.uri
        if self.without and uri.startswith(self.without):
            uri = uri[len(self.without) :]
            if not uri.startswith("/"):
                uri = "/" + uri
        kept, xff, connection, upgrade_to = _copied(request.headers, _SKIP)
        if connection:
            # the fields the client's Connection names are hop-by-hop too (rare: scan again)
            named = {t.strip().lower() for t in connection.split(",")} - HOP
            if named:
                kept = _copied(request.headers, _SKIP | named)[0]
        upgrade = None
        if upgrade_to is not None and "upgrade" in connection.lower():
            upgrade = upgrade_to
        remote = request.remote_addr
        forwarded = f"{xff}, {remote}" if xff else remote
        if self.up_ops is not None:
            return self._head_with_ops(request, index, uri, kept, forwarded, upgrade), upgrade
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
            parts.append(self.hosts[index])
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
            extra.append(("Host", self.upstreams[index].host_header))
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

    def response_for(self, request: Request, reply: Reply) -> Response:
        raw = reply.headers
        known = self.filtered.get(id(raw))
        if known is not None and known[0] is raw:
            # the same (shared, parsed once) upstream head as before
            headers = Headers(known[1])
            length = known[2]
        else:
            items, length = _downstream(raw)
            if len(raw) <= _REMEMBER_FIELDS:
                if len(self.filtered) >= _REMEMBERED:
                    self.filtered.clear()
                self.filtered[id(raw)] = (raw, items, length)
            headers = Headers(items)
        body = reply.body
        if isinstance(body, Stream) and length is not None and length.isdigit():
            body.content_length = int(length)
        if self.down_ops is not None:
            self.down_ops.apply(headers, request)
        return Response(reply.status, headers, body)

    def failed(self, request: Request, ticket: Ticket, exc: UpstreamError, now: float) -> int:
        """Account for and log a failed exchange; the status it means (502 or 504)."""
        picker = self.picker
        picker.release(ticket)
        picker.fail(ticket.index, now)
        log.error(
            "proxy to %s for %s %s failed: %s",
            self.upstreams[ticket.index].name,
            request.method,
            request.uri,
            exc,
        )
        return 504 if isinstance(exc, UpstreamTimeout) else 502


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


def _gateway_error(status: int) -> Response:
    return Response.error(status)


class _Fast:
    """A request sent synchronously on a kept connection, answered through a plain Future
    from the connection's data_received (no task, no coroutine)."""

    __slots__ = ("fut", "handler", "request", "route", "ticket")

    def __init__(
        self,
        handler: ProxyHandler,
        route: _Route,
        request: Request,
        ticket: Ticket,
        fut: asyncio.Future[Response],
    ) -> None:
        self.handler = handler
        self.route = route
        self.request = request
        self.ticket = ticket
        self.fut = fut

    def __call__(self, conn: Any) -> None:
        fut = self.fut
        route = self.route
        if fut.done():
            # cancelled: the client went away; keep the connection if the answer is whole
            if conn.error is None and conn.done and conn.status != 101:
                conn.take_body()
                conn.pool.put(conn)
            else:
                conn.close()
            route.picker.release(self.ticket)
            return
        if conn.error is None:
            reply = finish(conn, None, self.done)
            if reply.conn is not None:  # 101 to a request that asked for no upgrade
                reply.conn.close()
                fut.set_result(_gateway_error(502))
                return
            fut.set_result(route.response_for(self.request, reply))
            return
        request = self.request
        if may_retry(conn, True, request.method, False):
            broken(conn)
            loop = fut.get_loop()
            task = loop.create_task(self.handler.serve(route, request, self.ticket, True))
            task.add_done_callback(functools.partial(_pass_on, fut))
            fut.add_done_callback(functools.partial(_cancel_with, task))
            return
        exc = broken(conn)
        fut.set_result(_gateway_error(route.failed(request, self.ticket, exc, _now(fut))))

    def done(self, ok: bool) -> None:
        ticket = self.ticket
        self.route.picker.release(ticket)
        if not ok:
            log.error(
                "proxy: the response body from %s broke off",
                self.route.upstreams[ticket.index].name,
            )
            self.route.picker.fail(ticket.index, _now(self.fut))


def _now(fut: asyncio.Future[Any]) -> float:
    return fut.get_loop().time()


def _pass_on(fut: asyncio.Future[Response], task: asyncio.Task[Response]) -> None:
    if fut.done():
        return
    if task.cancelled():
        fut.cancel()
    elif task.exception() is not None:
        fut.set_exception(task.exception())  # type: ignore[arg-type]
    else:
        fut.set_result(task.result())


def _cancel_with(task: asyncio.Task[Response], fut: asyncio.Future[Response]) -> None:
    if fut.cancelled() and not task.done():
        task.cancel()


class ProxyHandler:
    def __init__(self, routes: list[_Route], next: Handler) -> None:
        # longest FROM first: the most specific block wins
        self.routes = sorted(routes, key=lambda r: len(r.from_path), reverse=True)
        self.next = next
        self._loop: asyncio.AbstractEventLoop | None = None

    def __call__(self, request: Request) -> HandlerResult:
        path = request.path
        for route in self.routes:
            if route.matches(path):
                if request.body.length == 0:
                    return self.fast(route, request)
                return self.serve(route, request)
        return self.next(request)

    def fast(self, route: _Route, request: Request) -> HandlerResult:
        """A request without a body: sent at once on a kept connection when there is one
        (answered by a Future), else by serve()."""
        loop = self._loop
        if loop is None or loop.is_closed():
            # asked once: get_running_loop() costs a getpid() system call each time
            loop = self._loop = asyncio.get_running_loop()
        ticket = route.picker.pick(
            loop.time(),
            client_ip=request.remote_addr,
            uri=request.uri,
            header_value=request.headers.get(route.header_name) if route.header_name else None,
        )
        if ticket is None:
            return self.serve(route, request)  # waits out try_duration, or answers 502
        index = ticket.index
        conn = route.pools[index].take_idle()
        if conn is None:
            return self.serve(route, request, ticket)
        head, upgrade = route.head_for(request, index)
        if upgrade is not None:
            route.pools[index].put(conn)
            return self.serve(route, request, ticket)
        request.vars["upstream"] = route.names[index]
        fut: asyncio.Future[Response] = loop.create_future()
        conn.start(head, request.method == "HEAD", _Fast(self, route, request, ticket, fut))
        return fut

    async def serve(
        self, route: _Route, request: Request, first: Ticket | None = None, fresh: bool = False
    ) -> Response:
        """The general path: dialling, request bodies, upgrades, retries within
        try_duration. `first` is a ticket already picked; `fresh` dials for its first try."""
        loop = asyncio.get_running_loop()
        rule = route.rule
        picker = route.picker
        start = loop.time()
        deadline = start + rule.try_duration
        exclude: set[int] = set()
        header_value = request.headers.get(route.header_name) if route.header_name else None
        method = request.method
        body = None if request.body.length == 0 else request.body
        chunked = request.body.length is None
        status = 502
        while True:
            if first is not None:
                ticket, first = first, None
            else:
                picked = picker.pick(
                    loop.time(),
                    client_ip=request.remote_addr,
                    uri=request.uri,
                    header_value=header_value,
                    exclude=exclude,
                )
                if picked is None:
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
                ticket = picked
            index = ticket.index
            upstream = route.upstreams[index]
            request.vars["upstream"] = upstream.name
            head, upgrade = route.head_for(request, index)
            try:
                reply = await exchange(
                    route.pools[index],
                    head,
                    body,
                    chunked,
                    method == "HEAD",
                    rule.timeout,
                    _done(picker, ticket, upstream, loop),
                    method,
                    fresh,
                )
            except UpstreamError as exc:
                status = route.failed(request, ticket, exc, loop.time())
                if isinstance(exc, ConnectFailed) and loop.time() < deadline:
                    exclude.add(index)
                    fresh = False
                    continue
                return _gateway_error(status)
            response = route.response_for(request, reply)
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

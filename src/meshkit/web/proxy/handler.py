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

What goes upstream is always an origin-form target made from the canonical `request.path`
(meshkit.web.paths) re-encoded, plus the query: never the target as received, so an
absolute-form target (`GET http://other.example/x`) or a raw `/api/../secret` cannot make
the upstream see another resource than the one the proxy's own scope (and every directive
before it, basicauth included) judged. FROM, `except` and `without` paths are canonical too.
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
from urllib.parse import quote

from meshkit.base.errors import MeshkitError
from meshkit.lb.pick import Picker, Ticket
from meshkit.web.message import Handler, HandlerResult, Headers, Request, Response
from meshkit.web.paths import clamp_path
from meshkit.web.placeholders import Template, compile_template
from meshkit.web.proxy.client import (
    IDEMPOTENT,
    ClientBodyFailed,
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
from meshkit.web.proxy.services import ServiceDirectory, expand
from meshkit.web.proxy.tunnel import relay
from meshkit.web.proxy.upstream import Upstream

__all__ = ["HeaderOp", "ProxyRule", "UpstreamSet", "build_handler", "make_route"]

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


class UpstreamSet:
    """The upstreams a block serves over at one moment, with their pools, the picker over
    them and the request heads made for them. A block whose upstreams follow a service gets
    a new set at every change; a request keeps the set it picked from (its ticket's indexes
    are that set's), so a change never mixes two sets in one exchange."""

    __slots__ = ("heads", "hosts", "names", "picker", "pools", "upstreams")

    def __init__(self, upstreams: list[Upstream], pools: list[Pool], picker: Picker | None):
        self.upstreams = upstreams
        self.pools = pools
        self.picker = picker  # None when there is no upstream at all (a service with no task)
        # `Host: ...\r\n` per upstream (transparent sends the client's Host instead)
        self.hosts = [f"Host: {u.host_header}\r\n" for u in upstreams]
        self.names = [u.name for u in upstreams]
        # request heads by everything they are made of (see _Route.head_for)
        self.heads: dict[tuple[Any, ...], tuple[bytes, str | None]] = {}


class _Route:
    """A parsed rule made ready to serve: its current UpstreamSet, compiled header
    operations, and what a new set inherits (health-check verdicts, passive failures)."""

    def __init__(self, rule: ProxyRule, directory: ServiceDirectory | None = None) -> None:
        self.rule = rule
        # matched against the canonical request path: `/api/./private` or `/api//private`
        # in a Caddyfile must mean `/api/private`, or an `except` would never match
        self.from_path = _scope(rule.from_path)
        self.excepts = [_scope(e) for e in rule.except_paths]
        self.templates = rule.upstreams
        self.directory = directory
        self.dynamic = any(u.scheme == "service" for u in rule.upstreams)
        if self.dynamic and directory is None:
            raise MeshkitError(
                f"proxy {rule.from_path}: service:// upstreams need the web server to run"
                " inside a node agent (meshkit node init --web)"
            )
        self.ssl_context = None
        if any(u.scheme == "https" for u in rule.upstreams):
            self.ssl_context = _ssl_context(rule.insecure_skip_verify)
        self.deadlines = Deadlines()
        self.socket_for = directory.socket_for if directory is not None else None
        # what the health check said of upstreams now down, and the expiry times of the
        # passive failures of each: a new set starts from them
        self.unhealthy: set[Upstream] = set()
        self.fails: dict[Upstream, list[float]] = {}
        # told when the set changes (a health check probes newcomers at once)
        self.on_change: Callable[[], None] | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self.set = self._make_set(self._current(), None, 0.0)
        self.up_ops = _Ops(rule.header_upstream) if rule.header_upstream else None
        self.down_ops = _Ops(rule.header_downstream) if rule.header_downstream else None
        self.header_name = rule.policy_header
        self.without = _scope(rule.without) if rule.without else ""
        self.transparent = rule.transparent
        self.close_upstream = rule.keepalive <= 0
        # the client's fields for each upstream head seen lately (see response_for)
        self.filtered: dict[int, tuple[list[tuple[str, str]], list[tuple[str, str]], str | None]]
        self.filtered = {}

    # ---- the upstream set ---------------------------------------------------------------

    def _current(self) -> list[Upstream]:
        if not self.dynamic:
            return list(self.templates)
        assert self.directory is not None
        upstreams, bad = expand(self.templates, self.directory.endpoints)
        for complaint in bad:
            log.warning("proxy %s: %s", self.from_path, complaint)
        return upstreams

    def _make_set(
        self, upstreams: list[Upstream], old: UpstreamSet | None, now: float
    ) -> UpstreamSet:
        rule = self.rule
        kept: dict[Upstream, Pool] = {}
        if old is not None:
            kept = dict(zip(old.upstreams, old.pools, strict=True))
        pools = []
        for u in upstreams:
            pool = kept.pop(u, None)  # an upstream that stays keeps its connections
            if pool is None:
                pool = Pool(
                    u,
                    rule.keepalive,
                    rule.timeout,
                    self.ssl_context,
                    self.deadlines,
                    self.socket_for,
                )
            pools.append(pool)
        for gone in kept.values():
            gone.retire()
        picker = None
        if upstreams:
            picker = Picker(
                len(upstreams),
                rule.policy,
                max_conns=rule.max_conns,
                max_fails=rule.max_fails,
                fail_timeout=rule.fail_timeout,
            )
            for i, u in enumerate(upstreams):
                if u in self.unhealthy:
                    picker.set_healthy(i, False)
                for until in self.fails.get(u, ()):
                    if until > now:
                        picker.fail(i, until - rule.fail_timeout)
        return UpstreamSet(upstreams, pools, picker)

    def refresh(self, now: float) -> bool:
        """Follow the services' tasks as the directory has them now; whether the set changed.
        An upstream that left gets no new request, and its idle connections are closed."""
        upstreams = self._current()
        old = self.set
        if upstreams == old.upstreams:
            return False
        present = set(upstreams)
        self.unhealthy &= present
        for u in [u for u in self.fails if u not in present]:
            del self.fails[u]
        self.set = self._make_set(upstreams, old, now)
        left = [u.name for u in old.upstreams if u not in present]
        joined = [u.name for u in upstreams if u not in set(old.upstreams)]
        log.info(
            "proxy %s: upstreams now %s (left: %s; joined: %s)",
            self.from_path,
            ", ".join(u.name for u in upstreams) or "none",
            ", ".join(left) or "none",
            ", ".join(joined) or "none",
        )
        if self.on_change is not None:
            self.on_change()
        return True

    def set_healthy(self, upstream: Upstream, healthy: bool) -> None:
        """What the active health check found of `upstream` (kept across sets)."""
        if healthy:
            self.unhealthy.discard(upstream)
        else:
            self.unhealthy.add(upstream)
        current = self.set
        if current.picker is not None and upstream in current.upstreams:
            current.picker.set_healthy(current.upstreams.index(upstream), healthy)

    def upstreams_now(self) -> list[Upstream]:
        return self.set.upstreams

    async def start(self) -> None:
        """Background.start: follow the directory (a block with service:// upstreams)."""
        if self.dynamic and self._unsubscribe is None:
            assert self.directory is not None
            loop = asyncio.get_running_loop()
            self._unsubscribe = self.directory.subscribe(lambda: self._changed(loop))
            for t in self.templates:
                if t.scheme == "service" and not self.directory.known(t.host):
                    log.warning(
                        "proxy %s: no service %r (yet): 502 until it has an up task",
                        self.from_path,
                        t.host,
                    )
            self.refresh(loop.time())  # what changed between the build and now

    def _changed(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            self.refresh(loop.time())
        except Exception:  # the directory's callback must not break on our account
            log.exception("proxy %s: following the services failed", self.from_path)

    async def stop(self) -> None:
        """Background.stop: the block is no longer served (reload, stop): stop following,
        and let its kept connections go (those in use close when their exchange ends)."""
        unsubscribe, self._unsubscribe = self._unsubscribe, None
        if unsubscribe is not None:
            unsubscribe()
        for pool in self.set.pools:
            pool.retire()

    def describe_empty(self) -> str:
        """Why a block has no upstream at all (only a service's can have none)."""
        names = [t.host for t in self.templates if t.scheme == "service"]
        directory = self.directory
        unknown = [n for n in names if directory is not None and not directory.known(n)]
        if unknown:
            return "no such service: " + ", ".join(unknown)
        return "no up task of service " + ", ".join(names)

    # ---- requests -----------------------------------------------------------------------

    def matches(self, path: str) -> bool:
        if not path.startswith(self.from_path):
            return False
        return not self.excepts or all(not path.startswith(e) for e in self.excepts)

    def head_for(self, uset: UpstreamSet, request: Request, index: int) -> tuple[bytes, str | None]:
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
        self, uset: UpstreamSet, request: Request, index: int
    ) -> tuple[bytes, str | None]:
        path = request.path  # canonical (never request.uri: see the module's doc)
        if self.without and path.startswith(self.without):
            path = path[len(self.without) :]
            if not path.startswith("/"):
                path = "/" + path
        uri = _encoded(path) + ("?" + request.query if request.query else "")
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
        uset: UpstreamSet,
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

    def failed(
        self, uset: UpstreamSet, request: Request, ticket: Ticket, exc: UpstreamError, now: float
    ) -> int:
        """Account for and log a failed exchange; the status it means (502 or 504)."""
        assert uset.picker is not None
        uset.picker.release(ticket)
        self.fail(uset, ticket.index, now)
        log.error(
            "proxy to %s for %s %s failed: %s",
            uset.names[ticket.index],
            request.method,
            request.uri,
            exc,
        )
        return 504 if isinstance(exc, UpstreamTimeout) else 502

    def fail(self, uset: UpstreamSet, index: int, now: float) -> None:
        """A passive failure of upstream `index` of `uset`: counted in the set in use now
        (the upstream's index there may differ) and kept for the sets to come."""
        fail_timeout = self.rule.fail_timeout
        if fail_timeout <= 0:
            return
        upstream = uset.upstreams[index]
        if self.dynamic:
            kept = [t for t in self.fails.get(upstream, ()) if t > now]
            kept.append(now + fail_timeout)
            self.fails[upstream] = kept
        current = self.set
        if current is uset:
            assert uset.picker is not None
            uset.picker.fail(index, now)
        elif current.picker is not None and upstream in current.upstreams:
            current.picker.fail(current.upstreams.index(upstream), now)


def _scope(path: str) -> str:
    """A configured path (FROM, `except`, `without`) in the canonical form request paths
    have; one not starting with `/` is left alone (it never matches, as in Caddy v1)."""
    return clamp_path(path) if path.startswith("/") else path


# What stays unencoded in the path sent upstream: unreserved characters (quote keeps
# letters, digits and `_.-~` always), `/`, and the sub-delims, `:` and `@` that RFC 3986
# allows in a segment. Everything else (`%`, `?`, `#`, spaces, CTLs, non-ASCII) is
# percent-encoded, so the upstream decodes back exactly the canonical path.
_PATH_SAFE = "/:@!$&'()*+,;=~"


@functools.lru_cache(maxsize=4096)
def _encoded(path: str) -> str:
    """The canonical path percent-encoded for the request line (cached: clients repeat)."""
    return quote(path, safe=_PATH_SAFE)


def _target(request: Request) -> str:
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


def _gateway_error(status: int) -> Response:
    return Response.error(status)


class _Fast:
    """A request sent synchronously on a kept connection, answered through a plain Future
    from the connection's data_received (no task, no coroutine)."""

    __slots__ = ("fut", "handler", "request", "route", "ticket", "uset")

    def __init__(
        self,
        handler: ProxyHandler,
        route: _Route,
        uset: UpstreamSet,
        request: Request,
        ticket: Ticket,
        fut: asyncio.Future[Response],
    ) -> None:
        self.handler = handler
        self.route = route
        self.uset = uset
        self.request = request
        self.ticket = ticket
        self.fut = fut

    def __call__(self, conn: Any) -> None:
        fut = self.fut
        route = self.route
        picker = self.uset.picker
        assert picker is not None
        if fut.done():
            # cancelled: the client went away; keep the connection if the answer is whole
            if conn.error is None and conn.done and conn.status != 101:
                conn.take_body()
                conn.pool.put(conn)
            else:
                conn.close()
            picker.release(self.ticket)
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
        gone = self.uset.upstreams[self.ticket.index] not in route.set.upstreams
        if may_retry(conn, True, request.method, False) or (
            gone and _retriable(request.method, None, conn.error)
        ):
            # a stale kept connection (dialled again), or a task that left the set
            # meanwhile (serve() picks again from the set now)
            broken(conn)
            loop = fut.get_loop()
            serving = self.handler.serve(route, request, (self.uset, self.ticket), True)
            task = loop.create_task(serving)
            task.add_done_callback(functools.partial(_pass_on, fut))
            fut.add_done_callback(functools.partial(_cancel_with, task))
            return
        exc = broken(conn)
        status = route.failed(self.uset, request, self.ticket, exc, _now(fut))
        fut.set_result(_gateway_error(status))

    def done(self, ok: bool) -> None:
        ticket = self.ticket
        uset = self.uset
        assert uset.picker is not None
        uset.picker.release(ticket)
        if not ok:
            log.error("proxy: the response body from %s broke off", uset.names[ticket.index])
            self.route.fail(uset, ticket.index, _now(self.fut))


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
        uset = route.set
        picker = uset.picker
        if picker is None:
            return self.serve(route, request)  # waits out try_duration, or answers 502
        ticket = picker.pick(
            loop.time(),
            client_ip=request.remote_addr,
            uri=_target(request),
            header_value=request.headers.get(route.header_name) if route.header_name else None,
        )
        if ticket is None:
            return self.serve(route, request)
        index = ticket.index
        pool = uset.pools[index]
        conn = pool.take_idle()
        if conn is None:
            return self.serve(route, request, (uset, ticket))
        head, upgrade = route.head_for(uset, request, index)
        if upgrade is not None:
            pool.put(conn)
            return self.serve(route, request, (uset, ticket))
        request.vars["upstream"] = uset.names[index]
        fut: asyncio.Future[Response] = loop.create_future()
        conn.start(head, request.method == "HEAD", _Fast(self, route, uset, request, ticket, fut))
        return fut

    async def serve(
        self,
        route: _Route,
        request: Request,
        first: tuple[UpstreamSet, Ticket] | None = None,
        fresh: bool = False,
    ) -> Response:
        """The general path: dialling, request bodies, upgrades, retries within
        try_duration. `first` is a ticket already picked (and the set it is of); `fresh`
        dials for its first try. Each try picks from the block's set as it is then, so a
        retry never goes to an upstream that left meanwhile."""
        loop = asyncio.get_running_loop()
        rule = route.rule
        start = loop.time()
        deadline = start + rule.try_duration
        tried: set[Upstream] = set()  # failed to connect this time round
        left = 0  # tries sent again because their upstream left the set meanwhile
        header_value = request.headers.get(route.header_name) if route.header_name else None
        method = request.method
        body = None if request.body.length == 0 else request.body
        chunked = request.body.length is None
        status = 502
        pending = first
        while True:
            ticket: Ticket | None = None
            if pending is not None:
                (uset, held), pending = pending, None
                current = route.set
                if uset is current or uset.upstreams[held.index] in current.upstreams:
                    ticket = held
                else:  # it left the set since it was picked: pick again from the set now
                    assert uset.picker is not None
                    uset.picker.release(held)
            if ticket is None:
                uset = route.set
                picker = uset.picker
                picked = None
                if picker is not None:
                    exclude = {i for i, u in enumerate(uset.upstreams) if u in tried}
                    picked = picker.pick(
                        loop.time(),
                        client_ip=request.remote_addr,
                        uri=_target(request),
                        header_value=header_value,
                        exclude=exclude,
                    )
                if picked is None:
                    # Caddy v1: keep looking for an available upstream until try_duration
                    if loop.time() < deadline:
                        tried.clear()
                        await asyncio.sleep(rule.try_interval)
                        continue
                    if not tried:
                        why = route.describe_empty() if picker is None else "none is up"
                        log.error(
                            "proxy %s: no upstream available for %s %s (%s)",
                            route.from_path,
                            method,
                            request.uri,
                            why,
                        )
                    return _gateway_error(status)
                ticket = picked
            index = ticket.index
            upstream = uset.upstreams[index]
            request.vars["upstream"] = uset.names[index]
            head, upgrade = route.head_for(uset, request, index)
            try:
                reply = await exchange(
                    uset.pools[index],
                    head,
                    body,
                    chunked,
                    method == "HEAD",
                    rule.timeout,
                    _done(route, uset, ticket, loop),
                    method,
                    fresh,
                )
            except ClientBodyFailed as exc:
                # the client's body, not the upstream, failed: no passive failure, no retry
                assert uset.picker is not None
                uset.picker.release(ticket)
                log.info(
                    "proxy to %s for %s %s: %s", uset.names[index], method, request.uri, exc
                )
                return _gateway_error(exc.status)
            except UpstreamError as exc:
                status = route.failed(uset, request, ticket, exc, loop.time())
                if isinstance(exc, ConnectFailed) and loop.time() < deadline:
                    tried.add(upstream)
                    fresh = False
                    continue
                if (
                    left < _LEFT_RETRIES
                    and upstream not in route.set.upstreams
                    and (isinstance(exc, ConnectFailed) or _retriable(method, body, exc))
                ):
                    # a task that left the set while the request went to it (stopping):
                    # the request is owed to the tasks still there, at once
                    left += 1
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


_LEFT_RETRIES = 3  # a request is sent again this often when its upstream left the set


def _retriable(method: str, body: Any, exc: UpstreamError) -> bool:
    """Whether a failed exchange may be sent again elsewhere: an idempotent request without
    a body, and no timeout (a slow upstream may still be working on it)."""
    return body is None and method in IDEMPOTENT and not isinstance(exc, UpstreamTimeout)


def _taker(conn: Any) -> Callable[[socket.socket, bytes], Awaitable[None]]:
    transport = conn.transport
    rest = conn.upgrade_rest or b""

    async def take(sock: socket.socket, client_rest: bytes) -> None:
        await relay(sock, client_rest, transport, rest)

    return take


def _done(
    route: _Route, uset: UpstreamSet, ticket: Ticket, loop: asyncio.AbstractEventLoop
) -> Callable[[bool], None]:
    def done(ok: bool) -> None:
        assert uset.picker is not None
        uset.picker.release(ticket)
        if not ok:
            log.error("proxy: the response body from %s broke off", uset.names[ticket.index])
            route.fail(uset, ticket.index, loop.time())

    return done


def build_handler(routes: list[_Route], next: Handler) -> ProxyHandler:
    return ProxyHandler(routes, next)


def make_route(rule: ProxyRule, directory: ServiceDirectory | None = None) -> _Route:
    """A block ready to serve; MeshkitError when it has service:// upstreams and no
    directory to follow them with."""
    return _Route(rule, directory)

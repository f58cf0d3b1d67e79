"""The proxy lane's Python half: what the compiled client lane (meshkit._fastpath,
_proxylane.pxi) asks once per request shape, and the rare paths it hands back.

The compiled lane answers a plain HTTP/1.1 request without a body (GET, HEAD, OPTIONS,
DELETE) to a site whose only handler is `proxy` without a Python frame per request: the
request head read in one recv(2) is looked up by its bytes in a table of plans (one per
request shape, client address and local port: what Heads.head_for is made of); a plan
holds the proxy block that takes the path and the upstream request head made for each
upstream (one buffer, made once by Heads.head_for: X-Forwarded-For, header_upstream,
transparent, without). Per request the lane picks (the block's Picker, same policies and C
connection table), takes a kept UpstreamConn, writes the head and, once the answer is
whole, writes head and body to the client in one send(2).

A POST, PUT or PATCH with a small body (one plain Content-Length of 1 B to 64 KiB, head and
whole body in the read; meshkit.web.bodyhead) is planned by its head (`plan(..., body=True)`)
and sent as the upstream head (Content-Length kept) followed by the body, in one write. On
the Python paths the request carries the body as bytes (`Plan.fresh`): serve() dials and
sends it when nothing is kept, and a failed exchange is never sent again, whatever the
method (client.may_retry, handler._retriable: the handler path's rules for a body).

`plan()` here makes a plan the first time a request shape is seen (None: this shape never
takes the lane; the decision for a site, `eligible()`, is made once per ProxyHandler).
Everything unusual goes to today's Python path through `deliver()`: no kept connection
(ProxyHandler.serve dials with the ticket already picked), a stale kept connection or a
failure (lane.py's rules: serve() retries, or the 502/504 page), an answer whose body did
not come with its head (streamed from `Feed`, as client._stream streams it), a partial
send. The connection sees the lane's request as a response being streamed
(Connection._streaming), so pipelined requests queue behind it as they do behind a
stream.

MESHKIT_PROXY_LANE=0 (or MESHKIT_LANE=0, MESHKIT_NO_EXTENSIONS=1) turns it off: the
twin is the handler chain (ProxyHandler.fast / serve).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncGenerator, Callable
from typing import Any

from meshkit.web.bodyhead import lane_request
from meshkit.web.connstate import ConnState
from meshkit.web.lanerequest import (
    LogEntry,
    complete,
    copy_request,
    log_entries,
    queue_rest,
    write_entries,
)
from meshkit.web.message import EmptyBody, Headers, Request, Response
from meshkit.web.pipeline import Slot
from meshkit.web.proxy.client import Reply, Stream, UpstreamBroken
from meshkit.web.proxy.handler import ProxyHandler, _retriable
from meshkit.web.proxy.heads import target
from meshkit.web.proxy.route import Route
from meshkit.web.router import Router

__all__ = ["BODY_METHODS", "ENABLED", "METHODS", "Feed", "deliver", "eligible", "plan"]

log = logging.getLogger(__name__)

METHODS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE"})
# heads with one plain Content-Length body (1 B .. bodyhead.MAX_BODY, whole in the read)
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_UPGRADED = ConnState.UPGRADED
_READ_HIGH = 1 << 20  # a streamed body's bytes held before reading the upstream pauses


def _enabled() -> bool:
    off = ("0", "off", "no", "false")
    return os.environ.get("MESHKIT_PROXY_LANE", "").strip().lower() not in off


ENABLED = _enabled()

# ProxyHandler -> whether its blocks can be served by the lane (decided once per site)
_ELIGIBLE: dict[int, tuple[ProxyHandler, bool]] = {}


def eligible(handler: ProxyHandler) -> bool:
    """Whether the lane may serve this site's proxy blocks: header_upstream rules whose
    values are literal (the head is then a function of the request shape alone) and a
    handler with no per-request work of its own beyond the exchange."""
    known = _ELIGIBLE.get(id(handler))
    if known is not None and known[0] is handler:
        return known[1]
    ok = True
    for route in handler.routes:
        for op in route.rule.header_upstream:
            if "{" in op.value or op.op == "replace":
                ok = False
    if len(_ELIGIBLE) >= 256:
        _ELIGIBLE.clear()
    _ELIGIBLE[id(handler)] = (handler, ok)
    return ok


class Plan:
    """One request shape of one client address on one local port: what the compiled
    lane needs to send it, made once."""

    __slots__ = (
        "body_length",
        "client_ip",
        "handler",
        "head_only",
        "header_value",
        "heads",
        "heads_set",
        "local_port",
        "log_memo",
        "log_port",
        "log_second",
        "proute",
        "remote_addr",
        "request",
        "router",
        "uri",
        "watch",
    )

    def __init__(
        self,
        router: Router,
        request: Request,
        handler: ProxyHandler,
        proute: Route,
        watch: Callable[[Request], None] | None = None,
        body_length: int = 0,
    ) -> None:
        self.router = router
        self.body_length = body_length  # the Content-Length of a body plan (0: none)
        self.watch = watch  # the site's `log` (adds the request's on_complete callback)
        self.log_memo: dict[tuple[Any, ...], tuple[Any, tuple[LogEntry, ...]]] = {}
        self.log_second = 0
        self.log_port = True  # whether a line shows the client's port (known once rendered)
        self.request = request  # the template: copied for the rare paths (see fresh())
        self.handler = handler
        self.proute = proute
        self.remote_addr = request.remote_addr
        self.local_port = request.server_port
        self.client_ip = request.remote_addr
        self.uri = target(request)
        name = proute.header_name
        self.header_value = request.headers.get(name) if name else None
        self.head_only = request.method == "HEAD"
        self.heads: list[bytes | None] = []  # per upstream index of heads_set
        self.heads_set: Any = None

    def head(self, uset: Any, index: int) -> bytes | None:
        """The upstream request head for upstream `index` of `uset` (None: an upgrade, the
        lane does not take it)."""
        if uset is not self.heads_set:
            self.heads_set = uset
            self.heads = [None] * len(uset.upstreams)
        head = self.heads[index]
        if head is None:
            made, upgrade = self.proute.heads.head_for(uset, self.request, index)
            if upgrade is not None:
                return None
            head = self.heads[index] = made
        return head

    def fresh(self, remote_port: int, start: float, body: bytes = b"") -> Request:
        """A Request of this shape for the Python path (its own vars and on_complete, the
        site's log callback added as the log directive adds it), with `body` (a body
        plan's bytes, as the handler path's request holds them)."""
        request = copy_request(self.request, remote_port, start)
        if body:
            request.body = EmptyBody(body)
        if self.watch is not None:
            self.watch(request)
        return request


def _log_code() -> Any:
    from meshkit.web.directives import log as logdir

    for const in logdir.build.__code__.co_consts:
        if getattr(const, "co_name", "") == "log_handler":
            return const
    return None


_LOG_CODE = _log_code()


def unwrap_log(handler: Any) -> tuple[Any, Callable[[Request], None]] | None:
    """(the handler it wraps, its `watch`) for a `log` directive's handler, else None: a
    site with `log` and `proxy` only is taken, its lines written per answer by the same
    callbacks (the code object identifies the directive's handler, so anything else,
    wrapped or not, is left to the chain)."""
    code = getattr(handler, "__code__", None)
    if code is None or code is not _LOG_CODE or handler.__closure__ is None:
        return None
    cells = dict(zip(code.co_freevars, handler.__closure__, strict=True))
    try:
        return cells["next"].cell_contents, cells["watch"].cell_contents
    except (KeyError, ValueError):
        return None


def handler_of(site_handler: Any) -> tuple[Any, Callable[[Request], None] | None]:
    """(the handler a site runs, the `log` directive's watch or None): through the log
    wrapper when there is one (unwrap_log)."""
    logged = unwrap_log(site_handler)
    if logged is not None:
        return logged
    return site_handler, None


def router_may(router: Any) -> bool:
    """Whether any site of this router may take the lane (asked once per router)."""
    if type(router) is not Router:
        return False
    return any(type(handler_of(site.handler)[0]) is ProxyHandler for site in router.routes)


def plan(server: Any, conn: Any, data: bytes, body: bool = False) -> Plan | None:
    """The plan of the request head `data` (one whole head) read on `conn`, or None when
    the lane does not take it (then the connection reads it). Without `body` nothing
    follows the head; with it, its Content-Length body does (bodyhead.body_request)."""
    if not ENABLED:
        return None
    got = lane_request(server, conn, data, body, METHODS, BODY_METHODS)
    if got is None:
        return None
    router, request, site, length = got
    handler, watch = handler_of(site.handler)
    if type(handler) is not ProxyHandler or not eligible(handler):
        return None
    for proute in handler.routes:
        if proute.matches(request.path):
            return Plan(router, request, handler, proute, watch, length)
    return None


class Feed:
    """A body streamed to the client from the lane's sink (as client._stream streams a
    connection's): pieces pushed by on_body, the end by on_done, a break by fail()."""

    __slots__ = ("buffered", "closed", "done", "error", "paused", "pieces", "waiter")

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces
        self.buffered = sum(len(p) for p in pieces)
        self.done = False
        self.closed = False  # the client side stopped reading it
        self.error: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.paused: Any = None  # the UpstreamConn whose reading stopped

    def push(self, data: bytes, conn: Any) -> None:
        self.pieces.append(data)
        self.buffered += len(data)
        if self.buffered > _READ_HIGH and self.paused is None and conn.transport is not None:
            self.paused = conn
            conn.transport.pause_reading()
        self._wake()

    def finish(self) -> None:
        self.done = True
        self._wake()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self._wake()

    def _wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def gen(self) -> AsyncGenerator[bytes, None]:
        loop = asyncio.get_running_loop()
        try:
            while True:
                if self.pieces:
                    pieces, self.pieces = self.pieces, []
                    self.buffered = 0
                    paused, self.paused = self.paused, None
                    if paused is not None and not paused.closed and paused.transport:
                        paused.transport.resume_reading()
                    yield b"".join(pieces) if len(pieces) != 1 else pieces[0]
                    continue
                if self.done:
                    return
                if self.error is not None:
                    raise self.error
                self.waiter = loop.create_future()
                await self.waiter
        finally:
            self.closed = True


def streamed(sink: Any, status: int, headers: list[tuple[str, str]], pieces: list[bytes]) -> Feed:
    """The answer's head is in and its body is still coming: answer the client through
    the Python writer with a Stream fed from the sink (the handler path's shape)."""
    feed = Feed(pieces)
    request = sink.plan.fresh(sink.remote_port, sink.start, sink.body())
    request.vars["upstream"] = sink.uset.names[sink.index]
    reply = Reply(status, headers, Stream(feed.gen()), None)
    deliver(sink.conn, request, sink.plan.proute.heads.response_for(request, reply))
    return feed


def answered(sink: Any, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
    """A whole answer the compiled lane does not write itself (header_downstream rules, a
    closing connection, a shutdown): through the Python writer, as the handler path."""
    request = sink.plan.fresh(sink.remote_port, sink.start, sink.body())
    request.vars["upstream"] = sink.uset.names[sink.index]
    reply = Reply(status, headers, body, None)
    deliver(sink.conn, request, sink.plan.proute.heads.response_for(request, reply))


def bad_upgrade(sink: Any) -> None:
    """The upstream switched protocols on a request that asked for no upgrade: 502."""
    request = sink.plan.fresh(sink.remote_port, sink.start, sink.body())
    request.vars["upstream"] = sink.uset.names[sink.index]
    deliver(sink.conn, request, Response.error(502))


def failed(sink: Any, error: Any, stale: bool, told: bool, feed: Feed | None) -> None:
    """The exchange failed (its UpstreamConn is closed): lane.py's rules."""
    plan_: Plan = sink.plan
    route = plan_.proute
    uset = sink.uset
    ticket = sink.ticket
    handler = plan_.handler
    loop = handler._loop or asyncio.get_running_loop()
    if told:
        # the body broke off after the head: as _Fast.done(False)
        assert uset.picker is not None
        uset.picker.release(ticket)
        log.error("proxy: the response body from %s broke off", uset.names[ticket.index])
        route.fail(uset, ticket.index, loop.time())
        if feed is not None:
            feed.fail(UpstreamBroken("the upstream closed the connection"))
        else:
            conn = sink.conn
            conn._streaming = False
            conn._abort()
        return
    body = sink.body()
    request = plan_.fresh(sink.remote_port, sink.start, body)
    request.vars["upstream"] = uset.names[ticket.index]
    gone = uset.upstreams[ticket.index] not in route.set.upstreams
    # the handler path's rules (client.may_retry, handler._retriable): a request with a
    # body is never sent again, whatever its method (ProxyHandler.serve answers 502)
    if (stale and not body) or (gone and _retriable(request.method, body or None, error)):
        task = loop.create_task(handler.serve(route, request, (uset, ticket), True))
        deliver(sink.conn, request, task)
        return
    status = route.failed(uset, request, ticket, error, loop.time())
    deliver(sink.conn, request, Response.error(status))


def no_kept(
    conn: Any, plan_: Plan, uset: Any, ticket: Any, start: float, body: bytes = b""
) -> None:
    """Picked, but no kept connection to that upstream: serve() dials with the ticket (and
    sends the request's `body`, when it has one, as the handler path sends it)."""
    request = plan_.fresh(conn._remote_port, start, body)
    deliver(conn, request, plan_.handler.serve(plan_.proute, request, (uset, ticket)))


def deliver(conn: Any, request: Request, result: Any) -> None:
    """Answer the lane's request (the first in order on `conn`) with `result`, a Response
    or an awaitable of one, through the connection's own pipeline."""
    conn._streaming = False
    if conn._state >= _UPGRADED:
        if isinstance(result, asyncio.Future):
            result.cancel()
        elif not isinstance(result, Response):
            result.close()  # a coroutine never started
        return
    slot = Slot(request, True)
    conn._queue.appendleft(slot)
    if isinstance(result, Response):
        slot.response = result
        conn._flush_queue()
    else:
        conn._await_result(slot, result)


def partial(sink: Any, wire: bytes, head_len: int, sent: int, status: int, raw: Any) -> None:
    """The client's socket took only `sent` bytes of the answer: the rest as a Job (its
    Response, with the client's fields of the upstream's `raw` ones, for on_complete)."""
    request = sink.plan.fresh(sink.remote_port, sink.start, sink.body())
    items = sink.plan.proute.heads.fields_for(raw)[0]
    response = Response(status, Headers(list(items)), wire[head_len:])
    queue_rest(sink.conn, request, response, wire, head_len, sent)


def logged(sink: Any, status: int, raw: Any, body: bytes, sent: int) -> tuple[int, Any] | None:
    """The lane wrote a whole answer (`sent` body bytes) of a logged site: its lines.
    Lines that read nothing per request (the log directive's `replayable`: no latency, no
    request id) are rendered once per answer shape, upstream, client port (when a line
    shows it) and second, as the response cache replays them (respcache.replay_log); the
    same strings after that, since nothing else in them can differ. (second, entries) for
    such lines (lanerequest.log_entries: what the compiled lane writes again for the same
    answer on the same connection within that second), else None."""
    plan_: Plan = sink.plan
    index = sink.index  # (not sink.ticket: no Ticket made for the lane's own pick)
    now = time.time()  # as the log callback's own call reads it
    second = int(now)
    memo = plan_.log_memo
    if plan_.log_second != second:
        memo.clear()
        plan_.log_second = second
    key = (status, id(raw), sent, index, sink.remote_port if plan_.log_port else 0)
    got = memo.get(key)
    if got is not None and got[0] is raw:
        entries = got[1]
        write_entries(entries)
        return second, entries
    request = plan_.fresh(sink.remote_port, sink.start, sink.body())
    request.vars["upstream"] = sink.uset.names[index]
    response = plan_.proute.heads.response_for(request, Reply(status, raw, body, None))
    lines, replayable = complete(request, response, sent, now)
    if not replayable:
        return None
    # a line without the client's port is the same for every connection of the client
    plan_.log_port = any(getattr(cb, "uses_port", True) for cb in request.on_complete)
    if len(memo) >= 64:
        memo.clear()
    entries = log_entries(lines)
    key = (status, id(raw), sent, index, sink.remote_port if plan_.log_port else 0)
    memo[key] = (raw, entries)
    return second, entries

"""The proxy's entry for the C client lane: a request without a body sent on a kept
upstream connection and its answer reported to a sink, with no Future and no coroutine per
request (the compiled connection, meshkit._fastpath.UpstreamConn, calls back from its
data_received).

    exchange = send(handler, request, sink)     # None: not taken

`handler` is the site's ProxyHandler, `request` the lane's Request (canonical path, query,
remote address, fields: what Heads.head_for reads), `sink` any object with

    sink.on_head(status, headers, content_length)  # the client's fields: hop-by-hop ones
                                                   # dropped, header_downstream applied
                                                   # (a shared list: copy to change it)
    sink.on_body(data)                             # each piece as it comes (none if empty);
                                                   # a true result stops reading from the
                                                   # upstream until exchange.resume()
    sink.on_done()                                 # the answer is whole
    sink.on_fallback(result)                       # before any on_head: answer the request
                                                   # with `result` (a Response or an
                                                   # awaitable of one) as the Python path
                                                   # would (a retry on a fresh connection,
                                                   # or a 502/504 page)
    sink.on_broken()                               # after on_head: the body broke off
                                                   # (close the client's connection)

send() returns the exchange in flight, or None without doing anything when the lane does
not apply (no block takes
the path, the request has a body, no upstream can be picked at once, no kept connection to
the one picked, an upgrade): call the handler as usual then. Failures keep today's rules:
a stale kept connection (nothing came back, no timeout) and a task that left the set go
through ProxyHandler.serve() with a fresh connection; anything else is counted against the
upstream (Route.failed) and answered 502/504. The picker's ticket is released when the
answer ends, as on the other paths.

Only with the compiled extension (COMPILED); under MESHKIT_NO_EXTENSIONS=1 there is no
lane and send() always returns False.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from meshkit._ext import load_fastpath
from meshkit.lb.pick import Ticket
from meshkit.web.message import Request, Response
from meshkit.web.proxy.client import Reply
from meshkit.web.proxy.handler import ProxyHandler, _retriable
from meshkit.web.proxy.heads import target
from meshkit.web.proxy.route import Route, UpstreamSet

__all__ = ["COMPILED", "LaneSink", "send"]

log = logging.getLogger(__name__)

_fastpath = load_fastpath()
COMPILED = _fastpath is not None and hasattr(_fastpath, "UpstreamSink")


class LaneSink(Protocol):
    """What the client lane gives send() (see the module's doc)."""

    def on_head(self, status: int, headers: list[tuple[str, str]], length: int | None) -> None: ...
    def on_body(self, data: bytes) -> bool | None: ...
    def on_done(self) -> None: ...
    def on_fallback(self, result: Any) -> None: ...
    def on_broken(self) -> None: ...


def _shape(exchange: Any, status: int, headers: list[tuple[str, str]]) -> tuple[Any, ...]:
    """(status, fields, Content-Length) for the client with header_downstream applied."""
    response = exchange.heads.response_for(exchange.request, Reply(status, headers, b"", None))
    fields = response.headers
    return response.status, fields._items, fields.get("Content-Length")


def _fail(exchange: Any, error: Any, stale: bool) -> None:
    """The exchange failed (the connection is closed): today's rules of the other paths."""
    handler: ProxyHandler = exchange.handler
    route: Route = exchange.route
    uset: UpstreamSet = exchange.uset
    ticket: Ticket = exchange.ticket
    request: Request = exchange.request
    sink: LaneSink = exchange.sink
    loop = handler._loop
    assert loop is not None and uset.picker is not None
    if exchange.told:
        # the body broke off after the head went out: as _Fast.done(False)
        uset.picker.release(ticket)
        log.error("proxy: the response body from %s broke off", uset.names[ticket.index])
        route.fail(uset, ticket.index, loop.time())
        sink.on_broken()
        return
    gone = uset.upstreams[ticket.index] not in route.set.upstreams
    if stale or (gone and _retriable(request.method, None, error)):
        # a stale kept connection (dialled again), or a task that left the set meanwhile
        task = loop.create_task(handler.serve(route, request, (uset, ticket), True))
        sink.on_fallback(task)
        return
    status = route.failed(uset, request, ticket, error, loop.time())
    sink.on_fallback(Response.error(status))


_Exchange: Any = getattr(_fastpath, "ProxyExchange", None) if COMPILED else None


def send(handler: ProxyHandler, request: Request, sink: LaneSink) -> Any:
    """Send `request` (no body) on a kept connection and report to `sink`: the exchange
    (its resume() reads on after on_body asked to stop), or None when the lane does not
    apply (then call the handler as usual)."""
    if _Exchange is None or request.body.length != 0:
        return None
    path = request.path
    for route in handler.routes:
        if route.matches(path):
            break
    else:
        return None
    loop = handler._loop
    if loop is None or loop.is_closed():
        loop = handler._loop = asyncio.get_running_loop()
    uset = route.set
    picker = uset.picker
    if picker is None:
        return None
    ticket = picker.pick(
        loop.time(),
        client_ip=request.remote_addr,
        uri=target(request),
        header_value=request.headers.get(route.header_name) if route.header_name else None,
    )
    if ticket is None:
        return None
    index = ticket.index
    pool = uset.pools[index]
    conn = pool.take_idle()
    if conn is None or not hasattr(conn, "request"):
        if conn is not None:
            pool.put(conn)
        picker.release(ticket)
        return None
    head, upgrade = route.heads.head_for(uset, request, index)
    if upgrade is not None:
        pool.put(conn)
        picker.release(ticket)
        return None
    request.vars["upstream"] = uset.names[index]
    exchange = _Exchange(handler, route, uset, request, ticket, sink, _fail, _shape)
    conn.request(head, request.method == "HEAD", exchange)
    return exchange


def fallback_future(result: Any) -> asyncio.Future[Response]:
    """A sink's on_fallback result as one Future (for tests and simple sinks)."""
    if isinstance(result, Response):
        fut: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        fut.set_result(result)
        return fut
    task: asyncio.Future[Response] = asyncio.ensure_future(result)
    return task

"""The proxy's entry for the C client lane: a request without a body sent on a kept
upstream connection and its answer reported to a sink, with no Future and no coroutine per
request (the compiled connection, meshkit._fastpath.UpstreamConn, calls back from its
data_received).

    taken = send(handler, request, sink)

`handler` is the site's ProxyHandler, `request` the lane's Request (canonical path, query,
remote address, fields: what Heads.head_for reads), `sink` any object with

    sink.on_head(status, headers, content_length)  # the client's fields: hop-by-hop ones
                                                   # dropped, header_downstream applied
                                                   # (a shared list: copy to change it)
    sink.on_body(data)                             # each piece as it comes (none if empty)
    sink.on_done()                                 # the answer is whole
    sink.on_fallback(result)                       # before any on_head: answer the request
                                                   # with `result` (a Response or an
                                                   # awaitable of one) as the Python path
                                                   # would (a retry on a fresh connection,
                                                   # or a 502/504 page)
    sink.on_broken()                               # after on_head: the body broke off
                                                   # (close the client's connection)

send() returns False without doing anything when the lane does not apply (no block takes
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
from typing import Any, Protocol

from meshkit._ext import load_fastpath
from meshkit.lb.pick import Ticket
from meshkit.web.message import Request, Response
from meshkit.web.proxy.client import Reply
from meshkit.web.proxy.handler import ProxyHandler, _retriable
from meshkit.web.proxy.heads import target
from meshkit.web.proxy.route import Route, UpstreamSet

__all__ = ["COMPILED", "LaneSink", "send"]

_fastpath = load_fastpath()
COMPILED = _fastpath is not None and hasattr(_fastpath, "UpstreamSink")


class LaneSink(Protocol):
    """What the client lane gives send() (see the module's doc)."""

    def on_head(self, status: int, headers: list[tuple[str, str]], length: int | None) -> None: ...
    def on_body(self, data: bytes) -> None: ...
    def on_done(self) -> None: ...
    def on_fallback(self, result: Any) -> None: ...
    def on_broken(self) -> None: ...


def _exchange_class() -> Any:
    if not COMPILED:
        return None
    assert _fastpath is not None

    class Exchange(_fastpath.UpstreamSink):  # type: ignore[name-defined,misc]
        """One request in flight on the lane: the UpstreamConn's sink."""

        def __init__(
            self,
            handler: ProxyHandler,
            route: Route,
            uset: UpstreamSet,
            request: Request,
            ticket: Ticket,
            sink: LaneSink,
        ) -> None:
            self.handler = handler
            self.route = route
            self.uset = uset
            self.request = request
            self.ticket = ticket
            self.sink = sink
            self.told = False

        def on_head(self, conn: Any, status: int, headers: list[tuple[str, str]]) -> None:
            self.told = True
            heads = self.route.heads
            if heads.down_ops is None:
                # no header_downstream: the remembered client fields, shared (no copies)
                items, length = heads.fields_for(headers)
            else:
                reply = Reply(status, headers, b"", None)
                response = heads.response_for(self.request, reply)
                status, items = response.status, response.headers._items
                length = response.headers.get("Content-Length")
            size = int(length) if length is not None and length.isdigit() else None
            self.sink.on_head(status, items, size)

        def on_body(self, conn: Any, data: bytes) -> None:
            self.sink.on_body(data)

        def on_done(self, conn: Any) -> None:
            picker = self.uset.picker
            assert picker is not None
            picker.release(self.ticket)
            self.sink.on_done()

        def on_error(self, conn: Any, error: Any, stale: bool) -> None:
            route, uset, ticket, request = self.route, self.uset, self.ticket, self.request
            loop = self.handler._loop
            assert loop is not None
            if self.told:
                # the body broke off after the head went out: as _Fast.done(False)
                assert uset.picker is not None
                uset.picker.release(ticket)
                route.fail(uset, ticket.index, loop.time())
                self.sink.on_broken()
                return
            gone = uset.upstreams[ticket.index] not in route.set.upstreams
            if stale or (gone and _retriable(request.method, None, error)):
                task = loop.create_task(self.handler.serve(route, request, (uset, ticket), True))
                self.sink.on_fallback(task)
                return
            status = route.failed(uset, request, ticket, error, loop.time())
            self.sink.on_fallback(Response.error(status))

    return Exchange


_Exchange = _exchange_class()


def send(handler: ProxyHandler, request: Request, sink: LaneSink) -> bool:
    """Send `request` (no body) on a kept connection and report to `sink`; False when the
    lane does not apply (then call the handler as usual)."""
    if _Exchange is None or request.body.length != 0:
        return False
    path = request.path
    for route in handler.routes:
        if route.matches(path):
            break
    else:
        return False
    loop = handler._loop
    if loop is None or loop.is_closed():
        loop = handler._loop = asyncio.get_running_loop()
    uset = route.set
    picker = uset.picker
    if picker is None:
        return False
    ticket = picker.pick(
        loop.time(),
        client_ip=request.remote_addr,
        uri=target(request),
        header_value=request.headers.get(route.header_name) if route.header_name else None,
    )
    if ticket is None:
        return False
    index = ticket.index
    pool = uset.pools[index]
    conn = pool.take_idle()
    if conn is None or not hasattr(conn, "request"):
        if conn is not None:
            pool.put(conn)
        picker.release(ticket)
        return False
    head, upgrade = route.heads.head_for(uset, request, index)
    if upgrade is not None:
        pool.put(conn)
        picker.release(ticket)
        return False
    request.vars["upstream"] = uset.names[index]
    conn.request(
        head, request.method == "HEAD", _Exchange(handler, route, uset, request, ticket, sink)
    )
    return True


def fallback_future(result: Any) -> asyncio.Future[Response]:
    """A sink's on_fallback result as one Future (for tests and simple sinks)."""
    if isinstance(result, Response):
        fut: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        fut.set_result(result)
        return fut
    task: asyncio.Future[Response] = asyncio.ensure_future(result)
    return task

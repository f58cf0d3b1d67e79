"""The proxy handler: which block takes a request (the longest FROM prefix matching its
path, meshkit.web.proxy.route), the exchange with the upstream picked for it, retries within
try_duration, and the 502/504 answers.

A request without a body that finds a kept connection to the upstream picked for it takes the
fast path: routing, picking and writing the head happen in the handler call, which returns a
plain Future resolved from the connection's data_received (see meshkit.web.proxy.client).
Everything else (dialling, request bodies, upgrades, retries within try_duration, a stale
kept connection re-dialled) runs in the `serve` coroutine. Both share the head building and
the header rules (meshkit.web.proxy.heads) and the failure accounting (Route.failed). Errors
name the upstream in the log only; the client gets the plain 502/504 page.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from meshkit.lb.pick import Ticket
from meshkit.web.message import Handler, HandlerResult, Request, Response
from meshkit.web.proxy.client import (
    IDEMPOTENT,
    ClientBodyFailed,
    ConnectFailed,
    UpstreamError,
    UpstreamTimeout,
    broken,
    exchange,
    finish,
    may_retry,
)
from meshkit.web.proxy.heads import target
from meshkit.web.proxy.route import Route, UpstreamSet, make_route
from meshkit.web.proxy.rules import HeaderOp, ProxyRule
from meshkit.web.proxy.tunnel import relay
from meshkit.web.proxy.upstream import Upstream

__all__ = ["HeaderOp", "ProxyRule", "UpstreamSet", "build_handler", "make_route"]

log = logging.getLogger(__name__)


def _gateway_error(status: int) -> Response:
    return Response.error(status)


class _Fast:
    """A request sent synchronously on a kept connection, answered through a plain Future
    from the connection's data_received (no task, no coroutine)."""

    __slots__ = ("fut", "handler", "request", "route", "ticket", "uset")

    def __init__(
        self,
        handler: ProxyHandler,
        route: Route,
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
            fut.set_result(route.heads.response_for(self.request, reply))
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
    def __init__(self, routes: list[Route], next: Handler) -> None:
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

    def fast(self, route: Route, request: Request) -> HandlerResult:
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
            uri=target(request),
            header_value=request.headers.get(route.header_name) if route.header_name else None,
        )
        if ticket is None:
            return self.serve(route, request)
        index = ticket.index
        pool = uset.pools[index]
        conn = pool.take_idle()
        if conn is None:
            return self.serve(route, request, (uset, ticket))
        head, upgrade = route.heads.head_for(uset, request, index)
        if upgrade is not None:
            pool.put(conn)
            return self.serve(route, request, (uset, ticket))
        request.vars["upstream"] = uset.names[index]
        fut: asyncio.Future[Response] = loop.create_future()
        conn.start(head, request.method == "HEAD", _Fast(self, route, uset, request, ticket, fut))
        return fut

    async def serve(
        self,
        route: Route,
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
                        uri=target(request),
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
            head, upgrade = route.heads.head_for(uset, request, index)
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
                log.info("proxy to %s for %s %s: %s", uset.names[index], method, request.uri, exc)
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
            response = route.heads.response_for(request, reply)
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
    route: Route, uset: UpstreamSet, ticket: Ticket, loop: asyncio.AbstractEventLoop
) -> Callable[[bool], None]:
    def done(ok: bool) -> None:
        assert uset.picker is not None
        uset.picker.release(ticket)
        if not ok:
            log.error("proxy: the response body from %s broke off", uset.names[ticket.index])
            route.fail(uset, ticket.index, loop.time())

    return done


def build_handler(routes: list[Route], next: Handler) -> ProxyHandler:
    return ProxyHandler(routes, next)

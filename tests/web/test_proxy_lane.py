"""The proxy's entry for the C client lane (meshkit.web.proxy.lane.send): a bodiless request
sent on a kept connection with its answer reported to a sink, against a real asyncio
backend: the answer's head (hop-by-hop fields dropped), body pieces and end; HEAD keeping
the connection; a stale kept connection handed to the Python path's retry; a refused
request when the lane does not apply. Skipped without the compiled extension."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from meshkit.web.message import EmptyBody, Headers, Request, Response
from meshkit.web.proxy.handler import ProxyRule, build_handler, make_route
from meshkit.web.proxy.lane import COMPILED, fallback_future, send
from meshkit.web.proxy.upstream import Upstream

pytestmark = pytest.mark.skipif(not COMPILED, reason="the C extension is not built")


async def _backend(drop_kept: bool = False) -> tuple[asyncio.Server, list[int]]:
    """Answers /ok (Content-Length), /te (chunked) and HEAD; with drop_kept, a connection's
    second request is dropped unanswered (a kept connection the upstream closed)."""
    conns = [0]

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conns[0] += 1
        served = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                method, path = head.split(b" ")[:2]
                if drop_kept and served:
                    return
                served += 1
                fields = b"Connection: keep-alive, X-Hop\r\nX-Hop: 1\r\nX-Up: 1\r\n"
                if path == b"/short" and served > 1:
                    # a body that breaks off after its head
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
                    await writer.drain()
                    return
                if path == b"/stall" and served > 1:
                    # the head and part of the body, then nothing
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nab")
                    await asyncio.sleep(5)
                    return
                if path == b"/big":
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % BIG)
                    writer.write(b"x" * BIG)
                    await writer.drain()
                    continue
                if path == b"/te":
                    reply = b"HTTP/1.1 200 OK\r\n" + fields + b"Transfer-Encoding: chunked\r\n\r\n"
                    if method != b"HEAD":
                        reply += b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
                else:
                    reply = b"HTTP/1.1 200 OK\r\n" + fields + b"Content-Length: 2\r\n\r\n"
                    if method != b"HEAD":
                        reply += b"ok"
                writer.write(reply)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, conns


BIG = 4 << 20


class Sink:
    def __init__(self) -> None:
        self.events: list[Any] = []
        self.stop_once = False
        self.first: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_head(self, status: int, headers: list[tuple[str, str]], length: int | None) -> None:
        self.events.append(("head", status, headers, length))

    def on_body(self, data: bytes) -> bool:
        self.events.append(("body", data))
        if not self.first.done():
            self.first.set_result(None)
            return self.stop_once
        return False

    def on_done(self) -> None:
        self.events.append(("done",))
        self.ended.set_result(None)

    def on_fallback(self, result: Any) -> None:
        self.events.append(("fallback",))
        fallback_future(result).add_done_callback(self._answered)

    def _answered(self, fut: asyncio.Future[Response]) -> None:
        self.events.append(("answer", fut.result().status))
        self.ended.set_result(None)

    def on_broken(self) -> None:
        self.events.append(("broken",))
        self.ended.set_result(None)


def _request(method: str, path: str) -> Request:
    return Request(method, path, path, headers=Headers([("Host", "t")]))


async def _handler(port: int, timeout: float = 30.0) -> Any:
    rule = ProxyRule("/", [Upstream("http", "127.0.0.1", port)], timeout=timeout)
    return build_handler([make_route(rule)], lambda r: Response.error(404))


async def _through_lane(handler: Any, method: str, path: str) -> list[Any]:
    sink = Sink()
    assert send(handler, _request(method, path), sink)
    await asyncio.wait_for(sink.ended, 5)
    # body pieces as one (how many pieces depends on the reads)
    events: list[Any] = []
    for e in sink.events:
        if e[0] == "body" and events and events[-1][0] == "body":
            events[-1] = ("body", events[-1][1] + e[1])
        else:
            events.append(e)
    return events


def test_lane_reports_head_body_and_end_and_keeps_the_connection() -> None:
    async def go() -> None:
        server, conns = await _backend()
        port = server.sockets[0].getsockname()[1]
        handler = await _handler(port)
        # no kept connection yet: the lane declines; the usual path dials and keeps one
        assert not send(handler, _request("GET", "/ok"), Sink())
        response = await handler(_request("GET", "/ok"))
        assert response.status == 200
        kept = [("X-Up", "1"), ("Content-Length", "2")]
        assert await _through_lane(handler, "GET", "/ok") == [
            ("head", 200, kept, 2),
            ("body", b"ok"),
            ("done",),
        ]
        te = await _through_lane(handler, "GET", "/te")
        assert te == [("head", 200, [("X-Up", "1")], None), ("body", b"abcde"), ("done",)]
        head = await _through_lane(handler, "HEAD", "/te")
        assert head == [("head", 200, [("X-Up", "1")], None), ("done",)]
        assert await _through_lane(handler, "GET", "/ok") == [
            ("head", 200, kept, 2),
            ("body", b"ok"),
            ("done",),
        ]
        assert conns[0] == 1
        picker = handler.routes[0].set.picker
        assert picker is not None and picker.in_flight(0) == 0
        server.close()

    asyncio.run(go())


def test_a_stale_kept_connection_goes_to_the_python_retry() -> None:
    async def go() -> None:
        server, conns = await _backend(drop_kept=True)
        port = server.sockets[0].getsockname()[1]
        handler = await _handler(port)
        assert (await handler(_request("GET", "/ok"))).status == 200
        events = await _through_lane(handler, "GET", "/ok")
        assert events == [("fallback",), ("answer", 200)]
        assert conns[0] == 2
        server.close()

    asyncio.run(go())


def test_a_body_that_breaks_off_is_reported_and_counted() -> None:
    async def go() -> None:
        server, _ = await _backend()
        handler = await _handler(server.sockets[0].getsockname()[1])
        assert (await handler(_request("GET", "/short"))).status == 200  # dials, keeps
        events = await _through_lane(handler, "GET", "/short")
        assert events == [
            ("head", 200, [("Content-Length", "10")], 10),
            ("body", b"abc"),
            ("broken",),
        ]
        picker = handler.routes[0].set.picker
        assert picker is not None and picker.in_flight(0) == 0
        server.close()

    asyncio.run(go())


def test_an_upstream_that_stalls_mid_body_times_out() -> None:
    async def go() -> None:
        server, _ = await _backend()
        handler = await _handler(server.sockets[0].getsockname()[1], timeout=0.3)
        assert (await handler(_request("GET", "/stall"))).status == 200
        events = await _through_lane(handler, "GET", "/stall")
        assert events == [
            ("head", 200, [("Content-Length", "10")], 10),
            ("body", b"ab"),
            ("broken",),
        ]
        server.close()

    asyncio.run(go())


def test_a_slow_client_stops_the_reading_until_resumed() -> None:
    async def go() -> None:
        server, _ = await _backend()
        handler = await _handler(server.sockets[0].getsockname()[1])
        assert (await handler(_request("GET", "/ok"))).status == 200  # dials, keeps
        sink = Sink()
        sink.stop_once = True
        exchange = send(handler, _request("GET", "/big"), sink)
        assert exchange is not None
        await asyncio.wait_for(sink.first, 5)
        seen = len(sink.events)
        await asyncio.sleep(0.2)
        assert len(sink.events) == seen and not sink.ended.done()  # not read meanwhile
        exchange.resume()
        await asyncio.wait_for(sink.ended, 5)
        assert sink.events[-1] == ("done",)
        assert sum(len(e[1]) for e in sink.events if e[0] == "body") == BIG
        server.close()

    asyncio.run(go())


def test_a_request_with_a_body_is_not_taken() -> None:
    async def go() -> None:
        server, _ = await _backend()
        handler = await _handler(server.sockets[0].getsockname()[1])
        request = Request(
            "POST", "/ok", "/ok", headers=Headers([("Host", "t")]), body=EmptyBody(b"x")
        )
        assert not send(handler, request, Sink())
        server.close()

    asyncio.run(go())

"""Client.start(), the FastCGI client's synchronous path (a request without a body written at
once on a kept connection, answered from the connection's callbacks), against the small
responder of test_fastcgi_client; and the directive's fast path through the HTTP server with
pipelined requests. Also the memoized PARAMS against build_env."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from pathlib import Path

import pytest

from meshkit.web.caddyfile.load import load_text
from meshkit.web.directives import build_chain
from meshkit.web.fastcgi import records
from meshkit.web.fastcgi.client import (
    Client,
    FastCGIError,
    Reply,
    StreamBody,
    Timeouts,
    collect,
    parse_endpoint,
)
from meshkit.web.fastcgi.env import Target, build_env
from meshkit.web.message import HandlerResult, Headers, Request, Response
from support.e2e_util import Running
from support.fastcgi import (
    Behaviour,
    Responder,
    hello,
    once_per_connection,
    params,
    reply,
    run,
)


async def started(client: Client, p: bytes, head_only: bool = False) -> Reply:
    """Client.start() as an awaitable (raises the FastCGIError it reports)."""
    fut: asyncio.Future[Reply | FastCGIError] = asyncio.get_running_loop().create_future()
    client.start(p, head_only, fut.set_result)
    got = await fut
    if isinstance(got, FastCGIError):
        raise got
    return got


def _conns(client: Client) -> int:
    return sum(up.open for up in client.upstreams)


def test_start_reuses_the_kept_connection() -> None:
    async def main() -> None:
        r = Responder(hello)
        client = Client([parse_endpoint(await r.start_tcp())])
        for i in range(5):
            rep = await started(client, params(b"%d" % i))
            assert rep.status == 200 and rep.body == b"hello %d" % i
        assert r.connections == 1 and r.requests == 5
        assert not client.deadlines.watched  # every exchange left the sweep
        # the request leaves within start() itself: its kept connection is taken at once
        fut: asyncio.Future[Reply | FastCGIError] = asyncio.get_running_loop().create_future()
        client.start(params(b"sync"), False, fut.set_result)
        assert not client.upstreams[0].idle and len(client.deadlines.watched) == 1
        got = await fut
        assert isinstance(got, Reply) and got.body == b"hello sync"
        client.close()
        await r.stop()

    run(main())


def test_start_redials_when_the_kept_connection_was_closed() -> None:
    async def main() -> None:
        r = Responder(once_per_connection())
        client = Client([parse_endpoint(await r.start_tcp())])
        for _ in range(3):
            assert (await started(client, params())).body == b"ok"
        assert r.connections == 3 and r.requests == 5
        client.close()
        await r.stop()

    run(main())


def _second(answer: bytes) -> Behaviour:
    """Answers the first request of a connection, then `answer` (and closes)."""
    seen = 0

    async def b(writer: asyncio.StreamWriter, p: dict[bytes, bytes]) -> bool:
        nonlocal seen
        seen += 1
        if seen == 1:
            writer.write(reply(b"first"))
            return True
        writer.write(answer)
        await writer.drain()
        return False

    return b


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (b"\x07garbage that is no record", "unsupported FastCGI version 7"),
        (records.end_request(1, 0, records.OVERLOADED), "overloaded"),
        (
            records.encode_stream(records.STDOUT, 1, b"bad line\r\n\r\n") + records.end_request(1),
            "malformed header line",
        ),
    ],
)
def test_start_garbage_on_a_kept_connection_is_502(answer: bytes, message: str) -> None:
    async def main() -> None:
        r = Responder(_second(answer))
        client = Client([parse_endpoint(await r.start_tcp())])
        assert (await started(client, params())).body == b"first"
        with pytest.raises(FastCGIError) as info:
            await started(client, params())
        assert info.value.status == 502 and message in info.value.message
        assert r.connections == 1  # not sent again: the responder had answered
        client.close()
        await r.stop()

    run(main())


def test_start_timeout_is_504() -> None:
    async def main() -> None:
        seen = 0

        async def then_silent(writer: asyncio.StreamWriter, p: dict[bytes, bytes]) -> bool:
            nonlocal seen
            seen += 1
            if seen == 1:
                writer.write(reply(b"first"))
                return True
            await asyncio.sleep(3)
            return False

        r = Responder(then_silent)
        client = Client([parse_endpoint(await r.start_tcp())], Timeouts(read=0.3))
        assert (await started(client, params())).body == b"first"
        with pytest.raises(FastCGIError) as info:
            await started(client, params())
        assert info.value.status == 504 and "timed out" in info.value.message
        assert r.connections == 1 and r.requests == 2  # a timeout is not retried
        client.close()
        await r.stop()

    run(main())


def test_start_large_reply_is_streamed() -> None:
    piece = b"z" * 65535
    count = 40

    async def main() -> None:
        async def big(writer: asyncio.StreamWriter, p: dict[bytes, bytes]) -> bool:
            writer.write(records.encode_record(records.STDOUT, 1, b"X-Big: 1\r\n\r\n"))
            await writer.drain()
            for _ in range(count):
                writer.write(records.encode_record(records.STDOUT, 1, piece))
                await writer.drain()
                await asyncio.sleep(0)
            writer.write(records.encode_record(records.STDOUT, 1, b""))
            writer.write(records.end_request(1))
            return True

        r = Responder(big)
        client = Client([parse_endpoint(await r.start_tcp())])
        for _ in range(2):
            rep = await started(client, params())
            assert isinstance(rep.body, StreamBody) and rep.headers.get("X-Big") == "1"
            assert await collect(rep.body) == piece * count
        assert r.connections == 1  # the streamed reply gave its connection back
        client.close()
        await r.stop()

    run(main())


def test_start_without_an_idle_connection_dials() -> None:
    async def main() -> None:
        r = Responder(hello)
        client = Client([parse_endpoint(await r.start_tcp())])
        replies = await asyncio.gather(*(started(client, params(b"%d" % i)) for i in range(4)))
        assert sorted(rep.body for rep in replies) == [b"hello %d" % i for i in range(4)]  # type: ignore[type-var]
        assert r.connections == 4 and _conns(client) == 4
        client.close()
        await r.stop()

    run(main())


def _request(**kw: object) -> Request:
    base: dict[str, object] = dict(
        method="GET",
        uri="/index.php?a=1",
        path="/index.php",
        query="a=1",
        headers=Headers([("Host", "example.test"), ("Cookie", "a=1"), ("Cookie", "b=2")]),
        host="example.test",
        remote_addr="192.0.2.7",
        remote_port=40000,
        server_addr="127.0.0.1",
        server_port=2015,
    )
    base.update(kw)
    return Request(**base)  # type: ignore[arg-type]


def test_memoized_params_match_build_env(tmp_path: Path) -> None:
    (tmp_path / "index.php").write_text("<?php")
    config = load_text(f":2015\nroot {tmp_path}\nfastcgi / 127.0.0.1:9 php {{\n env APP one\n}}\n")
    config.raise_errors()
    site = config.sites[0]
    from meshkit.web.directives.fastcgi import FastCGIHandler

    handler = build_chain(site, lambda r: Response.text(404, "no\n"))
    while not isinstance(handler, FastCGIHandler):
        handler = handler.next  # type: ignore[attr-defined]
    rule = handler.rules[0]
    target = Target("/index.php", "")
    for req in (
        _request(),
        _request(remote_port=40001),  # same request from another connection: from memory
        _request(remote_addr="198.51.100.9", remote_port=1),
        _request(headers=Headers([("Host", "example.test"), ("X-A", "b")])),
        _request(method="HEAD", version="1.0"),
    ):
        want = build_env(
            req,
            target,
            document_root=rule.document_root,
            content_length=None,
            extra=rule.extra_env(req),
        )
        got = records.decode_pairs(rule.params(req, target, None))
        assert sorted(got) == sorted(want)
    assert len(rule.known) == 3  # the client's address is not part of what is remembered
    rule.client.close()


def test_pipelined_requests_through_the_server_stay_in_order(tmp_path: Path) -> None:
    (tmp_path / "a.php").write_text("<?php")

    async def slow_first(writer: asyncio.StreamWriter, p: dict[bytes, bytes]) -> bool:
        query = p.get(b"QUERY_STRING", b"")
        await asyncio.sleep(0.2 if query == b"n=0" else 0.0)
        writer.write(reply(b"answer " + query))
        return True

    r = Responder(slow_first)
    responder_loop = asyncio.new_event_loop()
    thread = threading.Thread(target=responder_loop.run_forever, daemon=True)
    thread.start()
    try:
        ep = asyncio.run_coroutine_threadsafe(r.start_tcp(), responder_loop).result(5)
        config = load_text(f":2015\nroot {tmp_path}\nfastcgi / {ep} php\n")
        config.raise_errors()
        site = config.sites[0]

        def last(request: Request) -> HandlerResult:
            return Response.text(404, "no\n")

        running = Running(build_chain(site, last))
        try:
            raw = b"".join(b"GET /a.php?n=%d HTTP/1.1\r\nHost: t\r\n\r\n" % i for i in range(4))
            for _ in range(2):  # the second round finds kept connections: the fast path
                with socket.create_connection(("127.0.0.1", running.port), timeout=10) as c:
                    c.sendall(raw)
                    data = b""
                    deadline = time.monotonic() + 10
                    while data.count(b"answer n=") < 4 and time.monotonic() < deadline:
                        data += c.recv(65536)
                answers = [part.split(b"\r\n\r\n", 1)[1] for part in data.split(b"HTTP/1.1 ")[1:]]
                assert answers == [b"answer n=%d" % i for i in range(4)]
        finally:
            for bg in site.background:
                asyncio.run_coroutine_threadsafe(bg.stop(), running.loop).result(5)
            running.close()
    finally:
        asyncio.run_coroutine_threadsafe(r.stop(), responder_loop).result(5)
        responder_loop.call_soon_threadsafe(responder_loop.stop)
        thread.join(5)
        responder_loop.close()

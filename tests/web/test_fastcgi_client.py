"""The FastCGI client's connection handling against a small FastCGI responder written with the
record layer (real sockets on 127.0.0.1 and a unix socket): keep-conn reuse, re-dial when a
kept connection was closed, failover and round robin, protocol errors, timeouts, stderr and
streaming with flow control."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from meshkit.web.fastcgi import records
from meshkit.web.fastcgi.client import Client, FastCGIError, StreamBody, Timeouts, parse_endpoint
from support.fastcgi import Behaviour, Responder, hello, once_per_connection, params, reply, run
from support.peers import free_port

# what a responder does with one request: (writer, params) -> whether to keep the connection


def test_keep_conn_reuses_one_connection(tmp_path: Path) -> None:
    async def main() -> None:
        r = Responder(hello)
        for ep in (await r.start_tcp(), None):
            if ep is None:
                await r.stop()
                r = Responder(hello)
                ep = await r.start_unix(tmp_path / "fcgi.sock")
            client = Client([parse_endpoint(ep)])
            for i in range(5):
                rep = await client.request(params(b"%d" % i), None, b"")
                assert rep.status == 200 and rep.body == b"hello %d" % i
                assert rep.headers.get("content-type") == "text/plain"
            assert r.connections == 1 and r.requests == 5
            client.close()
        await r.stop()

    run(main())


def test_redial_when_the_kept_connection_was_closed() -> None:
    async def main() -> None:
        r = Responder(once_per_connection())
        ep = await r.start_tcp()
        client = Client([parse_endpoint(ep)])
        for _ in range(3):
            rep = await client.request(params(), None, b"")
            assert rep.body == b"ok"
        assert r.connections == 3
        client.close()
        await r.stop()

    run(main())


def test_failover_and_round_robin() -> None:
    async def main() -> None:
        def named(tag: bytes) -> Behaviour:
            async def b(writer: asyncio.StreamWriter, p: dict[bytes, bytes]) -> bool:
                writer.write(reply(tag))
                return True

            return b

        a, b = Responder(named(b"a")), Responder(named(b"b"))
        ea, eb = await a.start_tcp(), await b.start_tcp()
        client = Client([parse_endpoint(ea), parse_endpoint(eb)])
        seen = [bytes((await client.request(params(), None, b"")).body) for _ in range(6)]  # type: ignore[arg-type]
        assert sorted(seen) == [b"a"] * 3 + [b"b"] * 3
        assert seen[0] != seen[1]
        client.close()
        dead = f"127.0.0.1:{free_port()}"
        client = Client([parse_endpoint(dead), parse_endpoint(eb)])
        for _ in range(3):
            assert (await client.request(params(), None, b"")).body == b"b"
        client.close()
        await a.stop()
        await b.stop()

    run(main())


def test_unreachable_is_502_naming_the_endpoint(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        ep = f"127.0.0.1:{free_port()}"
        client = Client([parse_endpoint(ep)])
        with pytest.raises(FastCGIError) as info:
            await client.request(params(), None, b"")
        assert info.value.status == 502 and ep in info.value.message

    with caplog.at_level(logging.ERROR, logger="meshkit.web"):
        run(main())
    assert any("cannot connect to FastCGI 127.0.0.1:" in m for m in caplog.messages)


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (bytes([2, 6, 0, 1, 0, 0, 0, 0]), "unsupported FastCGI version 2"),
        (records.end_request(1, 0, records.OVERLOADED), "overloaded"),
        (
            records.encode_stream(records.STDOUT, 1, b"no head at all") + records.end_request(1),
            "without a response head",
        ),
        (
            records.encode_stream(records.STDOUT, 1, b"bad line\r\n\r\n") + records.end_request(1),
            "malformed header line",
        ),
        (records.encode_record(records.STDOUT, 1, b"X: 1\r\n"), "closed before the response"),
    ],
)
def test_bad_replies_are_502(answer: bytes, message: str) -> None:
    async def main() -> None:
        async def bad(writer: asyncio.StreamWriter, p: dict[bytes, bytes]) -> bool:
            writer.write(answer)
            await writer.drain()
            return False

        r = Responder(bad)
        client = Client([parse_endpoint(await r.start_tcp())])
        with pytest.raises(FastCGIError) as info:
            await client.request(params(), None, b"")
        assert info.value.status == 502
        assert message in info.value.message
        client.close()
        await r.stop()

    run(main())


def test_read_timeout_is_504() -> None:
    async def main() -> None:
        async def silent(writer: asyncio.StreamWriter, p: dict[bytes, bytes]) -> bool:
            await asyncio.sleep(5)
            return False

        r = Responder(silent)
        ep = await r.start_tcp()
        client = Client([parse_endpoint(ep)], Timeouts(read=0.2))
        with pytest.raises(FastCGIError) as info:
            await client.request(params(), None, b"")
        assert info.value.status == 504 and ep in info.value.message
        client.close()
        await r.stop()

    run(main())


def test_stderr_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async def noisy(writer: asyncio.StreamWriter, p: dict[bytes, bytes]) -> bool:
            writer.write(records.encode_stream(records.STDERR, 1, b"PHP Warning: oops\n"))
            writer.write(reply(b"fine"))
            return True

        r = Responder(noisy)
        ep = await r.start_tcp()
        client = Client([parse_endpoint(ep)])
        assert (await client.request(params(), None, b"")).body == b"fine"
        client.close()
        await r.stop()

    with caplog.at_level(logging.ERROR, logger="meshkit.web"):
        run(main())
    assert any("stderr: PHP Warning: oops" in m and "127.0.0.1:" in m for m in caplog.messages)


def test_streamed_reply_with_flow_control() -> None:
    piece = b"0123456789abcdef" * 4096  # 64 KiB
    count = 48

    async def main() -> None:
        async def stream(writer: asyncio.StreamWriter, p: dict[bytes, bytes]) -> bool:
            writer.write(records.encode_record(records.STDOUT, 1, b"Status: 203 Partial\r\n\r\n"))
            await writer.drain()
            for _ in range(count):
                writer.write(records.encode_record(records.STDOUT, 1, piece))
                await writer.drain()
            writer.write(records.encode_stream(records.STDOUT, 1, b"") + records.end_request(1))
            return True

        r = Responder(stream)
        client = Client([parse_endpoint(await r.start_tcp())])
        rep = await client.request(params(), None, b"")
        assert rep.status == 203
        assert isinstance(rep.body, StreamBody)
        total = 0
        async for chunk in rep.body:
            assert chunk == piece * (len(chunk) // len(piece))
            total += len(chunk)
            await asyncio.sleep(0.001)  # a slow client: reading pauses, then resumes
        assert total == len(piece) * count
        # the connection went back to the pool and serves the next request
        rep = await client.request(params(), None, b"")
        assert isinstance(rep.body, StreamBody)
        assert len(b"".join([c async for c in rep.body])) == len(piece) * count
        assert r.connections == 1
        client.close()
        await r.stop()

    run(main())


def test_streamed_request_body() -> None:
    from meshkit.web.message import EmptyBody

    data = bytes(range(256)) * 1000

    async def main() -> None:
        got: list[bytes] = []

        async def echo_len(writer: asyncio.StreamWriter, p: dict[bytes, bytes]) -> bool:
            writer.write(reply(b"%d" % len(b"".join(got))))
            return True

        class Capturing(Responder):
            async def handle(
                self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
            ) -> None:
                dec = records.Decoder()
                while True:
                    chunk = await reader.read(65536)
                    if not chunk:
                        break
                    for rec in dec.feed(chunk):
                        if rec.type == records.STDIN:
                            if rec.content:
                                got.append(rec.content)
                            else:
                                await echo_len(writer, {})
                writer.close()

        r = Capturing(echo_len)
        client = Client([parse_endpoint(await r.start_tcp())])
        rep = await client.request(params(), EmptyBody(data), None)
        assert rep.body == b"%d" % len(data)
        assert b"".join(got) == data
        client.close()
        await r.stop()

    run(main())


def test_kept_connections_never_starve_new_ones() -> None:
    # like php-fpm: a child serves one connection until it closes; with 2 children, 8
    # requests at once leave 6 connections queued behind the 2 the client wants to keep
    async def main() -> None:
        children = asyncio.Semaphore(2)

        class Pinned(Responder):
            async def handle(
                self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
            ) -> None:
                async with children:
                    await super().handle(reader, writer)

        r = Pinned(hello)
        client = Client([parse_endpoint(await r.start_tcp())], Timeouts(read=20))
        for _ in range(3):
            replies = await asyncio.gather(
                *(client.request(params(b"%d" % i), None, b"") for i in range(8))
            )
            assert [rep.body for rep in replies] == [b"hello %d" % i for i in range(8)]
        # then steady load: the client learns it can keep 2 and waits for them
        for _ in range(20):
            await asyncio.gather(*(client.request(params(), None, b"") for _ in range(8)))
        assert client.upstreams[0].open <= 8
        client.close()
        await r.stop()

    run(main())

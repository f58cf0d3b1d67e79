"""A scripted FastCGI responder (a fake php-fpm) and the helpers that drive it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

from meshkit.web.fastcgi import records
from support.peers import free_port

Behaviour = Callable[[asyncio.StreamWriter, dict[bytes, bytes]], Awaitable[bool]]


def reply(body: bytes, head: bytes = b"Content-Type: text/plain\r\n\r\n") -> bytes:
    return records.encode_stream(records.STDOUT, 1, head + body) + records.end_request(
        1, 0, records.REQUEST_COMPLETE
    )


class Responder:
    """A FastCGI responder: reads whole requests, answers with `behaviour`."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.connections = 0
        self.requests = 0
        self.server: asyncio.AbstractServer | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        dec = records.Decoder()
        params = b""
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    return
                for rec in dec.feed(data):
                    if rec.type == records.PARAMS:
                        params += rec.content
                    elif rec.type == records.STDIN and not rec.content:
                        self.requests += 1
                        keep = await self.behaviour(writer, dict(records.decode_pairs(params)))
                        params = b""
                        if not keep:
                            writer.close()
                            return
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def start_tcp(self) -> str:
        port = free_port()
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", port)
        return f"127.0.0.1:{port}"

    async def start_unix(self, path: Path) -> str:
        self.server = await asyncio.start_unix_server(self.handle, str(path))
        return f"unix:{path}"

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for w in self.writers:
                w.close()
            await self.server.wait_closed()


async def hello(writer: asyncio.StreamWriter, params: dict[bytes, bytes]) -> bool:
    writer.write(reply(b"hello " + params.get(b"NAME", b"?")))
    return True


def params(name: bytes = b"x") -> bytes:
    return records.encode_pairs([(b"NAME", name)])


def run(coro: Awaitable[None]) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


def once_per_connection() -> Behaviour:
    """A responder that answers the first request of each connection and drops the second
    one with the connection, as php-fpm does when it restarts or recycles a child."""
    count = 0

    async def behave(writer: asyncio.StreamWriter, p: dict[bytes, bytes]) -> bool:
        nonlocal count
        count += 1
        if count % 2 == 0:
            return False
        writer.write(reply(b"ok"))
        return True

    return behave



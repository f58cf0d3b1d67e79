"""A small real backend for the ingress tests, run as its own process so tests can kill it.

    python tests/backend_server.py --port P --name NAME [--proxy-protocol] [--udp]

TCP: an HTTP/1.1 server with keep-alive that answers every request with `NAME\\n`; with
--proxy-protocol it first reads a PROXY header (v1 or v2) and answers
`NAME <client-ip>:<client-port>\\n`. A request for /halfclose instead reads to EOF after the
head and then replies with the number of body bytes it got, to show a half-closed client
still gets its answer. UDP (--udp): echoes `NAME:<datagram>` to the sender.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from meshkit.l4 import proxyproto


async def serve_tcp(host: str, port: int, name: str, proxy: bool) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buf = b""
        client = ""
        try:
            if proxy:
                while True:
                    parsed = proxyproto.parse(buf)
                    if parsed is not None:
                        header, used = parsed
                        buf = buf[used:]
                        if header.src is not None:
                            client = f" {header.src[0]}:{header.src[1]}"
                        break
                    chunk = await reader.read(4096)
                    if not chunk:
                        return
                    buf += chunk
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = await reader.read(65536)
                    if not chunk:
                        return
                    buf += chunk
                head, _, buf = buf.partition(b"\r\n\r\n")
                line = head.split(b"\r\n", 1)[0]
                if b" /halfclose " in line:
                    rest = await reader.read()
                    while rest:
                        buf += rest
                        rest = await reader.read()
                    body = f"{name} got {len(buf)}\n".encode()
                    writer.write(
                        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n"
                        b"Connection: close\r\n\r\n%s" % (len(body), body)
                    )
                    await writer.drain()
                    return
                length = 0
                for h in head.split(b"\r\n")[1:]:
                    k, _, v = h.partition(b":")
                    if k.strip().lower() == b"content-length":
                        length = int(v.strip())
                while len(buf) < length:
                    chunk = await reader.read(65536)
                    if not chunk:
                        return
                    buf += chunk
                buf = buf[length:]
                body = f"{name}{client}\n".encode()
                close = b"connection: close" in head.lower()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n%s\r\n%s"
                    % (len(body), b"Connection: close\r\n" if close else b"", body)
                )
                await writer.drain()
                if close:
                    return
        except (ConnectionError, ValueError):
            return
        finally:
            writer.close()

    server = await asyncio.start_server(handle, host, port, reuse_address=True)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


class Echo(asyncio.DatagramProtocol):
    def __init__(self, name: str) -> None:
        self.name = name.encode()
        self.transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(self.name + b":" + data, addr)


async def serve_udp(host: str, port: int, name: str) -> None:
    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(lambda: Echo(name), local_addr=(host, port))
    print("ready", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--proxy-protocol", action="store_true")
    ap.add_argument("--udp", action="store_true")
    a = ap.parse_args()
    try:
        if a.udp:
            asyncio.run(serve_udp(a.host, a.port, a.name))
        else:
            asyncio.run(serve_tcp(a.host, a.port, a.name, a.proxy_protocol))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()

"""Relaying an upgraded connection (websocket or any `Upgrade`) both ways after a 101.

The server hands over the client's socket once the 101 head is written; the upstream side is
the proxy's transport, switched to a relay protocol. Each side's reading pauses while the
other side's write buffer is full, and either side closing closes both.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

__all__ = ["relay"]


class _Side(asyncio.Protocol):
    def __init__(self, done: asyncio.Future[None]) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Side | None = None
        self.done = done
        self.pending: list[bytes] = []  # bytes for this side before its transport exists

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike
        self.transport = transport  # type: ignore[assignment]
        for data in self.pending:
            transport.write(data)  # type: ignore[attr-defined]
        self.pending = []

    def write(self, data: bytes) -> None:
        if self.transport is None:
            self.pending.append(data)
        elif not self.transport.is_closing():
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        if self.peer is not None:
            self.peer.write(data)

    def eof_received(self) -> bool | None:
        peer = self.peer
        if peer is not None and peer.transport is not None and peer.transport.can_write_eof():
            with contextlib.suppress(OSError, RuntimeError):
                peer.transport.write_eof()
            return True  # half-close: keep reading the other way
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.close()
        if not self.done.done():
            self.done.set_result(None)

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()


async def relay(
    client: socket.socket,
    client_rest: bytes,
    upstream: asyncio.Transport,
    upstream_rest: bytes,
) -> None:
    """Relay until both sides are closed. `client_rest` are bytes the client sent after its
    request head; `upstream_rest` bytes the upstream sent after its 101 head."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    up = _Side(done)
    down = _Side(done)
    up.peer, down.peer = down, up
    up.transport = upstream
    upstream.set_protocol(up)
    if client_rest:
        upstream.write(client_rest)
    if upstream_rest:
        down.write(upstream_rest)
    try:
        client.setblocking(False)
        transport, _ = await loop.connect_accepted_socket(lambda: down, client)
    except OSError:
        upstream.close()
        client.close()
        return
    if upstream.is_closing():
        transport.close()
    try:
        await done
    finally:
        upstream.close()
        transport.close()

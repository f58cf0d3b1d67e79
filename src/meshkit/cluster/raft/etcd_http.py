"""A small client for etcd's v3 JSON gateway (`/v3/kv/range`, `/v3/kv/txn`, `/v3/watch`, ...).

HTTP/1.1 through h11 (sans-IO, already a dependency) over asyncio streams: a few keep-alive
connections for unary calls (one request at a time each) and one connection per stream (a
watch answers with a chunked body of newline-separated JSON messages). Endpoints are tried
in turn: a connection that cannot be made moves to the next one.

Errors say what failed and where: `EtcdUnreachable` when no request reached etcd (nothing
was written), `EtcdLost` when a request was sent but no answer came (a write may or may not
have been applied), `EtcdError` when etcd answered with an error.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import ssl
from collections.abc import AsyncIterator
from typing import Any

import h11

from meshkit.base.errors import MeshkitError

CONNECT_TIMEOUT = 2.0
POOL = 8  # keep-alive connections for unary calls


class EtcdError(MeshkitError):
    """etcd answered a request with an error."""


class EtcdUnreachable(EtcdError):
    """No request reached etcd: nothing was written."""


class EtcdLost(EtcdError):
    """A request was sent but its answer did not come: it may or may not have been applied."""


def b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode()


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


def prefix_end(prefix: str) -> str:
    """The range_end that covers every key starting with `prefix` (base64)."""
    raw = bytearray(prefix.encode())
    raw[-1] += 1
    return b64(bytes(raw))


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str):
        self.reader = reader
        self.writer = writer
        self.host = host
        self.h11 = h11.Connection(h11.CLIENT)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()

    async def send(self, path: str, body: bytes) -> None:
        req = h11.Request(
            method="POST",
            target=path,
            headers=[
                ("Host", self.host),
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(body))),
            ],
        )
        self.writer.write(self.h11.send(req) + self.h11.send(h11.Data(data=body)))
        self.writer.write(self.h11.send(h11.EndOfMessage()))
        await self.writer.drain()

    async def next_event(self) -> Any:
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                data = await self.reader.read(65536)
                self.h11.receive_data(data)
                if not data and self.h11.their_state is not h11.DONE:
                    raise ConnectionResetError("etcd closed the connection")
                continue
            return event


class EtcdHttp:
    """Calls to one etcd cluster through its gateway, with failover between its endpoints."""

    def __init__(self, endpoints: list[tuple[str, int]], tls: ssl.SSLContext | None = None) -> None:
        self.endpoints = list(endpoints)
        self.tls = tls
        self._current = 0
        self._idle: list[_Conn] = []
        self._slots = asyncio.Semaphore(POOL)
        self.last_error = ""

    @property
    def where(self) -> str:
        host, port = self.endpoints[self._current]
        return f"{'https' if self.tls else 'http'}://{host}:{port}"

    def describe(self) -> str:
        scheme = "https" if self.tls else "http"
        return ",".join(f"{scheme}://{h}:{p}" for h, p in self.endpoints)

    async def _connect(self) -> _Conn:
        errors = []
        for i in range(len(self.endpoints)):
            index = (self._current + i) % len(self.endpoints)
            host, port = self.endpoints[index]
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(
                        host, port, ssl=self.tls, server_hostname=host if self.tls else None
                    ),
                    CONNECT_TIMEOUT,
                )
            except (OSError, asyncio.TimeoutError, ssl.SSLError) as exc:
                scheme = "https" if self.tls else "http"
                errors.append(f"{scheme}://{host}:{port}: {exc or type(exc).__name__}")
                continue
            self._current = index
            return _Conn(reader, writer, f"{host}:{port}")
        self.last_error = "cannot reach etcd at " + "; ".join(errors)
        raise EtcdUnreachable(self.last_error)

    def close(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()

    async def call(self, path: str, body: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
        """One unary call; its JSON answer."""
        async with self._slots:
            conn = self._idle.pop() if self._idle else await self._connect()
            sent = False
            try:
                await asyncio.wait_for(conn.send(path, json.dumps(body).encode()), timeout)
                sent = True
                status, data = await asyncio.wait_for(self._read_all(conn), timeout)
            except (OSError, asyncio.TimeoutError, h11.ProtocolError, ssl.SSLError) as exc:
                conn.close()
                why = f"{self.where}{path}: {str(exc) or type(exc).__name__}"
                self.last_error = why
                if sent:
                    raise EtcdLost(f"etcd did not answer {why}") from None
                raise EtcdUnreachable(f"cannot reach etcd at {why}") from None
            if conn.h11.our_state is h11.DONE and conn.h11.their_state is h11.DONE:
                conn.h11.start_next_cycle()
                self._idle.append(conn)
            else:
                conn.close()
        try:
            answer = json.loads(data) if data else {}
        except ValueError:
            raise EtcdError(
                f"etcd at {self.where}{path} answered {status}: {data[:200]!r}"
            ) from None
        if status != 200 or "error" in answer:
            text = (
                answer.get("message") or answer.get("error") or data[:200].decode(errors="replace")
            )
            raise EtcdError(f"etcd at {self.where}{path} answered {status}: {text}")
        self.last_error = ""
        return dict(answer)

    async def _read_all(self, conn: _Conn) -> tuple[int, bytes]:
        status = 0
        chunks = []
        while True:
            event = await conn.next_event()
            if isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return status, b"".join(chunks)
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionResetError("etcd closed the connection")

    async def stream(self, path: str, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """A streaming call (watch): each JSON message of the answer, as it comes."""
        conn = await self._connect()
        try:
            await conn.send(path, json.dumps(body).encode())
            buf = b""
            while True:
                event = await conn.next_event()
                if isinstance(event, h11.Response):
                    if event.status_code != 200:
                        raise EtcdError(f"etcd at {self.where}{path} answered {event.status_code}")
                elif isinstance(event, h11.Data):
                    buf += bytes(event.data)
                    while b"\n" in buf:
                        line, buf = buf.split(b"\n", 1)
                        if line.strip():
                            yield dict(json.loads(line))
                elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                    if buf.strip():
                        yield dict(json.loads(buf))
                    raise ConnectionResetError("etcd ended the stream")
        finally:
            conn.close()

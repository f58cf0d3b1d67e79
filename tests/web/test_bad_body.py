"""A request body that llhttp finds malformed after its request was dispatched (security issue
16 follow-up): the body fails with BadRequestBody (status 400) and the client gets 400 and a
close, not the 500 of a handler that "failed", nor a silent close.

Against a real `python3 -m meshkit web` process (both fast paths) whose site sends requests to
a FastCGI responder: the handler reads the body first, so before the fix the client got a 500
and the log a traceback. In process: what a handler that reads the body sees, and the 400 the
server answers in place of a handler that has not answered yet.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from meshkit.web.message import Handler, Request, Response
from meshkit.web.server import BadRequestBody
from support.httpserver_util import ServerThread
from support.web_proc_util import exchange, static_site

# a chunked body followed by a Content-Length trailer field, which llhttp refuses
HEAD = b"POST /x.php HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
BODY_OK = b"5\r\nhello\r\n"
BAD_TRAILER = b"0\r\nContent-Length: 5\r\n\r\n"


class _Sink:
    """A TCP listener that accepts connections and reads them until they close (a FastCGI
    responder that never gets as far as answering)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._drain, args=(conn,), daemon=True).start()

    @staticmethod
    def _drain(conn: socket.socket) -> None:
        with conn:
            try:
                while conn.recv(65536):
                    pass
            except OSError:
                pass

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def fastcgi_port(fastpath_env: dict[str, str], tmp_path: Path) -> Iterator[int]:
    sink = _Sink()
    try:
        extra = f"    fastcgi / 127.0.0.1:{sink.port} php\n"
        with static_site(tmp_path, fastpath_env, extra) as port:
            (tmp_path / "root" / "x.php").write_text("<?php echo 'x';\n")
            yield port
    finally:
        sink.close()


def test_bad_trailer_in_one_read_is_400(fastcgi_port: int) -> None:
    status, data = exchange(fastcgi_port, HEAD + BODY_OK + BAD_TRAILER)
    assert status == 400, data[:200]
    assert b"Connection: close" in data
    assert data.count(b"HTTP/1.1 ") == 1


def test_bad_trailer_while_the_handler_reads_is_400(fastcgi_port: int) -> None:
    with socket.create_connection(("127.0.0.1", fastcgi_port), timeout=20) as sock:
        sock.sendall(HEAD + BODY_OK)
        time.sleep(0.3)  # the handler is waiting for the rest of the body now
        sock.sendall(BAD_TRAILER)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 400 "), data[:200]


def test_a_good_chunked_body_still_reaches_the_handler() -> None:
    # the same request with a well-formed end: the body is read whole (no 400)
    seen: list[bytes] = []

    async def handler(request: Request) -> Response:
        seen.append(await request.body.read_all())
        return Response(200, body=b"ok")

    with _serving(handler) as st:
        head = HEAD.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
        reply = _raw(st.port, head + BODY_OK + b"0\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 200 ") and seen == [b"hello"]


def test_a_handler_reading_the_body_sees_bad_request_body() -> None:
    errors: list[BaseException] = []

    async def handler(request: Request) -> Response:
        try:
            await request.body.read_all()
        except ConnectionResetError as exc:  # what handlers caught before: still caught
            errors.append(exc)
            raise
        return Response(200, body=b"ok")

    with _serving(handler) as st:
        reply = _raw(st.port, HEAD + BODY_OK + BAD_TRAILER)
    assert reply.startswith(b"HTTP/1.1 400 "), reply[:200]
    assert len(errors) == 1 and isinstance(errors[0], BadRequestBody)
    assert errors[0].status == 400


def test_the_server_answers_400_for_a_handler_that_has_not_answered() -> None:
    async def handler(request: Request) -> Response:
        await asyncio.sleep(0.5)  # not reading the body, not answering yet
        return Response(200, body=b"late")

    with _serving(handler) as st:
        reply = _raw(st.port, HEAD + BODY_OK + BAD_TRAILER)
    assert reply.startswith(b"HTTP/1.1 400 "), reply[:200]
    assert b"late" not in reply


def test_a_response_already_sent_is_followed_by_a_close() -> None:
    # a synchronous answer went out before the bad trailer: nothing more is sent, and the
    # connection closes instead of waiting for another request
    def handler(request: Request) -> Response:
        return Response(405, body=b"no")

    with _serving(handler) as st:
        reply = _raw(st.port, HEAD + BODY_OK + BAD_TRAILER)
    assert reply.startswith(b"HTTP/1.1 405 ") and reply.count(b"HTTP/1.1 ") == 1


@contextmanager
def _serving(handler: Handler) -> Iterator[ServerThread]:
    st = ServerThread(handler)
    try:
        yield st
    finally:
        st.stop()


def _raw(port: int, raw: bytes) -> bytes:
    """Send raw, read until the server closes (a reset after its answer is fine)."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(raw)
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass
    return data

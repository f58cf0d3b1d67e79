"""A streamed response body over HTTP/2 with either engine (H2Sending._pull and the engine's
_add_piece/_queued/_end_pieces): a body larger than the stream's buffer (its producer waits
for the client to read), and a body shorter than its declared length (the stream is reset),
fetched by curl over h2."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshkit.web import h2conn
from meshkit.web.directives.tls import TLSConfig
from meshkit.web.h2send import STREAM_BUF
from meshkit.web.message import Headers, Request, Response
from meshkit.web.tlsctx import build_listener
from support.httpserver_util import ServerThread
from support.tlscerts import issue, make_ca

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")

PIECE = 65536
PIECES = 4 * STREAM_BUF // PIECE + 3  # more than the buffer holds: the producer waits


def _engines() -> list[Any]:
    out: list[Any] = ["h2"]
    h2conn._ENGINE.clear()
    if h2conn.load_engine() is not None:
        out.insert(0, "nghttp2")
    h2conn._ENGINE.clear()
    return out


class Pieces:
    """A streamed body of `count` pieces of PIECE bytes, claiming `declared` bytes."""

    def __init__(self, count: int, declared: int | None = None) -> None:
        self.count = count
        self.made = 0
        self.content_length = declared

    def __aiter__(self) -> Pieces:
        return self

    async def __anext__(self) -> bytes:
        if self.made >= self.count:
            raise StopAsyncIteration
        i = self.made
        self.made += 1
        await asyncio.sleep(0)
        return bytes([i % 251]) * PIECE


def expected(count: int) -> bytes:
    return b"".join(bytes([i % 251]) * PIECE for i in range(count))


async def handler(request: Request) -> Response:
    headers = Headers([("Content-Type", "application/octet-stream")])
    if request.path == "/stream":
        return Response(200, headers, Pieces(PIECES))
    if request.path == "/short":  # claims one piece more than it has
        return Response(200, headers, Pieces(2, declared=3 * PIECE))
    return Response.error(404)


@pytest.fixture(scope="module")
def tls_context(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("h2streamed")
    cert, key = issue(make_ca(tmp), tmp, "site", ["a.test"])
    return build_listener([(["a.test"], TLSConfig(pairs=[(str(cert), str(key))]))]).context


@pytest.fixture(params=_engines())
def port(
    request: pytest.FixtureRequest, tls_context: Any, monkeypatch: pytest.MonkeyPatch
) -> Iterator[int]:
    h2conn._ENGINE.clear()
    if request.param == "h2":
        h2conn._ENGINE.append(None)
    h2conn.load_engine()
    srv = ServerThread(handler, tls=tls_context)
    try:
        yield srv.port
    finally:
        srv.stop()
        h2conn._ENGINE.clear()


def _curl(port: int, path: str, out: Path) -> subprocess.CompletedProcess[str]:
    cmd = [
        "curl", "-sS", "--http2", "-k", "--max-time", "30", "-o", str(out),
        "-w", "%{http_version} %{http_code}", "--resolve", f"a.test:{port}:127.0.0.1",
        f"https://a.test:{port}{path}",
    ]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)


def test_a_body_larger_than_the_buffer_arrives_whole(port: int, tmp_path: Path) -> None:
    out = tmp_path / "body"
    proc = _curl(port, "/stream", out)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "2 200"
    want = expected(PIECES)
    assert hashlib.sha256(out.read_bytes()).hexdigest() == hashlib.sha256(want).hexdigest()


def test_a_body_shorter_than_its_length_resets_the_stream(port: int, tmp_path: Path) -> None:
    out = tmp_path / "body"
    proc = _curl(port, "/short", out)
    assert proc.returncode != 0  # the stream was reset (INTERNAL_ERROR), not ended
    assert out.stat().st_size <= 2 * PIECE if out.exists() else True
    ok = _curl(port, "/stream", tmp_path / "again")  # the connection's other streams go on
    assert ok.returncode == 0, ok.stderr

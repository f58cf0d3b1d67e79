"""FastCGI's entry for the C client lane (meshkit.web.fastcgi.lane.send) against the small
responder of test_fastcgi_client: the Response a `fastcgi` site's handler would answer,
handed to a sink from the connection's callbacks, on a kept connection; a stale kept
connection sent again on a fresh one; paths and requests the lane does not take."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from meshkit.web.caddyfile.load import load_text
from meshkit.web.directives import build_chain
from meshkit.web.directives.fastcgi import FastCGIHandler
from meshkit.web.fastcgi.lane import send
from meshkit.web.message import EmptyBody, Headers, Request, Response
from support.fastcgi import Responder, hello, once_per_connection, run


class Sink:
    def __init__(self) -> None:
        self.got: asyncio.Future[Response] = asyncio.get_running_loop().create_future()

    def on_response(self, response: Response) -> None:
        self.got.set_result(response)


def _handler(root: Path, ep: str) -> Any:
    (root / "a.php").write_text("<?php")
    (root / "static.txt").write_text("static")
    config = load_text(f":2015\nroot {root}\nfastcgi / {ep} php\n")
    config.raise_errors()
    handler = build_chain(config.sites[0], lambda r: Response.text(404, "no\n"))
    while not isinstance(handler, FastCGIHandler):
        handler = handler.next  # type: ignore[attr-defined]
    return handler


def _request(path: str, method: str = "GET", body: bytes = b"") -> Request:
    return Request(method, path, path, headers=Headers([("Host", "t")]), body=EmptyBody(body))


async def _through(handler: Any, path: str, method: str = "GET") -> Response:
    sink = Sink()
    assert send(handler, _request(path, method), sink)
    return await asyncio.wait_for(sink.got, 5)


def test_lane_answers_like_the_handler_on_a_kept_connection(tmp_path: Path) -> None:
    async def main() -> None:
        r = Responder(hello)
        handler = _handler(tmp_path, await r.start_tcp())
        for _ in range(3):
            response = await _through(handler, "/a.php")
            assert response.status == 200 and response.body == b"hello ?"
            assert response.headers.get("Content-Type") == "text/plain"
        head = await _through(handler, "/a.php", "HEAD")
        assert head.status == 200
        assert r.connections == 1
        # not taken: a static file, a request with a body
        assert not send(handler, _request("/static.txt"), Sink())
        assert not send(handler, _request("/a.php", "POST", b"x=1"), Sink())
        handler.rules[0].client.close()
        await r.stop()

    run(main())


def test_a_stale_kept_connection_is_sent_again(tmp_path: Path) -> None:
    async def main() -> None:
        r = Responder(once_per_connection())
        handler = _handler(tmp_path, await r.start_tcp())
        for _ in range(3):
            response = await _through(handler, "/a.php")
            assert response.status == 200 and response.body == b"ok"
        assert r.connections >= 2
        handler.rules[0].client.close()
        await r.stop()

    run(main())

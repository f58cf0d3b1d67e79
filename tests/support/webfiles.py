"""Calling the file server and the directive chain without sockets: requests, sites, bodies."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable
from pathlib import Path

from meshkit.web.caddyfile.load import load_text
from meshkit.web.caddyfile.tokens import Token
from meshkit.web.fileserver import FileServer, build_fileserver
from meshkit.web.message import FileBody, Headers, Request, Response, resolve
from meshkit.web.site import Address, Site


def make_site(root: Path | str, **kw: object) -> Site:
    site = Site(addresses=[Address("127.0.0.1:2015", host="127.0.0.1")], root=str(root))
    for k, v in kw.items():
        setattr(site, k, v)
    return site


def server(root: Path | str, **kw: object) -> FileServer:
    return build_fileserver(make_site(root, **kw))


def req(
    path: str,
    method: str = "GET",
    headers: Iterable[tuple[str, str]] = (),
    uri: str | None = None,
    query: str = "",
) -> Request:
    if uri is None:
        uri = path + ("?" + query if query else "")
    return Request(
        method, uri, path, query=query, headers=Headers(list(headers)), host="127.0.0.1:2015"
    )


def body_of(resp: Response) -> bytes:
    """The body bytes (a FileBody read with pread, as sendfile would); releases the body."""
    b = resp.body
    if isinstance(b, bytes):
        return b
    assert isinstance(b, FileBody)
    try:
        if b.data is not None:
            assert len(b.data) == b.length
            assert os.pread(b.fd, b.length, b.offset) == b.data
            return b.data
        return os.pread(b.fd, b.length, b.offset)
    finally:
        if b.release is not None:
            b.release()


def call(handler: object, request: Request) -> Response:
    assert callable(handler)
    result = handler(request)
    if isinstance(result, Response):
        return result
    return asyncio.run(resolve(result))


def get(fs: object, path: str, **kw: object) -> tuple[Response, bytes]:
    resp = call(fs, req(path, **kw))  # type: ignore[arg-type]
    return resp, body_of(resp)





def tokens(text: str, file: str = "Caddyfile") -> list[Token]:
    """Tokens of a simple directive text (no quotes): one per word, lines numbered from 1."""
    out: list[Token] = []
    for n, line in enumerate(text.splitlines(), start=1):
        out.extend(Token(file, n, word) for word in line.split())
    return out


def site_from(text: str) -> Site:
    config = load_text(text)
    assert not config.errors, config.errors
    assert len(config.sites) == 1
    return config.sites[0]



"""What the response-cache tests share: the two implementations to run over (the compiled
send path and the pure-Python one) and a FileServer that counts its calls (a cache hit does not
reach it). Their fixtures (`serve`, `trust_fresh_folders`) are in tests/web/conftest.py."""

from __future__ import annotations

import pytest

from meshkit._ext import load_fastpath
from meshkit.web.fileserver import FileServer
from meshkit.web.message import Request, Response
from meshkit.web.site import Site

_fastpath = load_fastpath()
HAVE_C = _fastpath is not None and hasattr(_fastpath, "send_head_and_file")
IMPLS = [
    pytest.param(True, id="c", marks=pytest.mark.skipif(not HAVE_C, reason="not built")),
    pytest.param(False, id="py"),
]


class Counting(FileServer):
    def __init__(self, site: Site) -> None:
        super().__init__(site)
        self.calls = 0

    def __call__(self, req: Request) -> Response:
        self.calls += 1
        return super().__call__(req)

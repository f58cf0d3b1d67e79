"""A proxy handler against a real upstream, for the proxy tests."""

from __future__ import annotations

import asyncio

from meshkit.web.caddyfile.load import load_text
from meshkit.web.directives import build_chain
from meshkit.web.message import HandlerResult, Request, Response
from support.e2e_util import Running


def _proxy(text: str) -> Running:
    config = load_text(text)
    config.raise_errors()
    site = config.sites[0]

    def last(request: Request) -> HandlerResult:
        return Response.text(200, "fileserver\n")

    running = Running(build_chain(site, last))
    for bg in site.background:
        asyncio.run_coroutine_threadsafe(bg.start(), running.loop).result(5)
    running.background = site.background  # type: ignore[attr-defined]
    return running


def _close(running: Running) -> None:
    for bg in getattr(running, "background", []):
        asyncio.run_coroutine_threadsafe(bg.stop(), running.loop).result(5)
    running.close()



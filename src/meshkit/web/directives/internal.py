"""internal [PATH]: paths only reachable through an internal redirect.

One PATH per line, as Caddy v1 (`internal /a /b` is refused; write two lines). A request from
outside whose path starts with one of the PATHs (plain prefixes, `/` first)
gets 404. A response from a later handler (proxy, fastcgi...) carrying `X-Accel-Redirect: URI`
is dropped and the rest of the chain runs again for URI, marked internal (so it may reach the
internal paths), at most 10 times; one more redirect is answered with 500. The X-Accel-Redirect
header itself never reaches the client.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from urllib.parse import unquote

from meshkit.web.caddyfile.tokens import Dispenser
from meshkit.web.directives import register
from meshkit.web.fileserver import INTERNAL_VAR, clean_path
from meshkit.web.message import Handler, HandlerResult, Request, Response
from meshkit.web.paths import clamp_path
from meshkit.web.site import Site

MAX_REDIRECTS = 10
HEADER = "X-Accel-Redirect"


def parse(d: Dispenser, site: Site) -> list[str]:
    paths: list[str] = []
    while d.next():
        # no PATH (as v1): nothing is hidden, but X-Accel-Redirect is still followed
        if d.next_arg():
            p = d.val()
            if not p.startswith("/"):
                raise d.err(f"internal path {p!r} must start with '/'")
            if d.next_arg():
                raise d.err(
                    f"internal takes one path per line (as Caddy v1): {d.val()!r} follows"
                    f" {p!r}; write `internal {d.val()}` on a line of its own"
                )
            if p not in paths:
                paths.append(p)
        for _ in d.block():
            raise d.err("internal takes no block")
    for p in paths:
        if p not in site.internal:
            site.internal.append(p)
    return paths


def _discard(resp: Response) -> None:
    body = resp.body
    if isinstance(body, (bytes, bytearray)):
        return
    release = getattr(body, "release", None)
    if callable(release):
        release()
        return
    aclose = getattr(body, "aclose", None)
    if callable(aclose):
        # a streamed body (proxy, fastcgi) is closed on the loop so its connection is freed
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        _pending.add(task := loop.create_task(aclose()))
        task.add_done_callback(_pending.discard)


_pending: set[asyncio.Task[object]] = set()


class InternalHandler:
    def __init__(self, paths: list[str], next: Handler) -> None:
        self.paths = tuple(clamp_path(p) for p in paths)
        self.next = next

    def __call__(self, req: Request) -> HandlerResult:
        if not req.vars.get(INTERNAL_VAR):
            clean = clean_path(req.path)
            if clean is not None and clean.startswith(self.paths):
                return Response.error(404)
        return self._follow(req, self.next(req), 0)

    def _follow(self, req: Request, result: HandlerResult, count: int) -> HandlerResult:
        if isinstance(result, Response):
            return self._check(req, result, count)
        return self._follow_later(req, result, count)

    async def _follow_later(
        self, req: Request, result: Awaitable[Response], count: int
    ) -> Response:
        resp = await result
        aclose = getattr(resp.body, "aclose", None)
        if callable(aclose) and resp.headers.get(HEADER) is not None:
            await aclose()  # close a streamed body here, on the loop, before re-running
            resp.body = b""
        out: HandlerResult = self._check(req, resp, count)
        while not isinstance(out, Response):
            out = await out
        return out

    def _check(self, req: Request, resp: Response, count: int) -> HandlerResult:
        target = resp.headers.get(HEADER)
        if target is None:
            return resp
        _discard(resp)
        if count >= MAX_REDIRECTS:
            return Response.error(500)
        path, _, query = target.strip().partition("?")
        if not path.startswith("/"):
            return Response.error(500)
        req.path = clamp_path(unquote(path))
        req.query = query
        req.uri = path + ("?" + query if query else "")
        req.vars[INTERNAL_VAR] = "1"
        return self._follow(req, self.next(req), count + 1)


def build(config: list[str], next: Handler, site: Site) -> Handler:
    return InternalHandler(config, next)


register("internal", parse, build)

"""Server push for an HTTP/2 connection (meshkit.web.h2conn; the `push` directive asks for
it through meshkit.web.h2stream.current_pusher): a PUSH_PROMISE on the request's stream, then
the promised request answered by the site like any other. H2Connection inherits it; the
attributes below are H2Connection's."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import h2.connection
import h2.exceptions

from meshkit.web import http1
from meshkit.web.h2stream import PUSHED_VAR, Stream
from meshkit.web.http1 import HttpError
from meshkit.web.message import EmptyBody, Headers, Request

__all__ = ["MAX_STREAMS", "H2Pushing"]

log = logging.getLogger("meshkit.web")

MAX_STREAMS = 250  # SETTINGS_MAX_CONCURRENT_STREAMS (h2conn's; pushed streams count too)


class H2Pushing:
    """push(), for H2Connection (which sets these attributes and defines _dispatch)."""

    _loop: asyncio.AbstractEventLoop
    _h2: h2.connection.H2Connection
    _streams: dict[int, Stream]
    _closing: bool
    _scheme: str
    _remote: tuple[str, int]
    _local: tuple[str, int]
    requests: int

    def _dispatch(self, st: Stream) -> None:
        raise NotImplementedError

    # the engine's part (h2 here; meshkit.web.h2ng has nghttp2's)
    def _push_enabled(self) -> bool:
        return bool(self._h2.remote_settings.enable_push)

    def _promise(self, parent: int, head: list[tuple[bytes, bytes]]) -> int | None:
        """PUSH_PROMISE on parent: the promised stream's id, None when refused."""
        conn = self._h2
        sid = conn.get_next_available_stream_id()
        try:
            conn.push_stream(parent, sid, head)
        except h2.exceptions.ProtocolError as exc:
            log.debug("HTTP/2 push refused: %s", exc)
            return None
        return sid

    def push(self, parent: int, host: str, path: str, method: str, fields: list[Any]) -> bool:
        """Server push (the `push` directive): promise `method path` on the parent stream
        and answer it like a request; False when it cannot be (and no more should be)."""
        if (
            self._closing
            or parent not in self._streams
            or not self._push_enabled()
            or len(self._streams) >= MAX_STREAMS
        ):
            return False
        try:
            target = http1.parse_target(path.encode("latin-1"), method)
        except (HttpError, UnicodeEncodeError):
            return True  # this one cannot be pushed; others may
        head = [(":method", method), (":path", path), (":scheme", self._scheme)]
        head.append((":authority", host))
        head += [(k.lower(), v) for k, v in fields if k.lower() != "host"]
        try:
            encoded = [(k.encode(), v.encode("latin-1")) for k, v in head]
        except UnicodeEncodeError:
            return False
        sid = self._promise(parent, encoded)
        if sid is None:
            log.debug("HTTP/2 push of %s refused", path)
            return False
        headers = Headers([(k, v) for k, v in fields if k.lower() != "host"])
        headers.add("host", host)
        request = Request(
            method,
            path,
            target.path,
            target.query,
            "2.0",
            headers,
            EmptyBody(),
            self._scheme,
            host,
            str(self._remote[0]),
            int(self._remote[1]),
            str(self._local[0]),
            int(self._local[1]),
            time.time(),
        )
        request.vars[PUSHED_VAR] = "1"
        st = Stream(sid, request, None)
        self._streams[sid] = st
        self.requests += 1
        self._dispatch(st)
        return True

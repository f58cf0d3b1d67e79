"""The head lane: request heads read in one pass, without httptools' per-header callbacks.

An HTTP/1 connection (meshkit.web.connection) hands each read that begins between two
requests to ``feed()`` first. ``feed`` scans the heads at the start of the read with
``scan_head`` (the compiled scanner of meshkit._fastpath, csrc/http_head.c, or its
pure-Python twin meshkit.web.headparse) and dispatches every request without a body whose
whole head is in the read, through the same connection methods the httptools callbacks use
(on_message_begin, _head_done, on_message_complete). It stops at the first head it does not
take (incomplete, with a body, an upgrade, a rare form, or refused) and returns the offset
of the bytes left for httptools, which then answers them exactly as before: refusals too go
through the httptools path, so their status, log line and closing stay what they were (the
scanner's own statuses are the same; tests/web/test_headparse_diff.py checks that).

Connections use the compiled scanner when it is built and MESHKIT_NO_EXTENSIONS is not set;
otherwise no lane (httptools, itself compiled, reads every head as before: the twin is the
specification and the tests' reference, and costs more than httptools on heads it has not
seen). MESHKIT_HEAD_LANE=0 turns the lane off (the benches compare both);
MESHKIT_HEAD_LANE=python makes connections use the twin (to run the server tests over it).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from meshkit._ext import load_fastpath
from meshkit.web import headparse
from meshkit.web.connstate import ConnState
from meshkit.web.http1 import NO_BODY, HttpError, parse_target

__all__ = ["SCAN", "ScanHead", "feed", "load_scan"]

log = logging.getLogger("meshkit.web")

ScanHead = Callable[[bytes, int, int, int, int], Any]

_IDLE = ConnState.IDLE
_CLOSING_BODY = ConnState.CLOSING_BODY


def _from_env() -> ScanHead | None:
    choice = os.environ.get("MESHKIT_HEAD_LANE", "").strip().lower()
    if choice in ("0", "off", "no", "false"):
        return None
    if choice == "python":
        return headparse.scan_head
    scan = load_scan()
    return None if scan is headparse.scan_head else scan


def load_scan(compiled: bool | None = None) -> ScanHead:
    """The compiled scanner (compiled=True, or None when it is available) or the twin."""
    if compiled is not False:
        fastpath = load_fastpath()
        scan = getattr(fastpath, "scan_head", None) if fastpath is not None else None
        if scan is not None:
            return scan  # type: ignore[no-any-return]
        if compiled:
            raise RuntimeError("the compiled head scanner is not built")
    return headparse.scan_head


# what connections use (None: the lane is off); tests swap it
SCAN: ScanHead | None = _from_env()


def feed(conn: Any, data: bytes, stop: type[BaseException]) -> int:
    """Dispatch the bodyless requests whose heads begin `data`; the offset of the bytes left
    for httptools (len(data): none), or -1 when the connection stopped reading (a request
    that closes it, or a callback that failed: answered here as the httptools path does).
    `stop` is the exception on_message_complete raises to stop parsing."""
    scan = conn._scan
    server = conn._server
    pos = 0
    end = len(data)
    while pos < end and conn._state <= _IDLE:
        res = scan(data, pos, server._header_limit, server._max_fields, server._max_field_line)
        if type(res) is int:
            break
        stop_at, method, url, version, items, host, keep = res
        try:
            target = parse_target(url, method)
        except HttpError:
            break  # refused: httptools answers it
        try:
            conn.on_message_begin()
            conn._url = url
            conn._head_done(method, version, items, host, keep, NO_BODY, target)
            conn.on_message_complete()
        except stop:
            return -1
        except Exception as exc:  # as httptools reports a failing callback
            if conn._state > _CLOSING_BODY:
                return -1
            log.error("error in the HTTP parser callbacks: %s", exc)
            conn._refuse_request(400)
            return -1
        pos = stop_at
    return pos

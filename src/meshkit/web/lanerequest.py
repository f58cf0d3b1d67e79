"""The Request a client lane plans from: one whole request head without a body.

The proxy lane (meshkit.web.proxy.clientlane) and the FastCGI lane
(meshkit.web.fastcgi.clientlane) make a plan once per request shape. Both start the same way:
the head is scanned with the head lane's scanner (the limits of the server that read it), it
must be the whole read, HTTP/1.1 with keep-alive and one of the lane's methods; then the
Request the handler chain would have built and the site the router gives it. Anything else
is None: the connection reads the head as before.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import Any

from meshkit.web import headlane
from meshkit.web.directives.log import _Complete
from meshkit.web.http1 import HttpError, parse_target
from meshkit.web.logfile import RotatingFile
from meshkit.web.message import EmptyBody, Headers, Request, Response
from meshkit.web.output import Job
from meshkit.web.router import Router

__all__ = [
    "complete",
    "copy_request",
    "head_request",
    "log_entries",
    "queue_rest",
    "scanned_request",
    "write_entries",
]

# A remembered access-log line as a lane writes it again: (sink, line, the file sink's
# buffer, the line's bytes in it) or (sink, line, None, None) for the other sinks.
LogEntry = tuple[Any, str, "bytearray | None", "bytes | None"]

log = logging.getLogger("meshkit.web")


def head_request(
    server: Any, conn: Any, data: bytes, methods: Collection[str]
) -> tuple[Router, Request, Any] | None:
    """(router, request, site) for the head `data` read on `conn` by `server`, or None when a
    lane cannot take it."""
    router = server._handler
    if type(router) is not Router:
        return None
    scan = headlane.SCAN or headlane.load_scan()
    res = scan(data, 0, server._header_limit, server._max_fields, server._max_field_line)
    if type(res) is int:
        return None  # incomplete, a body, an upgrade, a rare form or refused
    stop_at, method, url, version, items, host, keep = res
    if stop_at != len(data) or not keep or version != "1.1" or method not in methods:
        return None
    got = scanned_request(router, conn, method, url, version, items, host)
    return None if got is None else (router, *got)


def scanned_request(
    router: Router,
    conn: Any,
    method: str,
    url: bytes,
    version: str,
    items: list[tuple[str, str]],
    host: str,
) -> tuple[Request, Any] | None:
    """The Request the handler chain would build from a scanned head read on `conn`, and the
    site the router gives it (None: a target the chain refuses, or no site)."""
    try:
        tgt = parse_target(url, method)
    except HttpError:
        return None
    if tgt.authority:
        host = tgt.authority
    request = Request(
        method,
        url.decode("latin-1"),
        tgt.path,
        tgt.query,
        version,
        Headers(items),
        EmptyBody(),
        "http",
        host,
        conn._remote_addr,
        conn._remote_port,
        conn._local_addr,
        conn._local_port,
        0.0,
    )
    site = router._only or router.match(host, tgt.path)
    if site is None:
        return None
    return request, site


def copy_request(t: Request, remote_port: int, start: float) -> Request:
    """A fresh Request of a plan's shape `t` (its own headers, vars and on_complete) for one
    request from `remote_port` that takes the Python path."""
    return Request(
        t.method,
        t.uri,
        t.path,
        t.query,
        t.version,
        Headers(list(t.headers._items)),
        EmptyBody(),
        t.scheme,
        t.host,
        t.remote_addr,
        remote_port,
        t.server_addr,
        t.server_port,
        start,
    )


def complete(
    request: Request, response: Response, sent: int, now: float
) -> tuple[tuple[tuple[Any, str], ...], bool]:
    """Run the request's on_complete callbacks for an answer a lane sent (as the pipeline
    runs them), the access log's lines rendered and written here. (lines, replayable):
    replayable when every callback was such a log line, so the lane may write the same lines
    again for the same answer shape within the second."""
    lines: list[tuple[Any, str]] = []
    replayable = True
    for callback in request.on_complete:
        try:
            if type(callback) is _Complete and callback.replayable:
                lines.extend(callback.lines(request, response, sent, now))
            else:
                replayable = False
                callback(request, response, sent)
        except Exception:
            log.exception("on_complete callback failed for %s %s", request.method, request.uri)
    for out, line in lines:
        out.write(line)
    return tuple(lines), replayable


def log_entries(lines: tuple[tuple[Any, str], ...]) -> tuple[LogEntry, ...]:
    """The lines `complete` wrote, as entries to write again (write_entries): a file sink's
    line encoded once (RotatingFile.encode), so that writing it again is appending bytes to
    the sink's buffer (RotatingFile.append; the proxy lane does it in C)."""
    out: list[LogEntry] = []
    for sink, line in lines:
        if type(sink) is RotatingFile:
            out.append((sink, line, sink.pending, sink.encode(line)))
        else:
            out.append((sink, line, None, None))
    return tuple(out)


def write_entries(entries: tuple[LogEntry, ...]) -> None:
    """Write remembered lines again (the Python twin of the proxy lane's _pl_write_lines)."""
    for sink, line, _, raw in entries:
        if raw is None:
            sink.write(line)
        else:
            sink.append(raw)


def queue_rest(
    conn: Any, request: Request, response: Response, wire: bytes, head_len: int, sent: int
) -> None:
    """The client's socket took only `sent` bytes of a lane's answer `wire`: the rest goes
    out as the connection's Job (its on_complete callbacks run when it is written)."""
    job = Job(wire)
    job.head_len = head_len
    job.off = job.sent = sent
    job.finishes = True
    job.request = request
    job.response = response
    conn._streaming = False
    conn._out.append(job)
    conn._write_since = conn._loop.time()
    if not conn._writing:
        conn._writing = True
        conn._loop.add_writer(conn._fd, conn._on_writable)
    conn._update_reading()

"""The Request of a head that announces a small body (the body plans of the FastCGI and
proxy lanes).

meshkit.web.lanerequest.head_request builds a lane's Request from a head without a body:
the head scanner (meshkit.web.headlane, its compiled form or the twin headparse) leaves any
head with a body to httptools (DEFER). A head with one plain Content-Length body is made
into a bodyless head here to be judged by the same scanner: its Content-Length value is
replaced by zeros of the same width (the scanner then takes every other decision it takes
for any head: version, Host, field syntax, limits, keep-alive) and the field's own value is
put back into the Request's fields. Only this shape is taken: exactly one Content-Length of
plain digits, no Transfer-Encoding, no Expect, no Upgrade, and the unaltered head must be
one the scanner defers for its body (not refuses), so every smuggling rule of
meshkit.web.http1 (check_framing) still answers as it does today (the Python chain answers
them: a 400, 417 or 501 is never planned). Chunked bodies and Expect: 100-continue keep the
Python chain. Once per request shape, so the cost here does not matter.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from meshkit.web import headlane, headparse
from meshkit.web.lanerequest import head_request, scanned_request
from meshkit.web.message import Request
from meshkit.web.router import Router

__all__ = ["MAX_BODY", "body_request", "lane_request"]

MAX_BODY = 65536  # directives.fastcgi.SMALL_BODY: bodies up to this are sent in one write
_DIGITS = frozenset(b"0123456789")
_REFUSED_FIELDS = (b"transfer-encoding", b"expect", b"upgrade")


def body_request(
    server: Any, conn: Any, head: bytes, methods: Collection[str]
) -> tuple[Router, Request, Any, int] | None:
    """(router, request, site, body length) for the request head `head` (one whole head,
    its body not included) read on `conn` by `server`, or None when the lane cannot take it
    (the connection then reads it as before)."""
    router = server._handler
    if type(router) is not Router or not head.endswith(b"\r\n\r\n"):
        return None
    limits = (server._header_limit, server._max_fields, server._max_field_line)
    scan = headlane.SCAN or headlane.load_scan()
    if scan(head, 0, *limits) != headparse.DEFER:
        return None  # refused (the chain answers its status), or not a body after all
    lines = head[:-4].split(b"\r\n")
    at = -1
    value = b""
    for i, line in enumerate(lines[1:]):
        name, colon, rest = line.partition(b":")
        if not colon:
            return None
        low = name.lower()
        if low == b"content-length":
            if at >= 0:
                return None
            at, value = i, rest
        elif low in _REFUSED_FIELDS:
            return None
    number = value.strip(b" \t")
    if at < 0 or not number or not _DIGITS.issuperset(number):
        return None
    length = int(number)
    if not 0 < length <= MAX_BODY:
        return None
    # the same head with a zero length: what the scanner takes as a head without a body
    zeroed = value.replace(number, b"0" * len(number), 1)
    name = lines[1 + at].partition(b":")[0]
    lines[1 + at] = name + b":" + zeroed
    bodyless = b"\r\n".join(lines) + b"\r\n\r\n"
    res = scan(bodyless, 0, *limits)
    if type(res) is int:
        return None
    stop_at, method, url, version, items, host, keep = res
    if stop_at != len(bodyless) or not keep or version != "1.1" or method not in methods:
        return None
    field_name, zero_value = items[at]
    if field_name.lower() != "content-length":
        return None  # the fields did not line up with the lines: leave it to the chain
    # the value as the scanner gives it (leading blanks dropped), with its own digits
    items[at] = (field_name, zero_value.replace("0" * len(number), number.decode(), 1))
    got = scanned_request(router, conn, method, url, version, items, host)
    if got is None:
        return None
    return router, got[0], got[1], length


def lane_request(
    server: Any,
    conn: Any,
    head: bytes,
    body: bool,
    methods: Collection[str],
    body_methods: Collection[str],
) -> tuple[Router, Request, Any, int] | None:
    """A client lane's plan start: (router, request, site, body length) for a head without a
    body (`head_request`, one of `methods`) or, with `body`, one announcing a small body (one
    of `body_methods`); None when the lane cannot take it."""
    if body:
        return body_request(server, conn, head, body_methods)
    found = head_request(server, conn, head, methods)
    return None if found is None else (*found, 0)

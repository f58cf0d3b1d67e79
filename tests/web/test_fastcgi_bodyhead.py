"""meshkit.web.bodyhead against the rules the Python chain applies to the same head
(meshkit.web.http1.check_framing, the head scanner, http1.parse_target): generated request
heads with every Content-Length / Transfer-Encoding / Expect shape the smuggling rules know
are planned by body_request only when the chain would read exactly one plain Content-Length
body of 1..64 KiB on a kept HTTP/1.1 connection, with the length the chain reads and the
fields the chain's Request holds. No php-fpm, no sockets: the function is pure."""

from __future__ import annotations

import types

from hypothesis import given, settings
from hypothesis import strategies as st

from meshkit.web import headparse
from meshkit.web.app import plan
from meshkit.web.bodyhead import MAX_BODY, body_request
from meshkit.web.caddyfile.load import load_text
from meshkit.web.http1 import BODY_LENGTH, HttpError, check_framing
from meshkit.web.router import Router
from meshkit.web.server import HttpServer

METHODS = frozenset({"POST", "PUT", "PATCH"})
_ROUTER = plan(load_text(":8000 {\n fastcgi / 127.0.0.1:9 php\n}\n", "Caddyfile"))[8000].router()
assert isinstance(_ROUTER, Router)
SERVER = HttpServer(_ROUTER)
CONN = types.SimpleNamespace(
    _remote_addr="127.0.0.1", _remote_port=40000, _local_addr="127.0.0.1", _local_port=8000
)

lengths = st.one_of(
    st.integers(min_value=0, max_value=MAX_BODY + 2).map(str),
    st.sampled_from(["007", " 12 ", "\t5", "3, 3", "+3", "-1", "0x10", "", "1e3", "9" * 19]),
)
fields = st.lists(
    st.one_of(
        lengths.map(lambda v: f"Content-Length: {v}"),
        st.sampled_from(
            [
                "Transfer-Encoding: chunked",
                "Transfer-Encoding: gzip",
                "Expect: 100-continue",
                "Expect: nothing",
                "Connection: close",
                "Upgrade: websocket",
                "Content-Type: application/x-www-form-urlencoded",
                "X-A: 1",
                "content-length: 4",
            ]
        ),
    ),
    max_size=4,
)


def _chain_length(method: str, version: str, lines: list[str]) -> int | None:
    """The body length the chain would read for a head the lane may plan, else None."""
    raw = [tuple(x.encode().split(b":", 1)) for x in lines]
    raw = [(n, v.lstrip(b" \t")) for n, v in raw]
    try:
        framing = check_framing(raw)  # type: ignore[arg-type]
    except HttpError:
        return None
    low = {n.lower() for n, _ in raw}
    if framing.kind != BODY_LENGTH or low & {b"expect", b"upgrade", b"transfer-encoding"}:
        return None
    if b"connection" in low or version != "1.1" or method not in METHODS:
        return None
    n = framing.length
    return n if n is not None and 0 < n <= MAX_BODY else None


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["POST", "PUT", "PATCH", "GET", "DELETE"]),
    st.sampled_from(["1.1", "1.0"]),
    fields,
)
def test_plans_only_what_the_chain_reads_as_one_length(
    method: str, version: str, lines: list[str]
) -> None:
    head = f"{method} /a.php?x=1 HTTP/{version}\r\nHost: t.example\r\n"
    head += "".join(line + "\r\n" for line in lines) + "\r\n"
    got = body_request(SERVER, CONN, head.encode(), METHODS)
    want = _chain_length(method, version, lines)
    assert (None if got is None else got[3]) == want
    if got is not None:
        request = got[1]
        # the Request holds the fields as sent (the Content-Length value with its digits)
        assert [(n, v.rstrip(" \t")) for n, v in request.headers._items] == [
            (n, v.strip(" \t")) for n, v in (x.split(":", 1) for x in ["Host: t.example", *lines])
        ]
        assert request.method == method and request.path == "/a.php" and request.query == "x=1"


def test_scanner_refusals_are_left_to_the_chain() -> None:
    """Heads the scanner refuses (400) or that are not heads with a body are never planned."""
    for head in (
        b"POST /a.php HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
        b"POST /a.php HTTP/1.1\r\nContent-Length: 3\r\n\r\n",  # no Host
        b"POST /a.php HTTP/1.1\r\nHost: t\r\nHost: u\r\nContent-Length: 3\r\n\r\n",
        b"POST /a.php HTTP/1.1\r\nHost: t\r\n Content-Length: 3\r\n\r\n",  # obs-fold
        b"POST /a.php HTTP/1.1\r\nHost: t\r\nContent-Length : 3\r\n\r\n",
        b"POST /a.php HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n",  # not a whole head
        b"POST http://other/a.php HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\n",
    ):
        scanned = headparse.scan_head(head, 0, 1 << 20, 100, 8190)
        assert body_request(SERVER, CONN, head, METHODS) is None, (head, scanned)

"""Plain HTTP/1.1 response heads taken without the parser's callbacks (the pure-Python
lane of meshkit.web.proxy.client._Conn): the usual small answer whose head has a
Content-Length, and the answer to HEAD. Anything else is left to httptools. The compiled
connection (meshkit._fastpath.UpstreamConn, csrc/upstream_resp.c) has its own C parser.
"""

from __future__ import annotations

import re

# Bounds on an upstream's response head: generous next to nginx's 4-8 KiB proxy_buffer_size,
# small enough that an upstream cannot make the proxy hold megabytes per exchange (the C
# connection's UP_MAX_HEAD / UP_MAX_FIELDS are the same).
MAX_HEAD = 64 * 1024  # bytes of status line and fields
MAX_FIELDS = 256

# Control characters a field value must not hold (HTAB is allowed, RFC 9110 5.5); the
# fast head parser leaves such a head to httptools, which refuses it.
_CTL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# a field name (RFC 9110 token)
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


# An upstream answers with the same few heads over and over (the Date changes each second):
# parsed ones by their bytes. The header lists are shared: never changed in place.
_HEADS: dict[bytes, tuple[int, list[tuple[str, str]], int, bool]] = {}
HEADS_REMEMBERED = 256
REMEMBER_BELOW = 2048  # bytes: longer heads are parsed every time (bounds the memory held)


def _simple_head(raw: bytes) -> tuple[int, list[tuple[str, str]], int, bool] | None:
    """(status, fields, Content-Length, keep-alive) of a plain HTTP/1.1 response head (no
    CR/LF), or None for anything the parser must judge: interim and bodiless statuses,
    no or a bad Content-Length, Transfer-Encoding, malformed or folded lines."""
    return _plain_head(raw, False)


def _head_reply(raw: bytes) -> tuple[int, list[tuple[str, str]], int, bool] | None:
    """The same for the answer to a HEAD request, which never has a body whatever its
    Content-Length or Transfer-Encoding say (RFC 9112 6.3): the response ends with its
    head, so the connection stays usable without the parser (which cannot be told so)."""
    return _plain_head(raw, True)


def _plain_head(raw: bytes, bodiless: bool) -> tuple[int, list[tuple[str, str]], int, bool] | None:
    if not raw.startswith(b"HTTP/1.1 ") or len(raw) > MAX_HEAD:
        return None
    text = raw.decode("latin-1")
    lines = text.split("\r\n")
    if len(lines) > MAX_FIELDS + 1:
        return None
    first = lines[0]
    code = first[9:12]
    if (
        not code.isdigit()
        or code[0] == "1"
        or (code in ("204", "304") and not bodiless)
        or (len(first) > 12 and first[12] != " ")
        or text.count("\n") != len(lines) - 1
        or text.count("\r") != len(lines) - 1
    ):
        return None
    length = -1
    keep = True
    chunked = False
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if _CTL.search(line) is not None:
            return None  # the parser refuses it (a NUL in a value...)
        name, sep, value = line.partition(":")
        if not sep or _TOKEN.fullmatch(name) is None:
            return None  # httptools judges it (it refuses a name that is no token)
        low = name.lower()
        value = value.lstrip(" \t")  # trailing blanks stay, as httptools keeps them
        if low == "content-length":
            if length >= 0 or not value.rstrip(" \t").isdigit():
                return None
            length = int(value)
        elif low == "transfer-encoding":
            if not bodiless:
                return None
            chunked = True
        elif low == "connection" and "close" in value.lower():
            keep = False
        headers.append((name, value))
    if bodiless:
        # both framings at once is a smuggling shape the parser refuses: leave it to it
        return None if chunked and length >= 0 else (int(code), headers, 0, keep)
    if length < 0:
        return None
    return int(code), headers, length, keep

"""The CGI response head a FastCGI script writes at the start of STDOUT, sans-IO.

    Status: 404 Not Found        -> the status (200 when absent)
    Location: /elsewhere         -> 302 when there is no Status line
    Other-Header: value          -> passed to the client as is
    <blank line>                 -> the body follows

Lines end with CRLF or a bare LF (both are seen in the wild). Hop-by-hop fields a script may
write (Connection, Keep-Alive, Transfer-Encoding) are dropped: framing is the server's job.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshkit.web.message import Headers

MAX_HEAD = 65536  # bytes; a script whose head goes past this is answered with 502

_HOP_BY_HOP = frozenset(("connection", "keep-alive", "transfer-encoding"))


class HeadError(Exception):
    """The script's output does not start with a valid CGI header block."""


@dataclass(slots=True)
class Head:
    status: int
    headers: Headers
    body_start: int  # offset of the first body byte in the buffer parsed
    content_length: int | None  # what the script declared, if anything


def _end_of_head(buf: bytes | bytearray) -> tuple[int, int]:
    """(end of the header lines, start of the body), or (-1, -1) while incomplete."""
    crlf = buf.find(b"\r\n\r\n")
    lf = buf.find(b"\n\n")
    if crlf >= 0 and (lf < 0 or crlf + 1 <= lf):
        return crlf, crlf + 4
    if lf >= 0:
        return lf, lf + 2
    return -1, -1


def parse_head(buf: bytes | bytearray) -> Head | None:
    """The head at the start of `buf`, or None if more bytes are needed."""
    end, body = _end_of_head(buf)
    if end < 0:
        if len(buf) > MAX_HEAD:
            raise HeadError(f"response head longer than {MAX_HEAD} bytes")
        return None
    if end > MAX_HEAD:
        raise HeadError(f"response head longer than {MAX_HEAD} bytes")
    raw = bytes(buf[:end])
    known = _KNOWN.get(raw)
    if known is None:
        known = _parse_fields(raw)
        if end <= KNOWN_BELOW:
            if len(_KNOWN) >= KNOWN_MAX:
                _KNOWN.clear()
            _KNOWN[raw] = known
    status, items, length = known
    # a Headers of its own: handlers after us may change it
    return Head(status, Headers(items), body, length)


# Scripts write the same few heads over and over: their parsed fields, by the head's bytes.
_KNOWN: dict[bytes, tuple[int, list[tuple[str, str]], int | None]] = {}
KNOWN_MAX = 256
KNOWN_BELOW = 2048  # bytes: longer heads are parsed every time (bounds the memory held)


def _parse_fields(raw: bytes) -> tuple[int, list[tuple[str, str]], int | None]:
    end = len(raw)
    status = 0
    location = False
    length: int | None = None
    items: list[tuple[str, str]] = []
    text = raw.decode("latin-1")
    for line in text.split("\n") if end else ():
        line = line.rstrip("\r")
        if not line:
            continue
        name, sep, value = line.partition(":")
        name = name.strip()
        if not sep or not name or " " in name or "\t" in name:
            raise HeadError(f"malformed header line {line[:80]!r}")
        value = value.strip()
        low = name.lower()
        if low == "status":
            code = value.split(" ", 1)[0]
            if len(code) != 3 or not code.isdigit() or not 100 <= int(code) <= 599:
                raise HeadError(f"invalid Status {value[:40]!r}")
            status = int(code)
            continue
        if low in _HOP_BY_HOP:
            continue
        if low == "location":
            location = True
        elif low == "content-length":
            if not value.isdigit():
                raise HeadError(f"invalid Content-Length {value[:40]!r}")
            length = int(value)
        items.append((name, value))
    if not status:
        status = 302 if location else 200
    return status, items, length

"""The RPC wire format, sans-IO: frames, their limits, and the request/reply shapes.

Every message is a 4-byte big-endian length followed by that many bytes of UTF-8 JSON holding
one object (``encode_frame`` / ``FrameDecoder``):

- request: ``{"id": n, "method": "name", "params": {...}}`` (checked by ``check_request``)
- reply:   ``{"id": n, "result": ...}`` or ``{"id": n, "error": {"code": c, "message": m}}``

Frames are capped (``MAX_FRAME``, 16 MiB by default); whatever is not a frame raises
``FrameError``. No sockets and no event loop here: the server and client (``server.py``,
``client.py``) feed bytes in and write the bytes that come out.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from typing import Any

from meshkit.base.errors import MeshkitError

MAX_FRAME = 16 * 1024 * 1024
"""Largest frame body accepted or sent, in bytes."""

READ_SIZE = 256 * 1024
"""Bytes asked of the socket per read, by server and client."""

_HEADER = struct.Struct(">I")
_HTTP_STARTS = (b"GET ", b"POST", b"PUT ", b"HEAD", b"DELE", b"OPTI", b"PATC", b"CONN", b"PRI ")


class RpcError(MeshkitError):
    """An RPC that failed: ``code`` is machine-readable, ``message`` is for people.

    Codes used here: ``unreachable`` (cannot connect, or the connection went away),
    ``timeout`` (no reply in time), ``internal`` (the server's dispatch failed),
    ``bad_request`` (a malformed request), ``bad_reply``; dispatchers add their own
    (``forbidden``, ``not_found``, ...).
    """

    def __init__(self, code: str, message: str) -> None:
        """An error with a machine-readable code and a message that is shown as it is."""
        self.code = code
        self.message = message
        super().__init__(message)

    def __repr__(self) -> str:
        """``RpcError('code', 'message')``."""
        return f"RpcError({self.code!r}, {self.message!r})"


class FrameError(MeshkitError):
    """Bytes that are not a valid frame; the connection they came on is closed."""


# --------------------------------------------------------------------------- codec


def encode_frame(message: Mapping[str, Any], max_frame: int = MAX_FRAME) -> bytes:
    """One frame: 4-byte big-endian length + compact UTF-8 JSON of ``message``.

    Raises FrameError when the JSON is larger than ``max_frame`` and ValueError/TypeError
    when ``message`` is not JSON-serialisable (NaN and infinities included).
    """
    body = json.dumps(message, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode(
        "utf-8"
    )
    if len(body) > max_frame:
        raise FrameError(f"message of {len(body)} bytes exceeds the {max_frame}-byte frame cap")
    return _HEADER.pack(len(body)) + body


def _describe_garbage(header: bytes) -> str:
    """A hint about what a bad frame header probably was."""
    if header.startswith(_HTTP_STARTS):
        return " (this looks like an HTTP request, not a meshkit RPC frame)"
    if header[:1] == b"\x16" and header[1:2] == b"\x03":
        return " (this looks like a TLS handshake on a plain socket)"
    return ""


class FrameDecoder:
    """Sans-IO frame decoder: feed it bytes as they come, get whole messages back.

    Any split of the byte stream yields the same messages. After a FrameError the decoder
    is unusable (the stream has lost its framing) and raises again on every feed.
    """

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        """A decoder refusing frames larger than ``max_frame`` bytes."""
        self.max_frame = max_frame
        self._buf = bytearray()
        self._error: FrameError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet decoded (a partial frame)."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """Add received bytes; return the messages completed by them, in order.

        Raises FrameError for an oversized or empty length, bytes that are not UTF-8 JSON,
        or JSON that is not an object.
        """
        if self._error is not None:
            raise self._error
        self._buf += data
        out: list[dict[str, Any]] = []
        pos = 0
        buf = self._buf
        try:
            while len(buf) - pos >= _HEADER.size:
                (length,) = _HEADER.unpack_from(buf, pos)
                if length > self.max_frame:
                    raise FrameError(
                        f"frame length {length} exceeds the {self.max_frame}-byte cap"
                        + _describe_garbage(bytes(buf[pos : pos + 4]))
                    )
                if length == 0:
                    raise FrameError("empty frame")
                end = pos + _HEADER.size + length
                if len(buf) < end:
                    break
                body = bytes(buf[pos + _HEADER.size : end])
                pos = end
                try:
                    message = json.loads(body.decode("utf-8"))
                except (UnicodeDecodeError, ValueError, RecursionError) as exc:
                    raise FrameError(
                        f"frame of {length} bytes is not UTF-8 JSON: {exc}"
                        + _describe_garbage(body[:4])
                    ) from None
                if not isinstance(message, dict):
                    raise FrameError(f"frame holds a JSON {type(message).__name__}, not an object")
                out.append(message)
        except FrameError as exc:
            self._error = exc
            self._buf = bytearray()
            raise
        del buf[:pos]
        return out


# --------------------------------------------------------------------------- messages


def format_address(addr: Any) -> str:
    """host:port (or [v6]:port) from a socket address."""
    if isinstance(addr, tuple) and len(addr) >= 2:
        host = str(addr[0])
        return f"[{host}]:{addr[1]}" if ":" in host else f"{host}:{addr[1]}"
    return str(addr) if addr else "?"


def error_reply(req_id: int, exc: RpcError) -> dict[str, Any]:
    """The reply frame for a failed request."""
    return {"id": req_id, "error": {"code": exc.code, "message": exc.message}}


def check_request(message: dict[str, Any]) -> tuple[int, str, dict[str, Any]] | RpcError | str:
    """A valid request as (id, method, params); an RpcError to send back when only the id is
    usable; a string (why) when the connection should be closed."""
    req_id = message.get("id")
    if not isinstance(req_id, int) or isinstance(req_id, bool):
        return "request without an integer id"
    method = message.get("method")
    if not isinstance(method, str) or not method:
        return RpcError("bad_request", "request without a method name")
    params = message.get("params")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        return RpcError("bad_request", f"params of {method} must be a JSON object")
    return req_id, method, params

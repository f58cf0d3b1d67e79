"""The client-side lane: which reader a plain HTTP/1 connection gets.

The compiled lane (meshkit._fastpath.Lane, _lane.pxi over csrc/lane.c) is the reader
callback of a plain connection: it reads with recv(2) into a static buffer and answers a
request head that the response cache knows (meshkit.web.respcache) without a Python frame;
every other read goes to Connection._on_data. Its twin is Connection._on_readable, which does
the same in Python and is what connections use under MESHKIT_NO_EXTENSIONS=1, on TLS
connections (the socket is a meshkit.web.tlssock.TlsSocket) and with MESHKIT_LANE=0 (the
benches compare both).
"""

from __future__ import annotations

import os
import socket
from typing import Any

from meshkit._ext import load_fastpath

__all__ = ["LANE", "make"]


def _load() -> Any:
    if os.environ.get("MESHKIT_LANE", "").strip().lower() in ("0", "off", "no", "false"):
        return None
    fastpath = load_fastpath()
    return getattr(fastpath, "Lane", None) if fastpath is not None else None


# the compiled Lane class, None when it is off or not built (tests swap it)
LANE: Any = _load()


def make(conn: Any, server: Any, sock: Any) -> Any:
    """A Lane reading `sock` for `conn`, or None (the connection reads in Python). The lane
    goes with the compiled send path: a server on the twin's (MESHKIT_NO_EXTENSIONS=1, or
    a test's choice) reads in Python too."""
    send = getattr(server, "_send", None)
    if LANE is None or type(sock) is not socket.socket or not getattr(send, "compiled", False):
        return None
    return LANE(conn, server, sock.fileno())

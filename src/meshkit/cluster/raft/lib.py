"""pysyncobj, imported so that it leaves the rest of the process alone.

pysyncobj 0.3.17 imports its `win_inet_pton` shim on every platform, and that shim replaces
`socket.inet_ntop` process-wide with a Windows-only version that raises TypeError on Linux.
In an agent that runs raft beside the connection table, the ingress and DNS on one loop,
that broke every `socket.inet_ntop` call (meshkit's own pure-Python connection table among
them). Import pysyncobj only through this module: it puts the real function back.

Its journal, journal meta and snapshot files are created 0600 (pysyncobj uses plain
``open()``, so they would get the umask's 0644): they hold the replicated state, secrets
included.

It also caps the frames a raft peer may announce. pysyncobj reads a 4-byte length (native
order, signed) and buffers that many bytes before it checks the message's authentication, so
anyone who reaches the raft port could make a manager hold up to 2 GiB. Its own messages stay
far below the cap: log entries go in batches of 64 KiB and snapshots in parts.
"""

from __future__ import annotations

import builtins
import socket
import struct
from typing import Any

from meshkit.base.files import private_opener

_inet_ntop = socket.inet_ntop
_inet_pton = socket.inet_pton

from pysyncobj import (  # noqa: E402  (must come after saving the socket functions)
    FAIL_REASON,
    SyncObj,
    SyncObjConf,
    SyncObjConsumer,
    journal,
    pickle,
    replicated,
    serializer,
    tcp_connection,
)

socket.inet_ntop = _inet_ntop
socket.inet_pton = _inet_pton

MAX_RAFT_FRAME = 64 << 20  # bytes a peer may announce before it has proven the raft secret

_parse_message = tcp_connection.TcpConnection._TcpConnection__processParseMessage


def _parse_capped_message(conn: Any) -> Any:
    buf = conn._TcpConnection__readBuffer
    if len(buf) >= 4:
        (length,) = struct.unpack("i", buf[:4])
        if length < 0 or length > MAX_RAFT_FRAME:
            conn.disconnect()
            return None
    return _parse_message(conn)


tcp_connection.TcpConnection._TcpConnection__processParseMessage = _parse_capped_message


def _private_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
    """``open`` for pysyncobj's file modules: new files are 0600."""
    if not args and "opener" not in kwargs and isinstance(file, (str, bytes)):
        kwargs["opener"] = private_opener
    return builtins.open(file, mode, *args, **kwargs)


# A module global named `open` shadows the builtin for the code of that module only.
journal.open = _private_open  # type: ignore[attr-defined]
serializer.open = _private_open  # type: ignore[attr-defined]

__all__ = [
    "FAIL_REASON",
    "MAX_RAFT_FRAME",
    "SyncObj",
    "SyncObjConf",
    "SyncObjConsumer",
    "pickle",
    "replicated",
]

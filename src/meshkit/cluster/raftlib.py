"""pysyncobj, imported so that it leaves the rest of the process alone.

pysyncobj 0.3.17 imports its `win_inet_pton` shim on every platform, and that shim replaces
`socket.inet_ntop` process-wide with a Windows-only version that raises TypeError on Linux.
In an agent that runs raft beside the connection table, the ingress and DNS on one loop,
that broke every `socket.inet_ntop` call (meshkit's own pure-Python connection table among
them). Import pysyncobj only through this module: it puts the real function back.
"""

from __future__ import annotations

import socket

_inet_ntop = socket.inet_ntop
_inet_pton = socket.inet_pton

from pysyncobj import (  # noqa: E402  (must come after saving the socket functions)
    FAIL_REASON,
    SyncObj,
    SyncObjConf,
    SyncObjConsumer,
    replicated,
)

socket.inet_ntop = _inet_ntop
socket.inet_pton = _inet_pton

__all__ = ["FAIL_REASON", "SyncObj", "SyncObjConf", "SyncObjConsumer", "replicated"]

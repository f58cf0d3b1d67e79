"""Process-wide figures for `expvar`: the HTTP servers running and the websockets bridged.

The servers register themselves here (app.py, when it makes one) in a WeakSet, so a server
that is closed and dropped leaves without anyone having to remember to unregister it.
"""

from __future__ import annotations

import weakref
from typing import Protocol


class _Server(Protocol):
    @property
    def open_connections(self) -> int: ...


_servers: weakref.WeakSet[_Server] = weakref.WeakSet()


class _Websockets:
    active = 0  # bridges running now
    total = 0  # bridges started since the process began


WEBSOCKETS = _Websockets()


def track(server: _Server) -> None:
    _servers.add(server)


def servers() -> int:
    return len(_servers)


def open_connections() -> int:
    """Client connections open on every server (an upgraded one leaves its server)."""
    return sum(s.open_connections for s in list(_servers))

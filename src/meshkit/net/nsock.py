"""Sockets in other network namespaces, made on the calling thread (see meshkit.base.netns
for why this works and what it costs); the namespace handles are base.netns's, re-exported.
"""

from __future__ import annotations

import socket

from meshkit.base.netns import NETNS_DIR as _NETNS_PATH
from meshkit.base.netns import NetnsError, NetnsRef, entered

__all__ = ["NETNS_DIR", "NetnsError", "NetnsRef", "entered", "socket_in"]

NETNS_DIR = str(_NETNS_PATH)


def socket_in(
    ref: NetnsRef | None, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM
) -> socket.socket:
    """A new non-blocking, close-on-exec socket in `ref`'s namespace."""
    with entered(ref):
        sock = socket.socket(family, kind | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    return sock

"""Framed JSON RPC between nodes (mutual TLS over TCP) and from the CLI (the local Unix socket).

The parts, one module each:

- ``framing``: the wire format, sans-IO (``encode_frame``, ``FrameDecoder``, ``RpcError``,
  ``MAX_FRAME``): a 4-byte big-endian length, then one UTF-8 JSON object.
- ``server``: ``RpcServer`` (TCP/TLS and Unix listeners, one ``dispatch`` coroutine, the
  limits for clients without a certificate) and ``Peer``, who asked.
- ``client``: ``RpcClient`` and the join-time ``fetch_ca_bundle`` / ``check_ca_bundle``.

This module is the transport's one import point: every name above is importable from here.
"""

from __future__ import annotations

from meshkit.cluster.rpc.client import (
    CA_BUNDLE_METHOD,
    CALL_TIMEOUT,
    MITM_MESSAGE,
    RpcClient,
    check_ca_bundle,
    fetch_ca_bundle,
)
from meshkit.cluster.rpc.framing import (
    MAX_FRAME,
    FrameDecoder,
    FrameError,
    RpcError,
    encode_frame,
)
from meshkit.cluster.rpc.server import (
    HANDSHAKE_TIMEOUT,
    IDLE_TIMEOUT,
    MAX_INFLIGHT,
    MAX_UNAUTH_CONNECTIONS,
    UNAUTH_MAX_FRAME,
    UNAUTH_TIMEOUT,
    Dispatch,
    Peer,
    RpcServer,
)

__all__ = [
    "CALL_TIMEOUT",
    "CA_BUNDLE_METHOD",
    "HANDSHAKE_TIMEOUT",
    "IDLE_TIMEOUT",
    "MAX_FRAME",
    "MAX_INFLIGHT",
    "MAX_UNAUTH_CONNECTIONS",
    "MITM_MESSAGE",
    "UNAUTH_MAX_FRAME",
    "UNAUTH_TIMEOUT",
    "Dispatch",
    "FrameDecoder",
    "FrameError",
    "Peer",
    "RpcClient",
    "RpcError",
    "RpcServer",
    "check_ca_bundle",
    "encode_frame",
    "fetch_ca_bundle",
]

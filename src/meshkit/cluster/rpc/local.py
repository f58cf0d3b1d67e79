"""How the CLI reaches the local agent: its Unix socket, one call at a time.

The socket is `--host` (a path, or unix:///path), else MESHKIT_HOST, else DEFAULT_SOCKET (the
agent's default too: the constant lives here so that the CLI and `ingress --service` reach the
agent without importing it).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from meshkit.base.errors import FlagError
from meshkit.cluster.rpc.transport import RpcClient

HOST_ENV = "MESHKIT_HOST"
DEFAULT_SOCKET = "/run/meshkit/meshkit.sock"


def socket_path(host: str | None) -> str:
    """The agent socket named by --host, MESHKIT_HOST or the default."""
    text = host or os.environ.get(HOST_ENV) or DEFAULT_SOCKET
    if text.startswith("unix://"):
        text = text[len("unix://") :]
    elif "://" in text:
        raise FlagError("--host", text, "expected a Unix socket path or unix:///path")
    if not text:
        raise FlagError("--host", text, "empty socket path")
    return text


async def call_async(
    path: str, method: str, params: dict[str, Any] | None = None, timeout: float = 30.0
) -> Any:
    client = await RpcClient.connect_unix(path, timeout=5.0)
    try:
        return await client.call(method, params or {}, timeout)
    finally:
        await client.close()


def call(
    host: str | None, method: str, params: dict[str, Any] | None = None, timeout: float = 30.0
) -> Any:
    """Call `method` on the local agent; RpcError (a MeshkitError) on failure."""
    path = socket_path(host)
    return asyncio.run(call_async(path, method, params, timeout))

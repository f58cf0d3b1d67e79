"""The RPC client (``RpcClient``: one connection, several calls in flight) and the join-time
CA bundle fetch.

The CA bundle method: ``ca_bundle`` (``CA_BUNDLE_METHOD``) takes no params and returns
``{"bundle": "<PEM text>"}`` (a bare PEM string is accepted too), the exact bytes the token
digest is taken over. ``fetch_ca_bundle`` calls it without verifying the server, and
``check_ca_bundle`` then compares the bundle with the join token's digest.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import ssl
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from meshkit.cluster.rpc.framing import (
    MAX_FRAME,
    READ_SIZE,
    FrameDecoder,
    FrameError,
    RpcError,
    encode_frame,
    format_address,
)

if TYPE_CHECKING:
    from meshkit.cluster.rpc.pki import PeerIdentity
    from meshkit.cluster.rpc.tokens import JoinToken

# One log for the wire, server and client alike: operators (and the tests) filter on this name.
log = logging.getLogger("meshkit.cluster.rpc.transport")

CALL_TIMEOUT = 30.0
"""Default seconds a call waits for its reply."""

MAX_INFLIGHT = 64
"""Requests served at once per connection; reading pauses beyond this (back-pressure)."""

CA_BUNDLE_METHOD = "ca_bundle"
"""The method that returns the cluster CA bundle (PEM text); no certificate needed."""

MITM_MESSAGE = (
    "the manager's CA does not match the token: possible man-in-the-middle, or a token from "
    "before a CA rotation (`meshkit cluster ca --rotate`): ask a manager for a new one with "
    "`meshkit node join-token worker` or `manager`"
)


class RpcClient:
    """One connection to an RPC server; several calls may be in flight at once."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        address: str,
        max_frame: int = MAX_FRAME,
    ) -> None:
        """Wrap an open connection (use ``connect_tcp`` or ``connect_unix``)."""
        self._reader = reader
        self._writer = writer
        self.address = address
        self.max_frame = max_frame
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._next_id = 1
        self._lost: str | None = None
        self._write_lock = asyncio.Lock()
        ssl_object = writer.get_extra_info("ssl_object")
        self.server_identity: PeerIdentity | None = None
        if ssl_object is not None:
            from meshkit.cluster.rpc.pki import peer_identity

            self.server_identity = peer_identity(ssl_object.getpeercert(binary_form=True))
        """CN/OU/O of the server's certificate (meaningful only when it was verified)."""
        self._reader_task = asyncio.create_task(self._read_loop(), name=f"rpc reader {address}")

    @classmethod
    async def connect_tcp(
        cls,
        host: str,
        port: int,
        ssl_ctx: ssl.SSLContext | None,
        timeout: float = 10.0,
        *,
        expect_role: str | None = None,
        expect_cluster: str | None = None,
    ) -> RpcClient:
        """Connect (and finish the TLS handshake) within ``timeout`` seconds.

        ``expect_role`` / ``expect_cluster``: refuse the server unless its verified
        certificate has that OU / O (RpcError code ``untrusted``). Connection failures and
        timeouts raise RpcError code ``unreachable`` naming the address.
        """
        address = format_address((host, port))
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    host,
                    port,
                    ssl=ssl_ctx,
                    server_hostname="" if ssl_ctx is not None else None,
                    ssl_handshake_timeout=timeout if ssl_ctx is not None else None,
                ),
                timeout,
            )
        except asyncio.TimeoutError:
            raise RpcError(
                "unreachable", f"cannot reach {address}: no answer within {timeout:g} s"
            ) from None
        except ssl.SSLError as exc:
            raise RpcError(
                "unreachable", f"cannot reach {address}: TLS handshake failed: {exc}"
            ) from None
        except OSError as exc:
            raise RpcError(
                "unreachable", f"cannot reach {address}: {exc.strerror or exc}"
            ) from None
        client = cls(reader, writer, address)
        if expect_role is not None or expect_cluster is not None:
            ident = client.server_identity
            if (
                ident is None
                or (expect_role is not None and ident.role != expect_role)
                or (expect_cluster is not None and ident.cluster_id != expect_cluster)
            ):
                await client.close()
                raise RpcError(
                    "untrusted",
                    f"{address} is not a {expect_role or 'node'} of cluster "
                    f"{expect_cluster or '?'} (its certificate says {ident})",
                )
        return client

    @classmethod
    async def connect_unix(cls, path: str | os.PathLike[str], timeout: float = 10.0) -> RpcClient:
        """Connect to an agent's local socket; RpcError ``unreachable`` naming the path."""
        address = f"unix:{os.fspath(path)}"
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_unix_connection(os.fspath(path)), timeout
            )
        except asyncio.TimeoutError:
            raise RpcError(
                "unreachable", f"cannot reach the agent at {path}: no answer within {timeout:g} s"
            ) from None
        except OSError as exc:
            hint = (
                " (is the agent running? start one with `meshkit node init` or `meshkit node join`)"
                if isinstance(exc, (FileNotFoundError, ConnectionRefusedError))
                else ""
            )
            raise RpcError(
                "unreachable", f"cannot reach the agent at {path}: {exc.strerror or exc}{hint}"
            ) from None
        return cls(reader, writer, address)

    @property
    def closed(self) -> bool:
        """True once the connection is closed or lost."""
        return self._lost is not None

    async def call(
        self,
        method: str,
        params: Mapping[str, Any] | None = None,
        timeout: float = CALL_TIMEOUT,
    ) -> Any:
        """Call ``method`` and return its result.

        Raises RpcError with the server's code and message, ``unreachable`` when the
        connection is (or goes) away, ``timeout`` when no reply comes within ``timeout``.
        """
        if self._lost is not None:
            raise RpcError("unreachable", f"{method} to {self.address}: {self._lost}")
        req_id = self._next_id
        self._next_id += 1
        frame = encode_frame(
            {"id": req_id, "method": method, "params": dict(params or {})}, self.max_frame
        )
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[req_id] = future
        try:
            async with self._write_lock:
                self._writer.write(frame)
                await self._writer.drain()
            return await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            raise RpcError(
                "timeout", f"{method} to {self.address}: no reply within {timeout:g} s"
            ) from None
        except OSError as exc:
            raise RpcError(
                "unreachable", f"{method} to {self.address}: {exc.strerror or exc}"
            ) from None
        finally:
            self._pending.pop(req_id, None)

    async def _read_loop(self) -> None:
        """Read replies and hand each to the call waiting for its id."""
        decoder = FrameDecoder(self.max_frame)
        reason = "connection closed by the server"
        try:
            while True:
                data = await self._reader.read(READ_SIZE)
                if not data:
                    break
                for message in decoder.feed(data):
                    self._deliver(message)
        except FrameError as exc:
            reason = f"bad reply from the server: {exc}"
            log.info("%s: %s", self.address, reason)
        except (OSError, EOFError) as exc:
            reason = f"connection lost: {exc}"
        except asyncio.CancelledError:
            reason = "connection closed"
        finally:
            self._lost = reason
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(RpcError("unreachable", f"{self.address}: {reason}"))
            self._writer.close()

    def _deliver(self, message: dict[str, Any]) -> None:
        """Complete the call a reply belongs to."""
        future = self._pending.get(message.get("id"))  # type: ignore[arg-type]
        if future is None or future.done():
            log.debug("%s: reply for unknown request id %r", self.address, message.get("id"))
            return
        error = message.get("error")
        if error is not None:
            if isinstance(error, dict):
                code = str(error.get("code", "error"))
                text = str(error.get("message", ""))
            else:
                code, text = "error", str(error)
            future.set_exception(RpcError(code, text))
        elif "result" in message:
            future.set_result(message["result"])
        else:
            future.set_exception(RpcError("bad_reply", f"reply from {self.address} has no result"))

    async def close(self) -> None:
        """Close the connection; calls still waiting fail with ``unreachable``."""
        if not self._reader_task.done():
            self._reader_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader_task
        self._writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._writer.wait_closed(), 1.0)

    async def __aenter__(self) -> RpcClient:
        """``async with await RpcClient.connect_...(...) as client:``."""
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Close on leaving the block."""
        await self.close()


# --------------------------------------------------------------------------- joining


async def fetch_ca_bundle(host: str, port: int, timeout: float = 10.0) -> bytes:
    """The CA bundle a manager serves (method ``ca_bundle``), fetched over TLS *without*
    verifying the manager: check it with ``check_ca_bundle`` before trusting it."""
    from meshkit.cluster.rpc.pki import client_ssl_context

    client = await RpcClient.connect_tcp(host, port, client_ssl_context(None, None), timeout)
    try:
        result = await client.call(CA_BUNDLE_METHOD, {}, timeout)
    finally:
        await client.close()
    if isinstance(result, dict):
        result = result.get("ca_pem", result.get("bundle"))
    if not isinstance(result, str) or "-----BEGIN CERTIFICATE-----" not in result:
        raise RpcError("bad_reply", f"{client.address} did not send a PEM CA bundle")
    return result.encode("ascii", errors="replace")


def check_ca_bundle(bundle: bytes, token: JoinToken) -> None:
    """Raise TrustError unless the bundle's digest is the one the join token pins."""
    from meshkit.cluster.rpc.pki import TrustError
    from meshkit.cluster.rpc.tokens import ca_digest

    if not hmac.compare_digest(ca_digest(bundle), token.digest):
        raise TrustError(MITM_MESSAGE)

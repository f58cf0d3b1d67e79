"""The RPC server's TLS handshakes run in a thread (rpc/tlsaccept.py), and the connection they
leave behind behaves as asyncio's own TLS transport did: big replies with flow control, the
peer's identity, clean closes, a client that leaves in the middle of its handshake."""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvloop

from meshkit.cluster.rpc.pki import (
    ClusterCA,
    NodeIdentity,
    client_ssl_context,
    server_ssl_context,
)
from meshkit.cluster.rpc.transport import Peer, RpcClient, RpcError, RpcServer

HOST = "127.0.0.1"


@pytest.fixture(scope="module")
def ca() -> ClusterCA:
    return ClusterCA.create("cluster-tlsaccept")


@pytest.fixture(scope="module")
def manager(ca: ClusterCA) -> NodeIdentity:
    return ca.issue_identity("mgr-1", "manager", lifetime=3600)


@pytest.fixture(scope="module")
def worker(ca: ClusterCA) -> NodeIdentity:
    return ca.issue_identity("wrk-1", "worker", lifetime=3600)


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Callable[[Coroutine[Any, Any, Any]], Any]:
    def runner(coro: Coroutine[Any, Any, Any]) -> Any:
        async def checked() -> Any:
            result = await asyncio.wait_for(coro, 60)
            await asyncio.sleep(0)
            left = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            assert left == [], f"tasks left behind: {left}"
            return result

        if request.param == "uvloop":
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as r:
                return r.run(checked())
        return asyncio.run(checked())

    return runner


async def dispatch(peer: Peer, method: str, params: dict[str, Any]) -> Any:
    if method == "whoami":
        return peer.identity.node_id if peer.identity else None
    if method == "echo":
        return params["value"]
    raise RpcError("not_found", method)


def test_handshake_runs_off_the_loop_thread_and_the_connection_carries_big_frames(
    run: Any, ca: ClusterCA, manager: NodeIdentity, worker: NodeIdentity
) -> None:
    threads: list[int] = []
    ctx = server_ssl_context(manager)
    switch = ctx.sni_callback
    assert switch is not None

    def recording(sslobj: Any, name: Any, c: Any) -> Any:
        threads.append(threading.get_ident())  # the SNI callback runs inside the handshake
        return switch(sslobj, name, c)

    ctx.sni_callback = recording  # type: ignore[assignment]

    async def body() -> None:
        server = RpcServer(dispatch)
        _, port = await server.listen_tcp(HOST, 0, ctx)
        try:
            client = await RpcClient.connect_tcp(
                HOST, port, client_ssl_context(worker, ca.bundle_pem)
            )
            async with client:
                assert await client.call("whoami") == "wrk-1"
                # 6 MiB each way: several records, the transport's pause/resume both sides
                big = "x" * (6 * 1024 * 1024)
                calls = [client.call("echo", {"value": big}, timeout=30) for _ in range(3)]
                results = await asyncio.gather(*calls)
                assert all(r == big for r in results)
            # without a certificate too (a join's connection)
            async with await RpcClient.connect_tcp(
                HOST, port, client_ssl_context(None, ca.bundle_pem)
            ) as anon:
                assert await anon.call("whoami") is None
            # both clients closed (close_notify, then FIN): the server's side ends too
            for _ in range(200):
                if server.connections == 0:
                    break
                await asyncio.sleep(0.02)
            assert server.connections == 0
        finally:
            await server.close()

    run(body())
    assert len(threads) == 2  # one per connection
    assert threading.get_ident() not in threads


def test_a_client_that_leaves_mid_handshake_and_a_bad_certificate(
    run: Any, ca: ClusterCA, manager: NodeIdentity, caplog: Any
) -> None:
    other = ClusterCA.create("another").issue_identity("x-1", "worker", lifetime=3600)

    async def body() -> None:
        server = RpcServer(dispatch)
        _, port = await server.listen_tcp(HOST, 0, server_ssl_context(manager))
        try:
            # a ClientHello, then gone
            _reader, writer = await asyncio.open_connection(HOST, port)
            bio_in, bio_out = ssl.MemoryBIO(), ssl.MemoryBIO()
            hello = client_ssl_context(None, ca.bundle_pem).wrap_bio(bio_in, bio_out)
            with pytest.raises(ssl.SSLWantReadError):
                hello.do_handshake()
            writer.write(bio_out.read())
            await writer.drain()
            writer.close()
            await writer.wait_closed()
            # a certificate of another cluster: refused in the handshake, with a reason
            with pytest.raises((RpcError, OSError)):
                bad = client_ssl_context(other, ca.bundle_pem)
                c = await RpcClient.connect_tcp(HOST, port, bad)
                async with c:
                    await c.call("whoami")
            for _ in range(100):
                if caplog.text.count("refused connection from") >= 2:
                    break
                await asyncio.sleep(0.05)
            assert server.connections == 0
        finally:
            await server.close()

    with caplog.at_level(logging.INFO, logger="meshkit.cluster.rpc.transport"):
        run(body())
    assert "client certificate refused" in caplog.text or "TLS handshake failed" in caplog.text


def test_a_closed_connection_leaves_no_cyclic_garbage_on_the_server(
    run: Any, ca: ClusterCA, manager: NodeIdentity, worker: NodeIdentity
) -> None:
    """A manager never runs a full collection (raft/gcpauses.py): what a closed connection
    leaves in a cycle would be kept for good, so the server side must leave none."""
    import gc

    from meshkit.cluster.rpc import tlsaccept

    server_side = (tlsaccept.TlsServerProtocol, tlsaccept.TlsTransport, asyncio.StreamReader)

    async def body() -> None:
        server = RpcServer(dispatch)
        _, port = await server.listen_tcp(HOST, 0, server_ssl_context(manager))
        try:
            for ident in (worker, None):  # with a certificate, and a join's (without)
                for _ in range(5):
                    ctx = client_ssl_context(ident, ca.bundle_pem)
                    async with await RpcClient.connect_tcp(HOST, port, ctx) as client:
                        await client.call("whoami")
            for _ in range(200):
                if server.connections == 0:
                    break
                await asyncio.sleep(0.02)
            assert server.connections == 0
        finally:
            await server.close()

    gc.collect()
    gc.disable()  # nothing collected behind the test's back
    try:
        run(body())
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        kept = [type(o).__name__ for o in gc.garbage if isinstance(o, server_side)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert kept == []

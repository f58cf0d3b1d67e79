"""ManagerClient's kept connections: the node's loops that start together (heartbeat, tasks and
network-map long polls) share one mutual-TLS connection per manager, made once (each extra one
was a full handshake on the manager); a certificate renewed during the connect is not kept."""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import pytest

from meshkit.cluster.node.managers import ManagerClient
from meshkit.cluster.rpc.pki import ClusterCA, NodeIdentity, server_ssl_context
from meshkit.cluster.rpc.server import Peer
from meshkit.cluster.rpc.transport import RpcError, RpcServer

HOST = "127.0.0.1"


@pytest.fixture(scope="module")
def ca() -> ClusterCA:
    return ClusterCA.create("cluster-mc")


class Recorder:
    """A manager's dispatch that notes each connection's client address and certificate."""

    def __init__(self) -> None:
        self.addresses: set[str] = set()
        self.node_ids: list[str | None] = []
        self.ctx: ssl.SSLContext | None = None

    def handshakes(self) -> int:
        """TLS handshakes the manager began (its context's count)."""
        assert self.ctx is not None
        return int(self.ctx.session_stats()["accept"])

    async def dispatch(self, peer: Peer, method: str, params: dict[str, Any]) -> Any:
        if peer.address not in self.addresses:
            self.addresses.add(peer.address)
            self.node_ids.append(peer.identity.node_id if peer.identity else None)
        if peer.identity is None:
            raise RpcError("forbidden", f"{method} needs a node certificate")
        await asyncio.sleep(float(params.get("delay", 0)))
        return params.get("value")


async def _serve(ca: ClusterCA, rec: Recorder) -> tuple[RpcServer, str]:
    server = RpcServer(rec.dispatch)
    manager = ca.issue_identity("mgr-mc", "manager", lifetime=3600)
    rec.ctx = server_ssl_context(manager)
    _, port = await server.listen_tcp(HOST, 0, rec.ctx)
    return server, f"{HOST}:{port}"


def test_loops_starting_together_share_one_connection(ca: ClusterCA) -> None:
    async def body() -> None:
        rec = Recorder()
        server, addr = await _serve(ca, rec)
        worker = ca.issue_identity("wrk-mc", "worker", lifetime=3600)
        mc = ManagerClient(worker, lambda: ([addr], None))
        try:
            replies = await asyncio.gather(
                *(mc.ask("echo", {"value": i, "delay": 0.05}) for i in range(5))
            )
            assert replies == [0, 1, 2, 3, 4]
            assert await mc.ask("echo", {"value": "again"}) == "again"
            assert rec.handshakes() == 1  # one handshake on the manager, not five
            assert len(rec.addresses) == 1, rec.addresses
            assert rec.node_ids == ["wrk-mc"]
        finally:
            await mc.close()
            await server.close()

    asyncio.run(body())


def test_a_caller_giving_up_does_not_fail_the_shared_connect(ca: ClusterCA) -> None:
    async def body() -> None:
        rec = Recorder()
        server, addr = await _serve(ca, rec)
        worker = ca.issue_identity("wrk-mc2", "worker", lifetime=3600)
        mc = ManagerClient(worker, lambda: ([addr], None))
        try:
            quitter = asyncio.ensure_future(mc.ask("echo", {"value": 1}))
            stayer = asyncio.ensure_future(mc.ask("echo", {"value": 2}))
            await asyncio.sleep(0)  # both wait on the one connect now
            quitter.cancel()
            assert await stayer == 2
            with pytest.raises(asyncio.CancelledError):
                await quitter
            assert rec.handshakes() == 1
        finally:
            await mc.close()
            await server.close()

    asyncio.run(body())


def test_renewed_during_the_connect_presents_the_new_certificate(ca: ClusterCA) -> None:
    async def body() -> None:
        rec = Recorder()
        server, addr = await _serve(ca, rec)
        old: NodeIdentity = ca.issue_identity("wrk-mc3", "worker", lifetime=3600)
        new: NodeIdentity = ca.issue_identity("wrk-mc3b", "worker", lifetime=3600)
        mc = ManagerClient(old, lambda: ([addr], None))
        try:
            call = asyncio.ensure_future(mc.ask("echo", {"value": "x"}))
            for _ in range(3):  # the connect with the old certificate is under way
                await asyncio.sleep(0)
            await mc.use_identity(new)
            assert await call == "x"
            # the connection kept (and used for the call) is the one with the new certificate
            assert await mc.ask("echo", {"value": "y"}) == "y"
            assert rec.node_ids == ["wrk-mc3b"]
        finally:
            await mc.close()
            await server.close()

    asyncio.run(body())


def test_a_node_without_a_valid_certificate_is_still_refused(ca: ClusterCA) -> None:
    async def body() -> None:
        rec = Recorder()
        server, addr = await _serve(ca, rec)
        stranger = ClusterCA.create("cluster-mc").issue_identity("wrk-x", "worker", lifetime=3600)
        mc = ManagerClient(stranger, lambda: ([addr], None))
        try:
            with pytest.raises(RpcError) as info:
                await asyncio.gather(*(mc.ask("echo", {"value": i}) for i in range(3)))
            assert info.value.code == "unreachable"
            assert rec.node_ids == []  # no call got through
        finally:
            await mc.close()
            await server.close()

    asyncio.run(body())

"""Framed JSON RPC: the sans-IO codec, and real TLS over real sockets on 127.0.0.x.

Every TLS test runs on the standard asyncio loop and on uvloop (what the agent uses).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import ssl
import stat
import struct
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import uvloop
from hypothesis import given, settings
from hypothesis import strategies as st

from meshkit.base.errors import MeshkitError
from meshkit.cluster.rpc import transport as rpc
from meshkit.cluster.rpc.pki import (
    ClusterCA,
    NodeIdentity,
    PkiError,
    TrustError,
    client_ssl_context,
    server_ssl_context,
)
from meshkit.cluster.rpc.tokens import new_token
from meshkit.cluster.rpc.transport import (
    FrameDecoder,
    FrameError,
    Peer,
    RpcClient,
    RpcError,
    RpcServer,
    check_ca_bundle,
    encode_frame,
    fetch_ca_bundle,
)

HOST = "127.0.0.1"

# --------------------------------------------------------------------------- codec

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
messages = st.dictionaries(st.text(max_size=10), json_values, max_size=5)


@given(st.lists(messages, max_size=6), st.data())
@settings(max_examples=200, deadline=None)
def test_any_split_decodes_the_same_frames(msgs: list[dict[str, Any]], data: st.DataObject) -> None:
    stream = b"".join(encode_frame(m) for m in msgs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    decoder = FrameDecoder()
    out: list[dict[str, Any]] = []
    start = 0
    for cut in [*cuts, len(stream)]:
        out += decoder.feed(stream[start:cut])
        start = cut
    assert out == msgs
    assert decoder.buffered == 0


def test_frame_layout() -> None:
    frame = encode_frame({"id": 1, "method": "x"})
    body = b'{"id":1,"method":"x"}'
    assert frame == struct.pack(">I", len(body)) + body
    assert encode_frame({"s": "é"})[4:] == '{"s":"é"}'.encode()


def test_oversized_length_is_refused_from_the_header_alone() -> None:
    decoder = FrameDecoder(max_frame=1000)
    with pytest.raises(FrameError, match="exceeds the 1000-byte cap"):
        decoder.feed(struct.pack(">I", 1001))
    with pytest.raises(FrameError):  # the stream has lost its framing: stays refused
        decoder.feed(encode_frame({"id": 1}))


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "looks like an HTTP request"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc", "looks like a TLS handshake"),
        (struct.pack(">I", 5) + b"hello", "not UTF-8 JSON"),
        (struct.pack(">I", 2) + b"\xff\xfe", "not UTF-8 JSON"),
        (struct.pack(">I", 2) + b"[]", "JSON list, not an object"),
        (struct.pack(">I", 0), "empty frame"),
    ],
)
def test_garbage_is_a_frame_error(data: bytes, match: str) -> None:
    with pytest.raises(FrameError, match=match):
        FrameDecoder().feed(data)


def test_encode_refuses_what_it_cannot_send() -> None:
    with pytest.raises(FrameError):
        encode_frame({"x": "a" * 100}, max_frame=50)
    with pytest.raises(ValueError):
        encode_frame({"x": float("nan")})
    with pytest.raises(TypeError):
        encode_frame({"x": object()})


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def ca() -> ClusterCA:
    return ClusterCA.create("cluster-rpc")


@pytest.fixture(scope="module")
def manager(ca: ClusterCA) -> NodeIdentity:
    return ca.issue_identity("mgr-1", "manager", lifetime=3600)


@pytest.fixture(scope="module")
def worker(ca: ClusterCA) -> NodeIdentity:
    return ca.issue_identity("wrk-1", "worker", lifetime=3600)


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Callable[[Coroutine[Any, Any, Any]], Any]:
    """Run a test coroutine on a fresh loop of the kind under test; fail if it leaves
    tasks behind."""

    def runner(coro: Coroutine[Any, Any, Any]) -> Any:
        async def checked() -> Any:
            result = await asyncio.wait_for(coro, 60)
            await asyncio.sleep(0)
            left = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            assert left == [], f"tasks left behind: {left}"
            return result

        if request.param == "uvloop":
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                return runner.run(checked())
        return asyncio.run(checked())

    return runner


def make_dispatch(ca: ClusterCA) -> Callable[[Peer, str, dict[str, Any]], Awaitable[Any]]:
    """A dispatch like the agent's: ca_bundle and join for anyone, the rest needs a cert,
    ``manager_only`` needs a manager's."""

    async def dispatch(peer: Peer, method: str, params: dict[str, Any]) -> Any:
        if method == "ca_bundle":
            return {"bundle": ca.bundle_pem.decode()}
        if method == "join":
            return {"joined": True}
        if peer.identity is None and not peer.local:
            raise RpcError("forbidden", f"{method} needs a node certificate")
        if method == "whoami":
            ident = peer.identity
            return {
                "node_id": ident.node_id if ident else None,
                "role": ident.role if ident else None,
                "local": peer.local,
                "uid": peer.uid,
            }
        if method == "manager_only":
            if not peer.is_manager:
                raise RpcError("forbidden", "this needs a manager certificate")
            return "ok"
        if method == "echo":
            await asyncio.sleep(float(params.get("delay", 0)))
            return params.get("value")
        if method == "boom":
            raise ValueError("kaboom in dispatch")
        if method == "unserialisable":
            return object()
        raise RpcError("not_found", f"unknown method {method}")

    return dispatch


async def start(
    ca: ClusterCA, manager: NodeIdentity, host: str = HOST, **kwargs: Any
) -> tuple[RpcServer, int]:
    server = RpcServer(make_dispatch(ca), **kwargs)
    _, port = await server.listen_tcp(host, 0, server_ssl_context(manager))
    return server, port


async def read_until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes (a reset counts as closed)."""
    data = b""
    try:
        while chunk := await asyncio.wait_for(reader.read(4096), 20):
            data += chunk
    except (ConnectionError, ssl.SSLError):
        pass
    return data


# --------------------------------------------------------------------------- mTLS


def test_mutual_tls_with_a_good_certificate(
    run: Any, ca: ClusterCA, manager: NodeIdentity, worker: NodeIdentity
) -> None:
    async def body() -> None:
        server, port = await start(ca, manager)
        try:
            ctx = client_ssl_context(worker, ca.bundle_pem)
            async with await RpcClient.connect_tcp(
                HOST, port, ctx, expect_role="manager", expect_cluster="cluster-rpc"
            ) as client:
                assert client.server_identity is not None
                assert client.server_identity.node_id == "mgr-1"
                who = await client.call("whoami")
                assert who == {"node_id": "wrk-1", "role": "worker", "local": False, "uid": None}
                # a worker's certificate cannot call manager-only methods
                with pytest.raises(RpcError) as info:
                    await client.call("manager_only")
                assert info.value.code == "forbidden"
            async with await RpcClient.connect_tcp(
                HOST, port, client_ssl_context(manager, ca.bundle_pem)
            ) as client:
                assert await client.call("manager_only") == "ok"
        finally:
            await server.close()

    run(body())


def test_client_refuses_a_server_with_the_wrong_role(
    run: Any, ca: ClusterCA, manager: NodeIdentity, worker: NodeIdentity
) -> None:
    async def body() -> None:
        server = RpcServer(make_dispatch(ca))
        _, port = await server.listen_tcp(HOST, 0, server_ssl_context(worker))
        try:
            with pytest.raises(RpcError) as info:
                await RpcClient.connect_tcp(
                    HOST, port, client_ssl_context(manager, ca.bundle_pem), expect_role="manager"
                )
            assert info.value.code == "untrusted"
        finally:
            await server.close()

    run(body())


def test_without_a_certificate_only_join_methods_work(
    run: Any, ca: ClusterCA, manager: NodeIdentity
) -> None:
    async def body() -> None:
        server, port = await start(ca, manager)
        try:
            async with await RpcClient.connect_tcp(
                HOST, port, client_ssl_context(None, ca.bundle_pem)
            ) as client:
                assert (await client.call("ca_bundle"))["bundle"] == ca.bundle_pem.decode()
                assert await client.call("join", {"token": "t"}) == {"joined": True}
                for method in ("whoami", "manager_only", "echo"):
                    with pytest.raises(RpcError) as info:
                        await client.call(method)
                    assert info.value.code == "forbidden"
            # the same without verifying the server (how a joining node fetches the CA)
            bundle = await fetch_ca_bundle(HOST, port, timeout=10)
            assert bundle == ca.bundle_pem
        finally:
            await server.close()

    run(body())


def test_certificate_from_another_ca_is_refused_at_handshake(
    run: Any, ca: ClusterCA, manager: NodeIdentity, worker: NodeIdentity, caplog: Any
) -> None:
    foreign_ca = ClusterCA.create("cluster-rpc")  # same cluster id, different key
    intruder = foreign_ca.issue_identity("mgr-1", "manager", lifetime=3600)

    async def body() -> None:
        server, port = await start(ca, manager)
        try:
            good = await RpcClient.connect_tcp(
                HOST, port, client_ssl_context(worker, ca.bundle_pem)
            )
            with pytest.raises(RpcError) as info:
                # TLS 1.3: the client may finish its side before the server refuses
                bad = await RpcClient.connect_tcp(
                    HOST, port, client_ssl_context(intruder, ca.bundle_pem)
                )
                try:
                    await bad.call("whoami")
                finally:
                    await bad.close()
            assert info.value.code == "unreachable"
            assert await good.call("echo", {"value": 1}) == 1
            await good.close()
            # and a client that trusts only the foreign CA refuses our manager
            with pytest.raises(RpcError, match="TLS handshake failed"):
                await RpcClient.connect_tcp(
                    HOST, port, client_ssl_context(intruder, foreign_ca.bundle_pem)
                )
        finally:
            await server.close()

    with caplog.at_level(logging.INFO, logger="meshkit.cluster.rpc.transport"):
        run(body())
    assert "client certificate refused" in caplog.text


def test_expired_certificate_is_refused(
    run: Any, ca: ClusterCA, manager: NodeIdentity, caplog: Any
) -> None:
    from meshkit.cluster.rpc.pki import new_node_key_and_csr

    key, csr = new_node_key_and_csr("old-node")
    cert = ca.sign_csr(csr, "old-node", "worker", lifetime=60, now=time.time() - 7200)
    expired = NodeIdentity.from_cert(cert, key, ca.bundle_pem)
    assert expired.expired()

    async def body() -> None:
        server, port = await start(ca, manager)
        try:
            with pytest.raises(RpcError) as info:
                client = await RpcClient.connect_tcp(
                    HOST, port, client_ssl_context(expired, ca.bundle_pem)
                )
                try:
                    await client.call("whoami")
                finally:
                    await client.close()
            assert info.value.code == "unreachable"
        finally:
            await server.close()

    with caplog.at_level(logging.INFO, logger="meshkit.cluster.rpc.transport"):
        run(body())
    assert "expired" in caplog.text


# --------------------------------------------------------------------------- garbage


async def _tls_raw(port: int, identity: NodeIdentity, ca: ClusterCA) -> Any:
    return await asyncio.open_connection(
        HOST, port, ssl=client_ssl_context(identity, ca.bundle_pem), server_hostname=""
    )


@pytest.mark.parametrize("kind", ["http", "garbage", "oversized", "not-json", "no-id"])
def test_bad_input_closes_only_that_connection(
    run: Any,
    ca: ClusterCA,
    manager: NodeIdentity,
    worker: NodeIdentity,
    kind: str,
    caplog: Any,
) -> None:
    async def body() -> None:
        server, port = await start(ca, manager)
        try:
            good = await RpcClient.connect_tcp(
                HOST, port, client_ssl_context(worker, ca.bundle_pem)
            )
            slow = asyncio.ensure_future(good.call("echo", {"value": "slow", "delay": 0.2}))
            if kind in ("http", "garbage"):  # not even TLS
                reader, writer = await asyncio.open_connection(HOST, port)
                payload = (
                    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
                    if kind == "http"
                    else os.urandom(3000)
                )
            else:  # a proper TLS client that sends bad frames
                reader, writer = await _tls_raw(port, worker, ca)
                payload = {
                    "oversized": struct.pack(">I", 0xFFFFFFF0) + b"x" * 100,
                    "not-json": struct.pack(">I", 9) + b"not json!",
                    "no-id": encode_frame({"method": "whoami"}),
                }[kind]
            writer.write(payload)
            await writer.drain()
            reply = await read_until_closed(reader)
            assert b"HTTP/" not in reply
            writer.close()
            # the other client did not notice
            assert await good.call("echo", {"value": 2}) == 2
            assert await slow == "slow"
            await good.close()
            assert server.connections <= 1
        finally:
            await server.close()

    with caplog.at_level(logging.INFO, logger="meshkit.cluster.rpc.transport"):
        run(body())
    assert "refused connection from" in caplog.text or "closing connection from" in caplog.text
    if kind == "http":
        assert "plain HTTP request on the TLS port" in caplog.text


def test_silent_client_is_cut_at_the_handshake_timeout(
    run: Any, ca: ClusterCA, manager: NodeIdentity, caplog: Any
) -> None:
    async def body() -> None:
        server, port = await start(ca, manager, handshake_timeout=0.3)
        try:
            reader, writer = await asyncio.open_connection(HOST, port)
            assert await read_until_closed(reader) == b""
            writer.close()
        finally:
            await server.close()

    with caplog.at_level(logging.INFO, logger="meshkit.cluster.rpc.transport"):
        run(body())
    assert "refused connection from" in caplog.text


def test_idle_connection_is_closed_but_not_while_serving(
    run: Any, ca: ClusterCA, manager: NodeIdentity, worker: NodeIdentity
) -> None:
    async def body() -> None:
        server, port = await start(ca, manager, idle_timeout=0.2)
        try:
            ctx = client_ssl_context(worker, ca.bundle_pem)
            client = await RpcClient.connect_tcp(HOST, port, ctx)
            # a request longer than the idle timeout is answered
            assert await client.call("echo", {"value": "x", "delay": 0.6}) == "x"
            # then silence: the server closes
            for _ in range(200):
                if client.closed:
                    break
                await asyncio.sleep(0.05)
            assert client.closed
            with pytest.raises(RpcError) as info:
                await client.call("echo")
            assert info.value.code == "unreachable"
            await client.close()
        finally:
            await server.close()

    run(body())


# --------------------------------------------------------------------------- calls


def test_many_calls_in_flight_and_errors(
    run: Any, ca: ClusterCA, manager: NodeIdentity, worker: NodeIdentity, caplog: Any
) -> None:
    async def body() -> None:
        server, port = await start(ca, manager)
        try:
            ctx = client_ssl_context(worker, ca.bundle_pem)
            async with await RpcClient.connect_tcp(HOST, port, ctx) as client:
                # later calls finish first: replies are matched by id
                calls = [
                    client.call("echo", {"value": i, "delay": (20 - i) / 100}) for i in range(20)
                ]
                assert await asyncio.gather(*calls) == list(range(20))
                with pytest.raises(RpcError) as info:
                    await client.call("boom")
                assert (info.value.code, info.value.message) == ("internal", "kaboom in dispatch")
                with pytest.raises(RpcError) as info:
                    await client.call("unserialisable")
                assert info.value.code == "internal"
                with pytest.raises(RpcError) as info:
                    await client.call("nope")
                assert (info.value.code, str(info.value)) == ("not_found", "unknown method nope")
                with pytest.raises(RpcError) as info:
                    await client.call("echo", {"delay": 5}, timeout=0.1)
                assert info.value.code == "timeout"
                assert await client.call("echo", {"value": "after"}) == "after"
        finally:
            await server.close()

    with caplog.at_level(logging.INFO, logger="meshkit.cluster.rpc.transport"):
        run(body())
    assert "kaboom in dispatch" in caplog.text
    assert "Traceback" in caplog.text


def test_bad_request_shapes_get_error_replies(
    run: Any, ca: ClusterCA, manager: NodeIdentity, worker: NodeIdentity
) -> None:
    async def body() -> None:
        server, port = await start(ca, manager)
        try:
            reader, writer = await _tls_raw(port, worker, ca)
            writer.write(encode_frame({"id": 7, "params": {}}))
            writer.write(encode_frame({"id": 8, "method": "echo", "params": [1]}))
            writer.write(encode_frame({"id": 9, "method": "echo", "params": {"value": 3}}))
            await writer.drain()
            decoder = FrameDecoder()
            replies: dict[int, Any] = {}
            while len(replies) < 3:
                for m in decoder.feed(await asyncio.wait_for(reader.read(4096), 20)):
                    replies[m["id"]] = m
            assert replies[7]["error"]["code"] == "bad_request"
            assert replies[8]["error"]["code"] == "bad_request"
            assert replies[9] == {"id": 9, "result": 3}
            writer.close()
        finally:
            await server.close()

    run(body())


def test_server_close_fails_calls_in_flight(
    run: Any, ca: ClusterCA, manager: NodeIdentity, worker: NodeIdentity
) -> None:
    async def body() -> None:
        server, port = await start(ca, manager)
        client = await RpcClient.connect_tcp(HOST, port, client_ssl_context(worker, ca.bundle_pem))
        pending = asyncio.ensure_future(client.call("echo", {"delay": 30}))
        await asyncio.sleep(0.1)
        await server.close()
        with pytest.raises(RpcError) as info:
            await pending
        assert info.value.code == "unreachable"
        await client.close()

    run(body())


def test_unreachable_names_the_address(run: Any) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.3", 0))
        port = s.getsockname()[1]  # bound, not listening: refused

    async def body() -> None:
        with pytest.raises(RpcError) as info:
            await RpcClient.connect_tcp("127.0.0.3", port, client_ssl_context(None, None), 5)
        assert info.value.code == "unreachable"
        assert f"127.0.0.3:{port}" in str(info.value)
        with pytest.raises(RpcError) as info:
            await RpcClient.connect_unix("/nonexistent/meshkit.sock", 5)
        assert info.value.code == "unreachable"
        assert "/nonexistent/meshkit.sock" in str(info.value)

    run(body())


def test_other_loopback_address(
    run: Any, ca: ClusterCA, manager: NodeIdentity, worker: NodeIdentity
) -> None:
    async def body() -> None:
        server, port = await start(ca, manager, host="127.0.0.2")
        try:
            ctx = client_ssl_context(worker, ca.bundle_pem)
            async with await RpcClient.connect_tcp("127.0.0.2", port, ctx) as client:
                assert await client.call("echo", {"value": "v"}) == "v"
        finally:
            await server.close()

    run(body())


# --------------------------------------------------------------------------- unix socket


def test_unix_socket(run: Any, ca: ClusterCA, tmp_path: Path) -> None:
    path = tmp_path / "run" / "meshkit.sock"

    async def body() -> None:
        server = RpcServer(make_dispatch(ca))
        await server.listen_unix(path, mode=0o660)
        try:
            assert stat.S_ISSOCK(path.stat().st_mode)
            assert stat.S_IMODE(path.stat().st_mode) == 0o660
            async with await RpcClient.connect_unix(path) as client:
                who = await client.call("whoami")
                assert who == {"node_id": None, "role": None, "local": True, "uid": os.getuid()}
            # a second agent on the same socket is refused while the first answers
            other = RpcServer(make_dispatch(ca))
            with pytest.raises(MeshkitError, match="already listening"):
                await other.listen_unix(path)
            await other.close()
            # garbage on the plain socket closes that connection only
            reader, writer = await asyncio.open_unix_connection(str(path))
            writer.write(b"GET / HTTP/1.1\r\n\r\n")
            assert await read_until_closed(reader) == b""
            writer.close()
            async with await RpcClient.connect_unix(path) as client:
                assert await client.call("echo", {"value": 5}) == 5
        finally:
            await server.close()
        assert not path.exists()

    run(body())


def test_stale_unix_socket_is_replaced(run: Any, ca: ClusterCA, tmp_path: Path) -> None:
    path = tmp_path / "meshkit.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens
    not_a_socket = tmp_path / "plain-file"
    not_a_socket.write_text("x")

    async def body() -> None:
        server = RpcServer(make_dispatch(ca))
        try:
            await server.listen_unix(path)
            async with await RpcClient.connect_unix(path) as client:
                assert await client.call("echo", {"value": 1}) == 1
            with pytest.raises(MeshkitError, match="not a socket"):
                await server.listen_unix(not_a_socket)
        finally:
            await server.close()

    run(body())
    assert not_a_socket.read_text() == "x"


# --------------------------------------------------------------------------- CA bundle


def test_check_ca_bundle(ca: ClusterCA) -> None:
    token = new_token(ca.bundle_pem)
    check_ca_bundle(ca.bundle_pem, token)
    other = ClusterCA.create("cluster-rpc")
    with pytest.raises(TrustError) as info:
        check_ca_bundle(other.bundle_pem, token)
    assert str(info.value) == rpc.MITM_MESSAGE
    assert str(info.value).startswith(
        "the manager's CA does not match the token: possible man-in-the-middle, or a token "
        "from before a CA rotation"
    )
    with pytest.raises(TrustError):
        check_ca_bundle(ca.bundle_pem + b"\n", token)  # the whole bundle is hashed


def test_fetch_from_an_impostor_fails_the_digest_check(
    run: Any, ca: ClusterCA, manager: NodeIdentity
) -> None:
    impostor_ca = ClusterCA.create("cluster-rpc")
    impostor = impostor_ca.issue_identity("mgr-1", "manager", lifetime=3600)
    token = new_token(ca.bundle_pem)

    async def body() -> None:
        server, port = await start(impostor_ca, impostor)
        try:
            bundle = await fetch_ca_bundle(HOST, port, timeout=10)
        finally:
            await server.close()
        with pytest.raises(TrustError, match="possible man-in-the-middle"):
            check_ca_bundle(bundle, token)

    run(body())


def test_reply_shapes_of_ca_bundle_are_checked(
    run: Any, ca: ClusterCA, manager: NodeIdentity
) -> None:
    async def body() -> None:
        async def dispatch(peer: Peer, method: str, params: dict[str, Any]) -> Any:
            return {"bundle": 42}

        server = RpcServer(dispatch)
        _, port = await server.listen_tcp(HOST, 0, server_ssl_context(manager))
        try:
            with pytest.raises(RpcError) as info:
                await fetch_ca_bundle(HOST, port, timeout=10)
            assert info.value.code == "bad_reply"
        finally:
            await server.close()

    run(body())


def test_rpc_error_is_a_meshkit_error() -> None:
    err = RpcError("forbidden", "no")
    assert isinstance(err, MeshkitError)
    assert str(err) == "no"
    assert json.loads(json.dumps({"c": err.code})) == {"c": "forbidden"}
    assert isinstance(PkiError("x"), MeshkitError)
    assert rpc.MITM_MESSAGE.startswith("the manager's CA")


# ------------------------------------------------------------------ clients without a certificate


async def _tls_anon(port: int, ca: ClusterCA) -> Any:
    """A raw TLS connection that presents no client certificate (as a joining node)."""
    return await asyncio.open_connection(
        HOST, port, ssl=client_ssl_context(None, ca.bundle_pem), server_hostname=""
    )


def test_a_join_frame_fits_the_unauthenticated_frame_cap() -> None:
    from meshkit.cluster.rpc.pki import new_node_key_and_csr

    _, csr = new_node_key_and_csr("pending")
    frame = encode_frame(
        {
            "id": 1,
            "method": "join",
            "params": {
                "token": str(new_token(b"-----BEGIN CERTIFICATE-----")),
                "csr": csr.decode(),
                "hostname": "h" * 253,
                "advertise_addr": "198.18.0.1",
                "version": "1.0.0",
                "api_port": 2377,
                "raft_port": 2378,
            },
        }
    )
    assert len(frame) * 8 < rpc.UNAUTH_MAX_FRAME


def test_unauthenticated_client_cannot_announce_a_big_frame(
    run: Any, ca: ClusterCA, manager: NodeIdentity, worker: NodeIdentity, caplog: Any
) -> None:
    """Issue 16 #3: without a certificate a 16 MiB announcement is refused from the header;
    a certificate holder may still send frames far above the small cap."""

    async def body() -> None:
        server, port = await start(ca, manager)
        try:
            reader, writer = await _tls_anon(port, ca)
            writer.write(struct.pack(">I", 16 * 1024 * 1024 - 1) + b"x" * 1000)
            await writer.drain()
            started = time.monotonic()
            assert await read_until_closed(reader) == b""
            assert time.monotonic() - started < 5
            writer.close()
            async with await RpcClient.connect_tcp(
                HOST, port, client_ssl_context(worker, ca.bundle_pem)
            ) as client:
                big = "y" * (1024 * 1024)
                assert await client.call("echo", {"value": big}) == big
        finally:
            await server.close()

    with caplog.at_level(logging.INFO, logger="meshkit.cluster.rpc.transport"):
        run(body())
    assert "exceeds the 65536-byte cap" in caplog.text


def test_unauthenticated_client_must_send_whole_frames_in_time(
    run: Any, ca: ClusterCA, manager: NodeIdentity, caplog: Any
) -> None:
    """A frame trickled in byte by byte does not keep the connection open."""

    async def body() -> None:
        server, port = await start(ca, manager, unauth_timeout=0.6)
        try:
            reader, writer = await _tls_anon(port, ca)
            frame = encode_frame({"id": 1, "method": "ca_bundle", "params": {}})
            writer.write(struct.pack(">I", 60000) + b"{")  # announced, held back
            await writer.drain()

            async def trickle() -> None:
                with contextlib.suppress(OSError, ConnectionError):
                    for _ in range(40):
                        await asyncio.sleep(0.1)
                        writer.write(b" ")
                        await writer.drain()

            feeder = asyncio.ensure_future(trickle())
            started = time.monotonic()
            assert await read_until_closed(reader) == b""
            assert time.monotonic() - started < 3.0
            feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await feeder
            writer.close()
            # whole frames in time are served, and the connection then stays for the timeout
            reader, writer = await _tls_anon(port, ca)
            writer.write(frame)
            await writer.drain()
            decoder = FrameDecoder()
            got: list[dict[str, Any]] = []
            while not got:
                got = decoder.feed(await asyncio.wait_for(reader.read(65536), 10))
            assert got[0]["result"]["bundle"] == ca.bundle_pem.decode()
            assert await read_until_closed(reader) == b""  # closed after 0.6 s of silence
            writer.close()
        finally:
            await server.close()

    with caplog.at_level(logging.INFO, logger="meshkit.cluster.rpc.transport"):
        run(body())
    assert "no whole frame within 0.6 s" in caplog.text


def test_unauthenticated_connections_are_capped(
    run: Any, ca: ClusterCA, manager: NodeIdentity, worker: NodeIdentity, caplog: Any
) -> None:
    """Past the cap a new connection without a certificate is closed at once; certificate
    holders are not counted and still get in."""

    async def body() -> None:
        server, port = await start(ca, manager, max_unauth=3)
        try:
            held = [await _tls_anon(port, ca) for _ in range(3)]
            for _ in range(100):
                if server.unauthenticated == 3:
                    break
                await asyncio.sleep(0.02)
            assert server.unauthenticated == 3
            reader, writer = await _tls_anon(port, ca)
            started = time.monotonic()
            assert await read_until_closed(reader) == b""
            assert time.monotonic() - started < 5
            writer.close()
            async with await RpcClient.connect_tcp(
                HOST, port, client_ssl_context(worker, ca.bundle_pem)
            ) as client:
                assert await client.call("echo", {"value": 1}) == 1
            # one goes away: a new one is served again
            held[0][1].close()
            for _ in range(100):
                if server.unauthenticated == 2:
                    break
                await asyncio.sleep(0.02)
            async with await RpcClient.connect_tcp(
                HOST, port, client_ssl_context(None, ca.bundle_pem)
            ) as anon:
                assert (await anon.call("ca_bundle"))["bundle"] == ca.bundle_pem.decode()
            for _, w in held[1:]:
                w.close()
        finally:
            await server.close()

    with caplog.at_level(logging.INFO, logger="meshkit.cluster.rpc.transport"):
        run(body())
    assert "connections without a certificate are open (the cap)" in caplog.text

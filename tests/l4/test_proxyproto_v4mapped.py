"""An IPv4 client of a dual-stack ingress listener reaches the backend as IPv4 in the PROXY
header (issue 16): AF_INET in v2, TCP4 in v1, as HAProxy and nginx send it, not the
::ffff:a.b.c.d the IPv6 socket shows. The header is built by meshkit.l4.proxyproto for both
the compiled relay and its Python twin; the end-to-end test runs over both."""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable

import pytest

from meshkit.l4 import proxyproto
from support.peers import Proc, backend_argv, free_port, ingress_argv, wait_tcp

MAPPED_SRC = ("::ffff:127.0.0.1", 40000)
MAPPED_DST = ("::ffff:127.0.0.2", 80)


def test_v2_unmaps_both_sides() -> None:
    header = proxyproto.encode_v2("tcp", MAPPED_SRC, MAPPED_DST)
    assert header[13] == 0x11  # AF_INET, STREAM
    assert struct.unpack("!H", header[14:16])[0] == 12
    parsed, used = proxyproto.parse(header)  # type: ignore[misc]
    assert used == len(header)
    assert parsed.src == ("127.0.0.1", 40000) and parsed.dst == ("127.0.0.2", 80)
    # UDP too, and a mapped side with a plain IPv4 other side
    assert proxyproto.encode_v2("udp", MAPPED_SRC, ("127.0.0.2", 53))[13] == 0x12


def test_v1_says_tcp4() -> None:
    assert proxyproto.encode_v1("tcp", MAPPED_SRC, MAPPED_DST) == (
        b"PROXY TCP4 127.0.0.1 127.0.0.2 40000 80\r\n"
    )
    assert proxyproto.encode_v1("tcp", ("127.0.0.1", 1), ("::ffff:127.0.0.2", 2)) == (
        b"PROXY TCP4 127.0.0.1 127.0.0.2 1 2\r\n"
    )


@pytest.mark.parametrize(
    ("src", "dst"),
    [
        (MAPPED_SRC, ("::1", 80)),  # a mapped client on a real IPv6 destination
        (("::1", 5), MAPPED_DST),
        (("127.0.0.1", 5), ("::1", 80)),  # a real v4/v6 mix: the v4 side is mapped
    ],
)
def test_a_real_ipv6_side_keeps_inet6(src: tuple[str, int], dst: tuple[str, int]) -> None:
    assert proxyproto.encode_v2("tcp", src, dst)[13] == 0x21
    assert proxyproto.encode_v1("tcp", src, dst).startswith(b"PROXY TCP6 ")


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_dual_stack_ingress_sends_ipv4_client(
    spawn: Callable[..., Proc], fastpath_env: dict[str, str], version: str
) -> None:
    bport = free_port()
    backend = spawn(backend_argv(bport, "pp", "--proxy-protocol"))
    wait_tcp(bport, backend)
    port = free_port()
    # an AF_INET6 listener (IPV6_V6ONLY off) on the IPv4-mapped loopback: IPv4 clients show
    # as ::ffff:127.0.0.1, as on a `[::]` listener, without listening on every address
    ing = spawn(
        ingress_argv(
            "--publish",
            f"[::ffff:127.0.0.1]:{port}:80",
            "--backend",
            f"127.0.0.1:{bport}",
            "--proxy-protocol",
            version,
        ),
        fastpath_env,
    )
    wait_tcp(port, ing)
    with socket.socket() as s:
        s.settimeout(10)
        s.bind(("127.0.0.1", 0))
        local_port = s.getsockname()[1]
        s.connect(("127.0.0.1", port))
        s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        data = b""
        while not data.endswith(b"\n") or b"\r\n\r\n" not in data:
            chunk = s.recv(4096)
            assert chunk, data
            data += chunk
    assert data.split(b"\r\n\r\n", 1)[1].decode().strip() == f"pp 127.0.0.1:{local_port}"

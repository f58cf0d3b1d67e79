"""A task program for the mesh tests: says which node it runs on, over TCP and UDP.

    python mesh_echo.py PORT [--proxy-protocol]

TCP: answers one line, "node <HOSTNAME> from <client ip>", where the client is the address the
connection came from, or, with --proxy-protocol, the one a PROXY v2 header in front names.
UDP: answers each datagram with "node <HOSTNAME>".
"""

from __future__ import annotations

import os
import socket
import sys
import threading

from meshkit.l4 import proxyproto


def serve_tcp(port: int, proxy: bool) -> None:
    lst = socket.socket()
    lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lst.bind(("0.0.0.0", port))
    lst.listen(64)
    while True:
        conn, peer = lst.accept()
        with conn:
            client = peer[0]
            if proxy:
                data = b""
                parsed = None
                while parsed is None and len(data) < 4096:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                    parsed = proxyproto.parse(data)
                client = parsed[0].src[0] if parsed and parsed[0].src else "no-header"
            conn.sendall(f"node {os.environ.get('HOSTNAME', '?')} from {client}\n".encode())


def serve_udp(port: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", port))
    while True:
        _data, peer = sock.recvfrom(2048)
        sock.sendto(f"node {os.environ.get('HOSTNAME', '?')}".encode(), peer)


def main() -> None:
    port = int(sys.argv[1])
    proxy = "--proxy-protocol" in sys.argv
    threading.Thread(target=serve_udp, args=(port,), daemon=True).start()
    serve_tcp(port, proxy)


if __name__ == "__main__":
    main()

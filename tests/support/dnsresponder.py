"""A small authoritative DNS responder (dnspython) for tests: UDP and TCP on 127.0.53.N:53,
answering SRV, A and AAAA questions from a table the test may change while it runs, and
counting the questions it got. Its address goes into a resolv.conf that a process started
under `resolv_argv` sees as /etc/resolv.conf (a private mount namespace, so the machine's
own resolver configuration is never touched).

    with dns_responder() as dns:
        dns.srv["_web._tcp.srv.test"] = [(10, 5, "b1.srv.test", 8001)]
        dns.a["b1.srv.test"] = ["127.0.0.1"]
        argv = resolv_argv(dns, tmp, [sys.executable, "-m", "meshkit", "web", ...])
"""

from __future__ import annotations

import contextlib
import random
import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import dns.flags
import dns.message
import dns.rdataclass
import dns.rdatatype
import dns.rrset

__all__ = ["Responder", "dns_responder", "resolv_argv"]


@dataclass
class Responder:
    address: str
    srv: dict[str, list[tuple[int, int, str, int]]] = field(default_factory=dict)
    a: dict[str, list[str]] = field(default_factory=dict)
    ttl: int = 1
    questions: list[tuple[str, str]] = field(default_factory=list)  # (name, type)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, wire: bytes) -> bytes | None:
        try:
            query = dns.message.from_wire(wire)
        except Exception:
            return None
        reply = dns.message.make_response(query)
        reply.flags |= dns.flags.AA
        if not query.question:
            return reply.to_wire()  # type: ignore[no-any-return]
        q = query.question[0]
        name = q.name.to_text(omit_final_dot=True).lower()
        kind = dns.rdatatype.to_text(q.rdtype)
        with self.lock:
            self.questions.append((name, kind))
            srv = list(self.srv.get(name, ()))
            addrs = list(self.a.get(name, ()))
        texts: list[str] = []
        if kind == "SRV":
            texts = [f"{p} {w} {port} {t}." for p, w, t, port in srv]
        elif kind == "A":
            texts = [a for a in addrs if ":" not in a]
        elif kind == "AAAA":
            texts = [a for a in addrs if ":" in a]
        if texts:
            reply.answer.append(
                dns.rrset.from_text_list(q.name, self.ttl, dns.rdataclass.IN, q.rdtype, texts)
            )
        elif name not in self.srv and name not in self.a:
            reply.set_rcode(3)  # NXDOMAIN
        return reply.to_wire()  # type: ignore[no-any-return]

    def count(self, name: str, kind: str) -> int:
        with self.lock:
            return sum(1 for q in self.questions if q == (name, kind))


def _bind(kind: int, address: str) -> socket.socket:
    s = socket.socket(socket.AF_INET, kind)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((address, 53))
    return s


@contextmanager
def dns_responder() -> Iterator[Responder]:
    """A responder on a free 127.0.53.N:53 (UDP and TCP), stopped when the block ends."""
    udp = tcp = None
    address = ""
    for _ in range(50):
        address = f"127.0.53.{random.randint(2, 254)}"
        try:
            udp = _bind(socket.SOCK_DGRAM, address)
            tcp = _bind(socket.SOCK_STREAM, address)
            break
        except OSError:
            for s in (udp, tcp):
                if s is not None:
                    s.close()
            udp = tcp = None
    assert udp is not None and tcp is not None, "no free 127.0.53.N:53"
    tcp.listen(8)
    responder = Responder(address)
    stop = threading.Event()

    def serve_udp() -> None:
        udp.settimeout(0.2)
        while not stop.is_set():
            try:
                wire, peer = udp.recvfrom(4096)
            except (TimeoutError, OSError):
                continue
            out = responder.answer(wire)
            if out is not None:
                with contextlib.suppress(OSError):
                    udp.sendto(out, peer)

    def serve_tcp() -> None:
        tcp.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = tcp.accept()
            except (TimeoutError, OSError):
                continue
            with conn, contextlib.suppress(OSError, struct.error):
                conn.settimeout(2)
                size = struct.unpack("!H", conn.recv(2))[0]
                wire = b""
                while len(wire) < size:
                    chunk = conn.recv(size - len(wire))
                    if not chunk:
                        break
                    wire += chunk
                out = responder.answer(wire)
                if out is not None:
                    conn.sendall(struct.pack("!H", len(out)) + out)

    threads = [threading.Thread(target=f, daemon=True) for f in (serve_udp, serve_tcp)]
    for t in threads:
        t.start()
    try:
        yield responder
    finally:
        stop.set()
        for t in threads:
            t.join(5)
        udp.close()
        tcp.close()


def resolv_argv(dns_: Responder, tmp: Path, argv: list[str]) -> list[str]:
    """`argv` run in a private mount namespace where /etc/resolv.conf names only the
    responder (and /etc/hosts is empty, so every name goes to it). Needs root and unshare."""
    conf = tmp / "resolv.conf"
    conf.write_text(f"nameserver {dns_.address}\noptions timeout:1 attempts:2\n")
    hosts = tmp / "hosts"
    hosts.write_text("127.0.0.1 localhost\n")
    script = (
        f'mount --bind "{conf}" /etc/resolv.conf && mount --bind "{hosts}" /etc/hosts && exec "$@"'
    )
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", *argv]

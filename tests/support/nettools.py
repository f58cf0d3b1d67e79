"""Small network probes for the namespace tests: ping, a UDP-dropping program."""

from __future__ import annotations

import contextlib
import secrets
import socket
import struct

from meshkit.net import links


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def ping(ns: str, dst: str, tries: int = 10) -> bool:
    """True when ``dst`` answers an ICMP echo sent from inside namespace ``ns``."""

    def run() -> bool:
        ident = secrets.randbits(16)
        with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as sock:
            sock.settimeout(0.3)
            for seq in range(tries):
                head = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
                body = b"meshkit-links-test"
                pkt = struct.pack("!BBHHH", 8, 0, _checksum(head + body), ident, seq) + body
                sock.sendto(pkt, (dst, 0))
                with contextlib.suppress(TimeoutError):
                    while True:
                        data, (src, _) = sock.recvfrom(2048)
                        hl = (data[0] & 0x0F) * 4
                        kind, _, _, rid, _ = struct.unpack("!BBHHH", data[hl : hl + 8])
                        if src == dst and kind == 0 and rid == ident:
                            return True
        return False

    return links.in_netns(ns, run)




def drop_udp_port_program(port: int) -> str:
    """Classic BPF for a direct-action tc filter: drop IPv4 UDP to ``port``, pass the rest.
    (This kernel has cls_bpf but neither flower nor the gact drop action.)"""
    insns = [
        (0x28, 0, 0, 12),  # ldh [12]             ethertype
        (0x15, 0, 8, 0x0800),  # jeq IPv4 else pass
        (0x30, 0, 0, 23),  # ldb [23]             IP protocol
        (0x15, 0, 6, 17),  # jeq UDP else pass
        (0x28, 0, 0, 20),  # ldh [20]             fragment offset
        (0x45, 4, 0, 0x1FFF),  # jset: a later fragment has no UDP header: pass
        (0xB1, 0, 0, 14),  # ldxb 4*([14]&0xf)    IP header length
        (0x48, 0, 0, 16),  # ldh [x+16]           UDP destination port
        (0x15, 0, 1, port),  # jeq port else pass
        (0x06, 0, 0, 2),  # ret TC_ACT_SHOT
        (0x06, 0, 0, 0),  # ret TC_ACT_OK
    ]
    return ",".join([str(len(insns)), *(f"{c} {jt} {jf} {k}" for c, jt, jf, k in insns)])



"""Forgetting conntrack entries by mark (meshkit.net.ctflush): the request's bytes, and a real
flush in a namespace, seen from an nft counter of new flows."""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import uuid

import pytest

from meshkit.net.ctflush import flush_marks, flush_request
from meshkit.net.gateway import find_nft


def test_the_request_is_a_ctnetlink_delete_filtered_by_mark() -> None:
    msg = flush_request(0x46130003, 0x7FFFFFFF, seq=9)
    length, kind, flags, seq, _ = struct.unpack_from("=IHHII", msg)
    assert (length, kind, flags, seq) == (len(msg), 0x0102, 0x5, 9)
    assert msg[16:20] == bytes([socket.AF_INET, 0, 0, 0])
    assert msg[20:28] == struct.pack("=HH", 8, 8) + bytes.fromhex("46130003")
    assert msg[28:36] == struct.pack("=HH", 8, 21) + bytes.fromhex("7fffffff")


RULES = """table ip ctf {
 chain out {
  type filter hook output priority 0; policy accept;
  udp dport 9 ct state new counter ct mark set 0x123
 }
}
"""


@pytest.mark.root
def test_a_flush_forgets_the_flows_of_its_mark_only() -> None:
    if os.geteuid() != 0 or find_nft() is None:
        pytest.skip("needs root and nft")
    from meshkit.base.netns import NetnsRef, entered

    ns = f"mkct-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=RULES.encode(),
                       check=True)  # fmt: skip

        def new_flows() -> int:
            argv = ["ip", "netns", "exec", ns, "nft", "-j", "list", "table", "ip", "ctf"]
            out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
            rule = next(i["rule"] for i in json.loads(out)["nftables"] if "rule" in i)
            return int(next(e["counter"]["packets"] for e in rule["expr"] if "counter" in e))

        ref = NetnsRef.open_name(ns)
        try:
            with entered(ref):
                rcv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                rcv.bind(("127.0.0.1", 9))
                snd = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                snd.settimeout(3)
                rcv.settimeout(3)
                snd.connect(("127.0.0.1", 9))

                def exchange() -> None:  # a reply makes the flow established
                    snd.send(b"x")
                    _, peer = rcv.recvfrom(10)
                    rcv.sendto(b"y", peer)
                    snd.recv(10)

                exchange()
                exchange()
                assert new_flows() == 1
                flush_marks([0x124], 0x7FFFFFFF)  # another mark: the flow stays
                exchange()
                assert new_flows() == 1
                flush_marks([0x123], 0x7FFFFFFF)  # its mark: forgotten, the next packet is new
                exchange()
                assert new_flows() == 2
                rcv.close()
                snd.close()
        finally:
            ref.close()
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)

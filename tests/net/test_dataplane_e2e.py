"""The userspace VXLAN data plane end to end: two hosts (namespaces on a veth underlay), each
with a bridge, the VXLAN port (TAP served by bench/overlay.py's runner, or a kernel vxlan
link) and a task namespace; ping both ways, a checked TCP transfer, drops for unknown MACs and
unanswerable ARP, C <-> Python and kernel <-> userspace interop."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from meshkit.net.vxlan.plane import load_vxlan_ffi

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import overlay  # noqa: E402

SINK = """
import hashlib, socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 5001)); s.listen(1); print("listening", flush=True)
c, _ = s.accept(); h = hashlib.sha256(); n = 0
while True:
    b = c.recv(1 << 16)
    if not b: break
    h.update(b); n += len(b)
print(n, h.hexdigest(), flush=True)
"""
SOURCE = """
import os, socket, sys
data = bytes.fromhex(sys.argv[2]) * (int(sys.argv[3]) // 32)
c = socket.create_connection((sys.argv[1], 5001), timeout=60); c.sendall(data); c.close()
"""

PING = """
import os, select, socket, struct, sys, time
dst, size, count, wait = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
s.setsockopt(socket.IPPROTO_IP, 10, 2)  # IP_MTU_DISCOVER = IP_PMTUDISC_DO: DF set, no fragments
def csum(b):
    b += b"\\0" * (len(b) % 2); t = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    t = (t >> 16) + (t & 0xFFFF); t += t >> 16; return ~t & 0xFFFF
got = 0
for seq in range(count):
    body = bytes(size); hdr = struct.pack("!BBHHH", 8, 0, 0, os.getpid() & 0xFFFF, seq)
    s.sendto(struct.pack("!BBHHH", 8, 0, csum(hdr + body), os.getpid() & 0xFFFF, seq) + body,
             (dst, 0))
    end = time.monotonic() + wait
    while (left := end - time.monotonic()) > 0 and select.select([s], [], [], left)[0]:
        pkt = s.recv(65535); icmp = pkt[(pkt[0] & 15) * 4:]
        if icmp[0] == 0 and struct.unpack("!HH", icmp[4:8]) == (os.getpid() & 0xFFFF, seq):
            got += 1; break
print(f"{got}/{count} replies"); sys.exit(0 if got == count else 1)
"""

CASES = [
    pytest.param(("c", "c"), 1500, id="c-c"),
    pytest.param(("python", "python"), 1500, id="python-python"),
    pytest.param(("c", "python"), 1400, id="c-python-mtu1400"),
    pytest.param(("kernel", "c"), 1500, id="kernel-c"),
]


def in_ns(ns: str, *argv: str, check: bool = True, timeout: float = 60) -> str:
    proc = subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} in {ns}: {proc.stdout}{proc.stderr}")
    return proc.stdout


def icmp_ping(ns: str, dst: str, *, size: int = 56, count: int = 3, wait: float = 2.0,
              check: bool = True) -> str:
    """ICMP echo with DF set (this machine has no ping binary); all must be answered."""
    return in_ns(ns, sys.executable, "-c", PING, dst, str(size), str(count), str(wait),
                 check=check)  # fmt: skip


def ping(ov: overlay.Overlay, src: int, size: int = 56) -> None:
    dst = overlay.TASK_IPS[1 - src]
    for _ in range(10):  # the first answer may wait for ARP and the runner to be serving
        if icmp_ping(ov.task(src), dst, size=size, count=1, check=False).startswith("1/1"):
            break
    icmp_ping(ov.task(src), dst, size=size)


def transfer(ov: overlay.Overlay, size: int) -> None:
    """size bytes from task 0 to task 1 over TCP; the receiver's sha256 must match."""
    pattern = hashlib.sha256(b"meshkit").hexdigest()
    sink = subprocess.Popen(["ip", "netns", "exec", ov.task(1), sys.executable, "-c", SINK,
                             overlay.TASK_IPS[1]], stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert sink.stdout is not None
        assert sink.stdout.readline().strip() == "listening"
        in_ns(ov.task(0), sys.executable, "-c", SOURCE, overlay.TASK_IPS[1], pattern, str(size),
              timeout=120)  # fmt: skip
        got = sink.stdout.readline().split()
        want = hashlib.sha256(bytes.fromhex(pattern) * (size // 32)).hexdigest()
        assert got == [str(size // 32 * 32), want]
    finally:
        if sink.poll() is None:
            sink.kill()
        sink.wait()


def fresh_stats(ov: overlay.Overlay, side: int) -> dict[str, Any]:
    time.sleep(0.5)  # the runner rewrites its stats file every 0.2 s
    return ov.stats(side)


@pytest.mark.root
@pytest.mark.parametrize(("kinds", "mtu"), CASES)
def test_overlay_end_to_end(netns_lab: Any, kinds: tuple[str, str], mtu: int) -> None:
    if "c" in kinds and load_vxlan_ffi() is None:
        pytest.skip("meshkit._vxlan_ffi not built or disabled")
    netns_lab.add_host("h0", mtu=mtu)
    netns_lab.add_host("h1", mtu=mtu)
    ov = overlay.Overlay(netns_lab, kinds, 4096, 4789, mtu - 50, "o")
    try:
        ov.build()
        ping(ov, 0)
        ping(ov, 1)
        ping(ov, 0, size=mtu - 50 - 28)  # a full-size overlay frame, DF set
        transfer(ov, 8 << 20 if "python" not in kinds else 2 << 20)
        hosts = [netns_lab.addr("h0"), netns_lab.addr("h1")]
        for side, kind in enumerate(kinds):
            if kind == "kernel":
                continue
            stats = fresh_stats(ov, side)
            assert stats["implementation"] == kind
            peer = stats["peers"][hosts[1 - side]]
            assert peer["tx_frames"] > 0 and peer["rx_frames"] > 0, stats
            assert peer["rx_bytes"] >= peer["rx_frames"] * 42, stats
            assert stats["arp_replies"] >= 1, stats  # the task ARPed for its peer: proxied
            drops = stats["drops"]
            assert drops["unknown_vni"] == drops["bad_flags"] == drops["send_error"] == 0, stats
        for side, kind in enumerate(kinds):
            if kind == "kernel":
                continue
            before = fresh_stats(ov, side)["drops"]
            task = ov.task(side)
            # a unicast frame to a MAC no FDB knows: dropped, not flooded
            in_ns(task, "ip", "neigh", "replace", "203.0.113.99", "lladdr", "02:4d:00:00:00:99",
                  "dev", "eth0", "nud", "permanent")  # fmt: skip
            icmp_ping(task, "203.0.113.99", count=2, wait=0.5, check=False)
            # a broadcast ARP request for an IP no neighbour table has: dropped, not flooded
            icmp_ping(task, "203.0.113.77", count=1, wait=3.5, check=False)
            after = fresh_stats(ov, side)["drops"]
            assert after["no_fdb"] >= before["no_fdb"] + 2, after
            assert after["arp_no_neigh"] >= before["arp_no_neigh"] + 1, after
    finally:
        ov.close()


@pytest.mark.root
def test_runner_reports_bad_input(netns_lab: Any) -> None:
    """A malformed FDB entry gives a clear error naming it, not a traceback from C."""
    netns_lab.add_host("h0")
    proc = netns_lab.run("h0", [sys.executable, str(BENCH / "overlay.py"), "runner", "--impl",
                                "python", "--bind", netns_lab.addr("h0"), "--port", "4789",
                                "--tap", "tapx", "--vni", "4096", "--fdb",
                                '{"02:4d:zz:00:00:01": "198.18.0.11"}', "--stats",
                                "/nonexistent/x.json"], check=False)  # fmt: skip
    assert proc.returncode != 0
    assert "peers of VNI 4096: invalid MAC address '02:4d:zz:00:00:01'" in proc.stderr


@pytest.mark.root
@pytest.mark.parametrize("plain_tap", [False, True], ids=["offloads", "plain-tap"])
def test_bulk_transfer_with_offloads(netns_lab: Any, plain_tap: bool) -> None:
    """C <-> C over an underlay MTU of 1400: a 16 MB TCP transfer arrives intact (sha256)
    with TSO/UDP GSO on the sender and UDP GRO/GSO super-frames on the receiver, or with the
    TAPs opened plain; counters count segments, not super-frames."""
    if load_vxlan_ffi() is None:
        pytest.skip("meshkit._vxlan_ffi not built or disabled")
    netns_lab.add_host("h0", mtu=1400)
    netns_lab.add_host("h1", mtu=1400)
    ov = overlay.Overlay(netns_lab, ("c", "c"), 4096, 4789, 1350, "g", plain_tap=plain_tap)
    try:
        ov.build()
        ping(ov, 0)
        transfer(ov, 16 << 20)
        sender, receiver = fresh_stats(ov, 0), fresh_stats(ov, 1)
        h0, h1 = netns_lab.addr("h0"), netns_lab.addr("h1")
        sent, got = sender["peers"][h1], receiver["peers"][h0]
        # every inner frame fits the overlay MTU: 16 MB needs at least 16 MB / 1350 segments
        assert sent["tx_frames"] >= (16 << 20) // 1350, sender
        assert got["rx_frames"] >= (16 << 20) // 1350, receiver
        assert sent["tx_bytes"] > 16 << 20 and got["rx_bytes"] > 16 << 20
        for stats in (sender, receiver):
            assert stats["drops"]["bad_gso"] == stats["drops"]["tap_write_error"] == 0, stats
        if plain_tap:
            assert sender["offload"]["tso_frames"] == receiver["offload"]["gro_writes"] == 0
        else:
            assert sender["offload"]["tso_frames"] > 0, sender
            assert sender["offload"]["gso_sends"] > 0, sender
            assert receiver["offload"]["gro_writes"] > 0, receiver
    finally:
        ov.close()


@pytest.mark.root
def test_udp_gso_refused_falls_back(netns_lab: Any) -> None:
    """A socket sending without UDP checksums (SO_NO_CHECK) makes the kernel refuse
    UDP_SEGMENT: the plane remembers it, sends one datagram per segment, and the transfer
    still arrives intact."""
    if load_vxlan_ffi() is None:
        pytest.skip("meshkit._vxlan_ffi not built or disabled")
    netns_lab.add_host("h0")
    netns_lab.add_host("h1")
    ov = overlay.Overlay(netns_lab, ("c", "c"), 4096, 4789, 1450, "f", udp_no_check=True)
    try:
        ov.build()
        ping(ov, 0)
        transfer(ov, 8 << 20)
        sender = fresh_stats(ov, 0)
        assert sender["offload"]["udp_gso"] == 0, sender
        assert sender["offload"]["tso_frames"] > 0, sender
        assert sender["peers"][netns_lab.addr("h1")]["tx_frames"] >= (8 << 20) // 1450, sender
        assert sender["drops"]["send_error"] == sender["drops"]["bad_gso"] == 0, sender
    finally:
        ov.close()


@pytest.mark.root
def test_kernel_to_c_with_checksum_offload_on(netns_lab: Any) -> None:
    """A kernel VXLAN port left with TX checksum offload on sends inner TCP segments with
    unfinished checksums over veth; the C plane writes them into its vnet TAP as
    CHECKSUM_PARTIAL (NEEDS_CSUM with the pseudo-header sum), which the task's stack accepts.
    Only small transfers: with offload on, the kernel port also keeps TSO, and over veth its
    TCP super-frames reach the UDP socket unsegmented (one datagram larger than the MTU, its
    MSS lost), which no userspace receiver can pass on; a physical NIC segments them."""
    if load_vxlan_ffi() is None:
        pytest.skip("meshkit._vxlan_ffi not built or disabled")
    netns_lab.add_host("h0")
    netns_lab.add_host("h1")
    ov = overlay.Overlay(netns_lab, ("kernel", "c"), 4096, 4789, 1450, "k",
                         kernel_csum_off=False)  # fmt: skip
    try:
        ov.build()
        ping(ov, 0)
        transfer(ov, 1024)
        stats = fresh_stats(ov, 1)
        assert stats["peers"][netns_lab.addr("h0")]["rx_frames"] >= 4, stats
    finally:
        ov.close()

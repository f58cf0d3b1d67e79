"""Encrypted overlays end to end on two namespace hosts (bench/overlay.py's runners with
--keys-file): a marker exchanged over HTTP never shows in a tcpdump capture of the underlay
(and does on a plain overlay); a captured datagram sent again with a raw socket is dropped as
a replay, a forged one as bad_tag; a key rotation during an iperf3 run loses no connection; a
node left without the new key (removed from the cluster) opens nothing sent after it."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from meshkit.net.vxlan.plane import load_vxlan_ffi

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

from tests.net.test_dataplane_e2e import fresh_stats, icmp_ping, ping  # noqa: E402

import overlay  # noqa: E402

MARKER = "meshkit-secret-marker-7f3a9c"
PORT = 4789

RAW_SEND = """
import socket, sys
pkt = bytes.fromhex(sys.argv[1])
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
s.sendto(pkt, (sys.argv[2], 0))
"""


def key_spec(tmp: Path, side: int, keys: list[tuple[int, bytes]], tx: int) -> Path:
    path = tmp / f"keys{side}.json"
    overlay.write_keys(path, keys, tx, None)
    return path


def needs_c(kinds: tuple[str, ...] = ("c",)) -> None:
    if "c" in kinds and load_vxlan_ffi() is None:
        pytest.skip("meshkit._vxlan_ffi not built or disabled")


def pcap_packets(path: Path) -> list[bytes]:
    """The IPv4 packets of an Ethernet pcap file."""
    data = path.read_bytes()
    out, off = [], 24
    while off + 16 <= len(data):
        incl = struct.unpack_from("<I", data, off + 8)[0]
        frame = data[off + 16 : off + 16 + incl]
        off += 16 + incl
        if frame[12:14] == b"\x08\x00":
            out.append(frame[14:])
    return out


def exchange_marker(lab: Any, ov: overlay.Overlay, tmp: Path) -> Path:
    """An HTTP GET carrying MARKER from task 0 to an HTTP server in task 1 that answers a file
    holding MARKER, while tcpdump captures h1's underlay; the capture file."""
    site = tmp / "site"
    site.mkdir()
    (site / "m.txt").write_text(MARKER * 4)
    pcap = tmp / "underlay.pcap"
    dump = lab.spawn("h1", ["tcpdump", "-i", "eth0", "--immediate-mode", "-U", "-Z", "root",
                            "-n", "-w", str(pcap), "udp",
                            "port", str(PORT)])  # fmt: skip
    deadline = time.monotonic() + 10
    while "listening on" not in dump.output():
        assert time.monotonic() < deadline and dump.popen.poll() is None, dump.output()
        time.sleep(0.05)
    server = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            ov.task(1),
            sys.executable,
            "-m",
            "http.server",
            "8080",
            "--bind",
            overlay.TASK_IPS[1],
            "--directory",
            str(site),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        ping(ov, 0)
        deadline = time.monotonic() + 20
        while True:
            got = subprocess.run(
                [
                    "ip",
                    "netns",
                    "exec",
                    ov.task(0),
                    "curl",
                    "-sS",
                    "--max-time",
                    "5",
                    f"http://{overlay.TASK_IPS[1]}:8080/m.txt?q={MARKER}",
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            if got.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert got.stdout == MARKER * 4, got.stderr
        time.sleep(0.5)
    finally:
        server.kill()
        server.wait()
        lab.stop(dump)
    return pcap


@pytest.mark.root
@pytest.mark.parametrize(
    "kinds", [("c", "python"), ("python", "c"), ("python", "python")], ids=["c-py", "py-c", "py-py"]
)
def test_marker_never_on_the_wire_and_replays_dropped(
    netns_lab: Any, tmp_path: Path, kinds: tuple[str, str]
) -> None:
    needs_c(kinds)
    netns_lab.add_host("h0")
    netns_lab.add_host("h1")
    raw = os.urandom(36)
    files = (key_spec(tmp_path, 0, [(1, raw)], 1), key_spec(tmp_path, 1, [(1, raw)], 1))
    ov = overlay.Overlay(netns_lab, kinds, 4096, PORT, 1422, "e", keys_files=files)
    try:
        ov.build()
        pcap = exchange_marker(netns_lab, ov, tmp_path)
        packets = pcap_packets(pcap)
        assert len(packets) > 4
        assert MARKER.encode() not in pcap.read_bytes()
        h0, h1 = netns_lab.addr("h0"), netns_lab.addr("h1")
        src = bytes(int(o) for o in h0.split("."))
        from_h0 = [p for p in packets if p[12:16] == src and len(p) > 28 + 50]
        assert from_h0 and all(p[28 + 3] in (1, 2) for p in from_h0)  # the cipher byte
        before = fresh_stats(ov, 1)["drops"]
        # the same datagram again, with a raw socket (UDP checksum 0: none)
        replay = bytearray(from_h0[-1])
        replay[26:28] = b"\x00\x00"
        netns_lab.run("h0", [sys.executable, "-c", RAW_SEND, replay.hex(), h1])
        forged = bytearray(replay)
        forged[-20] ^= 0x40  # a bit of the sealed frame
        fresh = int.from_bytes(forged[28 + 12 : 28 + 20], "big") + 1000
        forged[28 + 12 : 28 + 20] = fresh.to_bytes(8, "big")  # the window lets it through
        netns_lab.run("h0", [sys.executable, "-c", RAW_SEND, forged.hex(), h1])
        unknown = bytearray(replay)
        unknown[28 + 11] ^= 0x09  # another key id
        netns_lab.run("h0", [sys.executable, "-c", RAW_SEND, unknown.hex(), h1])
        plain = bytearray(replay)
        plain[28 + 3] = 0  # claims to be a plain frame on an encrypted network
        netns_lab.run("h0", [sys.executable, "-c", RAW_SEND, plain.hex(), h1])
        short = bytearray(replay[: 28 + 40])  # a VXLAN header, but too short to be sealed
        short[24:26] = (8 + 40).to_bytes(2, "big")  # the UDP length
        netns_lab.run("h0", [sys.executable, "-c", RAW_SEND, short.hex(), h1])
        future = bytearray(replay)
        future[28 + 12 : 28 + 20] = (1 << 63).to_bytes(8, "big")  # far past the clock
        netns_lab.run("h0", [sys.executable, "-c", RAW_SEND, future.hex(), h1])
        stranger = bytearray(replay)
        stranger[12:16] = bytes([198, 18, 0, 99])  # a source no FDB names
        netns_lab.run("h0", [sys.executable, "-c", RAW_SEND, stranger.hex(), h1])
        other_vni = bytearray(replay)
        other_vni[28 + 4 : 28 + 7] = (4095).to_bytes(3, "big")
        netns_lab.run("h0", [sys.executable, "-c", RAW_SEND, other_vni.hex(), h1])
        time.sleep(0.3)
        after = fresh_stats(ov, 1)["drops"]
        for reason in ("replay", "bad_tag", "unknown_key", "not_sealed", "short", "too_new",
                       "unknown_peer", "unknown_vni"):  # fmt: skip
            assert after[reason] == before[reason] + 1, (reason, before, after)
        assert after["tap_write_error"] == 0
    finally:
        ov.close()


@pytest.mark.root
def test_plain_overlay_shows_the_marker(netns_lab: Any, tmp_path: Path) -> None:
    """The control: the same exchange on a plain userspace overlay is readable on the wire."""
    needs_c()
    netns_lab.add_host("h0")
    netns_lab.add_host("h1")
    ov = overlay.Overlay(netns_lab, ("c", "c"), 4096, PORT, 1450, "p")
    try:
        ov.build()
        pcap = exchange_marker(netns_lab, ov, tmp_path)
        assert MARKER.encode() in pcap.read_bytes()
    finally:
        ov.close()


@pytest.mark.root
def test_rotation_during_iperf_and_removed_node(netns_lab: Any, tmp_path: Path) -> None:
    """Keys rotate twice while iperf3 runs (each side takes the new key at its own moment, the
    old one still accepted): the connection carries on. Then a rotation that skips side 1 (as
    a node removed from the cluster gets no new key): side 0 seals with the new key and side 1
    opens nothing of it (unknown_key), so no ping gets through."""
    needs_c()
    netns_lab.add_host("h0")
    netns_lab.add_host("h1")
    k1, k2, k3, k4 = (os.urandom(36) for _ in range(4))
    files = (key_spec(tmp_path, 0, [(1, k1)], 1), key_spec(tmp_path, 1, [(1, k1)], 1))
    ov = overlay.Overlay(netns_lab, ("c", "c"), 4096, PORT, 1422, "r", keys_files=files)
    try:
        ov.build()
        ping(ov, 0)
        server = subprocess.Popen(
            ["ip", "netns", "exec", ov.task(1), "iperf3", "-s", "-1", "-p", "5201"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(0.3)
        client = subprocess.Popen(
            ["ip", "netns", "exec", ov.task(0), "iperf3", "-c", overlay.TASK_IPS[1], "-p",
             "5201", "-t", "5", "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            for at, (new_id, new) in ((1.5, (2, k2)), (3.0, (3, k3))):
                time.sleep(at - (1.5 if new_id == 3 else 0))
                old = [(1, k1)] if new_id == 2 else [(2, k2)]
                # side 1 learns the key first and still sends with the old one a while
                overlay.write_keys(files[1], [*old, (new_id, new)], old[0][0], None)
                time.sleep(0.3)
                overlay.write_keys(files[0], [*old, (new_id, new)], new_id, None)
                time.sleep(0.3)
                overlay.write_keys(files[1], [*old, (new_id, new)], new_id, None)
            out, err = client.communicate(timeout=40)
        finally:
            if client.poll() is None:
                client.kill()
                client.wait()
            server.kill()
            server.wait()
        assert client.returncode == 0, err
        result = json.loads(out)
        assert result["end"]["sum_received"]["bytes"] > 0
        for side in (0, 1):
            drops = fresh_stats(ov, side)["drops"]
            assert drops["bad_tag"] == drops["unknown_key"] == drops["no_key"] == 0, drops
            assert drops["too_big"] == drops["replay"] == 0, drops  # MTU = underlay - 78
        # side 1 is "removed": side 0 rotates to key 4 and side 1 never gets it
        overlay.write_keys(files[0], [(4, k4)], 4, None)
        time.sleep(0.5)
        before = fresh_stats(ov, 1)
        icmp_ping(ov.task(0), overlay.TASK_IPS[1], count=3, wait=0.5, check=False)
        after = fresh_stats(ov, 1)
        h0 = netns_lab.addr("h0")
        assert after["drops"]["unknown_key"] >= before["drops"]["unknown_key"] + 3, after
        assert after["peers"][h0]["rx_frames"] == before["peers"][h0]["rx_frames"]
    finally:
        ov.close()

"""Burst priority of the C plane's threads (vx_plane_set_burst_priority): a bulk stream from a
known peer runs the RX thread SCHED_FIFO; request/response traffic, a flood of datagrams from
an unknown address and a plane with the setting off never do; a thread drops back to
SCHED_OTHER on its first wake-up after 20 ms without bulk. Plus the setting's parsing
(argument and MESHKIT_VXLAN_BURST_PRIO). The TAP is made (up, IPv6 off) in this namespace and
goes with its fd."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest

from meshkit.net.vxlan import plane as plane_mod
from meshkit.net.vxlan import wire
from meshkit.net.vxlan.plane import DataplaneError, UserspaceDataplane, load_vxlan_ffi, open_tap

needs_c = pytest.mark.skipif(load_vxlan_ffi() is None, reason="no C plane")
FRAME = bytes.fromhex("024dcb007101024dcb007102") + b"\x08\x00" + b"x" * 50
VNI = 4242
DATAGRAM = wire.encode_header(VNI) + FRAME
PEER = "127.0.0.2"  # in the FDB
STRANGER = "127.0.0.3"  # in no FDB: its datagrams are dropped as unknown_peer


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def plane_threads() -> dict[int, str]:
    """tid -> name of this process's threads whose names say they are a VXLAN plane's."""
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                name = f.read().strip()
        except FileNotFoundError:  # a thread that just ended
            continue
        if name.startswith("mk-vxlan"):
            out[int(tid)] = name
    return out


def wait_for(check: object, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def fifo_allowed() -> bool:
    """Whether a thread of this process may take SCHED_FIFO (root without CAP_SYS_NICE or
    with no real-time budget in its cgroup may not); probed on a throwaway thread."""
    ok: list[bool] = []

    def probe() -> None:
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
            ok.append(True)
        except OSError:
            ok.append(False)

    t = threading.Thread(target=probe)
    t.start()
    t.join()
    return ok[0]


Rig = tuple[UserspaceDataplane, dict[str, socket.socket], int]


@pytest.fixture
def rig(request: pytest.FixtureRequest) -> Iterator[Rig]:
    """A stopped C plane on 127.0.0.1 (burst priority = the test's param) serving VNI 4242
    through an up TAP, with PEER in its FDB; senders bound to PEER and STRANGER."""
    if not fifo_allowed():
        pytest.skip("this process may not use SCHED_FIFO")
    port = free_port()
    name = f"mkb{os.getpid() % 100000}"
    plane = UserspaceDataplane("127.0.0.1", port, "c", burst_priority=request.param)
    tap = open_tap(name)
    senders = {}
    try:
        v6 = f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6"
        if os.path.exists(v6):  # no router solicitations out of it
            with open(v6, "w") as f:
                f.write("1")
        subprocess.run(["ip", "link", "set", name, "up"], check=True, capture_output=True)
        plane.add_network(VNI, tap)
        plane.set_peers(VNI, {"02:4d:cb:00:71:01": PEER}, {})
        for ip in (PEER, STRANGER):
            senders[ip] = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            senders[ip].bind((ip, 0))
        yield plane, senders, port
    finally:
        plane.close()  # its threads are gone before the TAP's fd closes
        os.close(tap)
        for s in senders.values():
            s.close()


def start_and_find_rx(plane: UserspaceDataplane) -> int:
    before = set(plane_threads())
    plane.start()
    fresh = {t: n for t, n in plane_threads().items() if t not in before}
    rx = [t for t, n in fresh.items() if n == "mk-vxlan-rx"]
    assert len(rx) == 1, fresh
    return rx[0]


def delivered(plane: UserspaceDataplane) -> int:
    """Frames from PEER written to the TAP."""
    return int(plane.stats()["peers"].get(PEER, {}).get("rx_frames", 0))


def junk(plane: UserspaceDataplane) -> int:
    return int(plane.stats()["drops"]["unknown_peer"])


@needs_c
@pytest.mark.root
@pytest.mark.parametrize("rig", [3], indirect=True)
def test_bulk_raises_and_idle_lowers(rig: Rig) -> None:
    plane, senders, port = rig
    for _ in range(400):  # queued while the plane is stopped: its first wake-up is a bulk one
        senders[PEER].sendto(DATAGRAM, ("127.0.0.1", port))
    rx = start_and_find_rx(plane)
    wait_for(lambda: delivered(plane) == 400, "the 400 queued frames")
    # it sleeps as it ended the burst: SCHED_FIFO, the priority asked for
    assert os.sched_getscheduler(rx) == os.SCHED_FIFO
    assert os.sched_getparam(rx).sched_priority == 3
    offload = plane.stats()["offload"]
    assert offload["burst_priority"] == 3 and offload["burst_raises"] >= 1, offload
    time.sleep(0.05)  # more than the 20 ms without bulk
    senders[PEER].sendto(DATAGRAM, ("127.0.0.1", port))  # one small wake-up
    wait_for(lambda: delivered(plane) == 401, "the lone frame")
    wait_for(lambda: os.sched_getscheduler(rx) == os.SCHED_OTHER, "SCHED_OTHER again")


@needs_c
@pytest.mark.root
@pytest.mark.parametrize("rig", [3], indirect=True)
def test_request_response_stays_normal(rig: Rig) -> None:
    plane, senders, port = rig
    rx = start_and_find_rx(plane)
    for i in range(1, 51):  # one datagram per wake-up, as a ping-pong makes them
        senders[PEER].sendto(DATAGRAM, ("127.0.0.1", port))
        wait_for(lambda i=i: delivered(plane) == i, f"frame {i}")  # type: ignore[misc]
        assert os.sched_getscheduler(rx) == os.SCHED_OTHER
    assert plane.stats()["offload"]["burst_raises"] == 0


@needs_c
@pytest.mark.root
@pytest.mark.parametrize("rig", [3], indirect=True)
def test_junk_flood_stays_normal(rig: Rig) -> None:
    plane, senders, port = rig
    for _ in range(400):  # from an address in no FDB: dropped, never a reason to rise
        senders[STRANGER].sendto(DATAGRAM, ("127.0.0.1", port))
    rx = start_and_find_rx(plane)
    wait_for(lambda: junk(plane) == 400, "the 400 junk datagrams counted")
    assert os.sched_getscheduler(rx) == os.SCHED_OTHER
    assert plane.stats()["offload"]["burst_raises"] == 0


@needs_c
@pytest.mark.root
@pytest.mark.parametrize("rig", [0], indirect=True)
def test_off_never_raises(rig: Rig) -> None:
    plane, senders, port = rig
    for _ in range(400):
        senders[PEER].sendto(DATAGRAM, ("127.0.0.1", port))
    rx = start_and_find_rx(plane)
    wait_for(lambda: delivered(plane) == 400, "the 400 queued frames")
    assert os.sched_getscheduler(rx) == os.SCHED_OTHER
    offload = plane.stats()["offload"]
    assert offload["burst_priority"] == 0 and offload["burst_raises"] == 0, offload


def test_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(plane_mod.BURST_PRIORITY_ENV, raising=False)
    assert plane_mod.burst_priority_setting(None) == plane_mod.BURST_PRIORITY
    assert plane_mod.burst_priority_setting(0) == 0
    assert plane_mod.burst_priority_setting(99) == 99
    monkeypatch.setenv(plane_mod.BURST_PRIORITY_ENV, " 7 ")
    assert plane_mod.burst_priority_setting(None) == 7
    assert plane_mod.burst_priority_setting(2) == 2  # the argument wins
    monkeypatch.setenv(plane_mod.BURST_PRIORITY_ENV, "high")
    with pytest.raises(DataplaneError, match="MESHKIT_VXLAN_BURST_PRIO='high'"):
        plane_mod.burst_priority_setting(None)
    monkeypatch.setenv(plane_mod.BURST_PRIORITY_ENV, "100")
    with pytest.raises(DataplaneError, match="MESHKIT_VXLAN_BURST_PRIO=100: must be 0"):
        plane_mod.burst_priority_setting(None)
    with pytest.raises(DataplaneError, match="burst_priority=-1"):
        plane_mod.burst_priority_setting(-1)
    with pytest.raises(DataplaneError, match="burst_priority=-1"):
        UserspaceDataplane("127.0.0.1", free_port(), "python", burst_priority=-1)
    with UserspaceDataplane("127.0.0.1", free_port(), "python", burst_priority=5) as twin:
        assert twin.stats()["offload"]["burst_priority"] == 0  # the twin never raises

"""Burst priority of the C plane's threads (vx_plane_set_burst_priority): a bulk stream runs
the RX thread SCHED_FIFO, request/response traffic and a plane with the setting off never do,
and a thread drops back to SCHED_OTHER on its first wake-up after 20 ms without bulk; plus
the setting's parsing (argument and MESHKIT_VXLAN_BURST_PRIO)."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from meshkit.net.vxlan import plane as plane_mod
from meshkit.net.vxlan import wire
from meshkit.net.vxlan.plane import DataplaneError, UserspaceDataplane, load_vxlan_ffi

needs_c = pytest.mark.skipif(load_vxlan_ffi() is None, reason="no C plane")
FRAME = bytes.fromhex("024dcb007101024dcb007102") + b"\x08\x00" + b"x" * 50
DATAGRAM = wire.encode_header(4242) + FRAME  # a VNI the plane does not serve: counted


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


@pytest.fixture
def rig(request: pytest.FixtureRequest) -> Iterator[tuple[UserspaceDataplane, socket.socket, int]]:
    """A stopped C plane on 127.0.0.1 (burst priority = the test's param) and a sender."""
    if not fifo_allowed():
        pytest.skip("this process may not use SCHED_FIFO")
    port = free_port()
    plane = UserspaceDataplane("127.0.0.1", port, "c", burst_priority=request.param)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.bind(("127.0.0.2", 0))
    try:
        yield plane, sender, port
    finally:
        plane.close()
        sender.close()


def start_and_find_rx(plane: UserspaceDataplane) -> int:
    before = set(plane_threads())
    plane.start()
    fresh = {t: n for t, n in plane_threads().items() if t not in before}
    rx = [t for t, n in fresh.items() if n == "mk-vxlan-rx"]
    assert len(rx) == 1, fresh
    return rx[0]


def received(plane: UserspaceDataplane) -> int:
    return int(plane.stats()["drops"]["unknown_vni"])


@needs_c
@pytest.mark.root
@pytest.mark.parametrize("rig", [3], indirect=True)
def test_bulk_raises_and_idle_lowers(rig: tuple[UserspaceDataplane, socket.socket, int]) -> None:
    plane, sender, port = rig
    for _ in range(400):  # queued while the plane is stopped: its first wake-up is a bulk one
        sender.sendto(DATAGRAM, ("127.0.0.1", port))
    rx = start_and_find_rx(plane)
    wait_for(lambda: received(plane) == 400, "the 400 queued datagrams")
    # it sleeps as it ended the burst: SCHED_FIFO, the priority asked for
    assert os.sched_getscheduler(rx) == os.SCHED_FIFO
    assert os.sched_getparam(rx).sched_priority == 3
    time.sleep(0.05)  # more than the 20 ms without bulk
    sender.sendto(DATAGRAM, ("127.0.0.1", port))  # one small wake-up
    wait_for(lambda: received(plane) == 401, "the lone datagram")
    wait_for(lambda: os.sched_getscheduler(rx) == os.SCHED_OTHER, "SCHED_OTHER again")


@needs_c
@pytest.mark.root
@pytest.mark.parametrize("rig", [3], indirect=True)
def test_request_response_stays_normal(rig: tuple[UserspaceDataplane, socket.socket, int]) -> None:
    plane, sender, port = rig
    rx = start_and_find_rx(plane)
    for i in range(1, 51):  # one datagram per wake-up, as a ping-pong makes them
        sender.sendto(DATAGRAM, ("127.0.0.1", port))
        wait_for(lambda i=i: received(plane) == i, f"datagram {i}")  # type: ignore[misc]
        assert os.sched_getscheduler(rx) == os.SCHED_OTHER


@needs_c
@pytest.mark.root
@pytest.mark.parametrize("rig", [0], indirect=True)
def test_off_never_raises(rig: tuple[UserspaceDataplane, socket.socket, int]) -> None:
    plane, sender, port = rig
    for _ in range(400):
        sender.sendto(DATAGRAM, ("127.0.0.1", port))
    rx = start_and_find_rx(plane)
    wait_for(lambda: received(plane) == 400, "the 400 queued datagrams")
    assert os.sched_getscheduler(rx) == os.SCHED_OTHER


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

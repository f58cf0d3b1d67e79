"""The data plane under churn: networks added, re-peered and removed while the threads run and
datagrams arrive; stop/start; close leaks no fd. Both implementations."""

from __future__ import annotations

import contextlib
import os
import socket
import threading

import pytest

from meshkit.net.vxlan import wire
from meshkit.net.vxlan.plane import DataplaneError, UserspaceDataplane, load_vxlan_ffi, open_tap

IMPLS = [
    pytest.param("c", marks=pytest.mark.skipif(load_vxlan_ffi() is None, reason="no C plane")),
    "python",
]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.root
@pytest.mark.parametrize("impl", IMPLS)
def test_churn_while_running(impl: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("TAP devices need root")
    fds_before = open_fds()
    port = free_port()
    tap_name = f"mkt{os.getpid() % 100000}{impl[0]}"
    tap = open_tap(tap_name)  # down, in this namespace: writes to it fail and are counted
    stop = threading.Event()
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.bind(("127.0.0.2", 0))
    frame = bytes.fromhex("024dcb007101") + bytes.fromhex("024dcb007102") + b"\x08\x00" + b"x" * 50

    def flood() -> None:
        good = wire.encode_header(4096) + frame
        bad_flags = b"\x00" * 30
        short = b"\x08" * 10
        while not stop.is_set():
            for datagram in (good, good, bad_flags, short):
                with contextlib.suppress(OSError):  # a full buffer: just go on
                    sender.sendto(datagram, ("127.0.0.1", port))

    plane = UserspaceDataplane("127.0.0.1", port, impl)
    thread = threading.Thread(target=flood)
    try:
        assert plane.implementation == impl
        plane.start()
        thread.start()
        for i in range(40):
            plane.add_network(4096, tap)
            plane.set_peers(4096, {"02:4d:cb:00:71:01": "127.0.0.2"}, {})
            plane.set_peers(4096, {"02:4d:cb:00:71:01": "127.0.0.2",
                                   "02:4d:cb:00:71:09": "127.0.0.3"},
                            {"203.0.113.9": "02:4d:cb:00:71:09"})  # fmt: skip
            plane.remove_network(4096)
            if i % 10 == 5:
                plane.stop()
                plane.start()
        with pytest.raises(DataplaneError, match="no network with VNI 4096"):
            plane.remove_network(4096)
        with pytest.raises(DataplaneError, match="no network with VNI 4096"):
            plane.set_peers(4096, {}, {})
        plane.add_network(4096, tap)
        with pytest.raises(DataplaneError, match="already"):
            plane.add_network(4096, tap)
        with pytest.raises(DataplaneError, match="peers of VNI 4096: invalid IPv4"):
            plane.set_peers(4096, {"02:4d:cb:00:71:01": "198.51.100.300"}, {})
        stop.set()
        thread.join()
        stats = plane.stats()
        drops = stats["drops"]
        assert drops["short"] > 0 and drops["bad_flags"] > 0, stats
        assert drops["unknown_vni"] + drops["tap_write_error"] + drops["unknown_peer"] > 0, stats
        assert set(stats["peers"]) == {"127.0.0.2", "127.0.0.3"}
    finally:
        stop.set()
        if thread.is_alive():
            thread.join()
        plane.close()
        plane.close()  # idempotent
        sender.close()
        os.close(tap)
    assert open_fds() == fds_before


def test_bad_arguments() -> None:
    with pytest.raises(DataplaneError, match="invalid data-path port 0"):
        UserspaceDataplane("127.0.0.1", 0)
    with pytest.raises(DataplaneError, match="invalid bind address: invalid IPv4 addr"):
        UserspaceDataplane("nowhere", 4789)
    with pytest.raises(DataplaneError, match=r"cannot bind the VXLAN socket to 192\.0\.2\.1:4789"):
        UserspaceDataplane("192.0.2.1", 4789)
    with (
        UserspaceDataplane("127.0.0.1", free_port(), "python") as plane,
        pytest.raises(DataplaneError, match="network 16777216: invalid VNI 16777216"),
    ):
        plane.add_network(1 << 24, 0)
    with pytest.raises(DataplaneError, match="invalid TAP name"):
        open_tap("a-name-longer-than-15")


def tap_flags(fd: int) -> int:
    import fcntl
    import struct

    return int(struct.unpack_from("16xH", fcntl.ioctl(fd, 0x800454D2, bytes(40)))[0])


@pytest.mark.root
@pytest.mark.parametrize("impl", IMPLS)
def test_open_tap_matches_the_plane(impl: str) -> None:
    """``UserspaceDataplane.open_tap`` opens the TAP with IFF_VNET_HDR for the C plane and
    plain for the twin; each plane serves its own kind; the twin refuses a vnet TAP by name."""
    if os.geteuid() != 0:
        pytest.skip("TAP devices need root")
    fds_before = open_fds()
    name = f"mko{os.getpid() % 100000}{impl[0]}"
    with UserspaceDataplane("127.0.0.1", free_port(), impl) as plane:
        tap = plane.open_tap(name)
        try:
            vnet = bool(tap_flags(tap) & 0x4000)
            assert vnet == (impl == "c")
            plane.add_network(4096, tap)
            plane.start()
            plane.set_peers(4096, {"02:4d:cb:00:71:01": "127.0.0.2"}, {})
            plane.remove_network(4096)
            assert plane.stats()["offload"]["udp_gro"] == (1 if impl == "c" else 0)
        finally:
            plane.close()
            os.close(tap)
        with pytest.raises(DataplaneError, match="invalid TAP name"):
            plane.open_tap("")
    if impl == "python":
        vnet_tap = _open_vnet_tap(name)
        try:
            with (
                UserspaceDataplane("127.0.0.1", free_port(), "python") as plane,
                pytest.raises(DataplaneError, match=f"TAP fd {vnet_tap} for VNI 7 .*IFF_VNET_HDR"),
            ):
                plane.add_network(7, vnet_tap)
        finally:
            os.close(vnet_tap)
    assert open_fds() == fds_before


def _open_vnet_tap(name: str) -> int:
    from meshkit.net.vxlan import plane as dataplane

    return dataplane._open_tap(name, dataplane.IFF_TAP | dataplane.IFF_NO_PI | 0x4000)

"""Kernel capability checks (meshkit.net.kernelcheck): the real checks on this machine, and
the data plane choice and the words for what is missing on made-up check lists."""

from __future__ import annotations

import pytest

from meshkit.net import kernelcheck as kc
from meshkit.net.kernelcheck import Check, DataplaneUnavailable
from support import netns

ALL_OK = [Check(name, True, "made") for name in kc.LABELS]


def with_failed(*failed: tuple[str, str]) -> list[Check]:
    bad = dict(failed)
    return [Check(c.name, False, bad[c.name]) if c.name in bad else c for c in ALL_OK]


def test_check_kernel_here_all_ok_and_leaves_nothing() -> None:
    reason = netns.available()
    if reason is not None:
        pytest.skip(reason)
    before = set(netns.namespaces())
    checks = kc.check_kernel()
    assert [c.name for c in checks] == list(kc.LABELS)
    assert [c for c in checks if not c.ok] == []  # this machine has all of it
    assert all(c.detail for c in checks)
    assert not {n for n in netns.namespaces() if n.startswith("mkchk")} - before
    assert kc.choose_dataplane(checks) == (
        "kernel",
        "auto: the kernel has VXLAN links in namespaces",
    )
    assert kc.missing_words(checks) == []


def test_auto_prefers_kernel_then_userspace() -> None:
    assert kc.choose_dataplane(ALL_OK)[0] == "kernel"
    no_vxlan = with_failed((kc.VXLAN, "Operation not supported"))
    plane, why = kc.choose_dataplane(no_vxlan)
    assert plane == "userspace"
    assert "VXLAN links inside a namespace: Operation not supported" in why
    no_move = with_failed((kc.VXLAN_MOVE, "Invalid argument"))
    assert kc.choose_dataplane(no_move)[0] == "userspace"


def test_auto_with_nothing_usable_says_both_reasons() -> None:
    checks = with_failed(
        (kc.VXLAN, "Operation not supported"), (kc.TAP, "No such file or directory")
    )
    with pytest.raises(DataplaneUnavailable) as err:
        kc.choose_dataplane(checks)
    assert "VXLAN links inside a namespace: Operation not supported" in str(err.value)
    assert "TAP devices (/dev/net/tun): No such file or directory" in str(err.value)


def test_asked_planes() -> None:
    no_vxlan = with_failed((kc.VXLAN, "Operation not supported"))
    with pytest.raises(DataplaneUnavailable, match=r"kernel data plane was asked for .* VXLAN"):
        kc.choose_dataplane(no_vxlan, "kernel")
    assert kc.choose_dataplane(no_vxlan, "userspace")[0] == "userspace"
    no_tap = with_failed((kc.TAP, "No such device"))
    with pytest.raises(DataplaneUnavailable, match=r"userspace data plane was asked for .* TAP"):
        kc.choose_dataplane(no_tap, "userspace")
    assert kc.choose_dataplane(no_tap, "kernel")[0] == "kernel"
    assert kc.choose_dataplane(no_tap)[0] == "kernel"
    # a check list without a needed check counts it as missing
    partial = [c for c in ALL_OK if c.name != kc.VXLAN_MOVE]
    assert kc.choose_dataplane(partial)[0] == "userspace"
    with pytest.raises(ValueError, match="unknown data plane 'fast'"):
        kc.choose_dataplane(ALL_OK, "fast")


def test_missing_words() -> None:
    checks = with_failed(
        (kc.VXLAN, "Operation not supported (Unknown device type)"),
        (kc.UDP_GSO, "Protocol not available"),
    )
    assert kc.missing_words(checks) == [
        "VXLAN links inside a namespace: Operation not supported (Unknown device type) "
        "(vxlan module missing?) -> the userspace data plane will be used",
        "UDP segmentation offload (UDP_SEGMENT): Protocol not available "
        "(kernel older than 4.18 / 5.0?) -> the userspace data plane sends one datagram per "
        "packet (slower)",
    ]
    [words] = kc.missing_words(with_failed((kc.NETNS, "Operation not permitted")))
    assert words == (
        "network namespaces: Operation not permitted (not root, or no "
        "CAP_NET_ADMIN?) -> overlay networks and task networking cannot work"
    )
    [tap] = kc.missing_words(with_failed((kc.TAP, "No such file or directory")))
    assert tap.endswith("(tun module missing?) -> the userspace data plane is not available "
                        "(the kernel one is used)")  # fmt: skip

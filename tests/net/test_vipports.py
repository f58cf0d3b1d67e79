"""How a node picks its path for VIPs on every port (meshkit.mesh.vipports), without a kernel:
the setting, a bad setting, and a namespace that is gone deciding nothing."""

from __future__ import annotations

import asyncio

import pytest

from meshkit.mesh.vipports import VipPorts
from meshkit.net.vipnat import VipEntry, have_nft

WANTED = {
    "mkn-nosuchns-00000000": ("198.19.0.2", (VipEntry("198.19.0.10", "db", ("198.19.0.5",)),))
}


def test_ports_path_when_asked_and_nothing_is_built() -> None:
    vp = VipPorts({"MESHKIT_VIP_PATH": "ports"})
    assert vp.report()["path"] == "none yet (no VIP on this node)"
    asyncio.run(vp.sync(WANTED))
    assert vp.report() == {"path": "ports", "why": "MESHKIT_VIP_PATH=ports"}


def test_a_bad_setting_is_said_and_auto_used() -> None:
    vp = VipPorts({"MESHKIT_VIP_PATH": "fast"})
    assert vp.setting == "auto"
    assert "MESHKIT_VIP_PATH='fast': expected auto, nft, relay or ports" in vp.report()["why"]


def test_a_namespace_that_is_gone_decides_nothing() -> None:
    if not have_nft():
        pytest.skip("no nft: the node would take the ports path at once")
    vp = VipPorts({"MESHKIT_VIP_PATH": "nft"})
    asyncio.run(vp.sync(WANTED))
    report = vp.report()
    assert vp.path == "" and "mkn-nosuchns-00000000" in report["errors"], report
    # a namespace without VIPs that never had one needs no table at all
    asyncio.run(vp.sync({"mkn-other-00000000": ("198.19.0.2", ())}))
    assert "mkn-other-00000000" not in vp.report().get("errors", {})


def test_declared_ports_go_to_the_kernel_unless_asked_not_to() -> None:
    vp = VipPorts({})
    assert vp.declared == "auto"
    relay = VipPorts({"MESHKIT_VIP_DECLARED": "Relay"})
    assert relay.declared == "relay"
    bad = VipPorts({"MESHKIT_VIP_DECLARED": "kernel"})
    assert bad.declared == "auto"
    assert "MESHKIT_VIP_DECLARED='kernel': expected auto or relay" in bad.report()["why"]
    # what the node's table does decides: nothing applied yet, so the relay serves
    assert not vp.kernel_serves("mkn-nosuchns-00000000", "198.19.0.10")
    kernel = VipEntry("198.19.0.10", "db", ("198.19.0.5",), ((80, "tcp"),), kernel=True)
    vp.path = "nft"
    vp._applied["mkn-x"] = ("198.19.0.2", (kernel,))
    assert vp.kernel_serves("mkn-x", "198.19.0.10")
    assert not vp.kernel_serves("mkn-x", "198.19.0.11")
    vp.path = "relay"  # the redirect path leaves declared ports to their relays
    assert not vp.kernel_serves("mkn-x", "198.19.0.10")

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

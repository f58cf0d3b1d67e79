"""The nftables documents of a VIP on every port (pure), and that nft takes them in a namespace."""

from __future__ import annotations

import os
import subprocess
import uuid
from typing import Any

import pytest

from meshkit.net import vipnat
from meshkit.net.vipnat import VipEntry

WEB = VipEntry("198.19.0.10", "web", ("198.19.0.3", "198.19.0.4"), ((80, "tcp"), (53, "udp")))
DB = VipEntry("198.19.0.11", "db", ("198.19.0.5",))
IDLE = VipEntry("198.19.0.12", "idle", ())


def _rules(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [i["add"]["rule"] for i in doc["nftables"] if "rule" in i.get("add", {})]


def test_nat_ruleset_dnats_every_other_port_round_robin() -> None:
    doc = vipnat.nat_ruleset([WEB, DB, IDLE], "198.19.0.2")
    pre = [r for r in _rules(doc) if r["chain"] == "prerouting"]
    # the declared ports return first (their relay listens there), then the DNAT
    assert [r["expr"][-1] for r in pre[:2]] == [{"return": None}, {"return": None}]
    assert pre[0]["expr"][1]["match"]["right"] == 80
    dnat = pre[2]["expr"][-1]["dnat"]["addr"]["map"]
    assert dnat["key"] == {"numgen": {"mode": "inc", "mod": 2, "offset": 0}}
    assert pre[3]["expr"][-1] == {"dnat": {"addr": "198.19.0.5"}}
    assert len(pre) == 4  # a VIP without an up task has no rule: the kernel refuses the flow
    post = [r for r in _rules(doc) if r["chain"] == "postrouting"]
    assert post[0]["expr"][-1] == {"snat": {"addr": "198.19.0.2"}}
    no_src = [r for r in _rules(vipnat.nat_ruleset([WEB])) if r["chain"] == "postrouting"]
    assert no_src[0]["expr"][-1] == {"masquerade": None}
    live = [i for i in doc["nftables"] if "element" in i.get("add", {})]
    assert live[0]["add"]["element"]["elem"] == ["198.19.0.3", "198.19.0.4", "198.19.0.5"]
    assert vipnat.dnat_targets(doc) == {
        "198.19.0.10": ["198.19.0.3", "198.19.0.4"],
        "198.19.0.11": ["198.19.0.5"],
    }


def test_redirect_ruleset_and_the_setting() -> None:
    pre = _rules(vipnat.redirect_ruleset([WEB, IDLE], 40001))
    assert pre[-1]["expr"][-1] == {"redirect": {"port": 40001}}
    assert pre[-1]["expr"][1]["match"]["right"] == "tcp"
    assert len(pre) == 3
    rules = _rules(vipnat.redirect_ruleset([WEB, IDLE], 40001, 40002))
    tproxy = [r for r in rules if r["chain"] == "tproxy"]
    # UDP: the declared 53/udp returns, every other port is handed to the relay by tproxy
    assert [r["expr"][-1] for r in tproxy] == [{"return": None}, {"tproxy": {"port": 40002}}]
    assert tproxy[0]["expr"][1]["match"]["right"] == 53
    assert vipnat.wanted_path({}) == "auto"
    assert vipnat.wanted_path({"MESHKIT_VIP_PATH": "Relay"}) == "relay"
    with pytest.raises(ValueError, match="MESHKIT_VIP_PATH='fast': expected auto, nft"):
        vipnat.wanted_path({"MESHKIT_VIP_PATH": "fast"})


@pytest.mark.root
def test_nft_takes_both_documents_in_a_namespace() -> None:
    if os.geteuid() != 0 or not vipnat.have_nft():
        pytest.skip("needs root and nft")
    ns = f"mkvt-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "add", "br0", "type", "bridge"], check=True)
        vipnat.apply_in(ns, vipnat.nat_ruleset([WEB, DB, IDLE], "198.19.0.2"))
        assert vipnat.dnat_targets(vipnat.list_in(ns)) == {
            "198.19.0.10": ["198.19.0.3", "198.19.0.4"],
            "198.19.0.11": ["198.19.0.5"],
        }
        forward = subprocess.run(
            ["ip", "netns", "exec", ns, "sysctl", "-n", "net.ipv4.ip_forward"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        assert forward == "1"
        vipnat.apply_in(ns, vipnat.nat_ruleset([DB], "198.19.0.2"))  # rebuilt whole
        listing = vipnat.list_in(ns)
        assert vipnat.dnat_targets(listing) == {"198.19.0.11": ["198.19.0.5"]}
        live = [i["set"] for i in listing["nftables"] if "set" in i]
        assert live[0]["elem"] == ["198.19.0.5"], live  # the tasks that left are out of it
        vipnat.apply_in(ns, vipnat.redirect_ruleset([WEB], 40001, 40002), routed_only=True)
        vipnat.remove_in(ns)
        assert vipnat.list_in(ns) == {}
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def test_declared_ports_of_a_kernel_service_are_dnated_and_counted() -> None:
    web = VipEntry("198.19.0.10", "web", ("198.19.0.3", "198.19.0.4"),
                   ((80, "tcp"), (81, "tcp"), (53, "udp")), kernel=True)  # fmt: skip
    doc = vipnat.nat_ruleset([web], "198.19.0.2")
    counters = [i["add"]["counter"] for i in doc["nftables"] if "counter" in i.get("add", {})]
    assert counters == [{"family": "ip", "table": "meshkit_vip", "name": "declared_198_19_0_10"}]
    pre = [r for r in _rules(doc) if r["chain"] == "prerouting"]
    assert len(pre) == 3 and not any({"return": None} in r["expr"] for r in pre)
    tcp, udp, rest = pre
    assert tcp["expr"][2]["match"]["right"] == {"set": [80, 81]}
    assert udp["expr"][2]["match"]["right"] == 53
    assert tcp["expr"][3] == {"counter": "declared_198_19_0_10"} == udp["expr"][3]
    assert tcp["expr"][-1] == rest["expr"][-1]  # the same round robin over the same tasks
    assert vipnat.dnat_targets(doc) == {"198.19.0.10": ["198.19.0.3", "198.19.0.4"]}
    # a service that needs its relay keeps the `return` (the WEB entry above), without counter
    kept = vipnat.nat_ruleset([WEB], "198.19.0.2")
    assert not [i for i in kept["nftables"] if "counter" in i.get("add", {})]
    # the counters, as `nft -j list table` shows them
    counter = {"family": "ip", "name": "declared_198_19_0_10", "table": "meshkit_vip",
               "packets": 7, "bytes": 420}  # fmt: skip
    listing = {"nftables": [{"metainfo": {}}, {"counter": counter}]}
    assert vipnat.declared_flows(listing) == {"198.19.0.10": 7}
    # the relay path keeps every declared port on its relay
    redirect = _rules(vipnat.redirect_ruleset([web], 40001))
    assert [r["expr"][-1] for r in redirect][:2] == [{"return": None}, {"return": None}]

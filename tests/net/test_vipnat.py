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


def test_kernel_flows_are_marked_by_task_and_a_first_refusal_is_held() -> None:
    web = VipEntry("198.19.0.10", "web", ("198.19.0.3", "198.19.0.4"), ((80, "tcp"),),
                   kernel=True)  # fmt: skip
    one = VipEntry("198.19.0.13", "one", ("198.19.0.5",), ((81, "tcp"),), kernel=True)
    doc = vipnat.nat_ruleset([web, one, DB], "198.19.0.2")
    pre = [r for r in _rules(doc) if r["chain"] == "prerouting"]
    mark = {"ct": {"key": "mark"}}
    m3, m4 = vipnat.flow_mark("198.19.0.3"), vipnat.flow_mark("198.19.0.4")
    assert (m3, m4) == (0x46130003, 0x46130004)  # 198.19.0.3 less the top bit
    declared, rest = pre[0], pre[1]
    for rule in (declared, rest):
        setmark, dnat = rule["expr"][-2:]
        assert setmark["mangle"]["key"] == mark
        assert setmark["mangle"]["value"]["map"]["data"] == {"set": [[0, m3], [1, m4]]}
        assert dnat["dnat"]["addr"]["map"]["key"] == {"&": [mark, vipnat.MARK_MASK]}
        assert dnat["dnat"]["addr"]["map"]["data"] == {"set": [[m3, "198.19.0.3"],
                                                               [m4, "198.19.0.4"]]}  # fmt: skip
    single = [r for r in pre if r["expr"][0]["match"]["right"] == "198.19.0.13"]
    assert single[-1]["expr"][-2:] == [
        {"mangle": {"key": mark, "value": vipnat.flow_mark("198.19.0.5")}},
        {"dnat": {"addr": "198.19.0.5"}},
    ]
    # a service that keeps its relay has unmarked flows (DB: no declared port, not kernel)
    db = [r for r in pre if r["expr"][0]["match"]["right"] == "198.19.0.11"]
    assert db[-1]["expr"][-2:] == [{"match": {"op": "==", "left": {"meta": {"key": "l4proto"}},
                                   "right": {"set": ["tcp", "udp"]}}},
                                   {"dnat": {"addr": "198.19.0.5"}}]  # fmt: skip
    forward = [r for r in _rules(doc) if r["chain"] == "forward"]
    held = forward[0]["expr"]
    assert held[-1] == {"drop": None} and {"match": {"op": "in", "left": {"payload": {
        "protocol": "tcp", "field": "flags"}}, "right": "rst"}} in held  # fmt: skip
    assert len(forward) == 3
    assert len([r for r in _rules(vipnat.nat_ruleset([WEB, DB])) if r["chain"] == "forward"]) == 2
    assert vipnat.dnat_targets(doc)["198.19.0.10"] == ["198.19.0.3", "198.19.0.4"]
    # the tasks kernel services no longer DNAT to: their flows are forgotten
    after = VipEntry("198.19.0.10", "web", ("198.19.0.4",), ((80, "tcp"),), kernel=True)
    assert vipnat.gone_marks([web, one, DB], [after, one]) == [m3]
    assert vipnat.gone_marks([WEB], []) == []  # unmarked flows: nothing to forget

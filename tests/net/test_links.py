"""Netlink plumbing (meshkit.net.links) against the real kernel: namespaces, bridges, veth
pairs to task namespaces, kernel VXLAN between hosts of a NetnsLab with static FDB and
neighbour entries (no learning, no flooding), and the sync that fixes moby#52661."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import secrets
import struct
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from meshkit.net import links
from meshkit.net.links import LinkError, NsLinks
from support import netns
from support.nettools import ping

OVERLAY = ipaddress.ip_network("198.19.10.0/24")
GATEWAY = "198.19.10.1/24"
VNI = 4096


def mac_of(ip: str) -> str:
    """02:4d:<4 IP bytes>, as the overlay derives MACs from IPs."""
    return "02:4d:" + ":".join(f"{b:02x}" for b in ipaddress.ip_address(ip).packed)


def _root_or_skip() -> None:
    reason = netns.available()
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture
def names() -> Iterator[Callable[[str], str]]:
    """Unique namespace names for one test; every namespace made under them is deleted
    afterwards, also when the test fails."""
    _root_or_skip()
    tag = f"mkl{os.getpid() % 100000}{secrets.token_hex(2)}"
    used: list[str] = []

    def name(stem: str) -> str:
        full = f"{tag}-{stem}"
        used.append(full)
        return full

    yield name
    for full in reversed(used):
        links.delete_netns(full)


def ip_json(*args: str) -> list[dict[str, object]]:
    out = subprocess.run(["ip", "-j", *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout or "[]")  # type: ignore[no-any-return]


def bridge_fdb(ns: str, dev: str) -> list[dict[str, object]]:
    out = subprocess.run(["bridge", "-n", ns, "-j", "fdb", "show", "dev", dev],
                         capture_output=True, text=True, check=True)  # fmt: skip
    return json.loads(out.stdout or "[]")  # type: ignore[no-any-return]


# ---------------------------------------------------------------------- pure parts


def test_plan_entries_replaces_changed_and_deletes_extra() -> None:
    plan = links.plan_entries(
        {"02:4d:00:00:00:01": "198.18.0.10", "02:4d:00:00:00:02": "198.18.0.11"},
        {"02:4d:00:00:00:01": "198.18.0.12", "02:4d:00:00:00:03": "198.18.0.11"},
    )
    assert plan.upsert == {"02:4d:00:00:00:01": "198.18.0.12", "02:4d:00:00:00:03": "198.18.0.11"}
    assert plan.delete == ["02:4d:00:00:00:02"]
    same = links.plan_entries({"a": "1"}, {"a": "1"})
    assert same.upsert == {} and same.delete == []


def test_bad_names_are_refused_with_the_name() -> None:
    with pytest.raises(LinkError, match=re.escape("invalid network namespace name '../x'")):
        links.ensure_netns("../x")
    with pytest.raises(LinkError, match="invalid interface name 'a-very-long-interface'"):
        links.create_vxlan("x", "a-very-long-interface", vni=1, port=4789, local="198.18.0.1",
                           underlay_ifname="eth0", mtu=1450, bridge="br0")  # fmt: skip


# ---------------------------------------------------------------------- namespaces


def test_netns_made_twice_and_deleted_twice(names: Callable[[str], str]) -> None:
    ns = names("a")
    links.ensure_netns(ns)
    links.ensure_netns(ns)
    assert ns in netns.namespaces()
    with NsLinks(ns) as n:
        lo = n.links()["lo"]
        assert lo["up"] and set(n.links()) == {"lo"}
    links.delete_netns(ns)
    links.delete_netns(ns)
    assert ns not in netns.namespaces()
    with pytest.raises(LinkError, match=f"network namespace {ns} does not exist"):
        NsLinks(ns)


def test_stale_netns_file_is_replaced(names: Callable[[str], str]) -> None:
    ns = names("stale")
    os.makedirs(links.NETNS_DIR, exist_ok=True)
    open(os.path.join(links.NETNS_DIR, ns), "w").close()  # a crash left an unmounted file
    links.ensure_netns(ns)
    with NsLinks(ns) as n:
        assert n.links()["lo"]["up"]


# ---------------------------------------------------------------------- bridge and veth


def test_bridge_is_idempotent_and_holds_exactly_the_addresses(names: Callable[[str], str]) -> None:
    ns = names("net")
    links.ensure_netns(ns)
    with NsLinks(ns) as n:
        n.ensure_bridge("br0", mtu=1400, mac="02:4d:c6:13:0a:02",
                        addrs=["198.19.10.1/24", "198.19.10.2/24"])  # fmt: skip
        n.ensure_bridge("br0", mtu=1450, mac="02:4D:C6:13:0A:03", addrs=["198.19.10.1/24"])
        info = n.links()["br0"]
        assert (info["kind"], info["mtu"], info["mac"], info["up"]) == (
            "bridge", 1450, "02:4d:c6:13:0a:03", True)  # fmt: skip
        assert n.addresses("br0") == ["198.19.10.1/24"]
    detail = ip_json("-n", ns, "-d", "link", "show", "br0")[0]["linkinfo"]["info_data"]  # type: ignore[index]
    assert detail["stp_state"] == 0 and detail["forward_delay"] == 0  # type: ignore[index]
    with NsLinks(ns) as n:
        n.ipr.link("add", ifname="notabr", kind="veth", peer="notabr1")
        with pytest.raises(LinkError, match=f"create bridge notabr in {ns}: .* is a veth"):
            n.ensure_bridge("notabr", mtu=1450, mac="02:4d:00:00:00:01", addrs=[])


def test_veth_to_task_is_idempotent(names: Callable[[str], str]) -> None:
    net, task = names("net"), names("task")
    links.ensure_netns(net)
    links.ensure_netns(task)
    ip = "198.19.10.7"
    with NsLinks(net) as n:
        n.ensure_bridge("br0", mtu=1450, mac=mac_of("198.19.10.2"), addrs=[GATEWAY])
        for _ in range(2):
            n.ensure_veth_to_task(bridge="br0", local_ifname="vt-7", task_ns=task,
                                  task_ifname="eth0", mac=mac_of(ip), addr_cidr=f"{ip}/24",
                                  mtu=1450)  # fmt: skip
        local = n.links()["vt-7"]
        assert (local["master"], local["mtu"], local["up"]) == ("br0", 1450, True)
        assert [k for k, v in n.links().items() if v["kind"] == "veth"] == ["vt-7"]
    with NsLinks(task) as t:
        eth0 = t.links()["eth0"]
        assert (eth0["mac"], eth0["mtu"], eth0["up"]) == (mac_of(ip), 1450, True)
        assert t.addresses("eth0") == [f"{ip}/24"]
    routes = ip_json("-n", task, "route", "show")
    assert any(r["dst"] == "198.19.10.0/24" and r["dev"] == "eth0" for r in routes)
    assert ping(task, "198.19.10.1")  # the gateway on the bridge, through the veth


def test_veth_to_missing_namespace_names_the_device(names: Callable[[str], str]) -> None:
    net = names("net")
    links.ensure_netns(net)
    ghost = names("ghost")  # never made
    with NsLinks(net) as n:
        n.ensure_bridge("br0", mtu=1450, mac=mac_of("198.19.10.2"), addrs=[])
        with pytest.raises(LinkError) as err:
            n.ensure_veth_to_task(bridge="br0", local_ifname="vt-9", task_ns=ghost,
                                  task_ifname="eth0", mac=mac_of("198.19.10.9"),
                                  addr_cidr="198.19.10.9/24", mtu=1450)  # fmt: skip
        text = str(err.value)
        assert "vt-9" in text and "eth0" in text and ghost in text and "does not exist" in text
        assert "vt-9" not in n.links()
        with pytest.raises(LinkError, match=f"no link nobridge in {net}"):
            n.ensure_veth_to_task(bridge="nobridge", local_ifname="vt-9", task_ns=net,
                                  task_ifname="eth1", mac=mac_of("198.19.10.9"),
                                  addr_cidr="198.19.10.9/24", mtu=1450)  # fmt: skip
        with pytest.raises(LinkError, match="'02:4d' is not a MAC address"):
            n.fdb_replace("br0", "02:4d", "198.18.0.10")


# ---------------------------------------------------------------------- kernel VXLAN


@dataclass
class Node:
    host: netns.Host
    net: str  # the overlay network's namespace on this node
    endpoint: str  # this node's endpoint IP on the overlay
    tasks: dict[str, str]  # task namespace -> task IP


def build_node(lab: netns.NetnsLab, host: netns.Host, net: str, endpoint: str) -> Node:
    """The overlay network on one node: namespace, bridge, kernel VXLAN made in the host
    namespace and moved in, as the agent does it."""
    links.ensure_netns(net)
    ifname, mtu = links.in_netns(host.netns, lambda: links.underlay_for(host.address))
    assert ifname == "eth0"
    with NsLinks(net) as n:
        n.ensure_bridge(
            "br0", mtu=mtu - 50, mac=mac_of(endpoint), addrs=[GATEWAY, f"{endpoint}/24"]
        )

    def vxlan() -> None:
        links.create_vxlan(net, f"vx-{VNI}", vni=VNI, port=4789, local=host.address,
                           underlay_ifname=ifname, mtu=mtu - 50, bridge="br0")  # fmt: skip

    links.in_netns(host.netns, vxlan)
    links.in_netns(host.netns, vxlan)  # idempotent: the same link stays
    return Node(host, net, endpoint, {})


def add_task(node: Node, task: str, ip: str, local_ifname: str) -> None:
    links.ensure_netns(task)
    with NsLinks(node.net) as n:
        n.ensure_veth_to_task(bridge="br0", local_ifname=local_ifname, task_ns=task,
                              task_ifname="eth0", mac=mac_of(ip), addr_cidr=f"{ip}/24",
                              mtu=n.links()["br0"]["mtu"])  # fmt: skip
    node.tasks[task] = ip


def program(node: Node, peers: list[Node]) -> int:
    """Static entries on ``node`` for every endpoint and task of ``peers``, as the agent
    derives them from cluster state; the number of changes."""
    fdb: dict[str, str] = {}
    neigh: dict[str, str] = {}
    for peer in peers:
        for ip in [peer.endpoint, *peer.tasks.values()]:
            fdb[mac_of(ip)] = peer.host.address
            neigh[ip] = mac_of(ip)
    with NsLinks(node.net) as n:
        return links.sync_fdb_neigh(n, f"vx-{VNI}", fdb, neigh)


def test_kernel_vxlan_between_two_hosts(
    netns_lab: netns.NetnsLab, names: Callable[[str], str]
) -> None:
    h0, h1 = netns_lab.add_hosts(2)
    a = build_node(netns_lab, h0, names("na"), "198.19.10.2")
    b = build_node(netns_lab, h1, names("nb"), "198.19.10.3")
    ta, tb, tb2 = names("ta"), names("tb"), names("tb2")
    add_task(a, ta, "198.19.10.10", "ve-10")
    add_task(b, tb, "198.19.10.11", "ve-11")

    detail = ip_json("-n", a.net, "-d", "link", "show", f"vx-{VNI}")[0]
    info = detail["linkinfo"]["info_data"]  # type: ignore[index]
    assert info["id"] == VNI and info["port"] == 4789 and info["local"] == h0.address  # type: ignore[index]
    assert info["learning"] is False and info["proxy"] is True  # type: ignore[index]
    assert detail["master"] == "br0" and detail["mtu"] == 1450

    assert program(a, [b]) == 4 and program(b, [a]) == 4
    assert program(a, [b]) == 0  # already exact
    assert ping(ta, "198.19.10.11") and ping(tb, "198.19.10.10")
    assert ping(ta, "198.19.10.3")  # b's node endpoint on its bridge

    # no flooding: a task b has that a was not told about stays unreachable from a,
    # though it would answer an ARP request or a flooded frame
    add_task(b, tb2, "198.19.10.12", "ve-12")
    assert not ping(ta, "198.19.10.12", tries=3)

    # no learning: the vxlan tables hold exactly what was programmed
    with NsLinks(a.net) as n:
        assert n.fdb(f"vx-{VNI}") == {
            mac_of(ip): h1.address for ip in ("198.19.10.3", "198.19.10.11")
        }
        assert n.neigh(f"vx-{VNI}") == {ip: mac_of(ip) for ip in ("198.19.10.3", "198.19.10.11")}
    remotes = [e for e in bridge_fdb(a.net, f"vx-{VNI}") if "dst" in e]
    assert sorted(str(e["mac"]) for e in remotes) == sorted(
        mac_of(ip) for ip in ("198.19.10.3", "198.19.10.11"))  # fmt: skip
    assert all(e["mac"] != "00:00:00:00:00:00" for e in remotes)

    # b2 programmed: now it answers
    assert program(a, [b]) == 2
    assert ping(ta, "198.19.10.12")


def test_sync_moves_a_reused_address_to_its_new_node(
    netns_lab: netns.NetnsLab, names: Callable[[str], str]
) -> None:
    """moby#52661: a task address reused on another node must not keep pointing at the
    old node."""
    h0, h1, h2 = netns_lab.add_hosts(3)
    a = build_node(netns_lab, h0, names("na"), "198.19.10.2")
    b = build_node(netns_lab, h1, names("nb"), "198.19.10.3")
    c = build_node(netns_lab, h2, names("nc"), "198.19.10.4")
    ta, tb, tc = names("ta"), names("tb"), names("tc")
    add_task(a, ta, "198.19.10.10", "ve-10")
    add_task(b, tb, "198.19.10.20", "ve-20")
    for node, peers in ((a, [b, c]), (b, [a, c]), (c, [a, b])):
        program(node, peers)
    assert ping(ta, "198.19.10.20")

    # the task on b goes away; its address comes back for a task on c
    with NsLinks(b.net) as n:
        n.delete_link("ve-20")
        n.delete_link("ve-20")  # missing is fine
    links.delete_netns(tb)
    b.tasks.clear()
    add_task(c, tc, "198.19.10.20", "ve-20")
    for node, peers in ((a, [b, c]), (b, [a, c]), (c, [a, b])):
        program(node, peers)
    with NsLinks(a.net) as n:
        assert n.fdb(f"vx-{VNI}")[mac_of("198.19.10.20")] == h2.address
        # an extra entry is removed by the next sync
        n.fdb_replace(f"vx-{VNI}", "02:4d:00:00:00:99", h1.address)
        n.neigh_replace(f"vx-{VNI}", "198.19.10.99", "02:4d:00:00:00:99")
    assert program(a, [b, c]) == 2
    with NsLinks(a.net) as n:
        assert "02:4d:00:00:00:99" not in n.fdb(f"vx-{VNI}")
        assert "198.19.10.99" not in n.neigh(f"vx-{VNI}")
        n.fdb_delete(f"vx-{VNI}", "02:4d:00:00:00:99")  # missing is fine
        n.neigh_delete(f"vx-{VNI}", "198.19.10.99")
    assert ping(ta, "198.19.10.20")


def test_vxlan_leftover_with_another_vni_is_replaced(
    netns_lab: netns.NetnsLab, names: Callable[[str], str]
) -> None:
    host = netns_lab.add_host("h0")
    net = names("net")
    links.ensure_netns(net)
    with NsLinks(net) as n:
        n.ensure_bridge("br0", mtu=1450, mac=mac_of("198.19.10.2"), addrs=[])

    def make(vni: int, name: str = "vx-x") -> None:
        links.create_vxlan(net, name, vni=vni, port=4789, local=host.address,
                           underlay_ifname="eth0", mtu=1450, bridge="br0")  # fmt: skip

    links.in_netns(host.netns, lambda: make(5000))
    links.in_netns(host.netns, lambda: make(5001))
    with NsLinks(net) as n:
        first = n.index("vx-x")
    links.in_netns(host.netns, lambda: make(5001))  # the same link is kept, not remade
    with NsLinks(net) as n:
        assert n.index("vx-x") == first
    detail = ip_json("-n", net, "-d", "link", "show", "vx-x")[0]
    assert detail["linkinfo"]["info_data"]["id"] == 5001  # type: ignore[index]
    assert "vx-x" not in {str(x["ifname"]) for x in ip_json("-n", host.netns, "link", "show")}

    # the underlay missing, or an address nobody holds: the error names it
    with pytest.raises(LinkError, match="underlay interface: no link eth9"):
        links.in_netns(host.netns, lambda: links.create_vxlan(
            net, "vx-y", vni=5002, port=4789, local=host.address, underlay_ifname="eth9",
            mtu=1450, bridge="br0"))  # fmt: skip
    with pytest.raises(LinkError, match=re.escape("no interface holds address 198.18.1.99")):
        links.in_netns(host.netns, lambda: links.underlay_for("198.18.1.99"))


def test_move_link_takes_a_tap_onto_the_bridge(
    netns_lab: netns.NetnsLab, names: Callable[[str], str]
) -> None:
    import fcntl

    host = netns_lab.add_host("h0")
    net = names("net")
    links.ensure_netns(net)
    with NsLinks(net) as n:
        n.ensure_bridge("br0", mtu=1450, mac=mac_of("198.19.10.2"), addrs=[])

    def open_tap() -> int:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
        fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH22x", b"tap-4096", 0x0002 | 0x1000))
        return fd

    fd = links.in_netns(host.netns, open_tap)
    try:
        for _ in range(2):
            links.in_netns(host.netns, lambda: links.move_link("tap-4096", net, bridge="br0",
                                                               mtu=1450))  # fmt: skip
        with NsLinks(net) as n:
            tap = n.links()["tap-4096"]
            assert (tap["master"], tap["mtu"], tap["up"]) == ("br0", 1450, True)
        with pytest.raises(LinkError, match=r"move tap-9 into .*: no link tap-9 in"):
            links.in_netns(host.netns, lambda: links.move_link("tap-9", net, bridge="br0",
                                                               mtu=1450))  # fmt: skip
    finally:
        os.close(fd)

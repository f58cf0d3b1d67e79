"""Networks in the replicated state: create/rm, node endpoints, task addresses held while a task
lives and given back when it ends, and the network map every node builds from."""

from __future__ import annotations

import pytest

from meshkit.cli import servicespec
from meshkit.cluster.model import networks as netstate
from meshkit.cluster.model import services as sv
from meshkit.cluster.model import state as cs

M1, W1 = "m" * 25, "w" * 25
SID, NID = "s" * 25, "n" * 25


def _state() -> cs.ClusterState:
    st = cs.ClusterState()
    node = cs.NodeRecord(id=M1, hostname="m1", role="manager", addr="198.18.0.1").to_dict()
    cluster = {"cluster_id": "c" * 25, "default_addr_pool": ["198.19.0.0/16"]}
    cs.apply(st, {"op": "init", "cluster": cluster, "node": node, "now": 1.0})
    return st


def _net(st: cs.ClusterState, name: str = "front", nid: str = NID, **kw: object) -> dict:
    req = {"id": nid, "name": name, **kw}
    cs.apply(st, {"op": "network_create", "network": req, "now": 2.0})
    return st.networks[nid]


def test_create_allocates_subnet_vni_and_node_endpoints() -> None:
    st = _state()
    net = _net(st)
    assert net["subnet"] == "198.19.0.0/24" and net["gateway"] == "198.19.0.1"
    assert net["vni"] == 4096 and net["endpoints"] == {M1: "198.19.0.2"}
    joined = cs.NodeRecord(id=W1, hostname="w1", role="worker", addr="198.18.0.2")
    cs.apply(st, {"op": "add_node", "node": joined.to_dict()})
    assert net["endpoints"][W1] == "198.19.0.3"
    other = _net(st, "back", "o" * 25, subnet="198.18.200.0/29")
    assert other["vni"] == 4097 and other["subnet"] == "198.18.200.0/29"
    with pytest.raises(cs.CommandError, match="network with name front already exists"):
        _net(st, "front", "p" * 25)
    with pytest.raises(cs.CommandError, match=r"overlaps the subnet 198\.19\.0\.0/24"):
        _net(st, "x", "q" * 25, subnet="198.19.0.128/25")
    with pytest.raises(cs.CommandError, match="invalid data plane 'fast'"):
        _net(st, "y", "r" * 25, dataplane="fast")
    cs.apply(st, {"op": "set_status", "statuses": {W1: "down"}})
    cs.apply(st, {"op": "remove_node", "node_id": W1})
    assert W1 not in net["endpoints"] and "198.19.0.3" not in net["ipam"]["addrs"]
    assert cs.ClusterState.from_dict(st.to_dict()).to_dict() == st.to_dict()


def test_tasks_hold_addresses_until_they_end_and_rm_refuses_meanwhile() -> None:
    st = _state()
    _net(st)
    spec = servicespec.build_spec({"name": "web", "command": ["srv"], "network": ["front"]})
    cs.apply(st, {"op": "service_create", "service": sv.new_service(SID, spec, 2.0), "now": 2.0})
    task = sv.new_task("k" * 25, st.services[SID], 1, 3.0)
    cs.apply(st, {"op": "tasks_write", "create": [task], "node": {"k" * 25: M1}, "now": 3.0})
    # the service's VIP came first (.3), the task gets the next address
    assert st.services[SID]["vips"] == {NID: "198.19.0.3"}
    att = st.tasks["k" * 25]["networks"]
    assert att == [
        {"id": NID, "name": "front", "addr": "198.19.0.4/24", "mac": "02:4d:c6:13:00:04"}
    ]
    # replaying the write keeps the one address
    cs.apply(st, {"op": "tasks_write", "create": [task], "now": 3.0})
    assert list(netstate.ipam.owners(st.networks[NID]["ipam"], "task:")) == ["198.19.0.4"]
    nm = netstate.netmap(st)
    eps = nm["networks"][NID]["endpoints"]
    assert {e["ip"] for e in eps} == {"198.19.0.2", "198.19.0.4"}
    with pytest.raises(cs.CommandError, match="in use by service web"):
        cs.apply(st, {"op": "network_rm", "network_id": "front"})
    cs.apply(st, {"op": "service_rm", "service_id": SID, "now": 4.0})
    assert not netstate.ipam.owners(st.networks[NID]["ipam"], "vip:")
    with pytest.raises(cs.CommandError, match=r"in use by 1 task\(s\)"):
        cs.apply(st, {"op": "network_rm", "network_id": "front"})
    cs.apply(st, {"op": "task_status", "updates": [{"id": "k" * 25, "state": "shutdown"}]})
    assert not netstate.ipam.owners(st.networks[NID]["ipam"], "task:")
    assert {e["ip"] for e in netstate.netmap(st)["networks"][NID]["endpoints"]} == {"198.19.0.2"}
    cs.apply(st, {"op": "network_rm", "network_id": "front"})
    assert not st.networks


def test_a_full_network_rejects_the_task_with_the_reason() -> None:
    st = _state()
    _net(st, subnet="198.18.200.0/29")  # .1 gateway, .2 m1, .3 the VIP: three left
    spec = servicespec.build_spec({"name": "web", "command": ["srv"], "network": [NID]})
    cs.apply(st, {"op": "service_create", "service": sv.new_service(SID, spec, 2.0), "now": 2.0})
    tasks = [sv.new_task(f"{i}" * 25, st.services[SID], i, 3.0) for i in range(1, 5)]
    cs.apply(st, {"op": "tasks_write", "create": tasks, "now": 3.0})
    states = [st.tasks[t["id"]]["state"] for t in tasks]
    assert states == ["pending"] * 3 + ["rejected"]
    assert "no free address is left in 198.18.200.0/29" in st.tasks["4" * 25]["error"]
    # a second vip-mode service on the full network is refused whole, naming why
    other = servicespec.build_spec({"name": "api", "command": ["srv"], "network": [NID]})
    with pytest.raises(cs.CommandError, match="no address for the service's VIP"):
        cs.apply(st, {"op": "service_create", "service": sv.new_service("a" * 25, other, 4.0)})
    assert "a" * 25 not in st.services


def test_overlay_reports_are_kept_on_the_node() -> None:
    st = _state()
    report = {"dataplane": "kernel", "peers": {W1: {"control": True, "vxlan": False}}}
    assert cs.apply(st, {"op": "set_overlay", "node_id": M1, "overlay": report})["changed"]
    assert not cs.apply(st, {"op": "set_overlay", "node_id": M1, "overlay": report})["changed"]
    assert st.nodes[M1].overlay == report


def test_publishing_services_share_the_ingress_network_and_get_vips_on_each_network() -> None:
    st = _state()
    _net(st)
    with pytest.raises(cs.CommandError, match="routing mesh's network"):
        _net(st, "ingress", "i" * 25)
    spec = servicespec.build_spec(
        {"name": "web", "command": ["srv"], "network": ["front"], "publish": ["8091:80"]}
    )
    cs.apply(st, {"op": "service_create", "service": sv.new_service(SID, spec, 2.0), "now": 2.0})
    ingress = netstate.ingress_network(st)
    assert ingress is not None and ingress["name"] == "ingress" and ingress["ingress"]
    assert ingress["subnet"] == "198.19.1.0/24"
    assert st.services[SID]["vips"] == {NID: "198.19.0.3", ingress["id"]: "198.19.1.3"}
    task = sv.new_task("k" * 25, st.services[SID], 1, 3.0)
    cs.apply(st, {"op": "tasks_write", "create": [task], "node": {"k" * 25: M1}, "now": 3.0})
    assert [a["name"] for a in st.tasks["k" * 25]["networks"]] == ["front", "ingress"]
    # the network stays while a service publishes through it
    with pytest.raises(cs.CommandError, match="in use by service web"):
        cs.apply(st, {"op": "network_rm", "network_id": "ingress"})
    # a published port is one service's
    twin = servicespec.build_spec({"name": "twin", "command": ["srv"], "publish": ["8091:81"]})
    with pytest.raises(cs.CommandError, match="port 8091/tcp is already published by service web"):
        cs.apply(st, {"op": "service_create", "service": sv.new_service("t" * 25, twin, 4.0)})
    # a second publishing service reuses it; dnsrr holds no VIP
    rr = servicespec.build_spec(
        {"name": "rr", "command": ["srv"], "network": ["front"], "endpoint_mode": "dnsrr",
         "publish": ["mode=host,published=8092,target=80"]}
    )
    cs.apply(st, {"op": "service_create", "service": sv.new_service("r" * 25, rr, 4.0)})
    assert len(st.networks) == 2 and st.services["r" * 25]["vips"] == {}
    # an update that stops publishing gives the ingress VIP back and keeps the other
    plain = servicespec.build_spec({"name": "web", "command": ["srv"], "network": ["front"]})
    cs.apply(st, {"op": "service_update", "service_id": SID, "spec": plain, "now": 5.0})
    assert st.services[SID]["vips"] == {NID: "198.19.0.3"}
    assert not netstate.ipam.owners(ingress["ipam"], "vip:")
    cs.apply(st, {"op": "task_status", "updates": [{"id": "k" * 25, "state": "running"}]})
    svcmap = netstate.netmap(st)["services"]
    assert svcmap[SID]["vips"] == {NID: "198.19.0.3"}
    assert svcmap[SID]["tasks"] == [
        {"id": "k" * 25, "name": "web.1", "slot": 1, "node_id": M1, "up": True,
         "addrs": {NID: "198.19.0.4", ingress["id"]: "198.19.1.4"}}
    ]
    assert svcmap["r" * 25]["ports"] == [
        {"target": 80, "published": 8092, "protocol": "tcp", "mode": "host",
         "proxy_protocol": False}
    ]
    assert cs.ClusterState.from_dict(st.to_dict()).to_dict() == st.to_dict()
    # the ingress network goes once nothing publishes through it and its last task ended
    assert netstate.ingress_network(st) is not None
    cs.apply(st, {"op": "task_status", "updates": [{"id": "k" * 25, "state": "shutdown"}]})
    assert netstate.ingress_network(st) is None and list(st.networks) == [NID]


def test_each_node_gets_a_gateway_subnet_from_the_end_of_the_pool() -> None:
    st = _state()
    assert st.gateway_subnets == {M1: "198.19.255.0/24"}
    joined = cs.NodeRecord(id=W1, hostname="w1", role="worker", addr="198.18.0.2")
    cs.apply(st, {"op": "add_node", "node": joined.to_dict()})
    assert st.gateway_subnets[W1] == "198.19.254.0/24"
    # overlays are numbered from the start and never take a gateway subnet
    assert _net(st)["subnet"] == "198.19.0.0/24"
    clash = r"198\.19\.254\.0/24 of the gateway bridge of node w1"
    with pytest.raises(cs.CommandError, match=clash):
        _net(st, "x", "q" * 25, subnet="198.19.254.0/24")
    internal = _net(st, "back", "o" * 25, internal=True)
    assert internal["internal"] is True and not st.networks[NID]["internal"]
    m = netstate.netmap(st)
    assert m["gateways"] == {M1: "198.19.255.0/24", W1: "198.19.254.0/24"}
    assert m["networks"]["o" * 25]["internal"] and not m["networks"][NID]["internal"]
    assert netstate.network_view(st, internal)["Internal"] is True
    cs.apply(st, {"op": "set_status", "statuses": {W1: "down"}})
    cs.apply(st, {"op": "remove_node", "node_id": W1})
    assert st.gateway_subnets == {M1: "198.19.255.0/24"}
    assert cs.ClusterState.from_dict(st.to_dict()).to_dict() == st.to_dict()

"""Networks in the replicated state: create/rm, node endpoints, task addresses held while a task
lives and given back when it ends, and the network map every node builds from."""

from __future__ import annotations

import pytest

from meshkit.cluster import netstate
from meshkit.cluster import services as sv
from meshkit.cluster import state as cs

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
    spec = sv.build_spec({"name": "web", "command": ["srv"], "network": ["front"]})
    cs.apply(st, {"op": "service_create", "service": sv.new_service(SID, spec, 2.0), "now": 2.0})
    task = sv.new_task("k" * 25, st.services[SID], 1, 3.0)
    cs.apply(st, {"op": "tasks_write", "create": [task], "node": {"k" * 25: M1}, "now": 3.0})
    att = st.tasks["k" * 25]["networks"]
    assert att == [
        {"id": NID, "name": "front", "addr": "198.19.0.3/24", "mac": "02:4d:c6:13:00:03"}
    ]
    # replaying the write keeps the one address
    cs.apply(st, {"op": "tasks_write", "create": [task], "now": 3.0})
    assert list(netstate.ipam.owners(st.networks[NID]["ipam"], "task:")) == ["198.19.0.3"]
    nm = netstate.netmap(st)
    eps = nm["networks"][NID]["endpoints"]
    assert {e["ip"] for e in eps} == {"198.19.0.2", "198.19.0.3"}
    with pytest.raises(cs.CommandError, match="in use by service web"):
        cs.apply(st, {"op": "network_rm", "network_id": "front"})
    cs.apply(st, {"op": "service_rm", "service_id": SID, "now": 4.0})
    with pytest.raises(cs.CommandError, match=r"in use by 1 task\(s\)"):
        cs.apply(st, {"op": "network_rm", "network_id": "front"})
    cs.apply(st, {"op": "task_status", "updates": [{"id": "k" * 25, "state": "shutdown"}]})
    assert not netstate.ipam.owners(st.networks[NID]["ipam"], "task:")
    assert {e["ip"] for e in netstate.netmap(st)["networks"][NID]["endpoints"]} == {"198.19.0.2"}
    cs.apply(st, {"op": "network_rm", "network_id": "front"})
    assert not st.networks


def test_a_full_network_rejects_the_task_with_the_reason() -> None:
    st = _state()
    _net(st, subnet="198.18.200.0/29")  # .1 gateway, .2 m1: four left
    spec = sv.build_spec({"name": "web", "command": ["srv"], "network": [NID]})
    cs.apply(st, {"op": "service_create", "service": sv.new_service(SID, spec, 2.0), "now": 2.0})
    tasks = [sv.new_task(f"{i}" * 25, st.services[SID], i, 3.0) for i in range(1, 6)]
    cs.apply(st, {"op": "tasks_write", "create": tasks, "now": 3.0})
    states = [st.tasks[t["id"]]["state"] for t in tasks]
    assert states == ["pending"] * 4 + ["rejected"]
    assert "no free address is left in 198.18.200.0/29" in st.tasks["5" * 25]["error"]


def test_overlay_reports_are_kept_on_the_node() -> None:
    st = _state()
    report = {"dataplane": "kernel", "peers": {W1: {"control": True, "vxlan": False}}}
    assert cs.apply(st, {"op": "set_overlay", "node_id": M1, "overlay": report})["changed"]
    assert not cs.apply(st, {"op": "set_overlay", "node_id": M1, "overlay": report})["changed"]
    assert st.nodes[M1].overlay == report

"""One-off tasks of `meshkit run` in the replicated state: only attachable networks take them
(Docker's words otherwise), each holds an address and is an endpoint of the network map while
it runs, names are unique among running ones, `--rm` drops the record, ended ones stay (a
few) with their exit code, and a network in use by one cannot be removed."""

from __future__ import annotations

from typing import Any

import pytest

from meshkit.cluster.model import attachments
from meshkit.cluster.model import networks as netstate
from meshkit.cluster.model import state as cs
from meshkit.net.dnsnames import Directory

M1, W1 = "m" * 25, "w" * 25
NID = "n" * 25


def _state() -> cs.ClusterState:
    st = cs.ClusterState()
    node = cs.NodeRecord(id=M1, hostname="m1", role="manager", addr="198.18.0.1").to_dict()
    cluster = {"cluster_id": "c" * 25, "default_addr_pool": ["198.19.0.0/16"]}
    cs.apply(st, {"op": "init", "cluster": cluster, "node": node, "now": 1.0})
    joined = cs.NodeRecord(id=W1, hostname="w1", role="worker", addr="198.18.0.2")
    cs.apply(st, {"op": "add_node", "node": joined.to_dict()})
    return st


def _attach(st: cs.ClusterState, aid: str, net: str = "front", **kw: object) -> dict[str, Any]:
    cmd = {"op": "network_attach", "network": net, "id": aid, "node_id": W1, "now": 5.0, **kw}
    return cs.apply(st, cmd)


def test_attach_detach_and_the_network_map() -> None:
    st = _state()
    cs.apply(
        st,
        {
            "op": "network_create",
            "network": {"id": NID, "name": "front", "attachable": True},
            "now": 2.0,
        },
    )
    cs.apply(st, {"op": "network_create", "network": {"id": "o" * 25, "name": "closed"},
                  "now": 2.0})  # fmt: skip
    with pytest.raises(cs.CommandError) as err:
        _attach(st, "a" * 25, "closed")
    assert str(err.value) == (
        "Could not attach to network closed: rpc error: code = PermissionDenied desc = "
        "network closed not manually attachable"
    )
    got = _attach(st, "a" * 25, command=["curl", "http://web/"])
    assert got["network_id"] == NID and got["addr"] == "198.19.0.4/24"
    assert got["name"] == "run-" + "a" * 12
    assert _attach(st, "a" * 25) == got  # sent twice: the same answer
    with pytest.raises(cs.CommandError, match='name "run-aaaaaaaaaaaa" is already in use'):
        _attach(st, "b" * 25, name="run-" + "a" * 12)
    # an endpoint of the network while it runs: every node programs it, DNS knows its networks
    nm = netstate.netmap(st)
    eps = [e for e in nm["networks"][NID]["endpoints"] if e["task_id"] == "a" * 25]
    assert eps == [{"ip": "198.19.0.4", "mac": "02:4d:c6:13:00:04", "node_id": W1,
                    "task_id": "a" * 25, "run": True}]  # fmt: skip
    assert Directory.from_netmap(nm).networks_of("a" * 25) == frozenset({NID})
    with pytest.raises(cs.CommandError, match="in use by 1 one-off task"):
        cs.apply(st, {"op": "network_rm", "network_id": NID})
    view = netstate.network_view(st, st.networks[NID])
    assert view["Attachable"] is True and view["Attached"][0]["State"] == "running"

    # only its own node may end it
    with pytest.raises(cs.CommandError, match="runs on another node"):
        cs.apply(st, {"op": "network_detach", "id": "a" * 25, "node_id": M1, "now": 6.0})
    # ended without --rm: kept with its exit code, address free, no endpoint
    cs.apply(st, {"op": "network_detach", "id": "a" * 25, "exit_code": 3, "now": 6.0})
    att = st.networks[NID]["attached"]["a" * 25]
    assert att["state"] == "exited" and att["exit_code"] == 3
    assert "198.19.0.4" not in st.networks[NID]["ipam"]["addrs"]
    assert not [e for e in netstate.netmap(st)["networks"][NID]["endpoints"] if e["task_id"]]
    # the name is free again; --rm leaves no record
    _attach(st, "b" * 25, name="run-" + "a" * 12)
    cs.apply(st, {"op": "network_detach", "id": "b" * 25, "exit_code": 0, "rm": True})
    assert "b" * 25 not in st.networks[NID]["attached"]
    assert cs.ClusterState.from_dict(st.to_dict()).to_dict() == st.to_dict()
    # only the last KEEP_ENDED ended ones are kept
    for i in range(attachments.KEEP_ENDED + 3):
        aid = f"{i:025d}"
        _attach(st, aid)
        cs.apply(st, {"op": "network_detach", "id": aid, "exit_code": i, "now": 10.0 + i})
    assert len(st.networks[NID]["attached"]) == attachments.KEEP_ENDED
    # a node that leaves takes its running ones with it
    _attach(st, "c" * 25)
    cs.apply(st, {"op": "set_status", "statuses": {W1: "down"}})
    cs.apply(st, {"op": "remove_node", "node_id": W1})
    assert st.networks[NID]["attached"]["c" * 25]["state"] == "exited"
    cs.apply(st, {"op": "network_rm", "network_id": NID})

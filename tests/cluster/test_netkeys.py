"""Keys of encrypted overlay networks: the leader's rules (first key, rotation interval, a
member removed, the grace window), the netkeys_set command, delivery only to member nodes
still in the cluster, keys sealed in the state, and a removed node that cannot open what is
sent after its removal."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import pytest

from meshkit.base.errors import FlagError
from meshkit.cli.network import parse_opts
from meshkit.cluster.api import netkeys as api
from meshkit.cluster.model import netkeys as rules
from meshkit.cluster.model import networks as netstate
from meshkit.cluster.model import state as cs
from meshkit.cluster.raft.sealing import GCM_PREFIX, Sealer, new_data_key
from meshkit.net.vxlan import seal

M1, W1, W2 = "m" * 25, "w" * 25, "x" * 25
NID = "n" * 25
DAY = 86400.0


class Leader:
    """Just enough of a manager for the key rounds: a real state, commands applied to it as
    raft would, a real data key."""

    is_leader = True
    has_quorum = True

    def __init__(self) -> None:
        self.state = cs.ClusterState()
        self.sealer = Sealer(new_data_key())
        node = cs.NodeRecord(id=M1, hostname="m1", role="manager", addr="198.18.0.1")
        cluster = {"cluster_id": "c" * 25, "default_addr_pool": ["198.19.0.0/16"]}
        self.apply({"op": "init", "cluster": cluster, "node": node.to_dict(), "now": 1.0})
        for nid, addr in ((W1, "198.18.0.2"), (W2, "198.18.0.3")):
            rec = cs.NodeRecord(id=nid, hostname=nid[:2], role="worker", addr=addr)
            self.apply({"op": "add_node", "node": rec.to_dict()})

    def apply(self, cmd: dict[str, Any]) -> dict[str, Any]:
        # the journal holds commands as JSON: what is proposed must survive it
        return cs.apply(self.state, json.loads(json.dumps(cmd)))

    async def submit(self, cmd: dict[str, Any]) -> dict[str, Any]:
        return self.apply(cmd)


def encrypted_net(node: Leader) -> dict[str, Any]:
    req = {"id": NID, "name": "secure", "encrypted": True}
    node.apply({"op": "network_create", "network": req, "now": 2.0})
    return node.state.networks[NID]


def tick(node: Leader, now: float) -> int:
    return asyncio.run(api.tick(node, now))  # type: ignore[arg-type]


def opened(node: Leader, node_id: str) -> list[seal.NetKey]:
    got = api.keys_for(node, node_id)  # type: ignore[arg-type]
    return [seal.key_from_wire(e) for e in got.get(NID, [])]


def test_encrypted_network_forces_userspace_and_refuses_kernel() -> None:
    node = Leader()
    net = encrypted_net(node)
    assert net["encrypted"] and net["dataplane"] == "userspace"
    view = netstate.network_view(node.state, net)
    assert view["Options"]["encrypted"] == "true"
    with pytest.raises(cs.CommandError, match="needs the userspace data plane"):
        node.apply(
            {
                "op": "network_create",
                "network": {"id": "k" * 25, "name": "k", "encrypted": True, "dataplane": "kernel"},
            }
        )
    assert parse_opts(["encrypted"]) == {"encrypted": True}
    assert parse_opts(["encrypted=false", "mtu=1400"]) == {"encrypted": False, "mtu": 1400}
    with pytest.raises(FlagError, match="encrypted takes no value, or true/false"):
        parse_opts(["encrypted=maybe"])


def test_leader_makes_rotates_and_retires_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MESHKIT_NETKEY_ROTATION", raising=False)
    monkeypatch.setenv("MESHKIT_NETKEY_GRACE", "600")
    node = Leader()
    encrypted_net(node)
    assert tick(node, 10.0) == 1
    net = node.state.networks[NID]
    assert [k["id"] for k in net["keys"]] == [1]
    # sealed in the state: neither the key nor its base64 is in the replicated record
    raw = base64.b64decode(api.keys_for(node, W1)[NID][0]["key"])  # type: ignore[arg-type]
    assert len(raw) == 36 and raw.hex() not in json.dumps(net)
    assert base64.b64encode(raw).decode() not in json.dumps(net)
    assert net["keys"][0]["sealed"].startswith(GCM_PREFIX)  # AES-GCM under the data key
    assert netstate.netmap(node.state)["networks"][NID]["key_ids"] == [1]
    assert tick(node, 10.0 + 3600) == 0  # nothing due
    assert tick(node, 10.0 + DAY / 2) == 1  # the 12-hour default
    assert [k["id"] for k in net["keys"]] == [1, 2]  # the old one inside its grace window
    assert tick(node, 10.0 + DAY / 2 + 601) == 1  # grace over: it leaves
    assert [k["id"] for k in net["keys"]] == [2]
    monkeypatch.setenv("MESHKIT_NETKEY_ROTATION", "60")  # the test/env setting
    assert tick(node, 10.0 + DAY / 2 + 700) == 1
    assert [k["id"] for k in net["keys"]] == [2, 3]


def test_netkeys_set_guards() -> None:
    node = Leader()
    encrypted_net(node)
    with pytest.raises(cs.CommandError, match="changed meanwhile"):
        node.apply({"op": "netkeys_set", "network_id": NID, "keys": [], "seen": [4]})
    bad = [{"id": 2, "sealed": "x", "created_at": 1.0}, {"id": 1, "sealed": "y", "created_at": 1}]
    with pytest.raises(cs.CommandError, match="key ids must rise"):
        node.apply({"op": "netkeys_set", "network_id": NID, "keys": bad, "seen": []})
    plain = {"id": "p" * 25, "name": "plain"}
    node.apply({"op": "network_create", "network": plain})
    with pytest.raises(cs.CommandError, match="is not encrypted"):
        node.apply({"op": "netkeys_set", "network_id": "p" * 25, "keys": [], "seen": []})


def test_removed_node_gets_no_new_key_and_cannot_open_later_traffic() -> None:
    node = Leader()
    encrypted_net(node)
    tick(node, 10.0)
    before = opened(node, W2)
    assert [k.id for k in before] == [1] and opened(node, W1) == before
    assert set(node.state.networks[NID]["keys"][0]["members"]) == {M1, W1, W2}
    node.apply({"op": "set_status", "statuses": {W2: "down"}})
    node.apply({"op": "remove_node", "node_id": W2})
    assert api.keys_for(node, W2) == {}  # type: ignore[arg-type]
    assert tick(node, 20.0) == 1  # rotation on removal, not 12 hours later
    assert [k["id"] for k in node.state.networks[NID]["keys"]] == [1, 2]
    assert W2 not in node.state.networks[NID]["keys"][1]["members"]
    now_keys = opened(node, W1)
    assert [k.id for k in now_keys] == [1, 2]
    # W1 seals with the newest key; W2 holds only key 1: nothing it can open
    newest = now_keys[-1]
    frame = bytes(14) + b"after the removal"
    ip = bytes([198, 18, 0, 2])
    data = seal.seal(seal.preferred_cipher(), newest, ip, 1000, 4096, frame)
    assert seal.open_frame(before[0], ip, data) == "unknown_key"
    relabeled = data[:8] + (1).to_bytes(4, "big") + data[12:]  # claim key 1
    assert seal.open_frame(before[0], ip, relabeled) == "bad_tag"
    assert seal.open_frame(newest, ip, data) == frame
    assert rules.plan(node.state, 30.0, DAY, 600.0) == []  # nothing due right after it
    # the removed node holds key 1: it stays accepted for REMOVAL_GRACE only, not 10 minutes
    assert tick(node, 20.0 + rules.REMOVAL_GRACE + 1) == 1
    assert [k["id"] for k in node.state.networks[NID]["keys"]] == [2]


def test_a_node_that_joined_later_is_rotated_away_when_removed() -> None:
    node = Leader()
    encrypted_net(node)
    tick(node, 10.0)
    late = "y" * 25
    rec = cs.NodeRecord(id=late, hostname="late", role="worker", addr="198.18.0.4")
    node.apply({"op": "add_node", "node": rec.to_dict()})
    assert [k.id for k in opened(node, late)] == [1]  # the key in use, at once
    assert tick(node, 20.0) == 1  # and a new one that lists it as a member
    keys = node.state.networks[NID]["keys"]
    assert [k["id"] for k in keys] == [1, 2] and late in keys[-1]["members"]
    node.apply({"op": "set_status", "statuses": {late: "down"}})
    node.apply({"op": "remove_node", "node_id": late})
    assert tick(node, 30.0) == 1
    keys = node.state.networks[NID]["keys"]
    assert [k["id"] for k in keys] == [2, 3] and late not in keys[-1]["members"]


def test_members_only_get_the_keys() -> None:
    node = Leader()
    encrypted_net(node)
    tick(node, 10.0)
    assert api.keys_for(node, "z" * 25) == {}  # type: ignore[arg-type]
    plain = {"id": "p" * 25, "name": "plain"}
    node.apply({"op": "network_create", "network": plain})
    assert set(api.keys_for(node, W1)) == {NID}  # type: ignore[arg-type]


def test_cluster_setting_sets_the_interval_and_the_env_overrides_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from meshkit.cluster.api.netkeys import rotation_interval

    monkeypatch.delenv("MESHKIT_NETKEY_ROTATION", raising=False)
    node = Leader()
    assert rotation_interval(node.state) == DAY / 2  # the 12-hour default
    node.state.encryption_key_rotation = 3600.0  # `cluster update --encryption-key-rotation 1h`
    assert rotation_interval(node.state) == 3600.0
    monkeypatch.setenv("MESHKIT_NETKEY_ROTATION", "120")
    assert rotation_interval(node.state) == 120.0

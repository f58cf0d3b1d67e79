"""Secrets and configs, sans-IO: the state commands, Docker's name and size rules, the
references of a service spec and their flags, and the AES-GCM sealing of values."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import pytest

from meshkit.base.errors import FlagError
from meshkit.cli import servicespec
from meshkit.cluster.api.secrets import SecretMethods
from meshkit.cluster.model import secrets as rules
from meshkit.cluster.model import services as sv
from meshkit.cluster.model import state as cs
from meshkit.cluster.raft.sealing import Sealer, SealError, new_data_key
from meshkit.cluster.rpc.pki import PeerIdentity
from meshkit.cluster.rpc.transport import Peer, RpcError

M1 = "m" * 25
SID = "s" * 25


def _state() -> cs.ClusterState:
    st = cs.ClusterState()
    node = cs.NodeRecord(id=M1, hostname="mgr", role="manager", addr="198.18.0.1").to_dict()
    cs.apply(st, {"op": "init", "cluster": {"cluster_id": "c" * 25}, "node": node, "now": 1.0})
    return st


def _create(st: cs.ClusterState, kind: str, rid: str, name: str, size: int = 3) -> None:
    record = {"id": rid, "name": name, "labels": {"a": "b"}, "size": size, "data": "x"}
    cs.apply(st, {"op": "secret_create", "kind": kind, "record": record, "now": 2.0})


@pytest.mark.parametrize("name", ["db", "a", "db-pass_1.v2", "A" * 64])
def test_docker_name_rule_accepts(name: str) -> None:
    assert rules.check_name(name) == name


@pytest.mark.parametrize("name", ["", "-db", "db-", "d b", "db/x", "A" * 65, ".x", "é"])
def test_docker_name_rule_refuses(name: str) -> None:
    with pytest.raises(rules.RefError, match=r"only 64 \[a-zA-Z0-9-_.\] characters allowed"):
        rules.check_name(name)


def test_size_limits_are_dockers() -> None:
    rules.check_size("secret", 500 * 1024)
    with pytest.raises(rules.RefError, match="less than 512000 bytes"):
        rules.check_size("secret", 500 * 1024 + 1)
    with pytest.raises(rules.RefError, match="larger than 0"):
        rules.check_size("secret", 0)
    rules.check_size("config", 1000 * 1024)


def test_create_ls_rm_and_in_use() -> None:
    st = _state()
    _create(st, "secret", "i" * 25, "db")
    _create(st, "config", "j" * 25, "db")  # a config may share a secret's name
    with pytest.raises(cs.CommandError, match="secret db already exists"):
        _create(st, "secret", "k" * 25, "db")
    with pytest.raises(cs.CommandError, match="invalid name"):
        _create(st, "secret", "k" * 25, "-x")
    with pytest.raises(cs.CommandError, match="less than 512000"):
        _create(st, "secret", "k" * 25, "big", size=600 * 1024)
    assert rules.find(st, "secret", "db")["id"] == "i" * 25
    assert rules.find(st, "secret", "iii")["name"] == "db"
    with pytest.raises(rules.RefError, match="No such secret: nope"):
        rules.find(st, "secret", "nope")
    spec = servicespec.build_spec(
        {"name": "app", "command": ["sh"], "secret": ["src=nope,target=db"]}
    )
    with pytest.raises(cs.CommandError, match=r"^secret not found: nope$"):
        cs.apply(st, {"op": "service_create", "service": sv.new_service(SID, spec, 3.0)})
    spec = servicespec.build_spec(
        {"name": "app", "command": ["sh"], "secret": ["db"], "config": ["src=db,target=/etc/x"]}
    )
    cs.apply(st, {"op": "service_create", "service": sv.new_service(SID, spec, 3.0)})
    with pytest.raises(
        cs.CommandError, match=r"^secret 'db' is in use by the following service: app$"
    ):
        cs.apply(st, {"op": "secret_rm", "kind": "secret", "id": "i" * 25})
    with pytest.raises(cs.CommandError, match="config 'db' is in use"):
        cs.apply(st, {"op": "secret_rm", "kind": "config", "id": "j" * 25})
    view = rules.view(st.secrets["i" * 25], "secret", with_data=True)
    assert "Data" not in view and view["Name"] == "db" and view["Labels"] == {"a": "b"}
    assert rules.view(st.configs["j" * 25], "config", with_data=True)["Data"] == "x"
    assert cs.ClusterState.from_dict(st.to_dict()).to_dict() == st.to_dict()
    cs.apply(st, {"op": "service_rm", "service_id": SID})
    cs.apply(st, {"op": "secret_rm", "kind": "secret", "id": "i" * 25})
    assert not st.secrets


def test_update_names_a_missing_secret_is_refused() -> None:
    st = _state()
    _create(st, "secret", "i" * 25, "old")
    spec = servicespec.build_spec({"name": "app", "command": ["sh"], "secret": ["old"]})
    cs.apply(st, {"op": "service_create", "service": sv.new_service(SID, spec, 3.0)})
    new = servicespec.update_spec(
        spec, {"secret_rm": ["old"], "secret_add": ["src=new,target=old"]}
    )
    with pytest.raises(cs.CommandError, match="secret not found: new"):
        cs.apply(st, {"op": "service_update", "service_id": SID, "spec": new})
    _create(st, "secret", "k" * 25, "new")
    cs.apply(st, {"op": "service_update", "service_id": SID, "spec": new})
    assert st.services[SID]["spec"]["secrets"] == [
        {"source": "new", "target": "old", "uid": "0", "gid": "0", "mode": 0o444}
    ]
    assert st.services[SID]["version"] == 2  # a changed spec: the update rolls the tasks


def test_flag_grammar() -> None:
    ref = servicespec.parse_file_ref("src=db,target=pw,uid=100,gid=101,mode=0400", "secret")
    assert ref == {"source": "db", "target": "pw", "uid": "100", "gid": "101", "mode": 0o400}
    assert servicespec.parse_file_ref("db", "secret")["target"] == "db"
    assert servicespec.parse_file_ref("source=db,target=/run/secrets/x", "secret")["target"] == "x"
    assert servicespec.parse_file_ref("db", "config")["target"] == "/run/configs/db"
    for text, why in [
        ("src=db,target=a/b", "must be a file name"),
        ("src=db,mode=9", "not an octal mode"),
        ("src=db,uid=root", "not a numeric id"),
        ("target=x", "needs source=NAME"),
        ("src=db,color=red", "unknown field 'color'"),
        ("src=-db", "invalid name"),
    ]:
        with pytest.raises(FlagError, match=why):
            servicespec.parse_file_ref(text, "secret")
    with pytest.raises(FlagError, match="absolute file path"):
        servicespec.parse_file_ref("src=c,target=etc/x", "config")
    with pytest.raises(FlagError, match="used more than once"):
        servicespec.build_spec(
            {"name": "a", "command": ["sh"], "secret": ["src=a,target=x", "src=b,target=x"]}
        )
    # the task carries the references: the node needs them to ask for the files
    spec = servicespec.build_spec({"name": "a", "command": ["sh"], "secret": ["a"]})
    assert sv.task_spec(spec)["secrets"][0]["source"] == "a"


def test_secret_values_are_sealed_with_aes_gcm_under_the_data_key() -> None:
    sealer = Sealer(new_data_key())
    sealed = sealer.seal_bytes(b"hunter2", "id1")
    assert sealed.startswith("aesgcm1:") and b"hunter2" not in base64.b64decode(sealed[8:])
    assert sealer.open_bytes(sealed, "id1") == b"hunter2"
    assert sealer.seal_bytes(b"hunter2", "id1") != sealed  # a fresh nonce each time
    with pytest.raises(SealError):
        sealer.open_bytes(sealed, "id2")  # bound to its record
    with pytest.raises(SealError):
        Sealer(new_data_key()).open_bytes(sealed, "id1")
    with pytest.raises(SealError, match="no cluster data key"):
        Sealer("").seal_bytes(b"x", "id1")


class _Node:
    """The little of a NodeContext the secret methods use."""

    def __init__(self, st: cs.ClusterState, key: str) -> None:
        self.state = st
        self.sealer = Sealer(key)

    async def submit(self, cmd: dict[str, Any]) -> dict[str, Any]:
        return cs.apply(self.state, cmd)


def test_task_secrets_only_for_the_callers_assigned_task() -> None:
    st = _state()
    w1, w2 = "w" * 25, "v" * 25
    for nid in (w1, w2):
        node = cs.NodeRecord(id=nid, hostname=nid[:2], role="worker", addr="198.18.0.2")
        cs.apply(st, {"op": "add_node", "node": node.to_dict()})
    api = SecretMethods(_Node(st, new_data_key()))  # type: ignore[arg-type]
    me = Peer(identity=PeerIdentity(M1, "manager", "c" * 25), address="self")
    data = base64.b64encode(b"pw-123").decode()
    asyncio.run(api.secret_create(me, {"name": "db", "data": data}))
    rec = next(iter(st.secrets.values()))
    assert rec["data"].startswith("aesgcm1:") and "pw-123" not in json.dumps(st.to_dict())
    spec = servicespec.build_spec({"name": "app", "command": ["sh"], "secret": ["db"]})
    cs.apply(st, {"op": "service_create", "service": sv.new_service(SID, spec, 3.0)})
    task = sv.new_task("t" * 25, st.services[SID], 1, 4.0)
    cs.apply(st, {"op": "tasks_write", "create": [task], "node": {task["id"]: w1}})

    def ask(node_id: str, caller_id: str) -> Any:
        peer = Peer(identity=PeerIdentity(caller_id, "worker", "c" * 25), address="x")
        params = {"node_id": node_id, "task_id": task["id"]}
        return asyncio.run(api.task_secrets(peer, params))

    got = ask(w1, w1)
    assert base64.b64decode(got["secrets"][0]["data"]) == b"pw-123"
    assert got["secrets"][0]["target"] == "db" and got["configs"] == []
    with pytest.raises(RpcError, match="is not assigned to node"):
        ask(w2, w2)  # a node without the task gets nothing
    with pytest.raises(RpcError, match="cannot speak for node"):
        ask(w1, w2)  # nor by naming another node
    cs.apply(st, {"op": "tasks_write", "desired": {task["id"]: "shutdown"}})
    with pytest.raises(RpcError, match="is not to run"):
        ask(w1, w1)
    view = asyncio.run(api.secret_inspect(me, {"secret": "db"}))
    assert "Data" not in view and "pw-123" not in json.dumps(view)

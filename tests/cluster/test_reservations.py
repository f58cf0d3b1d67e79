"""Reservations in the scheduler, nodes' resources in the state, and the runtime spec rules
(units, mounts, hostnames) with the flags that make them: pure, no processes."""

from __future__ import annotations

import pytest

from cluster.test_orchestrator import M1, W1, W2, Sim
from meshkit.base.errors import FlagError
from meshkit.cli import servicespec, taskflags
from meshkit.cluster.model import taskrt
from meshkit.cluster.model.state import node_view

GIB = 1 << 30


def offer(sim: Sim, cpus: int, memory: int) -> None:
    for nid in (M1, W1, W2):
        sim.do({"op": "set_resources", "node_id": nid,
                "resources": {"NanoCPUs": cpus * 10**9, "MemoryBytes": memory}})  # fmt: skip


def tasks_of(sim: Sim, sid: str) -> list[dict]:
    return sorted((t for t in sim.st.tasks.values() if t["service_id"] == sid),
                  key=lambda t: t["slot"])  # fmt: skip


def test_nodes_report_resources_in_docker_fields() -> None:
    sim = Sim()
    offer(sim, 2, 4 * GIB)
    view = node_view(sim.st.nodes[W1])
    assert view["Resources"] == {"NanoCPUs": 2 * 10**9, "MemoryBytes": 4 * GIB}


def test_reservation_larger_than_any_node_stays_pending_saying_why() -> None:
    sim = Sim()
    offer(sim, 2, 4 * GIB)
    sid = sim.create(name="big", reserve_memory="64G")
    sim.converge()
    (t,) = tasks_of(sim, sid)
    assert t["state"] == "pending" and not t["node_id"]
    assert t["error"] == "no suitable node (insufficient memory on 3 nodes)"
    cpu = sim.create(name="cpu", reserve_cpu="3")
    sim.converge()
    assert tasks_of(sim, cpu)[0]["error"] == "no suitable node (insufficient CPU on 3 nodes)"


def test_reservations_bin_pack_and_a_freed_node_takes_the_pending_task() -> None:
    sim = Sim()
    offer(sim, 2, 4 * GIB)
    sid = sim.create(name="db", replicas="4", reserve_memory="3G")
    sim.converge()
    tasks = tasks_of(sim, sid)
    placed = [t for t in tasks if t["node_id"]]
    assert len(placed) == 3 and len({t["node_id"] for t in placed}) == 3  # one per node
    pending = [t for t in tasks if not t["node_id"]]
    assert len(pending) == 1 and "insufficient memory on 3 nodes" in pending[0]["error"]
    offer_more = {"NanoCPUs": 2 * 10**9, "MemoryBytes": 8 * GIB}
    sim.do({"op": "set_resources", "node_id": W2, "resources": offer_more})
    sim.converge()
    assert all(t["node_id"] for t in tasks_of(sim, sid) if t["desired_state"] == "running")


def test_nodes_without_a_report_are_not_filtered() -> None:
    sim = Sim()
    sid = sim.create(name="big", reserve_memory="64G")
    sim.converge()
    assert tasks_of(sim, sid)[0]["node_id"]


def test_units_as_docker_writes_them() -> None:
    assert taskrt.parse_bytes("256M") == 256 << 20
    assert taskrt.parse_bytes("1g") == GIB and taskrt.parse_bytes("512MiB") == 512 << 20
    assert taskrt.parse_bytes("1.5G") == 3 * GIB // 2 and taskrt.parse_bytes("4096") == 4096
    assert taskrt.format_bytes(256 << 20) == "256MiB"
    assert taskrt.format_bytes(3 * GIB // 2) == "1.5GiB"
    assert taskrt.parse_cpus("0.5") == 500_000_000
    assert taskrt.parse_signal("INT") == taskrt.parse_signal("SIGINT") == 2
    for bad in ("12Q", "-1M", "M", ""):
        with pytest.raises(ValueError):
            taskrt.parse_bytes(bad)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("type=bind,src=rel,dst=/x", "absolute host path"),
        ("type=tmpfs,dst=/x,tmpfs-mode=9", "octal mode"),
        ("type=volume,src=a/b,dst=/x", "not a volume name"),
        ("type=bind,src=/a,dst=relative", "not an absolute path"),
        ("type=nfs,src=/a,dst=/x", "not one of bind, volume, tmpfs"),
        ("type=bind,src=/a", "needs a target"),
        ("type=bind,src=/a,dst=/x,tmpfs-size=1M", "for type=tmpfs only"),
        ("type=bind,src=/a,dst=/proc", "cannot mount over /proc"),
        ("type=bind,src=/a,dst=/x,flavour=x", "unknown field 'flavour'"),
    ],
)
def test_bad_mounts_name_the_flag(text: str, words: str) -> None:
    with pytest.raises(FlagError) as err:
        taskflags.parse_mount(text)
    assert "--mount" in str(err.value) and words in str(err.value)


def test_runtime_flags_into_the_spec_and_back_out_on_update(tmp_path) -> None:
    env = tmp_path / "app.env"
    env.write_text("# comment\nA=1\n\nB=two words\n")
    spec = servicespec.build_spec({
        "name": "a", "command": ["x"], "limit_cpu": "0.5", "limit_memory": "256M",
        "limit_pids": "64", "reserve_memory": "128M", "env_file": [str(env)], "env": ["B=3"],
        "mount": ["type=volume,src=data,dst=/data"], "hostname": "{{.Service.Name}}-{{.Task.Slot}}",
        "stop_signal": "SIGINT", "label": ["team=db"], "group": ["adm"],
        "dns": ["192.0.2.53"], "dns_search": ["corp.test"], "dns_option": ["ndots:2"],
        "init": True,
    })  # fmt: skip
    assert spec["resources"]["limits"] == {"nano_cpus": 5 * 10**8, "memory_bytes": 256 << 20,
                                           "pids": 64}  # fmt: skip
    assert spec["env"] == ["A=1", "B=3"] and spec["labels"] == {"team": "db"}
    assert spec["mounts"][0]["source"] == "data" and spec["init"] is True
    assert spec["dns"]["options"] == ["ndots:2"]
    new = servicespec.update_spec(spec, {
        "mount_rm": ["/data"], "mount_add": ["type=tmpfs,dst=/cache"], "label_rm": ["team"],
        "dns_rm": ["192.0.2.53"], "init": False, "limit_memory": "1G",
    })  # fmt: skip
    assert [m["type"] for m in new["mounts"]] == ["tmpfs"] and new["labels"] == {}
    assert new["dns"]["nameservers"] == [] and new["init"] is False
    assert new["resources"]["limits"]["memory_bytes"] == GIB


def test_env_file_errors_name_file_and_line(tmp_path) -> None:
    env = tmp_path / "bad.env"
    env.write_text("A=1\nnot a var=2\n")
    with pytest.raises(FlagError) as err:
        servicespec.build_spec({"name": "a", "command": ["x"], "env_file": [str(env)]})
    assert f"{env}:2" in str(err.value) and "--env-file" in str(err.value)
    with pytest.raises(FlagError, match="cannot read it"):
        servicespec.build_spec({"name": "a", "command": ["x"], "env_file": [str(env) + "x"]})


def test_hostname_templates() -> None:
    name = taskrt.expand_hostname(
        "{{.Service.Name}}-{{.Task.Slot}}.{{.Node.Hostname}}", node_hostname="w1",
        node_id="n", service_name="web", service_id="s", slot=2, task_id="t",
    )  # fmt: skip
    assert name == "web-2.w1"
    with pytest.raises(FlagError, match="unknown placeholder"):
        servicespec.build_spec({"name": "a", "command": ["x"], "hostname": "{{.Nope}}"})


def test_task_resolv_conf_keeps_the_task_dns_server_first() -> None:
    from meshkit.cluster.tasks.mounts import resolv_conf

    overlay = "nameserver 127.0.0.11\noptions ndots:0\n"
    text = resolv_conf(overlay, {"nameservers": ["192.0.2.53"], "search": ["corp.test"],
                                 "options": ["ndots:2", "timeout:1"]})  # fmt: skip
    lines = text.splitlines()[1:]
    assert lines == [
        "nameserver 127.0.0.11", "nameserver 192.0.2.53", "search corp.test",
        "options ndots:2 timeout:1",
    ]  # fmt: skip
    host = "nameserver 198.51.100.1\nsearch lan.test\n"
    assert resolv_conf(host, {"options": ["rotate"]}).splitlines()[1:] == [
        "nameserver 198.51.100.1", "search lan.test", "options rotate",
    ]  # fmt: skip


def test_global_service_skips_nodes_without_room() -> None:
    sim = Sim()
    offer(sim, 2, 4 * GIB)
    roomy = {"NanoCPUs": 2 * 10**9, "MemoryBytes": 16 * GIB}
    sim.do({"op": "set_resources", "node_id": W1, "resources": roomy})
    sid = sim.create(name="agent", mode="global", reserve_memory="8G")
    sim.converge()
    tasks = tasks_of(sim, sid)
    assert [t["node_id"] for t in tasks if t["node_id"]] == [W1]
    # as swarm: each node without room holds one pending task that says why
    waiting = sorted(t["want_node"] for t in tasks if not t["node_id"])
    assert waiting == sorted([M1, W2])
    assert all(
        t["state"] == "pending" and t["error"] == "no suitable node (insufficient memory on 1 node)"
        for t in tasks
        if not t["node_id"]
    )


def test_a_waiting_tasks_reason_follows_the_nodes() -> None:
    sim = Sim()
    sid = sim.create(name="big", reserve_memory="64G", constraint=["node.labels.x==y"])
    sim.converge()
    (t,) = tasks_of(sim, sid)
    assert "not satisfying the constraints" in t["error"]
    sim.do({"op": "update_node", "node_id": W1, "label_add": {"x": "y"}})
    offer(sim, 2, 4 * GIB)
    sim.converge()
    (t,) = tasks_of(sim, sid)
    assert t["state"] == "pending"
    assert t["error"] == (
        "no suitable node (2 nodes not satisfying the constraints node.labels.x==y; "
        "insufficient memory on 1 node)"
    )


def test_a_bad_resource_report_is_refused_the_same_way_everywhere() -> None:
    from meshkit.cluster.model.state import CommandError

    sim = Sim()
    with pytest.raises(CommandError, match="expected whole numbers"):
        sim.do({"op": "set_resources", "node_id": W1, "resources": {"NanoCPUs": "lots"}})
    assert sim.st.nodes[W1].resources == {}

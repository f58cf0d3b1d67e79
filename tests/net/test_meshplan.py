"""The plan of one node's share of the mesh (sans-IO): VIP relays in each overlay namespace,
published ports in ingress and host mode, conflicts, and what a web upstream dials."""

from __future__ import annotations

from typing import Any

from meshkit.mesh import plan as meshplan
from meshkit.mesh.plan import Listen

N1, N2 = "a" * 25, "b" * 25  # nodes
FRONT, ING = "f" * 25, "i" * 25  # networks


def _map(**services: Any) -> dict[str, Any]:
    return {
        "networks": {
            FRONT: {"id": FRONT, "name": "front", "ingress": False},
            ING: {"id": ING, "name": "ingress", "ingress": True},
        },
        "services": services,
    }


def _task(tid: str, node: str, up: bool = True, **addrs: str) -> dict[str, Any]:
    return {"id": tid, "name": "web.1", "slot": 1, "node_id": node, "up": up,
            "addrs": {({"front": FRONT, "ing": ING})[k]: v for k, v in addrs.items()}}  # fmt: skip


def _web(ports: list[dict[str, Any]], tasks: list[dict[str, Any]], **kw: Any) -> dict[str, Any]:
    return {"id": "s1", "name": "web", "endpoint_mode": "vip", "ports": ports,
            "vips": {FRONT: "198.19.0.3", ING: "198.19.1.3"}, "tasks": tasks, **kw}  # fmt: skip


def _port(target: int, published: int | None = None, **kw: Any) -> dict[str, Any]:
    return {"target": target, "published": published, "protocol": "tcp", "mode": "ingress",
            "proxy_protocol": False, **kw}  # fmt: skip


TASKS = [
    _task("t1", N1, front="198.19.0.5", ing="198.19.1.5"),
    _task("t2", N2, front="198.19.0.6", ing="198.19.1.6"),
    _task("t3", N2, up=False, front="198.19.0.7", ing="198.19.1.7"),
]


def test_every_node_answers_the_vips_and_the_published_port_for_all_up_tasks() -> None:
    nm = _map(s1=_web([_port(80, 8091), _port(53, protocol="udp")], TASKS))
    for node in (N1, N2, "c" * 25):  # also a node with no task
        plan = meshplan.plan(nm, node)
        ns = meshplan.overlay_ns(FRONT, node)
        vip = plan.relays[f"vip/s1/{FRONT}"]
        assert vip.listen_ns == vip.backend_ns == ns
        assert vip.listens == (
            Listen("198.19.0.3", 53, 53, "udp"),
            Listen("198.19.0.3", 80, 80, "tcp"),
        )
        assert vip.backends == ("198.19.0.5", "198.19.0.6")  # t3 is not up
        pub = plan.relays["publish/8091/tcp"]
        assert pub.listen_ns == meshplan.HOST and pub.backend_ns == meshplan.overlay_ns(ING, node)
        assert pub.listens == (Listen("0.0.0.0", 8091, 80, "tcp"),)
        assert pub.backends == ("198.19.1.5", "198.19.1.6")
        assert plan.vips[ns] == frozenset({"198.19.0.3"})


def test_networks_not_built_here_get_nothing_yet_and_dnsrr_has_no_vip() -> None:
    nm = _map(s1=_web([_port(80, 8091)], TASKS))
    plan = meshplan.plan(nm, N1, built={FRONT})
    assert set(plan.relays) == {f"vip/s1/{FRONT}"}
    rr = _map(s1=_web([_port(80)], TASKS, endpoint_mode="dnsrr", vips={}))
    assert meshplan.plan(rr, N1).relays == {}


def test_host_mode_listens_only_where_a_task_runs_and_reaches_only_local_tasks() -> None:
    nm = _map(s1=_web([_port(80, 8094, mode="host", proxy_protocol=True)], TASKS))
    assert "host/8094/tcp" not in meshplan.plan(nm, "c" * 25).relays
    on_n2 = meshplan.plan(nm, N2).relays["host/8094/tcp"]
    assert on_n2.backends == ("198.19.0.6",) and on_n2.proxy_protocol == "v2"
    assert on_n2.backend_ns == meshplan.overlay_ns(FRONT, N2)
    # a task on no network runs in the host's namespace: reached on 127.0.0.1
    bare = _map(s1=_web([_port(80, 8094, mode="host")], [_task("t9", N1)], vips={}))
    plan = meshplan.plan(bare, N1).relays["host/8094/tcp"]
    assert plan.backend_ns == meshplan.HOST and plan.backends == ("127.0.0.1",)
    same = _map(s1=_web([_port(8094, 8094, mode="host")], [_task("t9", N1)], vips={}))
    assert meshplan.plan(same, N1).relays == {}  # the task listens on the port itself


def test_two_services_on_one_published_port_are_both_refused_with_the_reason() -> None:
    other = _web([_port(81, 8091)], [], id="s2", name="api", vips={})
    nm = _map(s1=_web([_port(80, 8091)], TASKS), s2=other)
    plan = meshplan.plan(nm, N1)
    assert "publish/8091/tcp" not in plan.relays
    assert plan.conflicts == {
        "8091/tcp": "published port 8091/tcp is asked for by services web and api"
    }


def test_service_backends_prefer_the_services_own_network() -> None:
    nm = _map(s1=_web([_port(80, 8091)], TASKS))
    assert meshplan.service_backends(nm, N1, "web") == (
        meshplan.overlay_ns(FRONT, N1),
        ("198.19.0.5", "198.19.0.6"),
    )
    assert meshplan.service_backends(nm, N1, "web", built={ING}) == (
        meshplan.overlay_ns(ING, N1),
        ("198.19.1.5", "198.19.1.6"),
    )
    assert meshplan.service_backends(nm, N1, "nosuch") is None


def test_a_vip_needs_no_relay_for_its_declared_ports_unless_a_feature_says_so() -> None:
    plan = meshplan.plan(_map(s1=_web([_port(80, 8091, proxy_protocol=True)], TASKS)), N1)
    ns = next(n for n in plan.vip_ports if FRONT[:8] in n)
    (entry,) = plan.vip_ports[ns][1]
    assert entry.declared == ((80, "tcp"),) and entry.kernel  # round robin, no PROXY header
    vip = plan.relays[f"vip/s1/{FRONT}"]
    assert vip.kernel_ok() and entry.backends == vip.backends
    # the published port's relay writes the PROXY header: only a relay can
    assert not plan.relays["publish/8091/tcp"].kernel_ok()
    assert not meshplan.RelayPlan(**{**vip.__dict__, "policy": "least_conn"}).kernel_ok()
    assert not meshplan.RelayPlan(**{**vip.__dict__, "proxy_protocol": "v2"}).kernel_ok()

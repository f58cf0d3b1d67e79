"""Service specs: defaults, checks, CLI flags -> spec, constraints and durations."""

from __future__ import annotations

import pytest

from meshkit.base.durations import parse_duration
from meshkit.base.errors import FlagError
from meshkit.cli import servicespec
from meshkit.cluster.model import services as sv
from meshkit.cluster.model.state import NodeRecord


def test_build_spec_defaults_are_swarms() -> None:
    spec = servicespec.build_spec({"name": "web", "command": ["sleep", "100"]})
    assert spec["mode"] == "replicated" and spec["replicas"] == 1
    assert spec["restart"] == {"condition": "any", "delay": 5.0, "max_attempts": 0, "window": 0.0}
    assert spec["update"] == {
        "parallelism": 1,
        "delay": 0.0,
        "failure_action": "pause",
        "monitor": 5.0,
        "max_failure_ratio": 0.0,
        "order": "stop-first",
    }
    assert spec["rollback"] == spec["update"]
    assert spec["health"] is None and spec["stop_grace_period"] == 10.0
    assert spec["endpoint_mode"] == "vip"


def test_build_spec_from_flags() -> None:
    spec = servicespec.build_spec(
        {
            "name": "web",
            "replicas": "3",
            "command": ["srv", "-p", "80"],
            "env": ["A=1", "B=x=y", "A=2"],
            "constraint": ["node.labels.zone == a"],
            "publish": [
                "8080:80",
                "mode=host,8081:81/udp",
                "published=9000,target=90,proxy-protocol=true",
            ],
            "restart_delay": "1m30s",
            "restart_condition": "on-failure",
            "restart_max_attempts": "4",
            "restart_window": "500ms",
            "health_cmd": "curl -f http://127.0.0.1/",
            "health_interval": "2s",
            "health_retries": "2",
            "update_parallelism": "2",
            "update_order": "start-first",
            "update_failure_action": "rollback",
            "update_max_failure_ratio": "0.25",
            "rollback_monitor": "3s",
            "stop_grace_period": "2s",
            "network": ["n1", "n1"],
        }
    )
    assert spec["replicas"] == 3 and spec["command"] == ["srv", "-p", "80"]
    assert spec["env"] == ["A=2", "B=x=y"]
    assert spec["constraints"] == ["node.labels.zone==a"]
    assert spec["ports"] == [
        {
            "protocol": "tcp",
            "target": 80,
            "published": 8080,
            "mode": "ingress",
            "proxy_protocol": False,
        },
        {
            "protocol": "udp",
            "target": 81,
            "published": 8081,
            "mode": "host",
            "proxy_protocol": False,
        },
        {
            "protocol": "tcp",
            "target": 90,
            "published": 9000,
            "mode": "ingress",
            "proxy_protocol": True,
        },
    ]
    assert spec["restart"] == {
        "condition": "on-failure",
        "delay": 90.0,
        "max_attempts": 4,
        "window": 0.5,
    }
    assert spec["health"] == {
        "cmd": "curl -f http://127.0.0.1/",
        "interval": 2.0,
        "timeout": 30.0,
        "retries": 2,
        "start_period": 0.0,
    }
    assert spec["update"]["parallelism"] == 2 and spec["update"]["order"] == "start-first"
    assert spec["update"]["failure_action"] == "rollback"
    assert spec["update"]["max_failure_ratio"] == 0.25 and spec["rollback"]["monitor"] == 3.0
    assert spec["networks"] == ["n1"] and spec["stop_grace_period"] == 2.0
    assert sv.check_spec(spec) == spec


@pytest.mark.parametrize(
    ("flags", "flag", "reason"),
    [
        ({"restart_delay": "5x"}, "--restart-delay", "duration"),
        ({"restart_delay": "-1s"}, "--restart-delay", "negative"),
        ({"replicas": "two"}, "--replicas", "whole number"),
        ({"mode": "global", "replicas": "2"}, "--replicas", "replicated mode"),
        ({"mode": "both"}, "--mode", "replicated, global"),
        ({"env": ["NOVALUE"]}, "--env", "KEY=VALUE"),
        ({"publish": ["80:99999"]}, "--publish", "target port 99999 is out of range 1-65535"),
        ({"publish": ["mode=bridge,80"]}, "--publish", "ingress or host"),
        ({"constraint": ["node.color==red"]}, "--constraint", "node.color==red"),
        ({"constraint": ["node.hostname=x"]}, "--constraint", "no == or !="),
        ({"update_failure_action": "explode"}, "--update-failure-action", "pause"),
        ({"rollback_failure_action": "rollback"}, "--rollback-failure-action", "pause"),
        ({"update_max_failure_ratio": "2"}, "--update-max-failure-ratio", "0 to 1"),
        ({"health_interval": "5s"}, "--health-interval", "--health-cmd"),
        ({"health_cmd": "true", "no_healthcheck": True}, "--no-healthcheck", "--health-cmd"),
    ],
)
def test_bad_flags_name_the_flag(flags: dict, flag: str, reason: str) -> None:
    with pytest.raises(FlagError) as err:
        servicespec.build_spec({"name": "web", "command": ["true"], **flags})
    assert err.value.flag == flag
    assert reason in str(err.value)


def test_build_spec_needs_name_and_command() -> None:
    with pytest.raises(FlagError, match="--name"):
        servicespec.build_spec({"command": ["x"]})
    with pytest.raises(FlagError, match="--name"):
        servicespec.build_spec({"name": "-bad", "command": ["x"]})
    with pytest.raises(FlagError, match="command"):
        servicespec.build_spec({"name": "ok"})


def test_update_spec() -> None:
    spec = servicespec.build_spec(
        {
            "name": "web",
            "command": ["a"],
            "env": ["A=1", "B=2"],
            "constraint": ["node.role==worker"],
            "publish": ["8080:80"],
        }
    )
    new = servicespec.update_spec(
        spec,
        {
            "replicas": "4",
            "env_rm": ["A"],
            "env_add": ["C=3", "B=9"],
            "constraint_rm": ["node.role == worker"],
            "constraint_add": ["node.hostname!=h1"],
            "publish_rm": ["80"],
            "publish_add": ["9090:90/udp"],
            "args": ["b", "c"],
            "update_delay": "10s",
            "force": True,
        },
    )
    assert new["replicas"] == 4 and new["env"] == ["B=9", "C=3"]
    assert new["constraints"] == ["node.hostname!=h1"]
    assert [(p["published"], p["target"], p["protocol"]) for p in new["ports"]] == [
        (9090, 90, "udp")
    ]
    assert new["command"] == ["b", "c"] and new["update"]["delay"] == 10.0
    assert new["force_update"] == spec["force_update"] + 1
    assert spec["replicas"] == 1  # the old spec is not changed
    with pytest.raises(FlagError, match="--mode"):
        servicespec.update_spec(spec, {"mode": "global"})
    glob = servicespec.build_spec({"name": "g", "mode": "global", "command": ["a"]})
    with pytest.raises(FlagError, match="--replicas"):
        servicespec.update_spec(glob, {"replicas": "2"})
    assert servicespec.update_spec(spec, {"no_healthcheck": True})["health"] is None


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("5s", 5.0),
        ("500ms", 0.5),
        ("1m30s", 90.0),
        ("2h", 7200.0),
        ("1.5s", 1.5),
        ("7s", 7.0),
        ("0", 0.0),
        ("10us", 1e-5),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


# A bare number ("7") was taken as seconds here until the one duration grammar (issue 17): Go,
# Docker and Caddy refuse it, and so does every meshkit flag now.
@pytest.mark.parametrize("text", ["", "s", "5 s", "1m30", "5d", "-3s", "1s-2s", "7"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_constraints_match_nodes() -> None:
    node = NodeRecord(
        id="a" * 25, hostname="Host1", role="worker", addr="198.18.0.1", labels={"zone": "east"}
    )
    assert sv.node_matches(node, ["node.hostname==host1", "node.role==worker"])
    assert sv.node_matches(node, ["node.labels.zone==east", "node.labels.ssd!=true"])
    assert not sv.node_matches(node, ["node.labels.zone!=east"])
    assert not sv.node_matches(node, ["node.labels.ssd==true"])
    assert sv.node_matches(node, [f"node.id=={'a' * 25}"])
    assert not sv.node_matches(node, ["node.role==manager"])
    assert str(sv.parse_constraint(" node.labels.zone != a ")) == "node.labels.zone!=a"
    with pytest.raises(ValueError, match=r"node\.role==boss"):
        sv.parse_constraint("node.role==boss")


def test_check_spec_errors_name_the_field() -> None:
    base = {"name": "web", "command": ["x"]}
    with pytest.raises(sv.SpecError, match=r"restart\.delay"):
        sv.check_spec({**base, "restart": {"delay": "soon"}})
    with pytest.raises(sv.SpecError, match="unknown field 'colour'"):
        sv.check_spec({**base, "colour": 1})
    with pytest.raises(sv.SpecError, match="published port 80/tcp twice"):
        sv.check_spec(
            {**base, "ports": [{"target": 1, "published": 80}, {"target": 2, "published": 80}]}
        )
    with pytest.raises(sv.SpecError, match=r"health\.cmd"):
        sv.check_spec({**base, "health": {"cmd": " "}})


def test_task_is_up() -> None:
    t = {"state": "running", "healthy": None, "spec": {"health": None}}
    assert sv.task_is_up(t)
    t["spec"] = {"health": {"cmd": "true"}}
    assert not sv.task_is_up(t)
    t["healthy"] = True
    assert sv.task_is_up(t)
    t["healthy"] = False
    assert not sv.task_is_up(t)
    assert not sv.task_is_up({"state": "starting", "healthy": None, "spec": {}})


def test_port_names_what_the_tasks_serve_for_the_vip() -> None:
    spec = servicespec.build_spec(
        {"name": "e", "command": ["x"], "port": ["7000", "7000/udp"], "publish": ["8091:7000"]}
    )
    # 7000/tcp is already there, published; 7000/udp only serves the VIP
    assert [(p["target"], p["protocol"], p["published"]) for p in spec["ports"]] == [
        (7000, "tcp", 8091),
        (7000, "udp", None),
    ]
    with pytest.raises(FlagError, match=r"--port.*publish with --publish"):
        servicespec.build_spec({"name": "e", "command": ["x"], "port": ["80:7000"]})


def test_publish_proxy_protocol_is_v2() -> None:
    port = servicespec.parse_publish("8091:80,proxy-protocol=v2")
    assert port["proxy_protocol"] is True and port["published"] == 8091
    assert (
        servicespec.parse_publish("published=1,target=2,proxy-protocol=true")["proxy_protocol"]
        is True
    )
    with pytest.raises(FlagError, match="sends PROXY protocol v2"):
        servicespec.parse_publish("8091:80,proxy-protocol=v1")


def test_labels_are_checked_and_stay_out_of_the_task_spec() -> None:
    spec = sv.check_spec({"name": "app_web", "command": ["true"], "labels": {"a.b/c": "1"}})
    assert spec["labels"] == {"a.b/c": "1"} and "labels" not in sv.task_spec(spec)
    assert sv.check_spec({"name": "w", "command": ["true"]})["labels"] == {}
    for bad in ({"k": 1}, {"": "v"}, {"a=b": "v"}, ["a=b"]):
        with pytest.raises(sv.SpecError, match="labels"):
            sv.check_spec({"name": "w", "command": ["true"], "labels": bad})
    for name in ("_app", "app_", "a" * 64):
        with pytest.raises(sv.SpecError, match="invalid service name"):
            sv.check_spec({"name": name, "command": ["true"]})
    assert sv.has_label({"k": "v"}, "k") and sv.has_label({"k": "v"}, "k=v")
    assert not sv.has_label({"k": "v"}, "k=w") and not sv.has_label({}, "k")

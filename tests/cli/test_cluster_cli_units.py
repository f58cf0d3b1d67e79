"""The CLI pieces of the cluster operations, without an agent: `service inspect --pretty`'s
layout, `events`' time and filter flags and its text line, `node ls --filter`, `cluster
inspect --pretty`, and the event derivation and log the manager keeps (sans-IO)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from meshkit.base.errors import FlagError
from meshkit.cli.cluster import pretty as cluster_pretty
from meshkit.cli.events import line, parse_filters, parse_time
from meshkit.cli.nodefilter import node_filters, node_matches
from meshkit.cli.servicepretty import pretty_service
from meshkit.cluster.api.cluster import cluster_view
from meshkit.cluster.api.events import EventLog, events_of
from meshkit.cluster.model import state as cs
from meshkit.cluster.model.services import check_spec


def test_service_pretty_layout() -> None:
    spec = check_spec(
        {"name": "web", "command": ["sleep", "1 2"], "replicas": 3,
         "constraints": ["node.role==worker"], "labels": {"a": "b"},
         "ports": [{"published": 8080, "target": 80}]}
    )  # fmt: skip
    text = pretty_service({"id": "x" * 25, "spec": spec, "tasks": []})
    for want in ("ID:\t\t" + "x" * 25, "Name:\t\tweb", "Labels:\n a=b",
                 "Service Mode:\tReplicated\n Replicas:\t3",
                 "Placement:\n Constraints:\t[node.role==worker]",
                 "UpdateConfig:\n Parallelism:\t1", " On failure:\tpause",
                 " Update order:      stop-first", "RollbackConfig:",
                 " Command:\tsleep '1 2'", "Endpoint Mode:\tvip",
                 "Ports:\n PublishedPort = 8080\n  Protocol = tcp\n  TargetPort = 80\n"
                 "  PublishMode = ingress"):  # fmt: skip
        assert want in text, want


def test_event_time_flags() -> None:
    assert parse_time("--since", "1700000000.5", 0) == 1700000000.5
    assert parse_time("--since", "10m", 1000.0) == 400.0
    assert parse_time("--until", "2026-01-01T00:00:00Z", 0) == 1767225600.0
    with pytest.raises(FlagError, match="--since"):
        parse_time("--since", "yesterday", 0)
    with pytest.raises(FlagError, match="zone"):
        parse_time("--since", "2026-01-01T00:00:00", 0)
    assert parse_filters(["type=node", "type=task"]) == ["node", "task"]
    with pytest.raises(FlagError, match="--filter"):
        parse_filters(["name=x"])


def _state() -> cs.ClusterState:
    st = cs.ClusterState()
    node = cs.NodeRecord(id="a" * 25, hostname="m1", role="manager", addr="127.0.0.1")
    cs.apply(st, {"op": "init", "cluster": {"cluster_id": "c" * 25}, "node": node.to_dict()})
    return st


def _apply(st: cs.ClusterState, log: EventLog, cmd: dict[str, Any]) -> None:
    try:
        result: dict[str, Any] = {"ok": cs.apply(st, cmd)}
    except cs.CommandError as exc:
        result = {"error": str(exc)}
    log.record(cmd, result, st)


def test_events_from_commands_and_the_log() -> None:
    st, log = _state(), EventLog(keep=5)
    w = cs.NodeRecord(id="b" * 25, hostname="w1", role="worker", addr="127.0.0.2")
    _apply(st, log, {"op": "add_node", "node": w.to_dict(), "now": 10.0})
    _apply(st, log, {"op": "add_node", "node": w.to_dict(), "now": 11.0})  # refused: no event
    _apply(st, log, {"op": "set_status", "statuses": {"b" * 25: "down"}, "now": 12.5})
    _apply(st, log, {"op": "update_node", "node_id": "w1", "availability": "drain", "now": 13})
    got = [(e["Type"], e["Action"], e["Actor"]["Attributes"]) for _, e in log.after(0)]
    assert got == [
        ("node", "create", {"name": "w1"}),
        ("node", "update", {"name": "w1", "state.new": "down"}),
        ("node", "update", {"name": "w1", "availability.new": "drain"}),
    ]
    first = log.after(0)[1][1]
    assert (first["time"], first["timeNano"], first["scope"]) == (12, 12_500_000_000, "swarm")
    assert [e["Action"] for _, e in log.after(0, since=12.0, until=12.9)] == ["update"]
    assert log.after(0, types=["service"]) == []
    assert line(first).startswith("1970-01-01T00:00:12.500000000Z node update " + "b" * 25)
    assert "(name=w1, state.new=down)" in line(first)
    for i in range(6):  # only the last `keep` are kept
        _apply(
            st,
            log,
            {
                "op": "set_status",
                "statuses": {"b" * 25: "ready" if i % 2 == 0 else "down"},
                "now": 20.0 + i,
            },
        )
    assert len(log.after(0)) == 5 and log.seq == 9
    assert events_of({"op": "rotate_token"}, {"ok": {}}, st) == []

    async def wait_for_one() -> list[Any]:
        waiter = asyncio.ensure_future(log.wait(log.seq, 5.0))
        await asyncio.sleep(0.05)
        _apply(st, log, {"op": "update_node", "node_id": "w1", "label_add": {"k": "v"}, "now": 30})
        await waiter
        return log.after(9)

    assert len(asyncio.run(wait_for_one())) == 1


def test_node_filters() -> None:
    view = {"ID": "abc123", "Hostname": "web-1", "Role": "worker", "Labels": {"zone": "a"}}
    assert node_matches(view, node_filters(["role=worker", "name=web"]))
    assert node_matches(view, node_filters(["node.label=zone", "id=abc"]))
    assert node_matches(view, node_filters(["role=manager", "role=worker"]))  # any of one key
    assert not node_matches(view, node_filters(["node.label=zone=b"]))
    assert not node_matches(view, node_filters(["role=worker", "id=zzz"]))  # all keys
    for bad in ("role=boss", "color=red", "role"):
        with pytest.raises(FlagError, match="--filter"):
            node_filters([bad])


def test_cluster_inspect_pretty() -> None:
    st = _state()
    text = cluster_pretty(cluster_view(st))
    assert " Task History Retention Limit: 5" in text
    assert " Heartbeat Period: 5s" in text and " Expiry Duration: 2160h0m0s" in text
    assert "Autolock Managers:      false" in text and " Key Rotation: 12h0m0s" in text

"""The command gate of mixed-build clusters: a command newer than the baseline is committed only
once every manager has said its build applies it (meshkit.cluster.model.opgate), so that an
older manager never refuses an entry the others applied."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshkit.cluster.model import opgate
from meshkit.cluster.model import state as cs
from meshkit.cluster.raft.store import RAFT_OPS, RaftStore

from .test_store import SECRET, TIMINGS, _addr, _init_cmd, _run, _until

NEW_OP = "rotate_token"  # stands for a command a later build adds (taken out of the baseline)


def _state(*ops_of_managers: list[str]) -> cs.ClusterState:
    state = cs.ClusterState()
    for i, ops in enumerate(ops_of_managers):
        node = cs.NodeRecord(id=f"{i}" * 25, hostname=f"m{i}", role="manager", addr="127.0.0.1")
        node.raft_ops = ops
        state.nodes[node.id] = node
    return state


def test_the_baseline_is_every_command_of_this_build() -> None:
    # a command added later must not join the baseline: it is gated until announced
    assert set(cs.COMMANDS) == opgate.BASELINE_OPS


def test_a_command_past_the_baseline_waits_for_every_manager(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(opgate, "BASELINE_OPS", opgate.BASELINE_OPS - {NEW_OP})
    everything = opgate.announced_ops(cs.COMMANDS, RAFT_OPS)
    assert opgate.OPS_MARK in everything and "batch" in everything
    assert opgate.refusal(_state(everything, everything), NEW_OP, cs.COMMANDS) is None
    # a manager of the build before the gate recorded only its raft entry kinds
    why = opgate.refusal(_state(everything, ["batch"]), NEW_OP, cs.COMMANDS)
    assert why is not None and "manager m1 (111111111111)" in why and repr(NEW_OP) in why
    # one that never said anything (just started, or older still)
    assert opgate.refusal(_state([], everything), NEW_OP, cs.COMMANDS) is not None
    # a later build that announced, but not this command
    later = [op for op in everything if op != NEW_OP]
    assert opgate.refusal(_state(everything, later), NEW_OP, cs.COMMANDS) is not None
    # baseline commands are never held; an unknown one is left to the state machine
    assert opgate.refusal(_state(["batch"]), "set_role", cs.COMMANDS) is None
    assert opgate.refusal(_state(["batch"]), "no_such_op", cs.COMMANDS) is None


def test_the_store_refuses_before_the_log_until_the_manager_announces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(opgate, "BASELINE_OPS", opgate.BASELINE_OPS - {NEW_OP})
    rotate = {"op": NEW_OP, "role": "worker", "secret": "s1"}

    async def main() -> None:
        store = RaftStore(_addr(66), [], tmp_path, SECRET, TIMINGS)
        await store.start()
        try:
            await _until(lambda: store.is_leader, msg="leader")
            await store.submit(_init_cmd())
            before = store.status()["commit_index"]
            with pytest.raises(cs.CommandError, match="upgrade every manager"):
                await store.submit(rotate)
            assert store.status()["commit_index"] == before  # nothing entered the log
            ops = opgate.announced_ops(cs.COMMANDS, RAFT_OPS)
            await store.submit({"op": "set_raft_ops", "node_id": "a" * 25, "ops": ops,
                                "now": 1.5})  # fmt: skip
            index = store.state.index
            await store.submit(rotate)
            assert store.state.index == index + 1
        finally:
            store.close()

    _run(main)

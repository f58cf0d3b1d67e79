"""`meshkit service` output and flag handling, without an agent (the API call is replaced by
a recorder; the end-to-end tests in test_services_netns.py use real agents)."""

from __future__ import annotations

from typing import Any
from unittest import mock

import pytest

import meshkit.cli.service as sc
from meshkit.cli import main
from meshkit.cli.servicespec import build_spec


class Recorder:
    def __init__(self) -> None:
        self.calls: dict[str, Any] = {}

    def __call__(self, host: str | None, method: str, params: Any = None) -> Any:
        self.calls[method] = params
        if method == "service_inspect":
            return {"id": "abc", "spec": build_spec({"name": "w", "command": ["sleep", "1"]})}
        return {"id": "abc", "name": "w", "version": 2}


class Result:
    def __init__(self, exit_code: int, output: str) -> None:
        self.exit_code = exit_code
        self.output = output


def run(*args: str, capsys: pytest.CaptureFixture[str] | None = None) -> tuple[Any, Recorder]:
    """meshkit.cli.main (which maps errors to exit codes and messages) with the call recorded."""
    rec = Recorder()
    with mock.patch.object(sc, "_call", rec):
        code = main(["service", *args])
    out = ""
    if capsys is not None:
        got = capsys.readouterr()
        out = got.out + got.err
    return Result(code, out), rec


def test_create_passes_only_given_flags(capsys: pytest.CaptureFixture[str]) -> None:
    r, rec = run("create", "--detach", "--name", "w", "--replicas", "3", "-e", "A=1",
                 "--restart-delay", "2s", "--", "sleep", "5", capsys=capsys)  # fmt: skip
    assert r.exit_code == 0, r.output
    spec = rec.calls["service_create"]["spec"]
    assert spec["replicas"] == 3 and spec["env"] == ["A=1"]
    assert spec["command"] == ["sleep", "5"] and spec["restart"]["delay"] == 2.0
    assert spec["update"]["parallelism"] == 1  # swarm's default, not a flag given


def test_create_bad_flag_names_it(capsys: pytest.CaptureFixture[str]) -> None:
    r, rec = run(
        "create", "--detach", "--name", "w", "--restart-delay", "soon", "--", "true",
        capsys=capsys,
    )  # fmt: skip
    assert r.exit_code == 2
    assert "--restart-delay" in r.output and "soon" in r.output
    assert "service_create" not in rec.calls  # nothing sent


def test_update_splits_args_like_a_shell(capsys: pytest.CaptureFixture[str]) -> None:
    r, rec = run("update", "w", "--detach", "--args", "sleep 'nine s'", "--env-add", "B=2")
    assert r.exit_code == 0, r.output
    spec = rec.calls["service_update"]["spec"]
    assert spec["command"] == ["sleep", "nine s"] and spec["env"] == ["B=2"]
    r, _ = run("update", "w", "--detach", "--args", "sleep 'open", capsys=capsys)
    assert r.exit_code == 2 and "--args" in r.output


def test_unchanged_update_sends_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    r, rec = run("update", "w", "--detach", capsys=capsys)
    assert r.exit_code == 0
    assert "service_update" not in rec.calls and "unchanged" in r.output


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.2, "Less than a second"), (1, "1 second"), (42, "42 seconds"), (70, "About a minute"),
     (600, "10 minutes"), (3600, "About an hour"), (7200, "2 hours"), (3 * 86400, "3 days")],
)  # fmt: skip
def test_human_duration(seconds: float, text: str) -> None:
    assert sc.human_duration(seconds) == text


def task(slot: int, created: float, state: str, error: str = "", desired: str = "running") -> Any:
    return {
        "ID": f"t{slot}x{int(created)}".ljust(25, "0"),
        "Name": f"web.{slot}",
        "Slot": slot,
        "Node": "n1",
        "NodeID": "n1id",
        "DesiredState": desired,
        "State": state,
        "Error": error,
        "CreatedAt": created,
        "UpdatedAt": created,
        "Ports": "",
        "Current": True,
    }


def test_ps_rows_history_and_errors() -> None:
    long = "exited with code 2: " + "y" * 200 + "\nlast line"
    tasks = [
        task(2, 10, "running"),
        task(1, 5, "failed", long, "shutdown"),
        task(1, 9, "running"),
    ]
    headers, rows = sc.ps_rows(tasks, 20.0, no_trunc=True, width=None)
    assert headers == ["ID", "NAME", "NODE", "DESIRED STATE", "CURRENT STATE", "ERROR", "PORTS"]
    assert [r[1] for r in rows] == ["web.1", " \\_ web.1", "web.2"]
    assert rows[0][4] == "Running 11 seconds ago"
    assert rows[1][5] == '"' + long.replace("\n", " | ") + '"'  # whole, on one line
    _, narrow = sc.ps_rows(tasks, 20.0, no_trunc=False, width=120)
    cell = narrow[1][5]
    assert cell.endswith('..."') and 40 <= len(cell) < len(rows[1][5])


def test_progress_counts_current_running_tasks() -> None:
    tasks = [task(1, 1, "running"), task(2, 1, "starting")]
    reply = {"service": {"Mode": "replicated", "Desired": 2}, "tasks": tasks}
    lines, converged, done, total = sc.progress(reply, 1)
    assert (done, total, converged) == (1, 2, False)
    assert lines[0].startswith("1/2: running") and lines[1].startswith("2/2: starting")
    tasks[1]["State"] = "running"
    assert sc.progress(reply, 1)[1] is True
    tasks[0]["Current"] = False  # an old-spec task still running: not converged
    assert sc.progress(reply, 1)[1] is False


def test_progress_follows_the_slots_kept_not_slot_numbers() -> None:
    # after a node loss and a scale-down to 1 the orchestrator kept slot 2 (slot 1's task
    # was orphaned): converged, where counting slots 1..N waited for slot 1 for ever
    tasks = [task(1, 1, "orphaned", desired="shutdown"), task(2, 1, "running")]
    reply = {"service": {"Mode": "replicated", "Desired": 1}, "tasks": tasks}
    lines, converged, done, total = sc.progress(reply, 1)
    assert (done, total, converged) == (1, 1, True)
    assert lines == [lines[0]] and lines[0].startswith("1/1: running")
    # a replica not started yet is "waiting"; a slot still running past the replicas (a
    # scale-down under way) keeps it from converging
    reply["service"]["Desired"] = 2
    lines, converged, _, _ = sc.progress(reply, 1)
    assert lines[1] == "2/2: waiting" and not converged
    tasks.append(task(3, 1, "running"))
    tasks.append(task(4, 1, "running"))
    assert sc.progress(reply, 1)[1] is False

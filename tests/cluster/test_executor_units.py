"""Unit tests of the executor's sans-IO parts: sync planning, health verdicts, launch checks,
exit words and log files (rotation, tail, since)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from meshkit.cluster.tasks import logs as tasklogs
from meshkit.cluster.tasks import process as taskproc
from meshkit.cluster.tasks.executor import plan_sync
from meshkit.cluster.tasks.health import HealthConfig, HealthTracker, ProbeResult


def _task(task_id: str, desired: str = "running", state: str = "assigned") -> dict[str, object]:
    return {"id": task_id, "desired_state": desired, "state": state, "spec": {"command": ["x"]}}


# -- plan_sync ----------------------------------------------------------------------------


def test_plan_starts_unknown_running_tasks_only() -> None:
    plan = plan_sync(
        {},
        [
            _task("a"),
            _task("b", state="complete"),
            _task("c", desired="shutdown"),
            _task("d", desired="remove"),
            _task("e", state="running"),
        ],
    )
    assert [t["id"] for t in plan.start] == ["a", "e"]
    assert plan.stop == [] and plan.forget == []


def test_plan_stops_active_known_tasks_and_forgets_missing_ones() -> None:
    active = {"a": True, "b": True, "c": False, "d": True}
    plan = plan_sync(active, [_task("a"), _task("b", desired="shutdown"), _task("c", "remove")])
    assert plan.start == []
    assert plan.stop == ["b"]  # c already ended: nothing to stop
    assert plan.forget == ["d"]


def test_plan_is_idempotent_for_known_tasks() -> None:
    tasks = [_task("a"), _task("b")]
    first = plan_sync({}, tasks)
    assert len(first.start) == 2
    again = plan_sync({"a": True, "b": True}, tasks)
    assert again.start == [] and again.stop == [] and again.forget == []


# -- health -------------------------------------------------------------------------------

OK = ProbeResult(True, "exit code 0")
BAD = ProbeResult(False, "exit code 1, output: 'connection refused'")


def test_health_config_defaults_are_swarms() -> None:
    assert HealthConfig.from_spec(None) is None
    assert HealthConfig.from_spec({"cmd": ""}) is None
    cfg = HealthConfig.from_spec({"cmd": "true"})
    assert cfg == HealthConfig("true", 30.0, 30.0, 3, 0.0)


def test_first_success_is_healthy_once() -> None:
    tracker = HealthTracker(HealthConfig("true", retries=3), started=0.0)
    verdict = tracker.feed(OK, 1.0)
    assert verdict is not None and verdict.healthy
    assert tracker.feed(OK, 2.0) is None


def test_retries_consecutive_failures_make_unhealthy_with_last_output() -> None:
    tracker = HealthTracker(HealthConfig("curl -f x", retries=3), started=0.0)
    assert tracker.feed(BAD, 1.0) is None
    assert tracker.feed(BAD, 2.0) is None
    assert tracker.feed(OK, 3.0) is not None  # healthy, counter reset
    assert tracker.feed(BAD, 4.0) is None
    assert tracker.feed(BAD, 5.0) is None
    verdict = tracker.feed(BAD, 6.0)
    assert verdict is not None and not verdict.healthy
    assert "curl -f x" in verdict.error
    assert "3" in verdict.error
    assert "connection refused" in verdict.error
    assert tracker.feed(BAD, 7.0) is None  # reported once


def test_failures_inside_start_period_do_not_count() -> None:
    tracker = HealthTracker(HealthConfig("x", retries=1, start_period=10.0), started=100.0)
    for now in (101.0, 105.0, 109.9):
        assert tracker.feed(BAD, now) is None
    verdict = tracker.feed(BAD, 110.5)
    assert verdict is not None and not verdict.healthy


def test_success_ends_the_start_period() -> None:
    tracker = HealthTracker(HealthConfig("x", retries=1, start_period=10.0), started=0.0)
    assert tracker.feed(OK, 1.0) is not None
    verdict = tracker.feed(BAD, 2.0)
    assert verdict is not None and not verdict.healthy


# -- launch checks ------------------------------------------------------------------------


def test_plan_launch_finds_program_on_the_tasks_path() -> None:
    plan = taskproc.plan_launch({"command": ["sleep", "1"], "env": ["A=1"]}, "h1")
    assert plan.executable.endswith("/sleep")
    assert plan.env == {
        "PATH": taskproc.DEFAULT_PATH,
        "HOSTNAME": "h1",
        "HOME": plan.identity.home,
        "A": "1",
    }
    assert plan.cwd == "/"


def test_plan_launch_uses_path_from_spec_env(tmp_path: Path) -> None:
    prog = tmp_path / "myprog"
    prog.write_text("#!/bin/sh\n")
    prog.chmod(0o755)
    plan = taskproc.plan_launch({"command": ["myprog"], "env": [f"PATH={tmp_path}"]}, "h")
    assert plan.executable == str(prog)
    with pytest.raises(taskproc.LaunchError, match=r"exec: 'sleep': not found in PATH"):
        taskproc.plan_launch({"command": ["sleep"], "env": [f"PATH={tmp_path}"]}, "h")


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ({"command": ["ngnix"]}, "exec: 'ngnix': not found in PATH"),
        ({"command": ["/no/such/prog"]}, "exec: '/no/such/prog': no such file or directory"),
        ({"command": ["/etc/passwd"]}, "exec: '/etc/passwd': permission denied"),
        ({"command": []}, "the task has no command"),
        ({"command": ["true"], "workdir": "/no/such/dir"}, "workdir '/no/such/dir': no such"),
        ({"command": ["true"], "workdir": "rel"}, "workdir 'rel': not an absolute path"),
        ({"command": ["true"], "user": "no-such-user-x"}, "no user named 'no-such-user-x'"),
        ({"command": ["true"], "user": "nobody:no-such-grp"}, "no group named 'no-such-grp'"),
        ({"command": ["true"], "env": ["NOEQUALS"]}, "env 'NOEQUALS': not in KEY=VALUE form"),
    ],
)
def test_plan_launch_says_why_a_task_cannot_start(spec: dict[str, object], words: str) -> None:
    with pytest.raises(taskproc.LaunchError) as err:
        taskproc.plan_launch(spec, "h")
    assert words in str(err.value)


def test_resolve_user_forms() -> None:
    nobody = taskproc.resolve_user("nobody")
    assert nobody.uid == 65534 and nobody.gid is not None
    assert taskproc.resolve_user("65534").uid == 65534
    both = taskproc.resolve_user("65534:0")
    assert (both.uid, both.gid) == (65534, 0)
    unknown = taskproc.resolve_user("54321")
    assert (unknown.uid, unknown.gid, unknown.home) == (54321, 0, "/")
    agent = taskproc.resolve_user("")
    assert agent.uid is None and agent.gid is None


# -- exit words ---------------------------------------------------------------------------


def test_describe_exit() -> None:
    assert taskproc.describe_exit(3, "boom") == "exited with code 3: boom"
    assert taskproc.describe_exit(2, "") == "exited with code 2"
    assert taskproc.describe_exit(-signal.SIGKILL, "") == "exited on signal SIGKILL"
    assert taskproc.exit_code_of(-signal.SIGTERM) == 143
    assert taskproc.exit_code_of(4) == 4


def test_tail_text_keeps_last_lines_within_a_kib() -> None:
    data = b"".join(b"line %d\n" % i for i in range(20))
    assert taskproc.tail_text(data) == "line 15\nline 16\nline 17\nline 18\nline 19"
    long = b"a" * 3000 + b"\n" + b"b" * 900 + b"\nlast\n"
    text = taskproc.tail_text(long)
    assert text == "b" * 900 + "\nlast"


def test_start_time_identifies_live_processes_only() -> None:
    ticks = taskproc.start_time(os.getpid())
    assert isinstance(ticks, int) and ticks > 0
    assert taskproc.start_time(2**22 + 7) is None


# -- log files ----------------------------------------------------------------------------


def _append(task_dir: Path, stream: str, text: str) -> None:
    with open(tasklogs.log_path(task_dir, stream), "a") as f:
        f.write(text)


def test_open_streams_creates_append_files(tmp_path: Path) -> None:
    fds = tasklogs.open_streams(tmp_path)
    try:
        os.write(fds["stdout"], b"one\n")
        os.write(fds["stderr"], b"two\n")
    finally:
        for fd in fds.values():
            os.close(fd)
    assert tasklogs.read_stream(tmp_path, "stdout") == (["one"], 4)
    assert tasklogs.read_stream(tmp_path, "stderr") == (["two"], 4)


def test_rotation_keeps_files_and_absolute_offsets(tmp_path: Path) -> None:
    for i in range(10):
        _append(tmp_path, "stdout", f"line {i}\n")  # 7 bytes each
    assert tasklogs.rotate(tmp_path, max_bytes=100) == []
    lines, mark = tasklogs.read_stream(tmp_path, "stdout", tail=2)
    assert lines == ["line 8", "line 9"] and mark == 70
    assert tasklogs.rotate(tmp_path, max_bytes=50) == ["stdout"]
    assert tasklogs.log_path(tmp_path, "stdout").stat().st_size == 0
    assert tasklogs.log_path(tmp_path, "stdout", 1).stat().st_size == 70
    _append(tmp_path, "stdout", "line 10\n")
    # since continues after the rotation, without repeating or losing lines
    lines, mark2 = tasklogs.read_stream(tmp_path, "stdout", since=mark)
    assert lines == ["line 10"] and mark2 == 78
    lines, _ = tasklogs.read_stream(tmp_path, "stdout", tail=3)
    assert lines == ["line 8", "line 9", "line 10"]
    all_lines, _ = tasklogs.read_stream(tmp_path, "stdout")
    assert all_lines == [f"line {i}" for i in range(11)]


def test_rotation_drops_beyond_keep(tmp_path: Path) -> None:
    for round_ in range(4):
        _append(tmp_path, "stderr", f"round {round_}\n" * 10)
        assert tasklogs.rotate(tmp_path, max_bytes=10, keep=3) == ["stderr"]
    assert not tasklogs.log_path(tmp_path, "stderr", 3).exists()
    lines, end = tasklogs.read_stream(tmp_path, "stderr")
    assert lines == ["round 2"] * 10 + ["round 3"] * 10
    # an offset older than what is kept starts at the oldest kept byte
    older, _ = tasklogs.read_stream(tmp_path, "stderr", since=0)
    assert older == lines
    assert tasklogs.read_stream(tmp_path, "stderr", since=end) == ([], end)


def test_partial_line_held_back_while_running(tmp_path: Path) -> None:
    _append(tmp_path, "stdout", "done\npart")
    assert tasklogs.read_stream(tmp_path, "stdout", complete_only=True) == (["done"], 5)
    assert tasklogs.read_stream(tmp_path, "stdout") == (["done", "part"], 9)
    _append(tmp_path, "stdout", "ial\n")
    assert tasklogs.read_stream(tmp_path, "stdout", since=5, complete_only=True) == (
        ["partial"],
        13,
    )


def test_tail_reads_across_large_files(tmp_path: Path) -> None:
    _append(tmp_path, "stdout", "".join(f"{i:07d}\n" for i in range(30000)))  # 240 kB
    lines, _ = tasklogs.read_stream(tmp_path, "stdout", tail=3)
    assert lines == ["0029997", "0029998", "0029999"]
    lines, _ = tasklogs.read_stream(tmp_path, "stdout", tail=20000)
    assert len(lines) == 20000 and lines[0] == "0010000"
    assert tasklogs.read_stream(tmp_path, "stdout", tail=0)[0] == []


def test_read_tail_bytes_spans_rotation(tmp_path: Path) -> None:
    _append(tmp_path, "stderr", "first\nsecond\n")
    tasklogs.rotate(tmp_path, max_bytes=1)
    _append(tmp_path, "stderr", "third\n")
    assert tasklogs.read_tail_bytes(tmp_path, "stderr", 13) == b"second\nthird\n"


def test_plan_shell_runs_like_the_task_without_needing_its_program() -> None:
    spec = {"command": ["no-such-program"], "env": ["A=1"], "user": "nobody", "workdir": "/tmp"}
    plan = taskproc.plan_shell(spec, "h", "exit 0")
    assert plan.argv == ["/bin/sh", "-c", "exit 0"] and plan.executable == "/bin/sh"
    assert plan.env["A"] == "1" and plan.cwd == "/tmp" and plan.identity.uid == 65534


def test_readers_never_see_half_a_rotation(tmp_path: Path) -> None:
    # rotate() runs in a worker thread while the loop reads: every read, taken at any moment,
    # is the whole stream so far, in order (CI once read [] just after .1 appeared)
    import threading

    fds = tasklogs.open_streams(tmp_path)
    written: list[str] = []
    stop = threading.Event()

    def rotator() -> None:
        while not stop.is_set():
            tasklogs.rotate(tmp_path, max_bytes=200, keep=1000)

    worker = threading.Thread(target=rotator)
    worker.start()
    try:
        i = 0
        # at least 400 lines, and on until the rotator has rotated a few times: on a busy CI
        # host the thread may get the GIL rarely (once it had rotated 4 times in 400 lines)
        while i < 400 or (len(list(tmp_path.glob("stdout.log.*"))) <= 5 and i < 4000):
            line = f"line {i:04d} " + "x" * (i % 37)
            os.write(fds["stdout"], (line + "\n").encode())
            written.append(line)
            got, _ = tasklogs.read_stream(tmp_path, "stdout")
            assert got == written, f"after line {i}: read {len(got)} of {len(written)} lines"
            if i % 8 == 0:
                time.sleep(0.0005)  # let the rotator in between reads too
            i += 1
    finally:
        stop.set()
        worker.join()
        for fd in fds.values():
            os.close(fd)
    assert len(list(tmp_path.glob("stdout.log.*"))) > 5  # it did rotate, many times
    assert not list(tmp_path.glob("*.tmp"))

"""cgroups without a kernel: detection from mountinfo text, and the files a task's cgroup
writes, against folders laid out as v2 and v1 hierarchies (the v1 path also runs for real in
test_taskruntime_exec on hosts that have it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshkit.cluster.tasks import cgroups

V1_AND_EMPTY_V2 = """\
30 25 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
32 30 0:28 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
33 30 0:29 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
34 30 0:30 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
35 30 0:31 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""


def test_detect_v1_with_an_empty_v2(tmp_path: Path) -> None:
    unified = tmp_path / "unified"
    unified.mkdir()
    (unified / "cgroup.controllers").write_text("hugetlb\n")
    text = V1_AND_EMPTY_V2.replace("/sys/fs/cgroup/unified", str(unified))
    setup = cgroups.detect(text)
    assert setup.version == "v1"
    assert setup.v1 == {
        "cpu": "/sys/fs/cgroup/cpu", "cpuacct": "/sys/fs/cgroup/cpuacct",
        "memory": "/sys/fs/cgroup/memory", "pids": "/sys/fs/cgroup/pids",
    }  # fmt: skip
    assert setup.describe() == (
        f"cgroup v1 controllers cpu, memory, pids, cpuacct; cgroup v2 at {unified} has "
        "hugetlb (unused)"
    )


def test_detect_v2_and_none(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    text = f"25 1 0:22 / {tmp_path} rw - cgroup2 cgroup2 rw,nsdelegate\n"
    setup = cgroups.detect(text)
    assert setup.version == "v2" and setup.v2_root == str(tmp_path)
    assert "cgroup v2 at" in setup.describe() and "memory" in setup.describe()
    none = cgroups.detect("")
    assert none.version == "none" and "cannot be applied" in none.describe()
    with pytest.raises(cgroups.CgroupError):
        cgroups.TaskCgroup.create("t1", {"memory_bytes": 1 << 26}, none)


def v2_tree(root: Path) -> cgroups.CgroupSetup:
    (root / "cgroup.controllers").write_text("cpu io memory pids\n")
    (root / "cgroup.subtree_control").write_text("")
    return cgroups.detect(f"25 1 0:22 / {root} rw - cgroup2 cgroup2 rw\n")


def test_v2_writes_cpu_max_memory_max_pids_max(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(cgroups.PARENT_ENV, "mk")
    setup = v2_tree(tmp_path)
    limits = {"nano_cpus": 200_000_000, "memory_bytes": 64 << 20, "pids": 50}
    cg = cgroups.TaskCgroup.create("task1", limits, setup)
    d = tmp_path / "mk" / "task1"
    assert cg.dirs == [str(d)]
    assert (d / "cpu.max").read_text() == "20000 100000"
    assert (d / "memory.max").read_text() == str(64 << 20)
    assert (d / "pids.max").read_text() == "50"
    # the controllers are handed down: root -> meshkit's parent
    assert (tmp_path / "cgroup.subtree_control").read_text() == "+cpu +memory +pids"
    assert cg.procs_files == [str(d / "cgroup.procs").encode()]
    (d / "memory.events").write_text("low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\n")
    assert cg.oom_kills() == 1
    (d / "cpu.stat").write_text("usage_usec 1500\nuser_usec 1000\n")
    assert cg.cpu_usage_ns() == 1_500_000
    # state.json round trip (an agent restart removes it later)
    assert cgroups.TaskCgroup.from_dict(cg.to_dict()) == cg


def test_v1_writes_cfs_quota_memory_and_memsw(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(cgroups.PARENT_ENV, "mk")
    points = {c: tmp_path / c for c in ("cpu", "cpuacct", "memory", "pids")}
    # memsw exists where the kernel accounts swap: it is set with the memory limit
    (points["memory"] / "mk" / "t2").mkdir(parents=True)
    (points["memory"] / "mk" / "t2" / "memory.memsw.limit_in_bytes").write_text("0")
    setup = cgroups.CgroupSetup("v1", "", {c: str(p) for c, p in points.items()})
    limits = {"nano_cpus": 1_500_000_000, "memory_bytes": 256 << 20, "pids": 0}
    cg = cgroups.TaskCgroup.create("t2", limits, setup)
    # no pids limit: the pids hierarchy is left out (one cgroup migration less)
    wanted = [str(points[c] / "mk" / "t2") for c in ("cpu", "memory", "cpuacct")]
    assert sorted(cg.dirs) == sorted(wanted)
    cpu = points["cpu"] / "mk" / "t2"
    assert (cpu / "cpu.cfs_period_us").read_text() == "100000"
    assert (cpu / "cpu.cfs_quota_us").read_text() == "150000"
    mem = points["memory"] / "mk" / "t2"
    assert (mem / "memory.limit_in_bytes").read_text() == str(256 << 20)
    assert (mem / "memory.memsw.limit_in_bytes").read_text() == str(256 << 20)
    assert not (points["pids"] / "mk" / "t2").exists()
    (mem / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
    assert cg.oom_kills() == 2


def test_v1_old_kernel_counts_failcnt_with_a_sigkill(tmp_path: Path) -> None:
    mem = tmp_path / "memory" / "t3"
    mem.mkdir(parents=True)
    (mem / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\n")
    (mem / "memory.failcnt").write_text("7\n")
    cg = cgroups.TaskCgroup("v1", [str(mem)], {"memory_bytes": 1 << 26})
    assert cg.oom_kills(killed_by_sigkill=True) == 1
    assert cg.oom_kills(killed_by_sigkill=False) == 0


def test_node_resources_are_this_hosts() -> None:
    res = cgroups.node_resources()
    assert res["NanoCPUs"] >= 10**9 and res["MemoryBytes"] > 1 << 20


def test_hierarchies_from_proc_cgroups() -> None:
    text = (
        "#subsys_name\thierarchy\tnum_cgroups\tenabled\n"
        "cpuset\t3\t1\t1\ncpu\t1\t1\t1\ncpuacct\t1\t1\t1\nmemory\t4\t80\t1\n"
        "hugetlb\t0\t1\t1\npids\t8\t1\t1\nrdma\t0\t1\t0\n"
    )
    v1, v2 = cgroups.hierarchies(text)
    assert v1 == [["cpu", "cpuacct"], ["cpuset"], ["memory"], ["pids"]]
    assert v2 == ["hugetlb"]  # rdma is disabled


def test_mount_own_leaves_a_populated_root_alone(tmp_path: Path) -> None:
    (tmp_path / "something").mkdir()
    assert cgroups.mount_own(str(tmp_path)) is False

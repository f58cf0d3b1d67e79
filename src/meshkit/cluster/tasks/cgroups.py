"""Resource limits of tasks through cgroups: v2 (the unified hierarchy) or v1 controllers.

``detect()`` reads /proc/self/mountinfo: a cgroup2 mount whose ``cgroup.controllers`` offers
cpu, memory and pids means v2; otherwise the v1 hierarchies that hold cpu, cpuacct, memory and
pids are used (a host may mount both, with an empty v2, as this project's CI does: then v1).
``TaskCgroup.create`` makes one cgroup per task (``<hierarchy>/<parent>/<task id>``, the parent
being ``meshkit`` as Docker's is ``docker``; on v1 only in the hierarchies of the limits asked
for, cpuacct going with cpu) and writes its limits:

    v2  cpu.max "QUOTA 100000", memory.max, memory.swap.max 0, pids.max
    v1  cpu.cfs_period_us 100000 + cpu.cfs_quota_us, memory.limit_in_bytes
        (+ memory.memsw.limit_in_bytes, the same: no swap beyond the limit), pids.max

The task's process joins it before it execs: the launch's preexec writes its own pid into
every ``cgroup.procs`` of ``procs_files`` (no window in which it runs unlimited). When the task
has ended, ``oom_kills()`` says whether the kernel's OOM killer acted in it (v2 memory.events
``oom_kill``; v1 memory.oom_control ``oom_kill``, or memory.failcnt with a SIGKILL where the
kernel has no such counter) and ``remove()`` kills what is left in it and removes it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONTROLLERS = ("cpu", "memory", "pids")
V1_EXTRA = ("cpuacct",)  # usage accounting (cpuacct.usage), for `doctor`, tests and benches
DEFAULT_PARENT = "meshkit"
PARENT_ENV = "MESHKIT_CGROUP_PARENT"
CFS_PERIOD = 100_000  # µs, the kernel's default period, as Docker uses
MOUNTINFO = "/proc/self/mountinfo"
PROC_CGROUPS = "/proc/cgroups"
CGROUP_ROOT = "/sys/fs/cgroup"


class CgroupError(OSError):
    """A task's cgroup cannot be made or limited; the message says which file and why."""


@dataclass(frozen=True)
class CgroupSetup:
    """What this host offers: "v2", "v1" or "none", and where each controller is mounted."""

    version: str
    v2_root: str = ""
    v1: dict[str, str] = field(default_factory=dict)  # controller -> mount point
    v2_controllers: tuple[str, ...] = ()

    def describe(self) -> str:
        """One line for `doctor`, naming the version and the controllers."""
        if self.version == "v2":
            return f"cgroup v2 at {self.v2_root} (controllers {', '.join(self.v2_controllers)})"
        if self.version == "v1":
            names = ", ".join(c for c in (*CONTROLLERS, *V1_EXTRA) if c in self.v1)
            extra = ""
            if self.v2_root:
                empty = ", ".join(self.v2_controllers) or "no controllers"
                extra = f"; cgroup v2 at {self.v2_root} has {empty} (unused)"
            return f"cgroup v1 controllers {names}{extra}"
        return "no cgroup controllers for cpu, memory, pids: resource limits cannot be applied"

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "v2_root": self.v2_root,
            "v1": dict(self.v1),
            "v2_controllers": list(self.v2_controllers),
            "text": self.describe(),
        }


def parse_mountinfo(text: str) -> tuple[list[str], dict[str, str]]:
    """cgroup2 mount points, and v1 controller -> mount point, from mountinfo text."""
    v2: list[str] = []
    v1: dict[str, str] = {}
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields = left.split()
        rest = right.split()
        if len(fields) < 5 or len(rest) < 3:
            continue
        point = fields[4].replace("\\040", " ")
        fstype, options = rest[0], rest[2]
        if fstype == "cgroup2":
            v2.append(point)
        elif fstype == "cgroup":
            for opt in options.split(","):
                if opt in (*CONTROLLERS, *V1_EXTRA) and opt not in v1:
                    v1[opt] = point
    return v2, v1


def detect(mountinfo: str | None = None, prefix: str = "") -> CgroupSetup:
    """This host's cgroup setup (see the module docstring). A process whose mount namespace
    has no cgroup filesystem at all (``ip netns exec`` mounts a fresh /sys without them)
    mounts the kernel's hierarchies itself (``mount_own``)."""
    if mountinfo is None:
        try:
            mountinfo = Path(MOUNTINFO).read_text()
        except OSError:
            mountinfo = ""
        found = detect(mountinfo)
        if found.version != "none" or os.geteuid() != 0 or not mount_own():
            return found
        with contextlib.suppress(OSError):
            return detect(Path(MOUNTINFO).read_text())
        return found
    v2_points, v1 = parse_mountinfo(mountinfo)
    v2_points = [prefix + p for p in v2_points]
    v1 = {c: prefix + p for c, p in v1.items()}
    v2_root = v2_points[0] if v2_points else ""
    offered: tuple[str, ...] = ()
    if v2_root:
        with contextlib.suppress(OSError):
            offered = tuple(Path(v2_root, "cgroup.controllers").read_text().split())
    if v2_root and all(c in offered for c in CONTROLLERS):
        return CgroupSetup("v2", v2_root, {}, offered)
    if all(c in v1 for c in CONTROLLERS):
        return CgroupSetup("v1", v2_root, v1, offered)
    return CgroupSetup("none", v2_root, v1, offered)


def hierarchies(proc_cgroups: str) -> tuple[list[list[str]], list[str]]:
    """/proc/cgroups -> the v1 hierarchies (their controllers, mounted together) and the
    enabled controllers that are on no v1 hierarchy (v2's)."""
    by_id: dict[int, list[str]] = {}
    v2: list[str] = []
    for line in proc_cgroups.splitlines():
        fields = line.split()
        if len(fields) < 4 or line.startswith("#") or fields[3] != "1":
            continue
        if fields[1] == "0":
            v2.append(fields[0])
        else:
            by_id.setdefault(int(fields[1]), []).append(fields[0])
    return [by_id[k] for k in sorted(by_id)], v2


def mount_own(root: str = CGROUP_ROOT) -> bool:
    """Mount the kernel's cgroup hierarchies (the ones holding cpu, cpuacct, memory, pids;
    or cgroup2) under ``root``, as the host has them, in this process's mount namespace; only
    when nothing is mounted there (a fresh sysfs of ``ip netns exec``). False when it did not."""
    try:
        if os.listdir(root) or not os.path.isdir(root):
            return False
        v1, v2 = hierarchies(Path(PROC_CGROUPS).read_text())
    except OSError:
        return False
    from meshkit.cluster.tasks.mounts import mount_fs

    wanted = [h for h in v1 if any(c in h for c in (*CONTROLLERS, *V1_EXTRA))]
    try:
        mount_fs(b"tmpfs", root.encode(), b"tmpfs", b"mode=755")
        for group in wanted:
            point = os.path.join(root, ",".join(group))
            os.mkdir(point)
            mount_fs(b"cgroup", point.encode(), b"cgroup", ",".join(group).encode())
        if all(c in v2 for c in CONTROLLERS):
            os.mkdir(os.path.join(root, "unified"))
            mount_fs(b"cgroup2", os.path.join(root, "unified").encode(), b"cgroup2", None)
    except OSError:
        return False
    return True


_setup: CgroupSetup | None = None


def host_setup() -> CgroupSetup:
    """``detect()`` once per process."""
    global _setup
    if _setup is None:
        _setup = detect()
    return _setup


def parent_name() -> str:
    name = os.environ.get(PARENT_ENV, "").strip("/") or DEFAULT_PARENT
    if ".." in name.split("/"):
        raise CgroupError(f"{PARENT_ENV}={name!r}: '..' is not allowed")
    return name


def _write(path: Path, value: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(value)
    except OSError as exc:
        raise CgroupError(
            exc.errno or 0, f"cannot write {value!r} to {path}: {exc.strerror or exc}"
        ) from None


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _keyed(path: Path, key: str) -> int | None:
    """The value of ``key`` in a flat keyed file (memory.events, memory.oom_control)."""
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        return None
    return None


@dataclass
class TaskCgroup:
    """One task's cgroup: its directories (one per v1 hierarchy, or one v2 directory)."""

    version: str
    dirs: list[str]
    limits: dict[str, int] = field(default_factory=dict)

    @property
    def procs_files(self) -> list[bytes]:
        """Where the task's process writes its pid before it execs (bytes: for a preexec)."""
        return [os.fsencode(os.path.join(d, "cgroup.procs")) for d in self.dirs]

    @classmethod
    def create(
        cls, task_id: str, limits: dict[str, int], setup: CgroupSetup | None = None
    ) -> TaskCgroup:
        """Make the task's cgroup and write ``limits`` (taskrt.limits' keys); CgroupError."""
        setup = setup or host_setup()
        if setup.version == "none":
            raise CgroupError(0, setup.describe())
        parent = parent_name()
        if setup.version == "v2":
            root = Path(setup.v2_root)
            here = root
            for part in parent.split("/"):
                _enable_v2(here)
                here = here / part
                here.mkdir(exist_ok=True)
            _enable_v2(here)
            cg = cls("v2", [str(here / task_id)], dict(limits))
        else:
            # only the hierarchies of the limits asked for: each one the process joins costs
            # the kernel a cgroup migration (cpuacct goes with cpu, for the usage counter)
            needed = {
                "cpu": bool(limits.get("nano_cpus")),
                "cpuacct": bool(limits.get("nano_cpus")),
                "memory": bool(limits.get("memory_bytes")),
                "pids": bool(limits.get("pids")),
            }
            dirs = []
            for ctrl in (*CONTROLLERS, *V1_EXTRA):
                point = setup.v1.get(ctrl)
                path = str(Path(point, parent, task_id)) if point is not None else ""
                if needed[ctrl] and path and path not in dirs:
                    dirs.append(path)
            cg = cls("v1", dirs, dict(limits))
        try:
            for d in cg.dirs:
                Path(d).mkdir(parents=True, exist_ok=True)
            cg._apply(setup)
        except OSError as exc:
            cg.remove()
            if isinstance(exc, CgroupError):
                raise
            raise CgroupError(exc.errno or 0, f"cannot make the task's cgroup: {exc}") from None
        return cg

    def _apply(self, setup: CgroupSetup) -> None:
        cpus, mem, pids = (self.limits.get(k, 0) for k in ("nano_cpus", "memory_bytes", "pids"))
        quota = max(1000, cpus * CFS_PERIOD // 1_000_000_000) if cpus else 0
        if self.version == "v2":
            d = Path(self.dirs[0])
            if cpus:
                _write(d / "cpu.max", f"{quota} {CFS_PERIOD}")
            if mem:
                _write(d / "memory.max", str(mem))
                if (d / "memory.swap.max").exists():
                    _write(d / "memory.swap.max", "0")
            if pids:
                _write(d / "pids.max", str(pids))
            return
        cpu_dir = Path(setup.v1["cpu"], parent_name(), self._name)
        mem_dir = Path(setup.v1["memory"], parent_name(), self._name)
        pid_dir = Path(setup.v1["pids"], parent_name(), self._name)
        if cpus:
            _write(cpu_dir / "cpu.cfs_period_us", str(CFS_PERIOD))
            _write(cpu_dir / "cpu.cfs_quota_us", str(quota))
        if mem:
            _write(mem_dir / "memory.limit_in_bytes", str(mem))
            if (mem_dir / "memory.memsw.limit_in_bytes").exists():
                _write(mem_dir / "memory.memsw.limit_in_bytes", str(mem))
        if pids:
            _write(pid_dir / "pids.max", str(pids))

    @property
    def _name(self) -> str:
        return os.path.basename(self.dirs[0].rstrip("/"))

    def _file(self, name: str) -> Path | None:
        """The control file ``name`` of this cgroup (v1: in whichever hierarchy has it)."""
        if self.version == "v2":
            return Path(self.dirs[0], name) if self.dirs else None
        for d in self.dirs:
            if Path(d, name).exists():
                return Path(d, name)
        return None

    # -- after the task ended ----------------------------------------------------------------

    def oom_kills(self, killed_by_sigkill: bool = False) -> int:
        """How many processes the OOM killer killed in this cgroup (0: none seen)."""
        if not self.limits.get("memory_bytes"):
            return 0
        if self.version == "v2":
            path = self._file("memory.events")
            count = _keyed(path, "oom_kill") if path is not None else None
            return count or 0
        path = self._file("memory.oom_control")
        count = _keyed(path, "oom_kill") if path is not None else None
        if count is not None:
            return count
        failcnt = self._file("memory.failcnt")
        fails = _read_int(failcnt) if failcnt is not None else None
        return 1 if killed_by_sigkill and fails else 0  # an old kernel: no oom_kill counter

    def cpu_usage_ns(self) -> int | None:
        """CPU time used by the task's processes so far, in ns."""
        if self.version == "v2":
            path = self._file("cpu.stat")
            usec = _keyed(path, "usage_usec") if path is not None else None
            return None if usec is None else usec * 1000
        path = self._file("cpuacct.usage")
        return _read_int(path) if path is not None else None

    def pids(self) -> list[int]:
        found: set[int] = set()
        for d in self.dirs:
            with contextlib.suppress(OSError, ValueError):
                found.update(int(x) for x in Path(d, "cgroup.procs").read_text().split())
        return sorted(found)

    def remove(self, timeout: float = 2.0) -> bool:
        """Kill whatever still runs in it and remove every directory; False if some stay."""
        deadline = time.monotonic() + timeout
        left = list(self.dirs)
        while left:
            for pid in self.pids():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            still = []
            for d in left:
                try:
                    os.rmdir(d)
                except FileNotFoundError:
                    pass
                except OSError:
                    still.append(d)
            left = still
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        return not left

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "dirs": list(self.dirs), "limits": dict(self.limits)}

    @classmethod
    def from_dict(cls, data: Any) -> TaskCgroup | None:
        if not isinstance(data, dict) or data.get("version") not in ("v1", "v2"):
            return None
        dirs = [str(d) for d in data.get("dirs") or []]
        lim = {str(k): int(v) for k, v in (data.get("limits") or {}).items()}
        return cls(str(data["version"]), dirs, lim)


def of_task(task_id: str, setup: CgroupSetup | None = None) -> TaskCgroup | None:
    """The cgroup a task would have, by name (for a task whose state file is lost)."""
    setup = setup or host_setup()
    parent = parent_name()
    if setup.version == "v2":
        dirs = [str(Path(setup.v2_root, parent, task_id))]
    else:
        dirs = [str(Path(p, parent, task_id)) for p in dict.fromkeys(setup.v1.values())]
    dirs = [d for d in dirs if os.path.isdir(d)]
    return TaskCgroup(setup.version, dirs) if dirs else None


def _enable_v2(path: Path) -> None:
    """Let the children of ``path`` use cpu, memory and pids (v2's subtree_control)."""
    control = path / "cgroup.subtree_control"
    try:
        enabled = control.read_text().split()
    except OSError:
        return
    missing = [c for c in CONTROLLERS if c not in enabled]
    if missing:
        _write(control, " ".join("+" + c for c in missing))


def join(procs_files: Iterable[bytes]) -> None:
    """In a child before exec: move the calling process into each cgroup."""
    pid = str(os.getpid()).encode()
    for path in procs_files:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, pid)
        finally:
            os.close(fd)


def node_resources() -> dict[str, int]:
    """What this node offers tasks, in Docker's node fields: NanoCPUs, MemoryBytes."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except OSError:
        cpus = os.cpu_count() or 1
    memory = 0
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = int(line.split()[1]) * 1024
                break
    return {"NanoCPUs": cpus * 1_000_000_000, "MemoryBytes": memory}

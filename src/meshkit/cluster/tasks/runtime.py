"""What a task's launch needs beyond its command: prepared by the agent just before it spawns.

``prepare`` makes the task's cgroup with its limits (``cgroups``), checks and resolves its
mounts (``mounts.prepare``), expands its hostname template, writes its own resolv.conf when
the spec has ``dns`` settings (into the task's state dir, bound over /etc/resolv.conf in its
mount namespace), and wraps the command in the tiny init (``taskinit``) with ``init``. Any
failure is a ``LaunchError`` with the words `service ps` shows; a cgroup made before it is
removed again.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

from meshkit.base import netns as tasknetns
from meshkit.cluster.model import taskrt
from meshkit.cluster.tasks import cgroups, taskinit
from meshkit.cluster.tasks import mounts as taskmounts
from meshkit.cluster.tasks.process import ChildExtras, LaunchError, LaunchPlan
from meshkit.cluster.tasks.reporting import TaskRun

INIT_SCRIPT = os.path.abspath(taskinit.__file__)
HOST_RESOLV = Path("/etc/resolv.conf")
TASK_RESOLV = "resolv.conf"


@dataclasses.dataclass
class Prepared:
    plan: LaunchPlan
    extras: ChildExtras


def task_hostname(t: TaskRun, node_id: str, node_hostname: str) -> str:
    template = str(t.spec.get("hostname") or "")
    if not template:
        return ""
    return taskrt.expand_hostname(
        template,
        node_hostname=node_hostname,
        node_id=node_id,
        service_name=str(t.record.get("service_name") or ""),
        service_id=str(t.record.get("service_id") or ""),
        slot=int(t.record.get("slot") or 0),
        task_id=t.id,
    )


def _base_resolv(netns: str | None) -> str:
    path = tasknetns.ETC_NETNS / netns / "resolv.conf" if netns else HOST_RESOLV
    try:
        return path.read_text()
    except OSError:
        return ""


def prepare(
    t: TaskRun, plan: LaunchPlan, *, data_dir: Path, node_id: str, node_hostname: str
) -> Prepared:
    """Everything but the namespaces and files (see the module docstring)."""
    spec: dict[str, Any] = t.spec
    extras = ChildExtras()
    try:
        extras.mounts = taskmounts.prepare(spec.get("mounts") or [], data_dir, node_hostname)
    except taskmounts.MountError as exc:
        raise LaunchError(str(exc)) from None
    name = task_hostname(t, node_id, node_hostname)
    if name:
        extras.hostname = name.encode()
        plan = dataclasses.replace(plan, env={**plan.env, "HOSTNAME": name})
    dns = spec.get("dns") or {}
    if taskmounts.has_dns(dns):
        path = t.dir / TASK_RESOLV
        t.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.write_text(taskmounts.resolv_conf(_base_resolv(t.netns), dns))
        os.chmod(path, 0o644)
        extras.resolv = os.fsencode(path)
    if spec.get("init"):
        plan = dataclasses.replace(
            plan,
            argv=[sys.executable, "-I", "-S", INIT_SCRIPT, plan.executable, *plan.argv],
            executable=sys.executable,
        )
    limits = taskrt.limits(spec)
    if any(limits.values()):
        try:
            t.cgroup = cgroups.TaskCgroup.create(t.id, limits)
        except cgroups.CgroupError as exc:
            raise LaunchError(
                f"cannot apply the task's resource limits: {exc.strerror or exc}"
            ) from None
        extras.cgroup_procs = t.cgroup.procs_files
    return Prepared(plan, extras)


def oom_error(t: TaskRun) -> str:
    mem = taskrt.limits(t.spec)["memory_bytes"]
    return f"OOM killed (memory limit {taskrt.format_bytes(mem)})"

"""What the executor holds about each task and how it tells: ``TaskRun`` (one task's state,
persisted in its ``state.json``) and ``Reporter`` (status updates to the agent's ``report``
callback, and the terminal state recorded before it is reported).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshkit.base.files import write_private
from meshkit.cluster.model.taskrt import parse_signal
from meshkit.cluster.tasks.cgroups import TaskCgroup

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
DEFAULT_STOP_GRACE = 10.0


@dataclass
class TaskRun:
    """What the executor holds about one task (its state.json, in memory)."""

    id: str
    record: dict[str, Any]
    dir: Path
    netns: str | None = None
    pid: int | None = None
    start_ticks: int | None = None
    started_at: float | None = None
    popen: subprocess.Popen[bytes] | None = None
    exited: bool = False
    final: dict[str, Any] | None = None
    forget: bool = False
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    supervisor: asyncio.Task[None] | None = None
    cgroup: TaskCgroup | None = None  # its limits (None: no limits, no cgroup)
    oom_killed: bool = False  # the OOM killer acted in its cgroup (read before removal)

    @property
    def spec(self) -> dict[str, Any]:
        spec = self.record.get("spec") or {}
        return spec if isinstance(spec, dict) else {}

    @property
    def grace(self) -> float:
        value = self.spec.get("stop_grace_period")
        return DEFAULT_STOP_GRACE if value is None else max(0.0, float(value))

    @property
    def stop_signal(self) -> int:
        """What stopping sends first (``--stop-signal``; SIGTERM by default)."""
        try:
            return parse_signal(str(self.spec.get("stop_signal") or "SIGTERM"))
        except ValueError:
            return 15

    @property
    def live(self) -> bool:
        return self.pid is not None and not self.exited and self.final is None


class Reporter:
    """Status updates to the ``report`` callback (never raising into the executor) and the
    task state file written before each terminal update goes out."""

    def __init__(self, report: Callable[[list[dict[str, Any]]], None]) -> None:
        self._report = report

    def emit(self, updates: list[dict[str, Any]]) -> None:
        if not updates:
            return
        try:
            self._report(updates)
        except Exception:
            log.exception("executor: the report callback failed for %d updates", len(updates))

    @staticmethod
    def save(t: TaskRun) -> None:
        data = {
            "id": t.id,
            "pid": t.pid,
            "start_ticks": t.start_ticks,
            "started_at": t.started_at,
            "netns": t.netns,
            "cgroup": None if t.cgroup is None else t.cgroup.to_dict(),
            "record": t.record,
            "final": t.final,
        }
        t.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_private(t.dir / STATE_FILE, json.dumps(data))

    def finish(self, t: TaskRun, update: dict[str, Any]) -> None:
        """Record and report the terminal state of ``t``."""
        update = {"id": t.id, **update}
        t.final = update
        with contextlib.suppress(OSError):
            self.save(t)
        self.emit([update])

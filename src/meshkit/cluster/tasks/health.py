"""Health checks of tasks: the config, the sans-IO verdict tracker, and one probe run.

``HealthTracker`` follows swarm's rules over probe results fed to it with a monotonic "now":
failures inside ``start_period`` do not count (until the first success, which ends the start
period); ``retries`` consecutive failures make the task unhealthy; the first success makes it
healthy. It returns what changed and never reads a clock.

``run_probe`` runs ``/bin/sh -c CMD`` once like the task itself (same namespace, env, workdir
and user, its own process group), keeps the last ``OUTPUT_LIMIT`` bytes of its combined output
and kills the whole group when it outlives the timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from meshkit.base.procwatch import wait_exit
from meshkit.cluster.tasks import process as taskproc

OUTPUT_LIMIT = 4096  # Docker keeps the same amount of a health check's output


@dataclass(frozen=True)
class HealthConfig:
    """spec.health with swarm's defaults filled in."""

    cmd: str
    interval: float = 30.0
    timeout: float = 30.0
    retries: int = 3
    start_period: float = 0.0

    @classmethod
    def from_spec(cls, health: Mapping[str, Any] | None) -> HealthConfig | None:
        """None when the task has no health check."""
        if not health or not health.get("cmd"):
            return None
        return cls(
            cmd=str(health["cmd"]),
            interval=float(health.get("interval", 30.0)),
            timeout=float(health.get("timeout", 30.0)),
            retries=max(1, int(health.get("retries", 3))),
            start_period=float(health.get("start_period", 0.0)),
        )


@dataclass(frozen=True)
class ProbeResult:
    """One probe: passed or not, and words for the error (output, exit code or timeout)."""

    ok: bool
    detail: str


@dataclass(frozen=True)
class Verdict:
    """What a probe result changed: healthy is True (first success) or False (unhealthy)."""

    healthy: bool
    error: str = ""


class HealthTracker:
    """Consecutive-failure counting with a start period; see the module docstring."""

    def __init__(self, config: HealthConfig, started: float) -> None:
        self.config = config
        self.started = started
        self.failures = 0
        self.healthy: bool | None = None
        self._in_start_period = config.start_period > 0

    def feed(self, result: ProbeResult, now: float) -> Verdict | None:
        """Take one probe result at ``now``; a Verdict when the health status changes."""
        if self.healthy is False:
            return None
        if result.ok:
            self.failures = 0
            self._in_start_period = False
            if self.healthy is None:
                self.healthy = True
                return Verdict(True)
            return None
        if self._in_start_period and now - self.started < self.config.start_period:
            return None
        self.failures += 1
        if self.failures < self.config.retries:
            return None
        self.healthy = False
        times = "time" if self.failures == 1 else f"times in a row ({self.failures})"
        return Verdict(
            False,
            f"unhealthy: health check {self.config.cmd!r} failed {times}; "
            f"last check: {result.detail}",
        )


async def run_probe(
    config: HealthConfig,
    plan: taskproc.LaunchPlan,
    netns: str | None,
    extras: taskproc.ChildExtras | None = None,
) -> ProbeResult:
    """Run the check once with ``plan`` (from ``taskproc.plan_shell``) in ``netns`` (and, with
    ``extras``, in the task's cgroup and mount namespace); never raises for the check's own
    failure."""
    read_fd, write_fd = os.pipe()
    try:
        try:
            proc = taskproc.spawn(
                plan, stdout=write_fd, stderr=write_fd, netns=netns, extras=extras
            )
        except taskproc.LaunchError as exc:
            return ProbeResult(False, f"could not run the check: {exc}")
    finally:
        os.close(write_fd)
    os.set_blocking(read_fd, False)
    loop = asyncio.get_running_loop()
    output = bytearray()

    def drain() -> None:
        while True:
            try:
                chunk = os.read(read_fd, 65536)
            except BlockingIOError:
                return
            except OSError:
                chunk = b""
            if not chunk:
                loop.remove_reader(read_fd)
                return
            output.extend(chunk)
            del output[:-OUTPUT_LIMIT]

    loop.add_reader(read_fd, drain)
    timed_out = False
    try:
        try:
            await asyncio.wait_for(wait_exit(proc.pid), config.timeout)
        except asyncio.TimeoutError:
            timed_out = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await wait_exit(proc.pid)
        # a background child of the check may still hold the pipe: do not wait for EOF
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        drain()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=1.0)
        raise
    finally:
        loop.remove_reader(read_fd)
        os.close(read_fd)
    code = proc.wait()
    text = output.decode(errors="replace").strip()
    if timed_out:
        return ProbeResult(False, f"timed out after {config.timeout:g}s" + _quote(text))
    if code == 0:
        return ProbeResult(True, "exit code 0" + _quote(text))
    if code < 0:
        return ProbeResult(False, f"killed by {taskproc.signal_name(-code)}" + _quote(text))
    return ProbeResult(False, f"exit code {code}" + _quote(text))


def _quote(text: str) -> str:
    return f", output: {text!r}" if text else ", no output"

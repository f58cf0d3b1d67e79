"""A cluster of namespace hosts with the service mesh on, and dig against its DNS."""

from __future__ import annotations

import json
import subprocess
from typing import Any

from support.labutil import Lab
from support.polling import until


class Cluster(Lab):
    def rm_network(self, name: str) -> None:
        until(lambda: self.cli("network", "rm", name).returncode == 0, 30, f"network {name} rm")

    def in_task(
        self, task: dict[str, Any], *argv: str, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        """Run in a task's namespace, with its resolv.conf (127.0.0.11), as the task sees it."""
        pid = self.procs[task["Node"]].popen.pid
        return subprocess.run(
            ["nsenter", "-t", str(pid), "-m", "ip", "netns", "exec", f"mk-{task['ID']}", *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def vip(self, service: str, network: str) -> str:
        view = json.loads(self.cli_ok("service", "inspect", service))
        view = view[0] if isinstance(view, list) else view
        return next(v["Addr"] for v in view["Endpoint"]["VirtualIPs"] if v["Network"] == network)


def dig(c: Cluster, task: dict[str, Any], *args: str) -> list[str]:
    r = c.in_task(task, "dig", "+short", "+time=3", "+tries=2", *args)
    if r.returncode != 0:
        return [f"FAILED: {r.stdout.strip()} {r.stderr.strip()}"]
    return [line for line in r.stdout.splitlines() if line]



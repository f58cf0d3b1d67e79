"""`meshkit ingress --service NAME`: the backends of a cluster service, fed live by the agent
of this node over its Unix socket (the `mesh_watch` long poll).

The agent answers with the addresses of the service's up tasks and the overlay namespace they
are reached from; backend sockets are made in that namespace (seen through the agent's own
mount namespace, /proc/<agent pid>/root/run/netns/..., so that an agent started under
`ip netns exec` works too). A task that leaves is taken out with its flows closed. While the
agent cannot be reached, the last backends stay and the feed asks again every second.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import Any

from meshkit.l4.spec import BackendSpec
from meshkit.net.nsock import NETNS_DIR, NetnsError, NetnsRef

log = logging.getLogger(__name__)

WAIT = 20.0


def netns_path(agent_pid: int, name: str) -> str:
    """Where this process finds the agent's namespace `name`."""
    through_agent = f"/proc/{agent_pid}/root{NETNS_DIR}/{name}"
    if agent_pid > 0 and os.path.exists(through_agent):
        return through_agent
    return os.path.join(NETNS_DIR, name)


class ServiceFeed:
    """Keeps one Ingress's backends equal to a service's up tasks."""

    def __init__(self, ingress: Any, service: str, agent_socket: str) -> None:
        self.ingress = ingress
        self.service = service
        self.agent_socket = agent_socket
        self._netns = ""
        self._ref: NetnsRef | None = None
        self._said = ""

    def _note(self, level: int, text: str) -> None:
        if text != self._said:  # say each new state of affairs once
            log.log(level, "%s", text)
            self._said = text

    def apply(self, reply: dict[str, Any]) -> None:
        ips = [str(ip) for ip in reply.get("backends") or []]
        netns = str(reply.get("netns") or "")
        if not reply.get("known"):
            self._note(logging.ERROR, f"service {self.service} not found in the cluster; "
                       "refusing new flows until it exists")  # fmt: skip
        elif not netns:
            self._note(logging.ERROR, f"service {self.service} has no network on this node")
        else:
            self._note(logging.INFO, f"service {self.service}: {len(ips)} task(s) up")
        if netns and netns != self._netns:
            path = netns_path(int(reply.get("agent_pid") or 0), netns)
            try:
                ref = NetnsRef.open_path(path, netns)
            except NetnsError as exc:
                self._note(logging.ERROR, f"service {self.service}: {exc}")
                ips = []
            else:
                if self._ref is not None:
                    self._ref.close()
                self._ref, self._netns = ref, netns
                self.ingress.backend_ns = ref
        resolved = [(BackendSpec(ip, None), ip, int(socket.AF_INET)) for ip in ips]
        self.ingress.apply_backends(resolved, close_removed=True)

    async def run(self) -> None:
        from meshkit.base.errors import MeshkitError
        from meshkit.cluster.rpc.local import call_async

        version: Any = None
        while not self.ingress.stopping:
            try:
                reply = await call_async(
                    self.agent_socket,
                    "mesh_watch",
                    {"service": self.service, "version": version, "wait": WAIT},
                    timeout=WAIT + 10,
                )
            except (MeshkitError, OSError) as exc:
                self._note(
                    logging.WARNING,
                    f"the node agent at {self.agent_socket} does not answer ({exc}); "
                    "keeping the last backends",
                )
                version = None
                await asyncio.sleep(1.0)
                continue
            version = reply.get("version")
            self.apply(reply)

    def close(self) -> None:
        if self._ref is not None:
            self._ref.close()
            self._ref = None

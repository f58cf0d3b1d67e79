"""The agent's side of `meshkit run`: one-off tasks on an attachable network, on this node.

Local methods (the agent's Unix socket only; the CLI runs the command itself, see below):

    run_attach  {"network", "name"?, "pid", "command"?, "rm"?}
                -> {"id", "name", "netns", "agent_pid", "addr", "network"}
    run_detach  {"id", "exit_code"?, "rm"?} -> {"id"}

`run_attach` asks a manager for an address on the network (``network_attach``, refused with
Docker's words when the network is not ``--attachable``), then makes what a task with that
network gets: its own namespace ``mk-<id>`` with ``eth0`` on the overlay's bridge, the
resolv.conf naming 127.0.0.11 and this node's DNS server there, and ``gw0`` on the gateway
bridge unless the network is internal. It answers once this node's network map names the new
endpoint (so that its DNS answers the network's service names from the first query). The CLI
then starts the command itself in that namespace (through ``/proc/<agent pid>/root``, which
also works when the agent runs in a mount namespace of its own): its terminal, stdin, signals
and exit code stay the CLI's, as `docker run` gives them.

`run_detach` takes it all down and tells a manager the exit code (``network_detach``; with
``rm`` the record goes too). The agent watches the CLI's pid (a pidfd): a CLI killed before it
could detach is detached for it, which also kills what it left in the namespace.

Manager methods (a node certificate; the node must be the caller), in meshkit.cluster.api.networks:
``network_attach`` {"node_id", "network", "id", "name"?, "command"?} and ``network_detach``
{"node_id", "id", "exit_code"?, "rm"?}.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass
from typing import Any

from meshkit.base import netns as tasknetns
from meshkit.cluster.api.common import new_node_id, str_param
from meshkit.cluster.api.context import NodeContext
from meshkit.cluster.rpc.transport import RpcError

log = logging.getLogger("meshkit.run")

RUN_LOCAL_METHODS = frozenset({"run_attach", "run_detach"})
DNS_WAIT = 10.0
FAILOVER = frozenset({"unreachable", "timeout", "unavailable", "not_manager", "no_quorum"})


@dataclass
class _Run:
    id: str
    netns: str
    rm: bool
    pidfd: int = -1


class RunMethods:
    """This node's one-off tasks, while their `meshkit run` lasts."""

    def __init__(self, node: NodeContext) -> None:
        self.node = node
        self.runs: dict[str, _Run] = {}
        self._cleanups: set[asyncio.Task[None]] = set()

    async def call(self, method: str, params: dict[str, Any]) -> Any:
        if method == "run_attach":
            return await self.run_attach(params)
        return await self.run_detach(params)

    async def _ask(self, method: str, params: dict[str, Any]) -> Any:
        node = self.node
        st = node.state
        if node.is_manager and st is not None and st.initialized:
            try:
                return await node.call_self(method, params)
            except RpcError as exc:
                if exc.code not in FAILOVER:
                    raise
        return await node.ask_managers(method, params, timeout=15.0)

    async def run_attach(self, params: dict[str, Any]) -> Any:
        network = str_param(params, "network")
        pid = params.get("pid")
        if not isinstance(pid, int) or pid <= 0:
            raise RpcError("bad_request", "parameter 'pid' must be the CLI's process id")
        aid = new_node_id()
        run = _Run(aid, tasknetns.netns_name(aid), bool(params.get("rm")))
        self.runs[aid] = run  # before the managers hear of it: reap_loop leaves it alone
        try:
            reply = await self._ask(
                "network_attach",
                {
                    "node_id": self.node.node_id,
                    "network": network,
                    "id": aid,
                    "name": str(params.get("name") or ""),
                    "command": [str(a) for a in params.get("command") or []],
                },
            )
        except BaseException:
            self.runs.pop(aid, None)
            raise
        try:
            await tasknetns.create(run.netns)
            attachment = {
                "id": reply["network_id"],
                "name": reply["network"],
                "addr": reply["addr"],
                "mac": reply["mac"],
            }
            await self.node.overlay.attach(aid, run.netns, [attachment])
            await self.node.mesh.task_attached(aid, run.netns)
        except Exception as exc:
            await self._end(aid, None, True)
            raise RpcError(
                "unavailable", f"cannot attach a task to network {network} on this node: {exc}"
            ) from None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DNS_WAIT
        while not self.node.mesh.knows_task(aid) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        self._watch(run, pid)
        log.info("run %s: on network %s at %s", aid[:12], reply["network"], reply["addr"])
        return {
            "id": aid,
            "name": reply["name"],
            "netns": run.netns,
            "agent_pid": os.getpid(),
            "addr": reply["addr"],
            "network": reply["network"],
        }

    def _watch(self, run: _Run, pid: int) -> None:
        """Detach for a CLI that ends without doing so (killed, lost)."""
        try:
            run.pidfd = os.pidfd_open(pid)
        except OSError:  # it is gone already
            task = asyncio.get_running_loop().create_task(self._end(run.id, None, run.rm))
            self._cleanups.add(task)
            task.add_done_callback(self._cleanups.discard)
            return
        loop = asyncio.get_running_loop()

        def gone() -> None:
            loop.remove_reader(run.pidfd)
            if run.id in self.runs:
                log.warning("run %s: its meshkit run ended without a word; cleaning up", run.id)
                self._cleanups.add(task := loop.create_task(self._end(run.id, None, run.rm)))
                task.add_done_callback(self._cleanups.discard)

        loop.add_reader(run.pidfd, gone)

    async def run_detach(self, params: dict[str, Any]) -> Any:
        aid = str_param(params, "id")
        code = params.get("exit_code")
        run = self.runs.get(aid)
        rm = bool(params.get("rm")) if run is None else (run.rm or bool(params.get("rm")))
        await self._end(aid, code if isinstance(code, int) else None, rm)
        return {"id": aid}

    async def _end(self, aid: str, exit_code: int | None, rm: bool) -> None:
        run = self.runs.pop(aid, None)
        if run is not None and run.pidfd >= 0:
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(run.pidfd)
            os.close(run.pidfd)
        ns = tasknetns.netns_name(aid)
        self.node.mesh.task_detached(aid)
        try:
            await tasknetns.delete(ns)
        except tasknetns.NetnsError as exc:
            log.error("run %s: %s", aid[:12], exc)
        await self.node.overlay.detach(aid)
        params = {"node_id": self.node.node_id, "id": aid, "exit_code": exit_code, "rm": rm}
        try:
            await self._ask("network_detach", params)
        except RpcError as exc:
            log.error("run %s: could not tell a manager it ended: %s", aid[:12], exc)

    async def reap_loop(self) -> None:
        """Once the first network map is here: one-off tasks it places on this node that no
        `meshkit run` of this agent holds, with nothing left running in their namespace (an
        agent that stopped meanwhile could not see them end), are detached. Those still
        running are left to their `meshkit run`, whose detach reaches this agent."""
        here: list[str] | None = None
        while here is None and not self.node.stopping:
            here = self.node.mesh.runs_here()
            if here is None:
                await asyncio.sleep(1.0)
        for aid in here or []:
            if aid in self.runs:
                continue
            if await asyncio.to_thread(tasknetns.pids_inside, tasknetns.netns_name(aid)):
                continue
            log.warning("run %s: ended while no agent watched it; detaching it", aid[:12])
            await self._end(aid, None, False)

    async def close(self) -> None:
        for aid in list(self.runs):
            await self._end(aid, None, self.runs[aid].rm)

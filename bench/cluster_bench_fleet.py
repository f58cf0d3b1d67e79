"""The simulated worker nodes of bench/cluster_heartbeats.py: `Fleet` joins them for real
(worker token, CSR, TLS) and heartbeats (with --services also long-polls their tasks) the way
the agent's worker does."""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any

from cluster_bench_managers import (
    Cluster,
    Manager,
)
from cluster_bench_util import (
    CALL_TIMEOUT,
    JOIN_TRIES,
    TO_START,
    BenchError,
    log,
    split_addr,
)
from meshkit.cluster.node.bootstrap import JOIN_RETRY_CODES
from meshkit.cluster.node.managers import FAILOVER_CODES
from meshkit.cluster.rpc.pki import (
    NodeIdentity,
    client_ssl_context,
    new_node_key_and_csr,
)
from meshkit.cluster.rpc.transport import (
    RpcClient,
    RpcError,
)

# --------------------------------------------------------------------------- simulated nodes


@dataclass
class BeatStats:
    sent: int = 0
    ok: int = 0
    failed: int = 0
    failed_over: int = 0  # beats answered by another manager than the first one tried
    rtts: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    by_manager: dict[str, int] = field(default_factory=dict)  # answered beats per API addr


@dataclass
class SimNode:
    index: int
    node_id: str
    ctx: Any  # its mutual-TLS client context
    managers: list[str]  # API addresses, from the join reply, then from heartbeat replies
    manager_idx: int  # as ManagerClient._rotation: random start, moved on when a manager fails
    clients: dict[str, RpcClient] = field(default_factory=dict)
    connecting: dict[str, asyncio.Future[RpcClient]] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None
    watch: asyncio.Task[None] | None = None  # --services: its tasks_watch loop


class Fleet:
    """Simulated worker nodes: join, then heartbeat like the agent's worker does."""

    def __init__(
        self, cluster: Cluster, token: str, bundle: bytes, cluster_id: str, args: argparse.Namespace
    ):
        self.cluster = cluster
        self.token = token
        self.bundle = bundle
        self.cluster_id = cluster_id
        self.period = args.period
        self.join_concurrency = args.join_concurrency
        self.join_rate = args.join_rate
        self.nodes: list[SimNode] = []
        self.stats = BeatStats()
        self.rng = random.Random(args.seed)
        self._join_ctx = client_ssl_context(None, bundle)
        self._joins = 0
        # TLS connections opened to managers (each a handshake on a manager): join calls (no
        # client certificate) and the nodes' own (mutual TLS), for "handshakes per join"
        self.join_connects = 0
        self.connect_per_loop = args.connect_per_loop
        self.node_connects = 0
        self.closing = False
        self.services = args.services
        self.reported = 0  # --services: tasks reported running
        self.watch_errors: dict[str, int] = {}
        self.join_retries: dict[str, int] = {}  # joins sent again, by the first try's error

    def join_target(self) -> Manager:
        """Joins go through the live managers in turn."""
        live = self.cluster.live()
        self._joins += 1
        return live[self._joins % len(live)]

    async def join_one(self, index: int, via: Manager) -> SimNode:
        """As the agent's join (meshkit.cluster.node.bootstrap.join_call): one request id and
        CSR for every try, tried again through the next manager when the outcome is unknown
        (a retry gets the node the first try made, never a second one)."""
        name = f"sim-{index:05d}"
        key_pem, csr_pem = new_node_key_and_csr(name)
        params = {
            "token": self.token,
            "csr": csr_pem.decode(),
            "hostname": name,
            "advertise_addr": "127.0.0.1",
            "version": "bench",
            "request_id": os.urandom(16).hex(),
        }
        for attempt in range(JOIN_TRIES):
            try:
                self.join_connects += 1
                client = await RpcClient.connect_tcp(
                    via.host, via.port, self._join_ctx, timeout=30, expect_role="manager"
                )
                try:
                    reply = await client.call("join", params, timeout=60)
                finally:
                    await client.close()
                break
            except RpcError as exc:
                if exc.code not in JOIN_RETRY_CODES or attempt == JOIN_TRIES - 1:
                    raise
                self.join_retries[exc.code] = self.join_retries.get(exc.code, 0) + 1
                log(f"  {name}: join through {via.name}: {exc.message}; trying again")
                await asyncio.sleep(1.0 + attempt)
                via = self.join_target()
        identity = NodeIdentity.from_cert(reply["cert"].encode(), key_pem, reply["ca"].encode())
        if identity.role != "worker":
            raise BenchError(f"{name} joined as a {identity.role}, expected a worker")
        managers = [str(m) for m in reply.get("managers") or []]
        if not managers:
            raise BenchError(f"{name}: the join reply lists no managers")
        return SimNode(
            index,
            identity.node_id,
            client_ssl_context(identity, self.bundle),
            managers,
            self.rng.randrange(1 << 16),
        )

    def picked(self, node: SimNode) -> str:
        return node.managers[node.manager_idx % len(node.managers)]

    async def _client(self, node: SimNode, addr: str) -> RpcClient:
        """As ManagerClient._connection: one connect per manager however many of the node's
        loops (beats, tasks_watch) want it at the same time."""
        client = node.clients.get(addr)
        if client is not None and not client.closed:
            return client
        if self.connect_per_loop:  # as ManagerClient before the shared connect
            client = await self._dial(node, addr)
            other = node.clients.get(addr)
            if other is not None and not other.closed:  # another loop connected meanwhile
                await client.close()
                return other
            node.clients[addr] = client
            return client
        pending = node.connecting.get(addr)
        if pending is None:
            pending = asyncio.ensure_future(self._connect(node, addr))
            node.connecting[addr] = pending
            pending.add_done_callback(lambda f: _connected(node, addr, f))
        return await asyncio.shield(pending)

    async def _dial(self, node: SimNode, addr: str) -> RpcClient:
        """A new mutual-TLS connection of `node` to the manager at `addr` (counted)."""
        host, port = split_addr(addr)
        self.node_connects += 1
        return await RpcClient.connect_tcp(
            host,
            port,
            node.ctx,
            CALL_TIMEOUT,
            expect_role="manager",
            expect_cluster=self.cluster_id,
        )

    async def _connect(self, node: SimNode, addr: str) -> RpcClient:
        client = await self._dial(node, addr)
        node.clients[addr] = client
        return client

    async def _call(self, node: SimNode, addr: str, params: dict[str, Any]) -> Any:
        """As ManagerClient: one connection per manager, dropped when it fails."""
        client = await self._client(node, addr)
        try:
            return await client.call("heartbeat", params, CALL_TIMEOUT)
        except RpcError as exc:
            if exc.code in ("unreachable", "timeout"):
                node.clients.pop(addr, None)
                await client.close()
            raise

    async def beat(self, node: SimNode) -> None:
        """One heartbeat of a worker: ManagerClient.targets and .ask, by its failover rule."""
        stats = self.stats
        stats.sent += 1
        started = time.perf_counter()
        i = node.manager_idx % len(node.managers)
        targets = node.managers[i:] + node.managers[:i]
        params = {"node_id": node.node_id, "status": {"version": "bench"}}
        for attempt, addr in enumerate(targets):
            try:
                reply = await self._call(node, addr, params)
            except RpcError as exc:
                if exc.code not in FAILOVER_CODES:
                    stats.failed += 1
                    stats.errors[exc.code] = stats.errors.get(exc.code, 0) + 1
                    return
                node.manager_idx += 1
                continue
            stats.ok += 1
            stats.rtts.append(time.perf_counter() - started)
            stats.by_manager[addr] = stats.by_manager.get(addr, 0) + 1
            if attempt:
                stats.failed_over += 1
            if isinstance(reply, dict):
                period = reply.get("period")
                if isinstance(period, (int, float)) and period > 0:
                    self.period = float(period)
                managers = [str(m) for m in reply.get("managers") or []]
                if managers and managers != node.managers:
                    node.managers = managers
            return
        stats.failed += 1
        stats.errors["no manager answered"] = stats.errors.get("no manager answered", 0) + 1

    def start_beating(self, node: SimNode, phase: float) -> None:
        node.task = asyncio.create_task(self._beat_loop(node, phase))
        if self.services:
            node.watch = asyncio.create_task(self._watch_loop(node, phase))

    async def _watch_loop(self, node: SimNode, phase: float) -> None:
        """--services: as the agent's task loop, a ``tasks_watch`` long poll, and every task
        the node is given to run reported running (``task_report``) at once."""
        version: Any = None
        epoch: Any = None
        await asyncio.sleep(phase)  # its first beat opens the connection
        while not self.closing:
            addr = self.picked(node)
            try:
                client = await self._client(node, addr)
                reply = await client.call(
                    "tasks_watch",
                    {"node_id": node.node_id, "version": version, "epoch": epoch, "wait": 20},
                    30,
                )
                version, epoch = reply.get("version"), reply.get("epoch")
                updates = [
                    {"id": t["id"], "state": "running", "message": "started", "pid": 1}
                    for t in reply.get("tasks") or []
                    if t.get("desired_state") == "running" and t.get("state") in TO_START
                ]
                if updates:
                    await client.call(
                        "task_report", {"node_id": node.node_id, "updates": updates}, 30
                    )
                    self.reported += len(updates)
            except RpcError as exc:
                self.watch_errors[exc.code] = self.watch_errors.get(exc.code, 0) + 1
                if exc.code in FAILOVER_CODES:
                    node.clients.pop(addr, None)
                await asyncio.sleep(1.0)

    async def _beat_loop(self, node: SimNode, phase: float) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(phase)
        due = loop.time()
        while not self.closing:
            await self.beat(node)
            due += self.period
            await asyncio.sleep(max(0.0, due - loop.time()))

    async def grow_to(self, count: int) -> float:
        """Join and start nodes until the fleet has ``count``; returns joins per second."""
        missing = count - len(self.nodes)
        if missing <= 0:
            return float("nan")
        gate = asyncio.Semaphore(self.join_concurrency)
        start = len(self.nodes)
        began = time.perf_counter()

        async def one(i: int) -> None:
            if self.join_rate > 0:  # an open loop: join i starts at i / rate, not when a slot frees
                await asyncio.sleep(max(0.0, began + i / self.join_rate - time.perf_counter()))
            async with gate:
                node = await self.join_one(i, self.join_target())
            # beating from its join on, as an agent does (not the whole fleet at once at the
            # end: thousands of TLS connections in the same second are no steady state)
            self.nodes.append(node)
            self.start_beating(node, self.rng.uniform(0, self.period))

        await asyncio.gather(*(one(start + i) for i in range(missing)))
        return missing / (time.perf_counter() - began)

    async def close(self, timeout: float = 10.0) -> None:
        """Stop the beat loops and close the connections, each step bounded in time.

        A cancel can be lost: on Python 3.11 ``asyncio.wait_for`` (inside ``RpcClient.call``)
        returns the reply instead of raising when the reply and the cancel arrive in the same
        loop iteration, and the beat loop runs on. So the loops also check ``closing``, and
        any still running is cancelled again until it stops."""
        self.closing = True
        pending = {t for n in self.nodes for t in (n.task, n.watch) if t is not None}
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=0.2)
        closing = [asyncio.ensure_future(c.close()) for n in self.nodes for c in n.clients.values()]
        if closing:
            _, still = await asyncio.wait(closing, timeout=timeout)
            pending |= still
        if pending:  # left to the loop's shutdown, which cancels them again
            log(f"warning: {len(pending)} simulated-node tasks still running after {timeout:g} s")


def _connected(node: SimNode, addr: str, fut: asyncio.Future[RpcClient]) -> None:
    node.connecting.pop(addr, None)
    if not fut.cancelled():
        fut.exception()  # retrieved here: every caller may have given up on it

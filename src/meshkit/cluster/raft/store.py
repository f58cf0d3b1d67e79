"""The raft-replicated cluster state: pysyncobj driven from the agent's event loop.

Every manager runs one `RaftStore`. It wraps a pysyncobj `SyncObj` with ``autoTick=False``;
the store ticks it from the asyncio loop with ``doTick(0)`` (its poller never waits) every
`RaftTimings.tick` seconds, and at once after a write is submitted, so nothing blocks the loop.

- Commands are the dicts of `meshkit.cluster.model.state`; `submit()` hands one to raft and resolves
  when it is committed and applied locally. A follower's command goes to the leader over
  pysyncobj's own connection (leader forwarding), so any manager accepts writes.
- Reads (`state`) answer from the local replica, also without quorum.
- Without quorum a write fails at once with "no quorum: N of M managers reachable". A write
  raft already took fails within `QUORUM_CHECK` of this manager seeing the quorum go (not at
  the commit deadline) with `UnknownOutcome`: "... the write may or may not have been applied:
  check with `meshkit service ls`", as it may have committed; so does a leader change under it
  (unless the command is idempotent or carries a ``request_id``, which make a resend safe).
- On disk, in the store's directory: ``journal`` (the raft log, with term and vote), ``dump``
  (the full-state snapshot pysyncobj writes on log compaction: a forked child pickles a
  copy-on-write view of the state, `lib.DumpWriter`, so nothing O(state) runs on the loop)
  and ``peers.json`` (the raft members last seen, so a restarted manager knows its partners
  before it replays the log).
- Membership is dynamic: the leader's `reconcile_members()` adds or removes one raft member at
  a time until the members match the managers in the state; a leader that must go transfers
  its leadership first.
- Raft traffic is encrypted and authenticated with the cluster's raft secret (pysyncobj's
  ``password``: Fernet with a PBKDF2-derived key); a peer without it cannot connect.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshkit.base.errors import MeshkitError
from meshkit.base.files import make_private_dir, secure_tree, write_private
from meshkit.cluster.model import clusterops, opgate
from meshkit.cluster.model import state as cstate
from meshkit.cluster.raft import gcpauses
from meshkit.cluster.raft.lib import (
    AUDIT_SUFFIX,
    FAIL_REASON,
    DumpWriter,
    SyncObj,
    SyncObjConf,
    SyncObjConsumer,
    replicated,
)

log = logging.getLogger(__name__)


SLOW_TICK = 0.05
"""A raft tick longer than this (seconds) is logged: ticks must never block the loop."""


_SCHEDSTAT_FDS: dict[int, int] = {}  # native thread id -> its open schedstat (read with pread)


def runq_wait() -> float:
    """Seconds this thread has waited on the run queue for a CPU since it started (the second
    field of /proc/thread-self/schedstat), 0.0 where the kernel does not say. A stall in which
    the loop's thread waited this long was the host's doing, not work on the loop. The file
    stays open (one pread per call: the raft tick asks several times per tick)."""
    tid = threading.get_native_id()
    for _ in range(2):  # a second try with a fresh fd: a reused thread id's old file is gone
        fd = _SCHEDSTAT_FDS.pop(tid, None)
        try:
            if fd is None:
                fd = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
            value = int(os.pread(fd, 128, 0).split()[1]) / 1e9
        except (OSError, ValueError, IndexError):
            if fd is not None:
                os.close(fd)
            continue
        _SCHEDSTAT_FDS[tid] = fd
        return value
    return 0.0


class StallLog:
    """The longest event-loop stalls seen (each a time on the monotonic clock, which every
    process of the host shares, and a length), so that a bench can ask a manager for the worst
    stall within its own window."""

    KEEP = 512
    OVER = 0.02  # seconds; shorter holds are not stalls worth keeping

    def __init__(self) -> None:
        self.worst = 0.0
        self.recent: deque[tuple[float, float, float, float]] = deque(maxlen=self.KEEP)

    def note(self, held: float, cpu: float, now: float | None = None, waited: float = 0.0) -> None:
        """A hold of `held` seconds during which this process used `cpu` seconds of CPU (all
        its threads) and the loop's thread `waited` seconds on the run queue for a CPU: a
        stall mostly waited is the host starving the process, not work on the loop."""
        if held <= self.OVER:
            return
        self.worst = max(self.worst, held)
        self.recent.append((time.monotonic() if now is None else now, held, cpu, waited))
        self._rendered = None

    _rendered: list[list[float]] | None = None

    def status(self) -> dict[str, Any]:
        # status() is asked twice a second (the autolock loop, through the store's status)
        # and the 512 entries only change at a stall: rendered once per change (py-spy of a
        # 5,000-node leader: 2 % of its samples went to this list)
        if self._rendered is None:
            self._rendered = [
                [round(t, 3), round(h * 1000, 1), round(c * 1000, 1), round(w * 1000, 1)]
                for t, h, c, w in self.recent
            ]
        return {
            "loop_stall_max_ms": round(self.worst * 1000, 1),
            # [monotonic time, ms held, CPU ms of the process, ms the loop waited for a CPU]
            "loop_stalls": list(self._rendered),
        }


class StoreError(MeshkitError):
    """A write the replicated store could not commit."""


class NoQuorum(StoreError):
    pass


class UnknownOutcome(StoreError):
    """A write raft took but could not confirm: it may or may not have been applied."""


def check_hint(op: str) -> str:
    """Where the user sees whether a write of `op` was applied."""
    for prefix, command in (
        ("service", "meshkit service ls"),
        ("task", "meshkit service ps"),
        ("network", "meshkit network ls"),
        ("secret", "meshkit secret ls"),
        ("cluster", "meshkit cluster inspect"),
    ):
        if op.startswith(prefix):
            return command
    return "meshkit node ls"


def unknown_text(why: str, op: str) -> str:
    return f"{why}: the write may or may not have been applied: check with `{check_hint(op)}`"


QUORUM_CHECK = 0.1
"""How often (seconds) a write waiting for its commit looks at the quorum: a manager that
knows it is cut off answers within this, not at the commit deadline."""


@dataclass(frozen=True)
class RaftTimings:
    """pysyncobj timings; the defaults elect a new leader in 1-2 s.

    The election timeout (0.8-1.6 s) is for a leader gone silent (a partition, a hung host);
    a follower whose connection to the leader closes (its process died) calls an election in
    0.05-0.5 s (`lib.DEAD_LEADER_TIMEOUT`). It was 0.4-1.4 s: at 5,000 nodes on a shared core
    a live leader starved by its host for 0.5-0.9 s (its loop's thread runnable, waiting for
    a CPU: bench/cluster_heartbeats.py's stall probe) lost its leadership to it."""

    tick: float = 0.02
    election_min: float = 0.8
    election_max: float = 1.6
    append_period: float = 0.1
    connection_timeout: float = 3.5
    retry: float = 0.5
    leader_fallback: float = 4.0
    commit_timeout: float = 8.0
    remove_grace: float = 1.0
    compact_entries: int = 500  # raft entries between snapshots
    compact_seconds: float = 600.0


_FAIL_TEXT = {
    FAIL_REASON.QUEUE_FULL: "the raft command queue is full",
    FAIL_REASON.MISSING_LEADER: "no raft leader is known yet (an election is under way)",
    FAIL_REASON.DISCARDED: "the raft leader changed and the write was discarded; try again",
    FAIL_REASON.NOT_LEADER: "this manager lost the raft leadership before it took the write; "
    "try again",
    FAIL_REASON.LEADER_CHANGED: "the raft leader changed while the write was in flight",
    FAIL_REASON.REQUEST_DENIED: "the raft leader refused the request",
    FAIL_REASON.UNKNOWN_OUTCOME: "the raft leader restarted while the write was in flight",
}
# Raft took the write but cannot say whether it committed.
_UNKNOWN = (FAIL_REASON.LEADER_CHANGED, FAIL_REASON.UNKNOWN_OUTCOME)
# Never committed: safe to send again.
_RETRY = (FAIL_REASON.MISSING_LEADER, FAIL_REASON.NOT_LEADER)
# Maybe committed: sent again only when applying twice does what applying once does.
_RETRY_IF_IDEMPOTENT = (
    FAIL_REASON.LEADER_CHANGED,
    FAIL_REASON.DISCARDED,
    FAIL_REASON.UNKNOWN_OUTCOME,
)


BATCH_OP = "batch"
"""A raft entry holding several commands (``cmds``, each with its own ``cid``), applied one by
one as if each were its own entry (each its own result and state hook): `RaftStore.submit`
gathers the `BATCHED` writes of one tick into one. Every manager must run a version that
knows it (as for any new command)."""

RAFT_OPS = (BATCH_OP,)
"""The raft entry kinds this build applies beyond single commands. Each manager records them
in its node record once it runs (`set_raft_ops`), and the leader gathers writes into a batch
only while every manager has: a manager of an older build would refuse an entry it does not
know, and its state would go without the commands inside it (a rolling upgrade). Downgrading
a manager in place is not covered: demote it first."""

BATCH_CHECK = 1.0
"""How long (seconds) the leader trusts its look at the managers' RAFT_OPS."""

BATCHED = frozenset({"add_node"})
"""Writes gathered per tick: joins come by the thousand when a fleet starts, and each raft entry
costs the leader an append, a journal write, a send to every follower and a commit round."""

BATCH_MAX = 256
"""Commands in one batch entry at most (5,000 joins at 32 at a time: a few dozen a tick)."""


def resendable(cmd: Mapping[str, Any]) -> bool:
    """Whether a command may be sent again after raft lost track of it: an idempotent one, or
    one carrying a ``request_id`` (the state applies such a request once)."""
    op = cmd.get("op")
    return op in cstate.IDEMPOTENT or op in clusterops.IDEMPOTENT or bool(cmd.get("request_id"))


def check_gate(state: cstate.ClusterState, cmd: Mapping[str, Any]) -> None:
    """CommandError, before the command enters the log, when some manager's build cannot apply
    it (meshkit.cluster.model.opgate): its state would silently part from the others'."""
    refused = opgate.refusal(state, str(cmd.get("op")), cstate.COMMANDS)
    if refused is not None:
        raise cstate.CommandError(refused)


class _Snapshot:
    """The state as raft's dump holds it, made when pickled (so in the forked child that writes
    the dump, never on the event loop): it unpickles as the plain dict of `to_dict()`, the dump
    format replicas load, whatever the version that wrote it. Pickled from the state's own
    containers (`dump_dict`, no copy): the child's view of them never changes."""

    __slots__ = ("state",)

    def __init__(self, state: cstate.ClusterState) -> None:
        self.state = state

    def __reduce__(self) -> tuple[type[dict[str, Any]], tuple[dict[str, Any]]]:
        return dict, (self.state.dump_dict(),)


class _StateMachine(SyncObjConsumer):  # type: ignore[misc]
    """The replicated object: one ClusterState, changed only by `apply_command`."""

    def __init__(self) -> None:
        super().__init__()
        self.state = cstate.ClusterState()
        self.on_applied: Callable[[Mapping[str, Any], dict[str, Any]], None] | None = None

    @replicated  # type: ignore[misc,untyped-decorator]
    def apply_command(self, cmd: dict[str, Any]) -> dict[str, Any]:
        if cmd.get("op") == BATCH_OP:  # writes of one tick in one entry: each applied alone
            return {"batch": [self._apply_one(c) for c in cmd.get("cmds") or ()]}
        return self._apply_one(cmd)

    def _apply_one(self, cmd: dict[str, Any]) -> dict[str, Any]:
        try:
            result: dict[str, Any] = {"ok": cstate.apply(self.state, cmd)}
        except cstate.CommandError as exc:
            result = {"error": str(exc), "kind": type(exc).__name__}
        except Exception as exc:  # a bug must not stop the replica applying the log
            log.exception("raft command %r failed", cmd.get("op"))
            result = {"error": f"internal error applying {cmd.get('op')}: {exc}"}
        if self.on_applied is not None:
            try:
                self.on_applied(cmd, result)
            except Exception:
                log.exception("state change hook failed")
        return result

    def _serialize(self) -> _Snapshot:
        # Called on the loop when raft compacts its log; the dump itself is written by a forked
        # child (lib.DumpWriter), which pickles what this returns: a copy-on-write view of
        # the state at this very index, turned into its dict form only in the child.
        return _Snapshot(self.state)

    def _deserialize(self, data: dict[str, Any]) -> None:
        # raft's dump, just unpickled (a snapshot sent by the leader is loaded on the loop):
        # nobody else holds it, so no copies
        self.state = cstate.ClusterState.from_dict(data, owned=True)


def saved_peers(directory: Path) -> list[str] | None:
    """The raft peers a store in `directory` last saw (peers.json), None when unknown."""
    try:
        data = json.loads((Path(directory) / "peers.json").read_text())
    except (OSError, ValueError):
        return None
    return [str(p) for p in data.get("peers", [])]


class BatchGate:
    """Whether every manager's build applies batch entries (see RAFT_OPS), looked at once
    per BATCH_CHECK: the managers are a handful among thousands of nodes."""

    __slots__ = ("answer", "looked")

    def __init__(self) -> None:
        self.looked = -BATCH_CHECK
        self.answer = False

    def allows(self, state: cstate.ClusterState, now: float) -> bool:
        if now - self.looked >= BATCH_CHECK:
            managers = state.managers()
            self.answer = bool(managers) and all(BATCH_OP in m.raft_ops for m in managers)
            self.looked = now
        return self.answer


def send_batched(
    machine: _StateMachine,
    pending: list[tuple[dict[str, Any], Callable[[Any, int], None]]],
    batch: bool = True,
) -> None:
    """The `BATCHED` writes submitted since the last tick, in raft entries of up to
    `BATCH_MAX` commands (one entry each when not `batch`: see RAFT_OPS); each submit gets
    its own command's result (or raft's failure)."""
    most = BATCH_MAX if batch else 1
    for at in range(0, len(pending), most):
        part = pending[at : at + most]
        if len(part) == 1:
            machine.apply_command(part[0][0], callback=part[0][1])
            continue
        cmds = [c for c, _ in part]

        def done(res: Any, err: int, part: list[Any] = part) -> None:
            results = ((res or {}).get("batch") or []) if err == FAIL_REASON.SUCCESS else []
            for i, (_, each) in enumerate(part):
                each(results[i] if i < len(results) else None, err)

        entry = {"op": BATCH_OP, "cmds": cmds, "cid": os.urandom(8).hex()}
        machine.apply_command(entry, callback=done)


def hold_election(obj: SyncObj, until: float) -> None:
    """A replica that could not listen for a while (its loop was held, or the host starved
    it): the leader's heartbeats may be waiting in its sockets. pysyncobj checks the election
    deadline before it reads them, so a follower back from a stall longer than the election
    timeout would start an election against a live leader. Time it could not listen is not
    the leader's silence: the deadline moves past this tick's reads."""
    name = "_SyncObj__raftElectionDeadline"
    if getattr(obj, name, until) < until:
        setattr(obj, name, until)


class RaftStore:
    """One manager's raft replica of the cluster state."""

    def __init__(
        self,
        self_addr: str,
        peers: list[str],
        directory: Path,
        secret: str,
        timings: RaftTimings | None = None,
    ) -> None:
        self.self_addr = self_addr
        self.directory = Path(directory)
        self.timings = timings or RaftTimings()
        self._initial_peers = [p for p in peers if p != self_addr]
        self._secret = secret
        self._machine = _StateMachine()
        self._obj: SyncObj | None = None
        self._tick_handle: asyncio.TimerHandle | None = None
        self._soon: asyncio.Handle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._saved_peers: set[str] | None = None
        self._member_change: str | None = None
        self._leaving: dict[str, float] = {}
        self._waiting: set[asyncio.Future[tuple[Any, int]]] = set()
        # submit()s in flight by their command id: a command this replica applied is committed,
        # so its submit is answered then, even if raft's own callback (on a follower: the
        # leader's word) never comes because the command made this node stop being a manager
        self._by_cid: dict[str, asyncio.Future[tuple[Any, int]]] = {}
        self._batch: list[tuple[dict[str, Any], Callable[[Any, int], None]]] = []
        self._gate = BatchGate()  # may the joins of a tick go in one entry (RAFT_OPS)
        self.slowest_tick = 0.0
        self._gc_pacer: gcpauses.GcPacer | None = None  # made at start()
        self.stalls = StallLog()
        self._tick_due = 0.0
        self._tick_cpu = 0.0
        self._tick_wait = 0.0
        self._last_tick_end = float("inf")  # no tick yet: nothing to make up for
        self._closed = False
        self.on_applied: Callable[[Mapping[str, Any], dict[str, Any]], None] | None = None
        self._machine.on_applied = self._applied

    # -- life cycle ----------------------------------------------------------------------------

    saved_peers = staticmethod(saved_peers)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        make_private_dir(self.directory)
        secure_tree(self.directory)  # journal/dump of an older version may be 0644
        peers = self.saved_peers(self.directory)
        if peers is None:
            peers = self._initial_peers
        peers = [p for p in peers if p != self.self_addr]
        t = self.timings
        conf = SyncObjConf(
            autoTick=False,
            journalFile=str(self.directory / "journal"),
            fullDumpFile=str(self.directory / "dump"),
            dynamicMembershipChange=True,
            password=self._secret,
            bindAddress=self.self_addr,
            maxBindRetries=1,
            useFork=True,  # log compaction: the dump is written by a forked child
            appendEntriesUseBatch=False,
            commandsWaitLeader=False,  # no leader: fail now (and retry here), never apply late
            raftMinTimeout=t.election_min,
            raftMaxTimeout=t.election_max,
            appendEntriesPeriod=t.append_period,
            connectionTimeout=t.connection_timeout,
            connectionRetryTime=t.retry,
            leaderFallbackTimeout=t.leader_fallback,
            logCompactionMinEntries=t.compact_entries,
            logCompactionMinTime=t.compact_seconds,
        )
        try:
            conf.validate()
        except AssertionError:
            raise StoreError(f"invalid raft timings: {t}") from None

        # PBKDF2 for the raft secret and the bind take a little while: not on the loop.
        def make() -> SyncObj:
            # pysyncobj logs a traceback of its own for a failed bind: the error says it all.
            plog = logging.getLogger("pysyncobj.syncobj")
            level = plog.level
            plog.setLevel(logging.CRITICAL)
            try:
                return SyncObj(self.self_addr, peers, conf, consumers=[self._machine])
            finally:
                plog.setLevel(level)

        try:
            self._obj = await self._loop.run_in_executor(None, make)
        except Exception as exc:
            why = "cannot bind (is the raft port in use?)" if "Bind" in str(exc) else str(exc)
            raise StoreError(f"cannot start raft on {self.self_addr}: {why}") from exc
        self._save_peers()
        gc.freeze()  # the state just loaded lives long: no full collection walks it again
        self._gc_pacer = gcpauses.GcPacer(  # no full collection on the loop; audits
            time.monotonic(), audit_file=str(self.directory / ("dump" + AUDIT_SUFFIX))
        )
        self._schedule()

    def close(self) -> None:
        self._closed = True
        for fut in self._waiting:
            if not fut.done():
                fut.set_exception(
                    StoreError("the raft store stopped (this node is no longer a manager)")
                )
        self._waiting.clear()
        self._batch.clear()
        if self._tick_handle is not None:
            self._tick_handle.cancel()
        if self._soon is not None:
            self._soon.cancel()
        if self._obj is not None:
            writer = getattr(self._obj, "_SyncObj__serializer", None)
            if isinstance(writer, DumpWriter):
                writer.abandon()  # its dump is not renamed into place: the journal stays whole
            try:
                self._obj.destroy()
            except Exception:
                log.exception("closing raft")
            self._obj = None
        self._gc_pacer = gcpauses.release(self._gc_pacer)  # nothing left frozen

    def _schedule(self) -> None:
        assert self._loop is not None
        if not self._closed:
            self._tick_due = time.monotonic() + self.timings.tick
            self._tick_cpu = time.process_time()
            self._tick_wait = runq_wait()
            self._tick_handle = self._loop.call_later(self.timings.tick, self._tick)

    def _tick(self) -> None:
        # How late the timer fired is how long the loop was held by whatever ran before it
        # (raft's own tick, a reply built, a plan made): the manager's loop-stall probe.
        self.stalls.note(
            time.monotonic() - self._tick_due,
            time.process_time() - self._tick_cpu,
            waited=runq_wait() - self._tick_wait,
        )
        self._tick_once()
        self._schedule()

    def _tick_once(self) -> None:
        self._soon = None
        if self._obj is None:
            return
        started, cpu, wait0 = time.monotonic(), time.process_time(), runq_wait()
        if started - self._last_tick_end > self.timings.election_min / 2:
            hold_election(self._obj, started + 2 * self.timings.append_period)
        if self._batch:
            pending, self._batch = self._batch, []
            send_batched(self._machine, pending, self._gate.allows(self.state, started))
        try:
            self._obj.doTick(0.0)
        except Exception:
            log.exception("raft tick failed")
        if self._gc_pacer is not None:
            self._gc_pacer.tick(started)  # full collections kept short (gcpauses.py)
        self._last_tick_end = time.monotonic()
        took = self._last_tick_end - started
        self.slowest_tick = max(self.slowest_tick, took)
        self.stalls.note(took, time.process_time() - cpu, waited=runq_wait() - wait0)
        if took > SLOW_TICK:
            log.warning("a raft tick held the event loop for %.0f ms", took * 1000)
        self._save_peers()

    def kick(self) -> None:
        """Tick at the next loop iteration (after a write, so it leaves at once)."""
        if self._loop is not None and self._soon is None and not self._closed:
            self._soon = self._loop.call_soon(self._tick_once)

    def _save_peers(self) -> None:
        if self._obj is None:
            return
        peers = {n.id for n in self._obj.otherNodes}
        if peers == self._saved_peers:
            return
        self._saved_peers = peers
        write_private(
            self.directory / "peers.json",
            json.dumps({"self": self.self_addr, "peers": sorted(peers)}),
        )

    # -- reads ---------------------------------------------------------------------------------

    @property
    def state(self) -> cstate.ClusterState:
        return self._machine.state

    @property
    def caught_up(self) -> bool:
        """Every entry this replica knows committed is applied (cheap: no status dict)."""
        obj = self._obj
        return obj is None or obj.raftLastApplied >= obj.raftCommitIndex

    @property
    def is_leader(self) -> bool:
        return self._obj is not None and bool(self._obj._isLeader())

    @property
    def leader(self) -> str | None:
        if self._obj is None:
            return None
        node = self._obj._getLeader()
        return None if node is None else str(node.id)

    @property
    def members(self) -> list[str]:
        """Every raft member's address, this one included."""
        if self._obj is None:
            return [self.self_addr]
        return sorted({n.id for n in self._obj.otherNodes} | {self.self_addr})

    @property
    def released(self) -> bool:
        """A manager that committed its own leave is let go: raft no longer lists the others
        (the leader took it out of the membership)."""
        return len(self.members) <= 1

    def connected(self, addr: str) -> bool:
        if addr == self.self_addr:
            return True
        if self._obj is None:
            return False
        return any(n.id == addr and self._obj.isNodeConnected(n) for n in self._obj.otherNodes)

    def reachable(self) -> tuple[int, int]:
        members = self.members
        return sum(1 for m in members if self.connected(m)), len(members)

    @property
    def has_quorum(self) -> bool:
        n, m = self.reachable()
        return n >= m // 2 + 1

    def no_quorum(self) -> NoQuorum:
        n, m = self.reachable()
        return NoQuorum(f"no quorum: {n} of {m} managers reachable")

    def status(self) -> dict[str, Any]:
        n, m = self.reachable()
        return {
            "self": self.self_addr,
            "leader": self.leader,
            "is_leader": self.is_leader,
            "members": self.members,
            "reachable": n,
            "has_quorum": n >= m // 2 + 1,
            "commit_index": 0 if self._obj is None else self._obj.raftCommitIndex,
            "last_applied": 0 if self._obj is None else self._obj.raftLastApplied,
            "term": 0 if self._obj is None else self._obj.raftCurrentTerm,
            "slowest_tick_ms": round(self.slowest_tick * 1000, 3),
            **self.stalls.status(),
            **gcpauses.install().status(),
            **(self._gc_pacer.status() if self._gc_pacer is not None else {}),
        }

    # -- writes --------------------------------------------------------------------------------

    async def submit(self, cmd: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        """Commit one command; its result, or StoreError/NoQuorum/CommandError."""
        if self._obj is None or self._loop is None:
            raise StoreError("the raft store is not running")
        deadline = time.monotonic() + (timeout or self.timings.commit_timeout)
        check_gate(self.state, cmd)
        cmd = {**cmd, "cid": os.urandom(8).hex()}
        while True:
            if self._obj is None:
                raise StoreError("the raft store stopped (this node is no longer a manager)")
            if not self.has_quorum:
                raise self.no_quorum()
            fut: asyncio.Future[tuple[Any, int]] = self._loop.create_future()

            def done(res: Any, err: int, fut: asyncio.Future[tuple[Any, int]] = fut) -> None:
                if not fut.done():
                    fut.set_result((res, err))

            if cmd.get("op") in BATCHED:
                self._batch.append((cmd, done))  # sent by the next tick, with its fellows
            else:
                self._machine.apply_command(cmd, callback=done)
                self.kick()
            self._waiting.add(fut)
            self._by_cid[cmd["cid"]] = fut
            try:
                res, err = await self._wait_commit(fut, cmd, deadline)
            finally:
                self._waiting.discard(fut)
                self._by_cid.pop(cmd["cid"], None)
            if err == FAIL_REASON.SUCCESS:
                break
            retry = err in _RETRY or (err in _RETRY_IF_IDEMPOTENT and resendable(cmd))
            if retry and time.monotonic() + 0.2 < deadline:
                await asyncio.sleep(0.2)
                continue
            text = _FAIL_TEXT.get(err, f"raft write failed (reason {err})")
            if err in _UNKNOWN:
                raise UnknownOutcome(unknown_text(text, str(cmd.get("op"))))
            raise StoreError(text)
        result = dict(res or {})
        if "error" in result:
            if result.get("kind") == "NodeNotFound":
                raise cstate.NodeNotFound(result["error"])
            raise cstate.CommandError(result["error"])
        return dict(result.get("ok") or {})

    async def _wait_commit(
        self, fut: asyncio.Future[tuple[Any, int]], cmd: dict[str, Any], deadline: float
    ) -> tuple[Any, int]:
        """Raft's answer to a write it took; UnknownOutcome when quorum is lost meanwhile (seen
        within QUORUM_CHECK) or the deadline passes, as the write may have committed."""
        op = str(cmd.get("op"))
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise UnknownOutcome(
                    unknown_text(f"timed out waiting for the raft leader to commit {op}", op)
                )
            try:
                return await asyncio.wait_for(asyncio.shield(fut), min(remaining, QUORUM_CHECK))
            except asyncio.TimeoutError:
                pass
            if self._obj is None:
                raise StoreError("the raft store stopped (this node is no longer a manager)")
            if not self.has_quorum:
                raise UnknownOutcome(unknown_text(str(self.no_quorum()), op))

    def _applied(self, cmd: Mapping[str, Any], result: dict[str, Any]) -> None:
        fut = self._by_cid.get(str(cmd.get("cid")))
        if fut is not None and not fut.done():
            fut.set_result((result, FAIL_REASON.SUCCESS))
        if self.on_applied is not None:
            self.on_applied(cmd, result)

    # -- membership ----------------------------------------------------------------------------

    def reconcile_members(self, desired: set[str]) -> str | None:
        """On the leader: one step towards raft members == `desired`; what it did, if anything.

        Adds before it removes (a cluster growing from 1 to 2 keeps its quorum as long as it
        can), one change at a time (pysyncobj refuses a second before the first commits).
        """
        if self._obj is None or not self.is_leader or self._member_change is not None:
            return None
        current = set(self.members)
        to_add = sorted(desired - current)
        to_remove = sorted(current - desired - {self.self_addr})
        if to_add:
            addr = to_add[0]
            self._member_change = addr
            self._obj.addNodeToCluster(addr, callback=self._member_done)
            self.kick()
            return f"add {addr}"
        now = time.monotonic()
        for addr in list(self._leaving):
            if addr not in to_remove:
                del self._leaving[addr]
        # A member on its way out first learns that its removal (its demotion) is committed:
        # it must have the entries and see the commit index before raft drops it.
        ready = []
        for addr in to_remove:
            since = self._leaving.setdefault(addr, now)
            caught_up = self._match_index(addr) >= self._obj.raftCommitIndex
            if now - since >= self.timings.remove_grace and (caught_up or not self.connected(addr)):
                ready.append(addr)
        if ready:
            addr = ready[0]
            self._leaving.pop(addr, None)
            self._member_change = addr
            self._obj.removeNodeFromCluster(addr, callback=self._member_done)
            self.kick()
            return f"remove {addr}"
        if to_remove:
            return "waiting to remove " + ", ".join(to_remove)
        if self.self_addr not in desired and len(current) > 1:
            self._obj.transferLeadership()
            self.kick()
            return "transfer leadership"
        return None

    def _match_index(self, addr: str) -> int:
        if self._obj is None:
            return 0
        return int(self._obj.getStatus().get(f"match_idx_server_{addr}", 0) or 0)

    def _member_done(self, res: Any, err: int) -> None:
        if err != FAIL_REASON.SUCCESS:
            log.info("raft membership change %s: %s", self._member_change, _FAIL_TEXT.get(err, err))
        else:
            log.info("raft membership change %s committed", self._member_change)
        self._member_change = None

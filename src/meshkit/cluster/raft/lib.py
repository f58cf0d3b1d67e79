"""pysyncobj, imported so that it leaves the rest of the process alone.

pysyncobj 0.3.17 imports its `win_inet_pton` shim on every platform, and that shim replaces
`socket.inet_ntop` process-wide with a Windows-only version that raises TypeError on Linux.
In an agent that runs raft beside the connection table, the ingress and DNS on one loop,
that broke every `socket.inet_ntop` call (meshkit's own pure-Python connection table among
them). Import pysyncobj only through this module: it puts the real function back.

Its journal, journal meta and snapshot files are created 0600 (pysyncobj uses plain
``open()``, so they would get the umask's 0644): they hold the replicated state, secrets
included.

It also caps the frames a raft peer may announce. pysyncobj reads a 4-byte length (native
order, signed) and buffers that many bytes before it checks the message's authentication, so
anyone who reaches the raft port could make a manager hold up to 2 GiB. Its own messages stay
far below the cap: log entries go in batches of 64 KiB and snapshots in parts.

A follower's election timeout grows while its leader has lately been slow to send appends
(`_patient_timeout`): a leader starved by its host is not taken for a dead one.
"""

from __future__ import annotations

import builtins
import contextlib
import gc
import gzip
import logging
import os
import pickle as stdpickle
import random
import signal
import socket
import struct
import time
from typing import Any

from meshkit.base.files import private_opener
from meshkit.cluster.raft import gcpauses

_inet_ntop = socket.inet_ntop
_inet_pton = socket.inet_pton

from pysyncobj import (  # noqa: E402  (must come after saving the socket functions)
    FAIL_REASON,
    SyncObj,
    SyncObjConf,
    SyncObjConsumer,
    journal,
    pickle,
    replicated,
    serializer,
    tcp_connection,
)
from pysyncobj import syncobj as syncobj_module  # noqa: E402
from pysyncobj.config import SERIALIZER_STATE  # noqa: E402

socket.inet_ntop = _inet_ntop
socket.inet_pton = _inet_pton

MAX_RAFT_FRAME = 64 << 20  # bytes a peer may announce before it has proven the raft secret

_parse_message = tcp_connection.TcpConnection._TcpConnection__processParseMessage


def _parse_capped_message(conn: Any) -> Any:
    buf = conn._TcpConnection__readBuffer
    if len(buf) >= 4:
        (length,) = struct.unpack("i", buf[:4])
        if length < 0 or length > MAX_RAFT_FRAME:
            conn.disconnect()
            return None
    return _parse_message(conn)


tcp_connection.TcpConnection._TcpConnection__processParseMessage = _parse_capped_message

_tcp_send = tcp_connection.TcpConnection.send
_tcp_timeout_check = tcp_connection.TcpConnection._TcpConnection__processConnectionTimeout
_CONNECTED = tcp_connection.CONNECTION_STATE.CONNECTED


def _send_noting_wait(conn: Any, message: Any) -> Any:
    """pysyncobj's send, noting when this side began to wait for an answer: the first send
    since the last read, or the first after the link was idle (no send for the timeout:
    a connection's handshake is never answered, an idle link's last send is old news)."""
    now = time.monotonic()
    waiting = getattr(conn, "_mk_waiting_since", None)
    last = getattr(conn, "_mk_last_send", None)
    idle = last is None or now - last > conn._TcpConnection__timeout
    if waiting is None or idle or conn._TcpConnection__lastReadTime >= waiting:
        conn._mk_waiting_since = now
    conn._mk_last_send = now
    return _tcp_send(conn, message)


def _timeout_if_unanswered(conn: Any) -> None:
    """An established connection times out when what this side sent got no answer for the
    connection timeout, not merely when nothing was read for that long.

    pysyncobj dropped any connection with nothing read for `connectionTimeout` (3.5 s) at its
    next send or read event. Two followers never talk while a leader lives, so their link was
    always "timed out": the candidate's vote request, the first message in seconds, closed the
    link instead of going out (and the other follower, seeing it arrive, closed its end before
    reading it). Every election after a leader died then failed once and waited out a second
    election timeout (bench/cluster_chaos.py: 1.3-2.1 s from a SIGKILL to a new leader instead
    of a few hundred ms). A leader's link to a silent follower still times out as before: the
    leader sends to it every append period. Links still connecting keep pysyncobj's rule."""
    if conn.state != _CONNECTED:
        _tcp_timeout_check(conn)
        return
    waiting = getattr(conn, "_mk_waiting_since", None)
    if waiting is None or conn._TcpConnection__lastReadTime >= waiting:
        return  # everything sent was answered
    now, timeout = time.monotonic(), conn._TcpConnection__timeout
    if now - getattr(conn, "_mk_last_send", waiting) > timeout:
        return  # nothing sent lately: an idle link (a follower's to a follower), not a dead one
    if now - waiting > timeout:
        conn.disconnect()


tcp_connection.TcpConnection.send = _send_noting_wait
tcp_connection.TcpConnection._TcpConnection__processConnectionTimeout = _timeout_if_unanswered


def _private_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
    """``open`` for pysyncobj's file modules: new files are 0600."""
    if not args and "opener" not in kwargs and isinstance(file, (str, bytes)):
        kwargs["opener"] = private_opener
    return builtins.open(file, mode, *args, **kwargs)


# A module global named `open` shadows the builtin for the code of that module only.
journal.open = _private_open  # type: ignore[attr-defined]
serializer.open = _private_open  # type: ignore[attr-defined]


AUDIT_SUFFIX = ".gc-audit.json"
"""The dump writer's garbage audit: next to the dump, read by the manager's GcPacer."""

DUMP_GZIP_LEVEL = 1
"""The dump's gzip level: at 5,000 nodes with a task each, 1 compresses the 3 MB pickle in
15 ms to 646 kB; pysyncobj's 9 took 83 ms for 601 kB (any level reads back alike)."""

DUMP_NICE = 10
"""How much lower the dump writer's priority is than the manager's (nice increment)."""


class DumpWriter(serializer.Serializer):  # type: ignore[misc]
    """pysyncobj's serializer, with its forked dump written so that a crash cannot lose writes.

    pysyncobj's forked child writes the dump and renames it into place itself; the parent
    drops the journal entries the dump holds when it next sees the child gone. A manager that
    stops (or dies) in between leaves a dump newer than the journal's start, and pysyncobj
    then throws the whole journal away on load: every entry after the dump is lost. Here the
    child only writes ``dump.tmp``; the parent renames it in the same tick as it drops the
    entries. The child also leaves the parent's signal wake-up fd alone, and a store that
    closes stops a child still writing.
    """

    def serialize(self, data: Any, id: Any) -> None:
        if self._Serializer__pid != 0:  # type: ignore[has-type]
            return
        if not self._Serializer__useFork:
            super().serialize(data, id)
            return
        self._Serializer__currentID = id
        tmp = self._Serializer__fileName + ".tmp"
        # The replicated state is long-lived: out of the cyclic collector's way from now on.
        # A full collection walks every object, and with thousands of nodes and tasks that
        # held the loop for hundreds of ms; in the child it would also copy every page.
        gc.freeze()
        audit = gcpauses.audit_due()  # the child also counts the garbage, now and then
        pid = os.fork()
        if pid != 0:
            self._Serializer__pid = pid
            return
        code = 1
        try:
            with contextlib.suppress(ValueError, OSError):
                signal.set_wakeup_fd(-1)
            with contextlib.suppress(OSError):
                os.nice(DUMP_NICE)  # the manager's loop first: the dump can wait
            with (
                _private_open(tmp, "wb") as f,
                gzip.GzipFile(fileobj=f, mode="wb", compresslevel=DUMP_GZIP_LEVEL) as g,
            ):
                # the standard pickle at its newest protocol (pysyncobj's wrapper forces 2);
                # any protocol loads back through pysyncobj's reader
                stdpickle.dump(data, g, protocol=stdpickle.HIGHEST_PROTOCOL)
            code = 0
            if audit:  # the frozen set's garbage, counted here: no fork of its own
                with contextlib.suppress(Exception):
                    gcpauses.audit_to_file(self._Serializer__fileName + AUDIT_SUFFIX)
        finally:
            os._exit(code)

    def checkSerializing(self) -> Any:
        state, sid = super().checkSerializing()
        if state == SERIALIZER_STATE.SUCCESS and self._Serializer__useFork:
            name = self._Serializer__fileName
            try:
                os.replace(name + ".tmp", name)
            except OSError:
                return SERIALIZER_STATE.FAILED, sid
        return state, sid

    def abandon(self) -> None:
        """Stop and reap a child still writing a dump (the store is closing)."""
        pid = self._Serializer__pid
        if pid > 0:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            self._Serializer__pid = 0


syncobj_module.Serializer = DumpWriter  # what SyncObj builds its serializer from

_send_next_node_idx = SyncObj._SyncObj__sendNextNodeIdx


def _send_next_node_idx_from_commit(
    self: Any, node: Any, reset: bool = False, nextNodeIdx: Any = None, success: bool = False
) -> Any:
    """A follower refusing an append asks for entries from no later than its commit index.

    pysyncobj's follower answers a refused append with "send from prevLogIdx" when its entry
    there has another term, but with "send from my last index + 1" when it has no entry there.
    The leader sends a long log in several batches at once (moving on without waiting), so
    an old leader back from a partition with an uncommitted entry of its term answered the
    first batch "from N" and every later one "from N + 1", and the leader, taking the last
    answer, sent from N + 1 again: a loop that never ended (bench/cluster_chaos.py: the
    manager stayed at its old commit index for good, serving stale reads, while saying it
    had quorum and a leader). Entries up to the commit index are the same on every manager,
    so both answers now say "from at most commit index + 1" and agree.
    """
    if reset and not success:
        committed = self._SyncObj__raftCommitIndex + 1
        nextNodeIdx = committed if nextNodeIdx is None else min(nextNodeIdx, committed)
    return _send_next_node_idx(self, node, reset=reset, nextNodeIdx=nextNodeIdx, success=success)


SyncObj._SyncObj__sendNextNodeIdx = _send_next_node_idx_from_commit

SLOW_LEADER_MEMORY = 60.0
"""Seconds a follower remembers the longest silence of its leader between two appends."""
SLOW_LEADER_CAP = 3.0
"""Seconds at most added to a follower's election timeout for a leader seen to be slow."""

_on_message = SyncObj._SyncObj__onMessageReceived
_raft_timeout = SyncObj._SyncObj__generateRaftTimeout
_on_node_disconnected = SyncObj._SyncObj__onNodeDisconnected
_set_state = SyncObj._SyncObj__setState

DEAD_LEADER_TIMEOUT = (0.05, 0.5)
"""Seconds (random in this range) a follower waits before it calls an election once its
connection to the leader has closed: the leader's process is gone (a crash, a SIGKILL, a
stop), its kernel closed the socket. A leader that is merely slow keeps its connections.
Both followers see the close at once: the range is wide enough that one usually asks for
votes before the other's deadline (a split vote costs a whole election timeout)."""

log = logging.getLogger("meshkit.cluster.raft")
_FOLLOWER = syncobj_module._RAFT_STATE.FOLLOWER
_CANDIDATE = syncobj_module._RAFT_STATE.CANDIDATE
_LEADER = syncobj_module._RAFT_STATE.LEADER


def _on_message_timed(self: Any, node: Any, message: Any) -> Any:
    """Note how long the leader was silent before each of its appends (see _patient_timeout).

    Only gaps between two appends of the same leader count: the gap across a leader change is
    the election, not a slow leader."""
    if isinstance(message, dict) and message.get("type") == "append_entries":
        now = time.monotonic()
        last = getattr(self, "_mk_last_append", None)
        same = getattr(self, "_mk_last_from", None) is node
        self._mk_last_append = now
        self._mk_last_from = node
        self._mk_leader_gone = False  # a leader speaks (back after a dropped link, or new)
        if last is not None and same:
            gap = now - last
            slow, at = getattr(self, "_mk_slow", (0.0, 0.0))
            if gap >= slow or now - at > SLOW_LEADER_MEMORY:
                self._mk_slow = (gap, now)
    return _on_message(self, node, message)


def _patient_timeout(self: Any) -> float:
    """The election timeout, longer while the leader has lately been slow to send appends.

    A leader whose loop was held (or whose host starved it: three managers sharing a loaded
    core, 5,000 nodes joining) goes silent for longer than the election timeout while it is
    alive and still leading; the followers then called elections, and each one failed the
    writes in flight (bench/cluster_heartbeats.py --services). A follower that has seen its
    leader silent for `slow` seconds within the last minute waits up to twice that longer (at
    most SLOW_LEADER_CAP). A leader that was prompt until it died (a crash, a SIGKILL, a
    partition) is replaced as fast as before, and one whose process died whatever its
    pace (its connection closes: _on_node_disconnected_fast).
    """
    base = float(_raft_timeout(self))
    self._mk_timeout = base
    if (
        getattr(self, "_mk_leader_gone", False)
        or getattr(self, "_SyncObj__raftState", 0) == _CANDIDATE
    ):
        # no leader to be patient with: its connection closed, or this replica is already
        # a candidate (a split vote after a leader died is retried at the usual pace, not
        # after a timeout grown for a leader that was slow under load)
        return base
    slow, at = getattr(self, "_mk_slow", (0.0, 0.0))
    conf = self._SyncObj__conf
    if time.monotonic() - at > SLOW_LEADER_MEMORY or slow <= 3 * conf.appendEntriesPeriod:
        return base
    self._mk_timeout = base + min(SLOW_LEADER_CAP, 2 * slow)
    return float(self._mk_timeout)


def _on_node_disconnected_fast(self: Any, node: Any) -> None:
    """A follower whose connection to its leader closed calls an election soon (see
    DEAD_LEADER_TIMEOUT), not after the whole (possibly grown) election timeout: the election
    timeout is there for a leader that went silent, and can be long for one that was slow."""
    _on_node_disconnected(self, node)
    if node is not None and node is self._SyncObj__raftLeader and not self._isLeader():
        soon = time.monotonic() + random.uniform(*DEAD_LEADER_TIMEOUT)
        if self._SyncObj__raftElectionDeadline > soon:
            self._SyncObj__raftElectionDeadline = soon
            self._mk_leader_gone = True


def _set_state_logged(self: Any, new_state: int) -> None:
    """pysyncobj's state change, logged with why: a follower calling an election says how long
    its leader was silent and its timeout; a leader stepping down says so (the 5,000-node bench
    needs to tell an election a starved leader caused from one a dead leader did)."""
    old = self._SyncObj__raftState
    _set_state(self, new_state)
    if new_state == old:
        return
    now = time.monotonic()
    if new_state == _CANDIDATE and old == _FOLLOWER:
        last = getattr(self, "_mk_last_append", None)
        silent = "never heard" if last is None else f"silent for {now - last:.2f} s"
        why = "its connection closed" if getattr(self, "_mk_leader_gone", False) else silent
        log.warning(
            "raft: calling an election (term %d): the leader %s (timeout %.2f s)",
            self._SyncObj__raftCurrentTerm + 1,
            why,
            getattr(self, "_mk_timeout", float("nan")),
        )
    elif old == _LEADER:
        log.warning("raft: no longer the leader (term %d)", self._SyncObj__raftCurrentTerm)
    self._mk_leader_gone = False


SyncObj._SyncObj__onMessageReceived = _on_message_timed
SyncObj._SyncObj__generateRaftTimeout = _patient_timeout
SyncObj._SyncObj__onNodeDisconnected = _on_node_disconnected_fast
SyncObj._SyncObj__setState = _set_state_logged

__all__ = [
    "FAIL_REASON",
    "MAX_RAFT_FRAME",
    "DumpWriter",
    "SyncObj",
    "SyncObjConf",
    "SyncObjConsumer",
    "pickle",
    "replicated",
]

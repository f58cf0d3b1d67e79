"""Reading a manager's replicated state from its raft files while no raft runs (`node init
--force-new-cluster`), and setting those files aside.

A manager whose cluster lost its quorum for good (the other managers destroyed) still holds
the whole state in its raft directory: the snapshot (``dump``, pysyncobj's gzip'd pickle,
written by log compaction) and the journal of the entries after it. `read_state` rebuilds the
`ClusterState` from them by applying the journal's commands to the snapshot, the way the replica
itself does when it starts. Like etcd's and swarmkit's --force-new-cluster it applies every entry
the local log holds, not only those it knew were committed: an entry the lost majority had
committed (and acknowledged to a client) is kept; an entry that was never committed is the write
whose outcome its client was told is unknown.
"""

from __future__ import annotations

import gzip
import logging
import shutil
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from meshkit.base.errors import MeshkitError
from meshkit.base.files import make_private_dir
from meshkit.cluster.model import state as cstate

log = logging.getLogger(__name__)

JOURNAL = "journal"
DUMP = "dump"
ASIDE = "before-force-new-cluster"
"""Where the old raft files go (inside the raft dir, so `node leave` removes them too)."""

_REGULAR = 0  # pysyncobj's _COMMAND_TYPE.REGULAR: a call of a @replicated method
_HEADER = 24 + 8 + 4 + 4  # app name, version, format version, last record offset


def _journal_entries(path: Path) -> Iterator[tuple[bytes, int, int]]:
    """(command, index, term) of each record of a pysyncobj FileJournal (read here rather than
    through pysyncobj's FileJournal, which would create a missing file and its meta)."""
    data = path.read_bytes()
    if len(data) < _HEADER:
        return
    (last,) = struct.unpack("<I", data[_HEADER - 4 : _HEADER])
    offset = _HEADER
    while offset + 4 <= min(last, len(data)):
        (size,) = struct.unpack("<I", data[offset : offset + 4])
        record = data[offset + 4 : offset + 4 + size]
        if len(record) < 16:
            raise MeshkitError(f"{path}: a truncated raft journal record at byte {offset}")
        idx, term = struct.unpack("<QQ", record[:16])
        yield record[16:], idx, term
        offset += size + 8


def _command(entry: bytes) -> dict[str, Any] | None:
    """The cluster command a journal entry carries (None for raft's own entries)."""
    from meshkit.cluster.raft.lib import pickle

    if not entry or entry[0] != _REGULAR:
        return None
    call = pickle.loads(entry[1:])
    if not isinstance(call, tuple) or len(call) < 2 or not call[1]:
        return None
    cmd = call[1][0]
    return cmd if isinstance(cmd, dict) else None


def read_state(raft_dir: Path) -> tuple[cstate.ClusterState, int]:
    """The state the raft files in `raft_dir` hold, and the number of journal commands applied."""
    from meshkit.cluster.raft.lib import pickle

    raft_dir = Path(raft_dir)
    state = cstate.ClusterState()
    after = 0
    dump = raft_dir / DUMP
    if dump.exists():
        try:
            with gzip.open(dump, "rb") as f:
                data = pickle.load(f)
            state = cstate.ClusterState.from_dict(data[0][1])
            after = int(data[1][1])  # the index of the last entry the snapshot holds
        except Exception as exc:
            raise MeshkitError(f"cannot read the raft snapshot {dump}: {exc}") from None
    applied = 0
    journal = raft_dir / JOURNAL
    if journal.exists():
        for entry, idx, _term in _journal_entries(journal):
            if idx <= after:
                continue
            cmd = _command(entry)
            if cmd is None:
                continue
            try:
                cstate.apply(state, cmd)
            except cstate.CommandError:
                continue  # refused when it was first applied too: same state
            applied += 1
    if not state.initialized:
        raise MeshkitError(
            f"{raft_dir} holds no cluster state (no raft snapshot or journal of an initialized "
            "cluster): --force-new-cluster needs the data dir of a manager"
        )
    return state, applied


def set_aside(raft_dir: Path) -> Path:
    """Move the old raft files (journal, its meta, snapshot, peers) into a dated folder."""
    raft_dir = Path(raft_dir)
    aside = raft_dir / ASIDE / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    make_private_dir(aside.parent)
    make_private_dir(aside)
    for name in (JOURNAL, JOURNAL + ".meta", DUMP, "peers.json"):
        src = raft_dir / name
        if src.exists():
            shutil.move(str(src), str(aside / name))
    return aside

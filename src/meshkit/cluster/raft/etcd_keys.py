"""The key layout of one cluster in etcd (see meshkit.cluster.raft.etcd_store), and the
snapshot writes and reads, which are plain functions of the layout and the client."""

from __future__ import annotations

import gc
import json
import os
import time
import zlib
from dataclasses import dataclass
from typing import Any

from meshkit.cluster.raft.etcd_http import EtcdError, EtcdHttp, b64, prefix_end, unb64

CHUNK = 1_000_000  # bytes of snapshot per key: etcd refuses requests over 1.5 MiB by default
TXN_OPS = 100  # etcd refuses a txn of more than 128 operations by default


@dataclass(frozen=True)
class Keys:
    prefix: str  # /meshkit/<cluster id>/

    @classmethod
    def of(cls, cluster_id: str) -> Keys:
        return cls(f"/meshkit/{cluster_id}/")

    @property
    def watched(self) -> str:
        return self.prefix + "w/"

    @property
    def log(self) -> str:
        return self.watched + "log/"

    @property
    def leader(self) -> str:
        return self.watched + "leader"

    @property
    def members(self) -> str:
        return self.watched + "members/"

    @property
    def snap(self) -> str:
        return self.prefix + "snap/"

    @property
    def meta(self) -> str:
        return self.snap + "meta"

    @property
    def trimmed(self) -> str:
        return self.snap + "trimmed"

    def snap_dir(self, rev: int) -> str:
        return f"{self.snap}{rev:020d}/"


def range_op(key: str, *, prefix: bool = False, **extra: Any) -> dict[str, Any]:
    req: dict[str, Any] = {"key": b64(key), **extra}
    if prefix:
        req["range_end"] = prefix_end(key)
    return {"request_range": req}


async def read_snapshot(http: EtcdHttp, keys: Keys, meta: dict[str, Any], head: int) -> bytes:
    """The compressed snapshot `meta` names, read at revision `head` (the catch-up read's)."""
    rev = int(meta["rev"])
    base = keys.snap_dir(rev)
    answer = await http.call(
        "/v3/kv/range",
        {"key": b64(base), "range_end": prefix_end(base), "revision": str(head)},
        timeout=60.0,
    )
    chunks = [unb64(kv["value"]) for kv in answer.get("kvs", [])]
    if len(chunks) != int(meta["chunks"]):
        raise EtcdError(f"the snapshot at revision {rev} is incomplete")
    return b"".join(chunks)


def encode_state(data: dict[str, Any]) -> bytes:
    return zlib.compress(json.dumps(data).encode(), 3)


def encode_in_child(state: Any) -> tuple[int, int]:
    """Fork a child that encodes `state` (its `to_dict()` value, O(state): never on the event
    loop) into a pipe, from a copy-on-write view of the state at this very moment, as the raft
    store's dump writer does; from the state's own containers (`dump_dict()`: the view never
    changes, a copy bought nothing). (pid, read end); `collect` gets the bytes."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no event loop, no threads; encode, write, leave
        code = 1
        try:
            os.close(r)
            gc.disable()
            view = memoryview(encode_state(state.dump_dict()))
            while view:
                view = view[os.write(w, view) :]
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    return pid, r


def collect(pid: int, fd: int) -> bytes:
    """The child's bytes (blocking: run in a thread); ValueError when the child failed."""
    chunks = []
    try:
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
    finally:
        os.close(fd)
        _, status = os.waitpid(pid, 0)
    if status != 0:
        raise ValueError(f"the snapshot writer (pid {pid}) failed with status {status}")
    return b"".join(chunks)


def decode_state(blob: bytes) -> dict[str, Any]:
    return dict(json.loads(zlib.decompress(blob)))


async def write_snapshot(http: EtcdHttp, keys: Keys, blob: bytes, rev: int, old: int) -> None:
    """The chunks first, then the meta key that points at them (a reader sees either the old
    snapshot or the whole new one), then the old snapshot's chunks go."""
    base = keys.snap_dir(rev)
    chunks = [blob[i : i + CHUNK] for i in range(0, len(blob), CHUNK)] or [b""]
    for n, chunk in enumerate(chunks):
        await http.call(
            "/v3/kv/put", {"key": b64(f"{base}{n:06d}"), "value": b64(chunk)}, timeout=30.0
        )
    meta = {"rev": rev, "chunks": len(chunks), "bytes": len(blob), "at": time.time()}
    await http.call("/v3/kv/put", {"key": b64(keys.meta), "value": b64(json.dumps(meta))})
    if old and old != rev:
        old_base = keys.snap_dir(old)
        await http.call(
            "/v3/kv/deleterange", {"key": b64(old_base), "range_end": prefix_end(old_base)}
        )


async def trim_log(http: EtcdHttp, keys: Keys, log_keys: dict[str, int], rev: int) -> None:
    """Delete the log entries up to `rev` (in the snapshot now), in txns of at most TXN_OPS,
    each also saying up to where the log is gone (so a replica behind it loads the snapshot)."""
    gone = [key for key, r in log_keys.items() if r <= rev]
    for i in range(0, len(gone), TXN_OPS):
        batch = gone[i : i + TXN_OPS]
        upto = max(log_keys.get(k, 0) for k in batch)
        ops: list[dict[str, Any]] = [{"request_delete_range": {"key": b64(k)}} for k in batch]
        ops.append({"request_put": {"key": b64(keys.trimmed), "value": b64(str(upto))}})
        await http.call("/v3/kv/txn", {"success": ops}, timeout=30.0)

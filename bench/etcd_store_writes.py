#!/usr/bin/env python3
"""The etcd cluster store's write path: commits per second, the manager's CPU per commit and
the commit latency of `EtcdStore.submit` against a throwaway local etcd.

One EtcdStore in this process (as a manager runs it) on an etcd this bench starts
(bench/etcd_server.py); it takes the leader key, commits `init`, then COUNT `add_node`
commands, CONCURRENCY at a time. CPU is this process's (the manager side: the HTTP calls, the
watch, the state machine's apply), not etcd's (printed apart). Snapshots and log trimming run
meanwhile as in a manager.

    python bench/etcd_store_writes.py                 # 2,000 commits, 16 at a time
    python bench/etcd_store_writes.py --quick         # smoke test: 200 commits
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
try:
    import meshkit  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(SRC))

from etcd_server import EtcdServer  # noqa: E402
from meshkit.cluster.model import state as cstate  # noqa: E402
from meshkit.cluster.raft.etcd_spec import parse_store  # noqa: E402
from meshkit.cluster.raft.etcd_store import EtcdStore  # noqa: E402


def record(i: int) -> dict[str, object]:
    role = "manager" if i < 0 else "worker"
    return cstate.NodeRecord(
        id=f"n{i:06d}", hostname=f"h{i}", role=role, addr="127.0.0.1"
    ).to_dict()


async def run(url: str, count: int, concurrency: int) -> str:
    store = EtcdStore("127.0.0.1:1", parse_store(url), "bench")
    await store.start()
    try:
        deadline = time.monotonic() + 20
        while not store.is_leader:
            if time.monotonic() > deadline:
                raise RuntimeError("the store did not take the leader key within 20 s")
            await asyncio.sleep(0.05)
        await store.submit({"op": "init", "cluster": {"cluster_id": "bench"}, "node": record(-1)})
        latencies: list[float] = []
        slots = asyncio.Semaphore(concurrency)

        async def one(i: int) -> None:
            async with slots:
                started = time.perf_counter()
                await store.submit({"op": "add_node", "node": record(i), "now": 1.0})
                latencies.append(time.perf_counter() - started)

        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(count)))
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        assert len(store.state.nodes) == count + 1
        latencies.sort()
        return (
            f"{count} commits, {concurrency} at a time, in {wall:.1f} s: {count / wall:.0f}/s; "
            f"manager CPU {1000 * cpu / count:.2f} ms per commit; latency p50 "
            f"{1000 * statistics.median(latencies):.1f} ms, p99 "
            f"{1000 * latencies[int(0.99 * (count - 1))]:.1f} ms; worst loop stall "
            f"{1000 * store.stalls.worst:.0f} ms; snapshot at revision {store.snapshot_rev}, "
            f"{len(store._log_keys)} log entries left"
        )
    finally:
        store.close()
        await asyncio.sleep(0.2)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--quick", action="store_true", help="smoke test: 200 commits")
    args = parser.parse_args()
    if args.quick:
        args.count = 200
    if args.count < 1 or args.concurrency < 1:
        parser.error("--count and --concurrency must be at least 1")
    tmp = Path(tempfile.mkdtemp(prefix="meshkit-bench-etcdw-"))
    etcd = EtcdServer(tmp)
    try:
        etcd.start()
        print(asyncio.run(run(etcd.url, args.count, args.concurrency)))
        print(f"etcd used {etcd.cpu_seconds():.1f} s of CPU")
        return 0
    except (RuntimeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        etcd.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

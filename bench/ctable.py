#!/usr/bin/env python3
"""Connection table: C (meshkit._fastpath.ConnTable) against its pure-Python twin.

Printed, each figure the median of several repetitions:

1. lookups/s of existing flows (the per-packet path: parse, hash, refresh) and of new flows
   (parse, policy pick, insert), for every policy, C and Python, and the ratio C/Python;
2. Maglev balance: min/max/mean table entries per backend for N = 3, 10, 100 equal-weight
   backends, and max/min;
3. Maglev disruption when 1 of N backends leaves: table entries that changed owner, also as a
   multiple of M/N (the entries the leaving backend held, the least any scheme must move).

Rates use the process's CPU time (time.process_time), so other work on a shared machine
distorts them less than wall-clock time would.

    python bench/ctable.py            # 5 repetitions, 20000 flows
    python bench/ctable.py --quick    # smoke test, well under 10 s
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

try:
    import meshkit  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from meshkit.lb.conntable import MAGLEV_SIZE, POLICIES, PyConnTable

try:
    from meshkit._fastpath import ConnTable as CConnTable
except ImportError:
    CConnTable = None

Key = tuple[int, str, int, str, int]


def make_keys(n: int) -> list[Key]:
    # Mixed families, as an ingress on a dual-stack host sees them.
    keys: list[Key] = []
    for i in range(n):
        if i % 4 == 3:
            keys.append((6, f"2001:db8::{i:x}", 1024 + i % 60000, "2001:db8:ffff::1", 443))
        else:
            keys.append((6, f"198.18.{i >> 8 & 255}.{i & 255}", 1024 + i % 60000, "192.0.2.1", 80))
    return keys


def new_table(cls: Any, policy: str, n_backends: int) -> Any:
    t = cls(policy, seed=1)
    for bid in range(n_backends):
        t.add_backend(bid, weight=1 + bid % 3)
    if policy == "maglev":
        t.maglev_table()  # build outside the timed part
    return t


def time_new(cls: Any, policy: str, keys: list[Key]) -> float:
    t = new_table(cls, policy, 10)
    lookup = t.lookup
    start = time.process_time()
    for p, s, sp, d, dp in keys:
        lookup(p, s, sp, d, dp, 1.0)
    return len(keys) / (time.process_time() - start)


def time_existing(cls: Any, policy: str, keys: list[Key], passes: int) -> float:
    t = new_table(cls, policy, 10)
    lookup = t.lookup
    for p, s, sp, d, dp in keys:
        lookup(p, s, sp, d, dp, 1.0)
    start = time.process_time()
    for _ in range(passes):
        for p, s, sp, d, dp in keys:
            lookup(p, s, sp, d, dp, 2.0)
    return passes * len(keys) / (time.process_time() - start)


def time_empty_call(keys: list[Key], passes: int) -> float:
    def lookup(p: int, s: str, sp: int, d: str, dp: int, now: float) -> None:
        return None

    start = time.process_time()
    for _ in range(passes):
        for p, s, sp, d, dp in keys:
            lookup(p, s, sp, d, dp, 2.0)
    return passes * len(keys) / (time.process_time() - start)


def median_of(reps: int, fn: Callable[[], float]) -> float:
    return statistics.median(fn() for _ in range(reps))


def bench_lookups(reps: int, n_flows: int, passes: int) -> None:
    keys = make_keys(n_flows)
    impls: list[tuple[str, Any]] = [("python", PyConnTable)]
    if CConnTable is not None:
        impls.insert(0, ("c", CConnTable))
    print(f"lookups/s, {n_flows} flows over 10 backends, median of {reps}")
    print(f"{'policy':<12} {'kind':<9} {'C':>12} {'Python':>12} {'C/Python':>9}")
    for policy in POLICIES:
        for kind in ("existing", "new"):
            rate: dict[str, float] = {}
            for name, cls in impls:
                if kind == "new":
                    rate[name] = median_of(
                        reps, lambda cls=cls, policy=policy: time_new(cls, policy, keys)
                    )
                else:
                    rate[name] = median_of(
                        reps,
                        lambda cls=cls, policy=policy: time_existing(cls, policy, keys, passes),
                    )
            c = rate.get("c")
            c_text = f"{c:12,.0f}" if c else f"{'n/a':>12}"
            ratio = f"{c / rate['python']:9.1f}" if c else f"{'n/a':>9}"
            print(f"{policy:<12} {kind:<9} {c_text} {rate['python']:12,.0f} {ratio}")
    # The Python loop and call alone cap what any implementation can show from Python.
    empty = median_of(reps, lambda: time_empty_call(keys, passes))
    print(f"(an empty Python function called the same way: {empty:,.0f}/s)")


def maglev_tables(n: int) -> tuple[list[int], list[int]]:
    cls = CConnTable or PyConnTable
    t = cls("maglev")
    for bid in range(n):
        t.add_backend(bid)
    before = t.maglev_table()
    t.remove_backend(n // 2)
    return before, t.maglev_table()


def bench_maglev(sizes: list[int]) -> None:
    m = MAGLEV_SIZE
    print(f"\nMaglev, M = {m}, equal weights")
    print(
        f"{'N':>5} {'min':>7} {'max':>7} {'mean':>9} {'max/min':>8}   "
        f"{'moved when 1 leaves':>19} {'x M/N':>6} {'other':>6}"
    )
    for n in sizes:
        before, after = maglev_tables(n)
        counts = Counter(before).values()
        lo, hi = min(counts), max(counts)
        moved = sum(1 for x, y in zip(before, after, strict=True) if x != y)
        # Entries that moved although their backend stayed: Maglev's extra disruption.
        other = sum(1 for x, y in zip(before, after, strict=True) if x != y and x != n // 2)
        print(
            f"{n:>5} {lo:>7} {hi:>7} {m / n:>9.1f} {hi / lo:>8.4f}   "
            f"{moved:>19} {moved / (m / n):>6.3f} {other:>6}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke test: small and fast")
    ap.add_argument("--reps", type=int, default=None, help="repetitions (median is printed)")
    args = ap.parse_args()
    reps = args.reps or (3 if args.quick else 5)
    n_flows, passes = (5000, 4) if args.quick else (20000, 10)
    if CConnTable is None:
        print("meshkit._fastpath is not built: Python figures only")
    bench_lookups(reps, n_flows, passes)
    bench_maglev([3, 10, 100])


if __name__ == "__main__":
    main()

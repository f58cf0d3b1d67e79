#!/usr/bin/env python3
"""How fast a service's DNS answers follow a task that dies: kill -9 a task's process, then ask
`tasks.NAME` at 127.0.0.11 from a client task until the dead task is gone from the answer.

A 3-node cluster of namespace hosts (tests/support/labutil.py), an overlay network, a service of
two `python -m http.server` replicas and a client task; each round kills one replica (the
restarted one must be back before the next round). Prints every round and the median. The time
includes one `dig` run (about 30 ms here) per poll. No anchor: Docker's embedded DNS is not on
this machine (its documented behaviour is that a task leaves DNS when its container stops).

    python bench/mesh_converge.py            # 5 rounds
    python bench/mesh_converge.py --quick    # 2 rounds (smoke)
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tests"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="2 rounds")
    ap.add_argument("--dataplane", choices=("kernel", "userspace"), default="kernel")
    args = ap.parse_args(argv)
    rounds = 2 if args.quick else args.rounds
    if os.geteuid() != 0:
        print("bench/mesh_converge.py: needs root (network namespaces)", file=sys.stderr)
        return 2
    from support.labutil import lab_cluster
    from support.meshlab import Cluster, dig
    from support.polling import until

    site = Path(tempfile.mkdtemp(prefix="mkbench-"))
    with lab_cluster(Cluster, ("m1", "w1", "w2")) as c:
        try:
            c.cli_ok("network", "create", "-d", "overlay", "--dataplane", args.dataplane, "conv")
            c.cli_ok(
                "service", "create", "--name", "web", "--replicas", "2", "--network", "conv",
                "--constraint", "node.hostname!=w2", "--workdir", str(site),
                "--", sys.executable, "-m", "http.server", "8080",
            )  # fmt: skip
            c.cli_ok(
                "service", "create", "--name", "client", "--network", "conv",
                "--constraint", "node.hostname==m1", "--", "sleep", "3600",
            )  # fmt: skip
            until(lambda: len(c.running("web")) == 2, 60, "web running")
            client = until(lambda: (r := c.running("client")) and r[0], 60, "client running")
            times = []
            for i in range(rounds):
                until(lambda: len(dig(c, client, "tasks.web")) == 2, 60, "both tasks in DNS")
                victim = c.running("web")[i % 2]
                start = time.monotonic()
                os.kill(int(victim["Pid"]), signal.SIGKILL)
                while len(dig(c, client, "tasks.web")) == 2:
                    if time.monotonic() - start > 30:
                        print("the dead task stayed in DNS for 30 s", file=sys.stderr)
                        return 1
                times.append(time.monotonic() - start)
                print(f"round {i + 1}: {times[-1]:.2f} s", flush=True)
            print(f"kill -9 -> gone from tasks.web: median {statistics.median(times):.2f} s "
                  f"over {len(times)} rounds ({args.dataplane} data plane)")  # fmt: skip
        finally:
            for svc in ("client", "web"):
                c.rm_service(svc)
    return 0


if __name__ == "__main__":
    sys.exit(main())

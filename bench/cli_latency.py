#!/usr/bin/env python3
"""How long the `meshkit` command takes to answer: start-up cost of the CLI.

Times, as a user's shell sees them (fork, exec, interpreter start, imports, the call and its
output), the median of N runs each of:

- ``python3 -c pass``: the floor, the interpreter alone;
- ``meshkit --version``: the CLI's own start-up (imports only);
- ``meshkit service ls``: one call to a running local agent over its Unix socket;
- ``meshkit service create --detach``: one write through raft and back.

The agent is a real one (``meshkit node init`` on 127.0.0.1, its own data dir and socket in a
temporary directory), stopped by pid at the end. The docker CLI answers ``docker --version``
in about 40 ms on this kind of machine (issue 17); there is no Docker engine here to run the
others side by side, so the floor is the interpreter's own start.

    python bench/cli_latency.py            # 20 runs each
    python bench/cli_latency.py --quick    # smoke run: 3 runs each
    python bench/cli_latency.py --runs 50 --json

Exit status 0 when every command answered with status 0.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SRC_DIR = Path(__file__).resolve().parent.parent / "src"


def meshkit_env() -> dict[str, str]:
    """The environment for child commands: the installed meshkit, or src/ when there is none."""
    env = dict(os.environ)
    probe = subprocess.run(
        [sys.executable, "-c", "import meshkit"], capture_output=True, env=env, check=False
    )
    if probe.returncode != 0:
        env["PYTHONPATH"] = str(SRC_DIR) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def time_runs(argv: list[str], runs: int, env: dict[str, str]) -> list[float]:
    out: list[float] = []
    for _ in range(runs):
        t0 = time.perf_counter()
        proc = subprocess.run(argv, capture_output=True, env=env, check=False)
        out.append(time.perf_counter() - t0)
        if proc.returncode != 0:
            raise SystemExit(
                f"{' '.join(argv)} exited {proc.returncode}: "
                f"{proc.stderr.decode(errors='replace').strip()}"
            )
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_agent(tmp: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    sock = str(tmp / "agent.sock")
    log = open(tmp / "agent.log", "wb")  # noqa: SIM115 (kept open for the agent's life)
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "meshkit", "node", "init",
            "--advertise-addr", "127.0.0.1", "--listen-addr", f"127.0.0.1:{free_port()}",
            "--data-dir", str(tmp / "data"), "--host", sock,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**env, "MESHKIT_RAFT_TICK": "0.02"},
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the agent exited: {(tmp / 'agent.log').read_text()[-2000:]}")
        probe = subprocess.run(
            [sys.executable, "-m", "meshkit", "node", "ls", "--host", sock],
            capture_output=True, env=env, check=False,
        )
        if probe.returncode == 0:
            return proc, sock
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    raise SystemExit(f"the agent never answered: {(tmp / 'agent.log').read_text()[-2000:]}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=20, help="runs of each command (default 20)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 3 runs each")
    ap.add_argument("--json", action="store_true", help="print the medians as JSON too")
    args = ap.parse_args()
    runs = 3 if args.quick else args.runs
    if runs < 1:
        ap.error("--runs must be at least 1")
    env = meshkit_env()
    mk = [sys.executable, "-m", "meshkit"]
    exe = shutil.which("meshkit")
    if exe is not None and "PYTHONPATH" not in env:
        mk = [exe]  # the console script, as a user types it
    results: dict[str, float] = {}
    results["python3 -c pass"] = statistics.median(
        time_runs([sys.executable, "-c", "pass"], runs, env)
    )
    results["meshkit --version"] = statistics.median(time_runs([*mk, "--version"], runs, env))
    tmp = Path(tempfile.mkdtemp(prefix="meshkit-cli-latency-"))
    agent: subprocess.Popen[bytes] | None = None
    try:
        agent, sock = start_agent(tmp, env)
        results["meshkit service ls"] = statistics.median(
            time_runs([*mk, "service", "ls", "--host", sock], runs, env)
        )
        creates: list[float] = []
        for i in range(runs):
            creates += time_runs(
                [*mk, "service", "create", "--detach", "--name", f"lat{i}", "--host", sock,
                 "--", "sleep", "3600"],
                1, env,
            )
        results["meshkit service create --detach"] = statistics.median(creates)
        for i in range(runs):
            subprocess.run([*mk, "service", "rm", f"lat{i}", "--host", sock],
                           capture_output=True, env=env, check=False)
    finally:
        if agent is not None and agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
            try:
                agent.wait(20)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    floor = results["python3 -c pass"]
    print(f"{'command':<36} {'median':>9} {'over python':>12}   ({runs} runs each)")
    for name, value in results.items():
        print(f"{name:<36} {value * 1000:>7.1f}ms {(value - floor) * 1000:>10.1f}ms")
    if args.json:
        print(json.dumps({k: round(v, 4) for k, v in results.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""websocket: messages through a command (`websocket /echo cat`) on a real `meshkit web`.

One client (wsproto over a blocking socket) keeps WINDOW messages of 32 bytes in flight to
`cat` and reads the echoes; the figure is echoed messages per second (each one crosses the
socket, the bridge, cat's stdin and stdout, the bridge and the socket again). A second case
measures one message at a time (round-trip latency, median). Rounds: the table shows medians.
No peer to compare with here (nginx has no command bridge); the numbers track regressions.
Everything started here lives in a temporary directory and is stopped by pid.

    python bench/web_websocket.py            # 5 rounds x 3 s
    python bench/web_websocket.py --quick    # smoke test: 1 round x 0.5 s
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Message, Request, TextMessage

SRC = Path(__file__).resolve().parent.parent / "src"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Client:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.sock.sendall(self.ws.send(Request(host="127.0.0.1", target="/echo")))
        self.received = 0
        while not any(isinstance(e, AcceptConnection) for e in self._read()):
            pass

    def _read(self) -> list[object]:
        data = self.sock.recv(1 << 20)
        if not data:
            raise EOFError
        self.ws.receive_data(data)
        events = list(self.ws.events())
        self.received += sum(1 for e in events if isinstance(e, Message))
        return events

    def send(self, n: int) -> None:
        frame = self.ws.send(TextMessage(data="x" * 32))
        self.sock.sendall(frame * n)

    def wait(self, total: int) -> None:
        while self.received < total:
            self._read()


def throughput(port: int, seconds: float, window: int = 64) -> float:
    c = Client(port)
    sent = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        c.send(window)
        sent += window
        c.wait(sent - window // 2)  # keep about half a window in flight
    c.wait(sent)
    elapsed = time.perf_counter() - start
    c.sock.close()
    return sent / elapsed


def latency(port: int, seconds: float) -> float:
    c = Client(port)
    times = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        c.send(1)
        c.wait(c.received + 1)
        times.append(time.perf_counter() - t0)
    c.sock.close()
    return statistics.median(times) * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke test: 1 round x 0.5 s")
    args = ap.parse_args()
    rounds, seconds = (1, 0.5) if args.quick else (5, 3.0)
    with tempfile.TemporaryDirectory(prefix="bench-ws-") as tmp:
        port = free_port()
        conf = Path(tmp) / "Caddyfile"
        conf.write_text(f"127.0.0.1:{port} {{\n    root {tmp}\n    websocket /echo cat\n}}\n")
        env = {**os.environ, "PYTHONPATH": str(SRC)}
        proc = subprocess.Popen(
            [sys.executable, "-m", "meshkit", "web", "-conf", str(conf), "-quiet"],
            env=env,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                    break
                except OSError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise SystemExit("meshkit web did not start") from None
                    time.sleep(0.05)
            rates = [throughput(port, seconds) for _ in range(rounds)]
            rtts = [latency(port, seconds) for _ in range(rounds)]
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)
    print(f"{'case':<28}{'median':>14}")
    print(f"{'echo through cat (msg/s)':<28}{statistics.median(rates):>14,.0f}")
    print(f"{'round trip (us, median)':<28}{statistics.median(rtts):>14,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

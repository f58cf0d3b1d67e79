"""What the end-to-end web tests share: an HttpServer on its own uvloop in a thread, and curl
as the client with the reply parsed into status, headers and body."""

from __future__ import annotations

import asyncio
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

from meshkit.web.message import Handler
from meshkit.web.server import HttpServer


class Running:
    """An HttpServer on its own event loop in a thread, on an ephemeral 127.0.0.1 port."""

    def __init__(self, handler: Handler, header_limit: int | None = None) -> None:
        try:
            import uvloop

            self.loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        except ImportError:  # pragma: no cover
            self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        if header_limit:
            self.server = HttpServer(handler, header_limit=header_limit)
        else:
            self.server = HttpServer(handler)
        asyncio.run_coroutine_threadsafe(self.server.listen("127.0.0.1", 0), self.loop).result(10)
        self.port = self.server.addresses()[0][1]

    def close(self) -> None:
        fut = asyncio.run_coroutine_threadsafe(self.server.shutdown(1.0), self.loop)
        try:
            fut.result(10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # names lower-cased
    body: bytes


def curl(port: int, path: str, *args: str, tmp: Path, path_as_is: bool = False) -> Reply:
    """GET (or what `args` say) http://127.0.0.1:PORT/PATH with curl over HTTP/1.1.

    `path_as_is` sends the path unchanged (curl otherwise squashes `..` itself, so traversal
    tricks would never reach the server)."""
    head, out = tmp / "head.txt", tmp / "body.bin"
    for p in (head, out):
        if p.exists():
            p.unlink()
    cmd = ["curl", "-sS", "--http1.1", "--max-time", "20", "-D", str(head), "-o", str(out)]
    if path_as_is:
        cmd.append("--path-as-is")
    cmd += [*args, f"http://127.0.0.1:{port}{path}"]
    subprocess.run(cmd, check=True, timeout=30)
    blocks = head.read_bytes().decode("latin-1").split("\r\n\r\n")
    lines = [b for b in blocks if b.strip()][-1].split("\r\n")  # after any 100 Continue
    status = int(lines[0].split()[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    return Reply(status, headers, out.read_bytes() if out.exists() else b"")

"""pysyncobj must not leave its Windows socket shim behind in our processes."""

from __future__ import annotations

import asyncio
import socket
import struct
import subprocess
import sys
from pathlib import Path


def test_importing_the_store_keeps_the_real_inet_ntop() -> None:
    # in a fresh interpreter: this test process may have imported pysyncobj already
    code = (
        "import socket; real = socket.inet_ntop\n"
        "import meshkit.cluster.raft.store\n"
        "assert socket.inet_ntop is real, socket.inet_ntop\n"
        "print(socket.inet_ntop(socket.AF_INET, bytes([192, 0, 2, 1])))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "192.0.2.1"


def test_inet_ntop_works_in_this_process() -> None:
    import meshkit.cluster.raft.store  # noqa: F401

    assert socket.inet_ntop(socket.AF_INET6, bytes(16)) == "::"


def test_a_stranger_announcing_a_huge_frame_is_cut_off(tmp_path: Path) -> None:
    """Before the cap, pysyncobj waited for (and buffered) all 2 GiB a stranger announced."""
    from meshkit.cluster.raft.store import RaftStore, RaftTimings

    timings = RaftTimings(tick=0.01, election_min=0.3, election_max=0.8, append_period=0.05)

    async def main() -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            addr = f"127.0.0.1:{probe.getsockname()[1]}"
        store = RaftStore(addr, [addr], tmp_path, "test-raft-secret", timings)
        try:
            await store.start()
            host, port = addr.split(":")
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(struct.pack("i", 0x7FFFFFFF) + b"x" * 1024)
            await writer.drain()
            # the store's loop must read, see the length and close on us
            assert await asyncio.wait_for(reader.read(), timeout=10) == b""
            writer.close()
            assert store.state is not None  # and it is still serving
        finally:
            store.close()

    asyncio.run(main())

"""pysyncobj must not leave its Windows socket shim behind in our processes."""

from __future__ import annotations

import socket
import subprocess
import sys


def test_importing_the_store_keeps_the_real_inet_ntop() -> None:
    # in a fresh interpreter: this test process may have imported pysyncobj already
    code = (
        "import socket; real = socket.inet_ntop\n"
        "import meshkit.cluster.store\n"
        "assert socket.inet_ntop is real, socket.inet_ntop\n"
        "print(socket.inet_ntop(socket.AF_INET, bytes([192, 0, 2, 1])))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "192.0.2.1"


def test_inet_ntop_works_in_this_process() -> None:
    import meshkit.cluster.store  # noqa: F401

    assert socket.inet_ntop(socket.AF_INET6, bytes(16)) == "::"

"""Shared fixtures: the fast-path implementation under test, and process clean-up."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

import netns
from peers import Proc


@pytest.fixture(params=["c", "python"])
def fastpath_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """Environment for a child meshkit process: compiled fast path, or its pure-Python twin."""
    return {"MESHKIT_NO_EXTENSIONS": "1" if request.param == "python" else "0"}


@pytest.fixture
def spawn() -> Iterator[Callable[..., Proc]]:
    procs: list[Proc] = []

    def start(argv: list[str], env: dict[str, str] | None = None) -> Proc:
        proc = Proc(argv, env)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.stop()


@pytest.fixture
def netns_lab() -> Iterator[netns.NetnsLab]:
    """An empty lab (hub + bridge); add hosts with ``lab.add_host(name)`` or
    ``lab.add_hosts(n)``. Everything it made is removed after the test, also when the test
    fails. Skipped where namespaces cannot be made (not root, no iproute2)."""
    reason = netns.available()
    if reason is not None:
        pytest.skip(reason)
    lab = netns.NetnsLab()
    try:
        yield lab
    finally:
        lab.close()

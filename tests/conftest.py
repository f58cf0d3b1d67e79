"""Shared fixtures: the fast-path implementation under test, and process clean-up."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from support import netns
from support.peers import Proc


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """`impl`: each of a module's twin implementations in turn (its IMPLS list of pytest.param,
    the C one skipped when the extension is not built), for tests that compare C and Python."""
    explicit = any(
        "impl" in str(mark.args[0]) for mark in metafunc.definition.iter_markers("parametrize")
    )
    if "impl" in metafunc.fixturenames and not explicit and "impl" not in vars(metafunc.module):
        impls = getattr(metafunc.module, "IMPLS", None)
        if impls is None:
            raise pytest.UsageError(f"{metafunc.module.__name__} uses `impl` without an IMPLS list")
        metafunc.parametrize("impl", impls)


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

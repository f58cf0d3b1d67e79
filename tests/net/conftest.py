"""Fixtures for overlay network tests: a lab of hosts as network namespaces."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import netns


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

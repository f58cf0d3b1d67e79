"""Fixtures of the response-cache tests (test_respcache*, test_redirect_respcache,
test_rulesite_cache); a module that defines its own `serve` keeps it."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from meshkit.web import fileserver
from support.httpserver_util import ServerThread
from support.respcache_lab import IMPLS


@pytest.fixture
def trust_fresh_folders(monkeypatch: pytest.MonkeyPatch) -> None:
    """Folders changed within the last second are not trusted as validators (their next
    change may keep the same timestamps); the tests' folders are that fresh. Modules that want
    it for every test wrap it in an autouse fixture."""
    monkeypatch.setattr(fileserver, "_RACY_NS", 0)


@pytest.fixture(params=IMPLS)
def serve(request: pytest.FixtureRequest) -> Iterator[Callable[..., ServerThread]]:
    started: list[ServerThread] = []

    def start(handler: object, **kwargs: object) -> ServerThread:
        st = ServerThread(handler, compiled=bool(request.param), **kwargs)  # type: ignore[arg-type]
        started.append(st)
        return st

    yield start
    for st in started:
        st.stop()

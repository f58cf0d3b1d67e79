"""The HTTP/2 engines a `meshkit web` child process may use (meshkit.web.h2conn.engine): the
compiled one (libnghttp2, meshkit._h2ng) and python-hyper's `h2`. Tests over HTTP/2 take the
`h2_engine` fixture to run once per engine (the compiled one skipped where it is not built or
MESHKIT_NO_EXTENSIONS=1 turns it off)."""

from __future__ import annotations

import importlib.util
import os

import pytest


def nghttp2_built() -> bool:
    off = os.environ.get("MESHKIT_NO_EXTENSIONS", "") not in ("", "0")
    return not off and importlib.util.find_spec("meshkit._h2ng") is not None


ENGINES = [
    pytest.param(
        "nghttp2",
        marks=pytest.mark.skipif(not nghttp2_built(), reason="meshkit._h2ng not built or off"),
    ),
    "h2",
]


@pytest.fixture(params=ENGINES)
def h2_engine(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """MESHKIT_H2_ENGINE for the child processes this test starts."""
    engine: str = request.param
    monkeypatch.setenv("MESHKIT_H2_ENGINE", engine)
    return engine

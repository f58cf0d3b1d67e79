"""Chooses between the compiled fast path and its pure-Python twins.

MESHKIT_NO_EXTENSIONS=1 forces the pure-Python code even when the extension is built; a
missing extension falls back silently, as aiohttp and yarl do.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType


def extensions_disabled() -> bool:
    return os.environ.get("MESHKIT_NO_EXTENSIONS", "") not in ("", "0")


def load_fastpath() -> ModuleType | None:
    """The compiled `meshkit._fastpath` module, or None when disabled or not built."""
    if extensions_disabled():
        return None
    try:
        return importlib.import_module("meshkit._fastpath")
    except ImportError:
        return None

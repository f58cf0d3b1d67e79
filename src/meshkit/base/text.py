"""Client-supplied text made safe to show: control characters escaped, length capped.

Used by every table cell and log line that carries a value from the network or a user (a node
hostname, an RPC method name), so that a value cannot move the cursor or forge a log line.
"""

from __future__ import annotations

import re

__all__ = ["CONTROL", "printable"]

# C0 and C1 control characters and DEL.
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(value: object, limit: int = 0) -> str:
    """``str(value)`` with control characters written as ``\\xHH`` (and cut to ``limit``
    characters with an ellipsis when ``limit`` is set): safe in a table cell or a log line."""
    text = value if isinstance(value, str) else str(value)
    if limit and len(text) > limit:
        text = text[:limit] + "..."
    return CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)

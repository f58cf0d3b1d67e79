"""`node ls --filter`: Docker's node filters, applied to the nodes a manager lists."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from meshkit.base.errors import FlagError

NODE_FILTERS = ("id", "name", "role", "membership", "label", "node.label")


def node_filters(texts: Sequence[str]) -> dict[str, list[str]]:
    """Docker's `node ls --filter KEY=VALUE` (values of one key: any; keys: all)."""
    out: dict[str, list[str]] = {}
    for text in texts:
        key, sep, value = text.partition("=")
        if not sep or key not in NODE_FILTERS:
            raise FlagError(
                "--filter", text, f"expected KEY=VALUE, KEY one of {', '.join(NODE_FILTERS)}"
            )
        if key == "role" and value not in ("manager", "worker"):
            raise FlagError("--filter", text, "role is manager or worker")
        if key == "membership" and value not in ("accepted", "pending"):
            raise FlagError("--filter", text, "membership is accepted or pending")
        out.setdefault(key, []).append(value)
    return out


def node_matches(view: dict[str, Any], filters: dict[str, list[str]]) -> bool:
    def one(key: str, value: str) -> bool:
        if key == "id":
            return str(view["ID"]).startswith(value)
        if key == "name":
            return str(view["Hostname"]).startswith(value)
        if key == "role":
            return bool(view["Role"] == value)
        if key == "membership":
            return value == "accepted"  # a node is in the state once it joined
        k, sep, v = value.partition("=")
        labels = view.get("Labels") or {}
        return k in labels and (not sep or labels[k] == v)

    return all(any(one(k, v) for v in values) for k, values in filters.items())

"""What one node built for one overlay network (meshkit.net.overlay): its namespace, VXLAN
port, probe and, for an encrypted network, the keys it holds in memory."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any


class OverlayError(Exception):
    """A network could not be built or a task not plugged in; the message says which and why."""


@dataclass
class BuiltNet:
    """What this node built for one network."""

    id: str
    name: str
    vni: int
    subnet: str
    ns: str
    plane: str
    mtu: int
    endpoint: str
    dev: str
    tap_fd: int | None = None
    probe: Any = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    tables: tuple[dict[str, str], dict[str, str]] = field(default_factory=lambda: ({}, {}))
    encrypted: bool = False
    keys: list[Any] = field(default_factory=list)  # seal.NetKey, in memory only
    tx_id: int | None = None
    switch: asyncio.TimerHandle | None = None

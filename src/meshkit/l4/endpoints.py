"""The ingress's backends as probed and counted (``Endpoint``), their stable ids and names."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from meshkit.lb.health import HealthState

if TYPE_CHECKING:
    from meshkit.l4.listeners import Listener


@dataclass
class Endpoint:
    """One backend address as probed and counted: (ip, port) after resolution."""

    name: str  # the user's spelling, HOST:PORT, for logs and metrics
    ip: str
    port: int
    family: int
    weight: int
    health: HealthState
    connect_failures: int = 0
    removed: bool = False  # taken out by a reload; open flows drain
    users: list[tuple[Listener, int]] = field(default_factory=list)  # (listener, backend id)


def backend_id_for(ip: str, port: int, taken: set[int]) -> int:
    """A stable id from the address, so every node numbers a backend alike (Maglev needs it)."""
    bid = zlib.crc32(f"{ip}|{port}".encode())
    while bid in taken:
        bid = (bid + 1) & 0xFFFFFFFF
    return bid


def fmt_addr(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"

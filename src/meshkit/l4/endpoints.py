"""The ingress's backends as probed and counted (``Endpoint``), their stable ids and names,
and what they know of the listeners that use them (``ListenerLike``)."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Protocol

from meshkit.l4.spec import Publish
from meshkit.lb.conntable import FlowKey, PyConnTable
from meshkit.lb.health import HealthState


class ListenerLike(Protocol):
    """What the ingress's parts use of a backend's listeners through ``Endpoint.users``
    (meshkit.l4.listeners.Listener, which holds these as plain attributes)."""

    publish: Publish
    table: PyConnTable
    by_id: dict[int, Endpoint]
    pair_of: dict[FlowKey, int]  # TCP flow -> relay pair

    def drop_udp_flow(self, key: FlowKey) -> None: ...


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
    users: list[tuple[ListenerLike, int]] = field(default_factory=list)  # (listener, backend id)


def backend_id_for(ip: str, port: int, taken: set[int]) -> int:
    """A stable id from the address, so every node numbers a backend alike (Maglev needs it)."""
    bid = zlib.crc32(f"{ip}|{port}".encode())
    while bid in taken:
        bid = (bid + 1) & 0xFFFFFFFF
    return bid


def fmt_addr(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"

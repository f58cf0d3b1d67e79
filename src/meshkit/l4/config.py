"""``IngressConfig``: what one `meshkit ingress` process serves (built by the CLI and by
meshkit.mesh), read by ``Ingress`` and its parts (listeners, health)."""

from __future__ import annotations

from dataclasses import dataclass

from meshkit.l4.spec import BackendSpec, Publish


@dataclass
class IngressConfig:
    publishes: list[Publish]
    backends: list[BackendSpec]
    backends_file: str | None = None
    policy: str = "round_robin"
    health_interval: float = 2.0
    health_timeout: float = 1.0
    rise: int = 2
    fall: int = 3
    connect_timeout: float = 3.0
    idle_timeout: float = 300.0
    retries: int = 2
    proxy_protocol: str | None = None
    max_conns: int | None = None
    metrics: tuple[str, int] | None = None
    grace_period: float = 10.0
    # How long a backend taken out by passive failures alone stays out when no active probe
    # watches it (UDP backends, or --health-interval 0s).
    fail_timeout: float = 10.0

"""`meshkit ingress`: the flags of the L4 routing-mesh proxy, turned into an IngressConfig."""

from __future__ import annotations

import functools
from typing import Annotated

import typer

from meshkit.base.errors import FlagError

ingress_app = typer.Typer()


def _agent_socket(host: str | None) -> str:
    from meshkit.cluster.rpc.local import socket_path

    return socket_path(host)


def _positive(flag: str, value: int, minimum: int = 1) -> int:
    if value < minimum:
        raise FlagError(flag, str(value), f"must be at least {minimum}")
    return value


@ingress_app.command(no_args_is_help=True)
def ingress(
    publish: Annotated[
        list[str],
        typer.Option("--publish", "-p", help="[IP:]PUBLISHED:TARGET[/tcp|/udp], repeatable."),
    ],
    backend: Annotated[
        list[str] | None,
        typer.Option("--backend", "-b", help="HOST[:PORT] (PORT defaults to TARGET), repeatable."),
    ] = None,
    backends_file: Annotated[
        str | None,
        typer.Option(
            "--backends-file", help="File of HOST[:PORT][ weight=N] lines; re-read on SIGHUP."
        ),
    ] = None,
    service: Annotated[
        str | None,
        typer.Option(
            "--service",
            help="A cluster service: its up tasks are the backends, fed live by this node's "
            "agent (see --host).",
        ),
    ] = None,
    host: Annotated[
        str | None,
        typer.Option(
            "--host",
            help="The node agent's socket for --service (default $MESHKIT_HOST or "
            "/run/meshkit/meshkit.sock).",
        ),
    ] = None,
    policy: Annotated[
        str, typer.Option(help="round_robin, least_conn, random or maglev.")
    ] = "round_robin",
    health_interval: Annotated[
        str, typer.Option(help="Time between TCP health probes (0s: off).")
    ] = "2s",
    health_timeout: Annotated[str, typer.Option(help="Time a probe may take.")] = "1s",
    rise: Annotated[int, typer.Option(help="Good probes in a row to bring a backend back.")] = 2,
    fall: Annotated[int, typer.Option(help="Failures in a row to take a backend out.")] = 3,
    connect_timeout: Annotated[str, typer.Option(help="Time a backend connect may take.")] = "3s",
    idle_timeout: Annotated[
        str, typer.Option(help="Close flows idle this long (0s: never).")
    ] = "300s",
    retries: Annotated[int, typer.Option(help="Other backends to try when a connect fails.")] = 2,
    proxy_protocol: Annotated[
        str | None, typer.Option(help="Send a PROXY protocol header (v1 or v2) to backends.")
    ] = None,
    max_conns: Annotated[int | None, typer.Option(help="Most open flows at once.")] = None,
    metrics: Annotated[
        str | None, typer.Option(help="Serve Prometheus metrics on IP:PORT at /metrics.")
    ] = None,
    fail_timeout: Annotated[
        str,
        typer.Option(help="Time a passively failed backend stays out when no probe watches it."),
    ] = "10s",
    grace_period: Annotated[
        str, typer.Option(help="On SIGTERM, time open flows get to finish.")
    ] = "10s",
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    """L4 routing-mesh proxy: publish ports and spread flows over backends."""
    from meshkit.l4 import spec
    from meshkit.l4.ingress import IngressConfig, run_ingress
    from meshkit.lb import POLICIES

    publishes = [spec.parse_publish(p) for p in publish]
    seen: set[tuple[str, int, str]] = set()
    for p in publishes:
        if (p.host, p.published, p.proto) in seen:
            raise FlagError("--publish", f"{p.published}/{p.proto}", "published twice")
        seen.add((p.host, p.published, p.proto))
    if sum(1 for given in (backend, backends_file, service) if given) > 1:
        raise FlagError(
            "--service" if service else "--backends-file",
            service or backends_file or "",
            "use one of --backend, --backends-file or --service",
        )
    if not backend and not backends_file and not service:
        raise FlagError(
            "--backend", "", "give at least one --backend, a --backends-file or a --service"
        )
    if host is not None and service is None:
        raise FlagError("--host", host, "only goes with --service")
    backends = [spec.parse_backend(b) for b in backend or []]
    if policy not in POLICIES:
        raise FlagError("--policy", policy, f"expected one of {', '.join(POLICIES)}")
    if proxy_protocol is not None and proxy_protocol not in ("v1", "v2"):
        raise FlagError("--proxy-protocol", proxy_protocol, "expected v1 or v2")
    if proxy_protocol == "v1" and any(p.proto == "udp" for p in publishes):
        raise FlagError("--proxy-protocol", "v1", "PROXY protocol v1 cannot carry UDP; use v2")
    if log_level.lower() not in ("debug", "info", "warning", "error"):
        raise FlagError("--log-level", log_level, "expected debug, info, warning or error")
    config = IngressConfig(
        publishes=publishes,
        backends=backends,
        backends_file=backends_file,
        policy=policy,
        health_interval=spec.parse_duration(health_interval, "--health-interval"),
        health_timeout=spec.parse_duration(health_timeout, "--health-timeout"),
        rise=_positive("--rise", rise),
        fall=_positive("--fall", fall),
        connect_timeout=spec.parse_duration(connect_timeout, "--connect-timeout"),
        idle_timeout=spec.parse_duration(idle_timeout, "--idle-timeout"),
        retries=_positive("--retries", retries, 0),
        proxy_protocol=proxy_protocol,
        max_conns=None if max_conns is None else _positive("--max-conns", max_conns),
        metrics=None if metrics is None else spec.parse_hostport(metrics, "--metrics"),
        grace_period=spec.parse_duration(grace_period, "--grace-period"),
        fail_timeout=spec.parse_duration(fail_timeout, "--fail-timeout"),
    )
    if config.connect_timeout <= 0:
        raise FlagError("--connect-timeout", connect_timeout, "must be more than 0s")
    if config.health_timeout <= 0:
        raise FlagError("--health-timeout", health_timeout, "must be more than 0s")
    from meshkit.cli import run_loop, setup_logging

    setup_logging(log_level)
    source = None
    if service:  # the backends are the service's up tasks, fed by this node's agent
        from meshkit.cluster.node.servicefeed import ServiceFeed

        source = functools.partial(ServiceFeed, service=service, agent_socket=_agent_socket(host))
    run_loop(run_ingress(config, source))

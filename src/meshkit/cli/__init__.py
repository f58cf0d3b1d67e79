"""The `meshkit` command: one typer sub-command per area, argument handling only.

Each command turns its flags into a config object (errors name the flag) and hands it to the
module that does the work. main() maps errors to exit codes: 1 for a failure, 2 for a usage
error, and a traceback only with MESHKIT_DEBUG=1.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Coroutine
from typing import Annotated, Any

import typer

# typer 0.29 carries its own click; its exceptions are only importable from here (pinned).
from typer._click.exceptions import ClickException, UsageError

from meshkit import __version__
from meshkit.base.errors import FlagError, MeshkitError

app = typer.Typer(
    name="meshkit",
    help="Swarm-style clustering, overlay networks, an L4 routing mesh and a Caddyfile web "
    "server for plain Linux processes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"meshkit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """meshkit: swarm mode and Caddy for plain Linux processes."""


def setup_logging(level: str = "info") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S",
        stream=sys.stderr,
    )


def _agent_socket(host: str | None) -> str:
    from meshkit.cluster.rpc.local import socket_path

    return socket_path(host)


def _positive(flag: str, value: int, minimum: int = 1) -> int:
    if value < minimum:
        raise FlagError(flag, str(value), f"must be at least {minimum}")
    return value


@app.command(no_args_is_help=True)
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
        service=service,
        agent_socket=_agent_socket(host) if service else "",
    )
    if config.connect_timeout <= 0:
        raise FlagError("--connect-timeout", connect_timeout, "must be more than 0s")
    if config.health_timeout <= 0:
        raise FlagError("--health-timeout", health_timeout, "must be more than 0s")
    setup_logging(log_level)
    run_loop(run_ingress(config))


# Sub-commands of each area live beside the code they drive.
from meshkit.cli.network import doctor, network_app  # noqa: E402
from meshkit.cli.node import node_app  # noqa: E402
from meshkit.cli.service import service_app  # noqa: E402
from meshkit.cli.web import web_app  # noqa: E402

app.add_typer(node_app, name="node")
app.add_typer(service_app, name="service")
app.add_typer(network_app, name="network")
app.command("doctor")(doctor)
app.add_typer(web_app)


def run_loop(coro: Coroutine[Any, Any, None]) -> None:
    """Run a coroutine on uvloop, the one event loop of every meshkit process."""
    import uvloop

    uvloop.run(coro)


def main(argv: list[str] | None = None) -> int:
    debug = os.environ.get("MESHKIT_DEBUG", "") not in ("", "0")
    try:
        rv = app(args=argv, prog_name="meshkit", standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except UsageError as exc:  # also NoArgsIsHelpError: help was shown, still a usage error
        exc.show()
        return 2
    except ClickException as exc:
        exc.show()
        return exc.exit_code
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        print("Aborted.", file=sys.stderr)
        return 130
    except MeshkitError as exc:
        if debug:
            traceback.print_exc()
        print(f"Error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if debug:
            raise
        print(
            f"Error: internal error: {type(exc).__name__}: {exc}\n"
            "This is a bug in meshkit; run again with MESHKIT_DEBUG=1 for the traceback.",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())

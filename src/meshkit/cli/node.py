"""`meshkit node` commands: argument handling and output; the work is in agent/api/client.

`init` and `join` make the node and run its agent in the foreground (`--detach`: in the
background, with agent.pid and agent.log in the data dir); `run` starts the agent of an
existing data dir again. Every other command asks the local agent over its Unix socket
(`--host`, MESHKIT_HOST, default /run/meshkit/meshkit.sock).
"""

from __future__ import annotations

import ipaddress
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from meshkit.base.errors import FlagError, MeshkitError
from meshkit.cli.agentrun import run_agent
from meshkit.cli.nodefilter import node_filters, node_matches
from meshkit.cli.storeflags import (
    StoreCaOpt,
    StoreCertOpt,
    StoreKeyOpt,
    StoreLeaseOpt,
    StoreOpt,
    store_spec,
)

node_app = typer.Typer(
    name="node",
    help="Cluster membership: init, join, ls, promote...",
    no_args_is_help=True,
)

DEFAULT_POOL = "198.19.0.0/16"
POOL_HELP = (
    "Address pool (CIDR) overlay subnets are taken from; repeatable. The default, "
    f"{DEFAULT_POOL}, is part of 198.18.0.0/15, which is reserved for network testing "
    "(RFC 2544) and never routed on the internet: meshkit never takes the private ranges "
    "(10/8, 172.16/12, 192.168/16), so its overlays cannot collide with a site's networks."
)

HostOpt = Annotated[
    str | None,
    typer.Option(
        "--host",
        "-H",
        help="Agent socket (path or unix:///path); default MESHKIT_HOST or "
        "/run/meshkit/meshkit.sock.",
    ),
]
FormatOpt = Annotated[str, typer.Option("--format", help="table or json.")]
IdsOnlyOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Only the IDs.")]
DataDirOpt = Annotated[
    str, typer.Option("--data-dir", help="Where the node keeps its identity and state.")
]
LogLevelOpt = Annotated[str, typer.Option("--log-level", help="debug, info, warning or error.")]
WebOpt = Annotated[
    str | None,
    typer.Option(
        "--web",
        help="A Caddyfile the agent serves on its own loop (proxy upstreams may be "
        "service://NAME:PORT).",
    ),
]


# -- helpers -----------------------------------------------------------------------------------


def check_format(fmt: str) -> str:
    if fmt not in ("table", "json"):
        raise FlagError("--format", fmt, "expected table or json")
    return fmt


def _check_log_level(level: str) -> str:
    if level.lower() not in ("debug", "info", "warning", "error"):
        raise FlagError("--log-level", level, "expected debug, info, warning or error")
    return level


def _ip(flag: str, text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise FlagError(flag, text, "expected an IP address") from None


def _listen(flag: str, text: str) -> tuple[str, int]:
    from meshkit.base.hostport import parse_hostport

    if ":" not in text:
        text = f"{text}:2377"
    host, port = parse_hostport(text, flag)
    if host != "0.0.0.0":
        _ip(flag, host)
    return host, port


def _port(flag: str, value: int, low: int = 1, high: int = 65535) -> int:
    if not low <= value <= high:
        raise FlagError(flag, str(value), f"expected a port from {low} to {high}")
    return value


def _socket_for(host: str | None) -> str:
    from meshkit.cluster.rpc.local import socket_path

    return socket_path(host)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Docker's table layout; kept here for the callers that import it (meshkit.base.table)."""
    from meshkit.base.table import table as base_table

    return base_table(headers, rows)


def print_listing(
    items: Sequence[dict[str, Any]],
    fmt: str,
    quiet: bool,
    headers: Sequence[str],
    row: Callable[[dict[str, Any]], Sequence[str]],
) -> None:
    """An `ls` command's output: short IDs with -q, JSON, or Docker's table (`fmt` checked
    with check_format before the agent was asked)."""
    if quiet:
        for item in items:
            typer.echo(item["ID"][:12])
    elif fmt == "json":
        typer.echo(json.dumps(list(items), indent=4))
    else:
        typer.echo(table(headers, [row(item) for item in items]))


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=4, sort_keys=False))


def agent_call(host: str | None, method: str, params: dict[str, Any] | None = None) -> Any:
    """One call to the local agent's API (its client loaded on demand: a light CLI)."""
    from meshkit.cluster.rpc.local import call

    return call(host, method, params)


_call = agent_call

RETRY_CODES = ("unknown_outcome", "unavailable")
"""Errors after which an idempotent write is sent again (it may or may not have applied)."""


def agent_call_idempotent(
    host: str | None,
    method: str,
    params: dict[str, Any],
    attempts: int = 3,
    call: Callable[..., Any] | None = None,
) -> Any:
    """A write that may be sent twice (a create carrying a request id: the state returns the
    object the first one made), sent again when its outcome is unknown."""
    import secrets as _secrets

    from meshkit.cluster.rpc.transport import RpcError

    params = {"request_id": _secrets.token_hex(16), **params}
    for attempt in range(attempts):
        try:
            return (call or agent_call)(host, method, params)
        except RpcError as exc:
            if exc.code not in RETRY_CODES or attempt == attempts - 1:
                raise
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


def unlock_text(key: str) -> str:
    from meshkit.cli.cluster import unlock_text as text

    return text(key)


def join_command(token: str, addr: str) -> str:
    return f"meshkit node join --token {token} {addr}"


def _join_text(role: str, token: str, addr: str) -> str:
    return (
        f"To add a {role} to this swarm, run the following command:\n\n"
        f"    {join_command(token, addr)}\n"
    )


# -- running the agent -------------------------------------------------------------------------


# -- init / join / run -------------------------------------------------------------------------


def _web_file(path: str | None) -> str:
    """The Caddyfile of `--web` as an absolute path, checked now (file:line errors) so that a
    broken one stops the command before a node is made or started."""
    if path is None or path == "":
        return ""
    from meshkit.web.caddyfile.load import load_file

    full = os.path.abspath(path)
    try:
        config = load_file(full, directory=_ParseOnly())
    except MeshkitError as exc:
        raise FlagError("--web", path, str(exc)) from None
    if config.errors:
        raise FlagError("--web", path, "; ".join(str(e) for e in config.errors))
    return full


class _ParseOnly:
    """A service directory for checking a Caddyfile: service:// upstreams are allowed (the
    agent's own directory fills them once it runs)."""

    def known(self, service: str) -> bool:
        return False

    def endpoints(self, service: str) -> list[str]:
        return []

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        return lambda: None

    def socket_for(self, service: str, family: int) -> Any:
        raise OSError(f"service {service} is not known while checking the Caddyfile")


@node_app.command()
def init(
    advertise_addr: Annotated[
        str | None, typer.Option(help="IP address other nodes reach this node at.")
    ] = None,
    listen_addr: Annotated[
        str, typer.Option(help="IP:PORT of the manager API (mutual TLS).")
    ] = "0.0.0.0:2377",
    data_dir: DataDirOpt = "/var/lib/meshkit",
    default_addr_pool: Annotated[
        list[str] | None, typer.Option("--default-addr-pool", help=POOL_HELP)
    ] = None,
    default_addr_pool_mask_length: Annotated[
        int, typer.Option(help="Prefix length of each overlay subnet taken from the pool.")
    ] = 24,
    data_path_port: Annotated[
        int, typer.Option(help="UDP port of the VXLAN data path (1024-49151).")
    ] = 4789,
    raft_port: Annotated[
        int | None, typer.Option(help="TCP port raft uses between managers (listen port + 1).")
    ] = None,
    dispatcher_heartbeat: Annotated[
        str, typer.Option(help="Heartbeat period of the nodes; Down after 3 missed beats.")
    ] = "5s",
    cert_expiry: Annotated[
        str, typer.Option(help="Lifetime of node certificates (renewed at 50-80% of it).")
    ] = "2160h",
    task_history_limit: Annotated[
        int, typer.Option(help="Tasks kept per slot, the running one included.")
    ] = 5,
    hostname: Annotated[
        str | None, typer.Option(help="Name shown in `node ls` (default: the host name).")
    ] = None,
    web: WebOpt = None,
    force_new_cluster: Annotated[
        bool,
        typer.Option(
            "--force-new-cluster",
            help="Recover after quorum is lost for good: a single-manager cluster from the "
            "state in this manager's --data-dir (its agent stopped).",
        ),
    ] = False,
    autolock: Annotated[
        bool,
        typer.Option(
            "--autolock",
            help="Encrypt the managers' keys at rest; a restarted manager waits for "
            "`meshkit node unlock` (the unlock key is printed once).",
        ),
    ] = False,
    detach: Annotated[bool, typer.Option("--detach", "-d", help="Run in the background.")] = False,
    host: HostOpt = None,
    log_level: LogLevelOpt = "info",
    store: StoreOpt = None,
    store_cacert: StoreCaOpt = None,
    store_cert: StoreCertOpt = None,
    store_key: StoreKeyOpt = None,
    store_lease: StoreLeaseOpt = None,
) -> None:
    """Make a new cluster with this node as its first manager, and run its agent."""
    from meshkit.base.durations import parse_duration
    from meshkit.cluster.node import agent as ag
    from meshkit.cluster.node import bootstrap

    if force_new_cluster:
        _check_log_level(log_level)
        given = [
            flag
            for flag, value in (
                ("--advertise-addr", advertise_addr),
                ("--default-addr-pool", default_addr_pool),
                ("--raft-port", raft_port),
                ("--hostname", hostname),
                ("--task-history-limit", task_history_limit != 5 or None),
                ("--autolock", autolock or None),
                ("--store", store),
            )
            if value
        ]
        if given:
            raise FlagError(
                given[0], "", "--force-new-cluster keeps the node and cluster settings it has"
            )
        from meshkit.cli import noderecover

        noderecover.force_new_cluster(Path(data_dir), host, web, detach, log_level)
        return

    listen_host, listen_port = _listen("--listen-addr", listen_addr)
    if advertise_addr is not None:
        advertise_addr = _ip("--advertise-addr", advertise_addr)
    pools = default_addr_pool or [DEFAULT_POOL]
    for pool in pools:
        try:
            net = ipaddress.ip_network(pool, strict=True)
        except ValueError as exc:
            raise FlagError("--default-addr-pool", pool, str(exc)) from None
        if net.version != 4:
            raise FlagError("--default-addr-pool", pool, "expected an IPv4 CIDR")
        if not net.prefixlen <= default_addr_pool_mask_length <= 29:
            raise FlagError(
                "--default-addr-pool-mask-length",
                str(default_addr_pool_mask_length),
                f"must be between the pool's prefix length ({net.prefixlen}) and 29",
            )
    _port("--data-path-port", data_path_port, 1024, 49151)
    if raft_port is not None:
        _port("--raft-port", raft_port)
        if raft_port == listen_port:
            raise FlagError("--raft-port", str(raft_port), "must differ from the listen port")
    period = parse_duration(dispatcher_heartbeat, "--dispatcher-heartbeat")
    if period <= 0:
        raise FlagError("--dispatcher-heartbeat", dispatcher_heartbeat, "must be more than 0s")
    lifetime = parse_duration(cert_expiry, "--cert-expiry")
    if lifetime < 1:
        raise FlagError("--cert-expiry", cert_expiry, "must be at least 1s")
    if task_history_limit < 0:
        raise FlagError("--task-history-limit", str(task_history_limit), "must be 0 or more")
    _check_log_level(log_level)
    store_dict = store_spec(store, store_cacert, store_cert, store_key, store_lease)
    opts = bootstrap.NodeOptions(
        data_dir=Path(data_dir),
        socket=_socket_for(host),
        listen_host=listen_host,
        listen_port=listen_port,
        raft_port=raft_port,
        advertise_addr=advertise_addr or "",
        hostname=hostname or "",
        web=_web_file(web),
    )
    from meshkit.cluster.raft.autolock import new_unlock_key

    key = new_unlock_key() if autolock else ""
    cfg, identity, cluster = bootstrap.init_node(
        opts,
        default_addr_pool=pools,
        mask_length=default_addr_pool_mask_length,
        data_path_port=data_path_port,
        heartbeat_period=period,
        cert_lifetime=lifetime,
        unlock_key=key,
        task_history_limit=task_history_limit,
    )
    cfg.store = store_dict

    def ready_text(agent: Any) -> str:
        from meshkit.cluster.rpc.tokens import ca_digest, format_token

        st = agent.state
        secret = agent.sealer.open(st.worker_secret)
        token = format_token(ca_digest(st.ca_cert_pem.encode()), secret)
        return (
            f"Swarm initialized: current node ({agent.node_id}) is now a manager.\n\n"
            + _join_text("worker", token, agent.api_addr)
            + "\nTo add a manager to this swarm, run 'meshkit node join-token manager' "
            "and follow the instructions.\n\n" + (unlock_text(key) if key else "")
        )

    def make(on_ready: Callable[[Any], None]) -> Any:
        return ag.Agent(opts.data_dir, cfg, identity, init_cluster=cluster, on_ready=on_ready)

    run_agent(make, ready_text, opts.data_dir, detach, log_level)


@node_app.command()
def join(
    manager: Annotated[str, typer.Argument(help="A manager's IP:PORT (port 2377 if left out).")],
    token: Annotated[str, typer.Option("--token", help="Join token (worker or manager).")],
    advertise_addr: Annotated[
        str | None,
        typer.Option(
            help="IP address other nodes reach this node at (default: as seen by the manager)."
        ),
    ] = None,
    listen_addr: Annotated[
        str, typer.Option(help="IP:PORT of the manager API, should this node be a manager.")
    ] = "0.0.0.0:2377",
    data_dir: DataDirOpt = "/var/lib/meshkit",
    raft_port: Annotated[
        int | None, typer.Option(help="TCP port for raft as a manager (listen port + 1).")
    ] = None,
    hostname: Annotated[
        str | None, typer.Option(help="Name shown in `node ls` (default: the host name).")
    ] = None,
    web: WebOpt = None,
    detach: Annotated[bool, typer.Option("--detach", "-d", help="Run in the background.")] = False,
    host: HostOpt = None,
    log_level: LogLevelOpt = "info",
    store: StoreOpt = None,
    store_cacert: StoreCaOpt = None,
    store_cert: StoreCertOpt = None,
    store_key: StoreKeyOpt = None,
    store_lease: StoreLeaseOpt = None,
) -> None:
    """Join a cluster as a worker or manager (the token decides), and run the agent."""
    from meshkit.base.hostport import parse_hostport
    from meshkit.cluster.node import agent as ag
    from meshkit.cluster.node import bootstrap

    target = manager if ":" in manager.strip("[]").split("]")[-1] else f"{manager}:2377"
    mhost, mport = parse_hostport(target, "MANAGER")
    listen_host, listen_port = _listen("--listen-addr", listen_addr)
    if advertise_addr is not None:
        advertise_addr = _ip("--advertise-addr", advertise_addr)
    if raft_port is not None:
        _port("--raft-port", raft_port)
    _check_log_level(log_level)
    if not token.strip():
        raise FlagError("--token", token, "a join token is required")
    store_dict = store_spec(store, store_cacert, store_cert, store_key, store_lease)
    opts = bootstrap.NodeOptions(
        data_dir=Path(data_dir),
        socket=_socket_for(host),
        listen_host=listen_host,
        listen_port=listen_port,
        raft_port=raft_port,
        advertise_addr=advertise_addr or "",
        hostname=hostname or "",
        web=_web_file(web),
    )
    import asyncio

    cfg, identity, peers = asyncio.run(bootstrap.join_node(opts, token, (mhost, mport)))
    if store_dict:  # a manager of a cluster on etcd reaches etcd itself
        cfg.store = store_dict
        cfg.save(opts.data_dir)

    def ready_text(agent: Any) -> str:
        return f"This node joined a swarm as a {agent.identity.role}.\n"

    def make(on_ready: Callable[[Any], None]) -> Any:
        return ag.Agent(opts.data_dir, cfg, identity, raft_peers=peers, on_ready=on_ready)

    run_agent(make, ready_text, opts.data_dir, detach, log_level)


@node_app.command()
def run(
    data_dir: DataDirOpt = "/var/lib/meshkit",
    web: WebOpt = None,
    detach: Annotated[bool, typer.Option("--detach", "-d", help="Run in the background.")] = False,
    host: HostOpt = None,
    log_level: LogLevelOpt = "info",
) -> None:
    """Start the agent of a node that already joined (after a reboot or a stop)."""
    from meshkit.cluster.node import agent as ag
    from meshkit.cluster.node import bootstrap
    from meshkit.cluster.node.config import NodeConfig
    from meshkit.cluster.raft import autolock

    _check_log_level(log_level)
    locked = autolock.node_key_locked(Path(data_dir))
    if locked:  # its identity loads once `node unlock` brings the key (LockedStart)
        cfg, identity = NodeConfig.load(Path(data_dir)), None
    else:
        cfg, identity = bootstrap.load_node(Path(data_dir))
    if host is not None or os.environ.get("MESHKIT_HOST"):
        cfg.socket = _socket_for(host)
    if web is not None:
        cfg.web = _web_file(web)
    elif cfg.web:
        _web_file(cfg.web)

    gate = autolock.node_gate(Path(data_dir))

    def ready_text(agent: Any) -> str:
        if gate.locked:
            return (
                f"Node {agent.node_id} is running as a manager, locked: unlock it with "
                "`meshkit node unlock`.\n"
            )
        return f"Node {agent.node_id} is running as a {agent.identity.role}.\n"

    def make(on_ready: Callable[[Any], None]) -> Any:
        def agent_for(identity: Any) -> Any:
            return ag.Agent(Path(data_dir), cfg, identity, on_ready=on_ready)

        first = bootstrap.LockedStart(Path(data_dir), cfg, agent_for) if locked else None
        runner = first or agent_for(identity)
        gate.on_wait = lambda: on_ready(runner)  # a locked manager is up, waiting: say so
        return runner

    run_agent(make, ready_text, Path(data_dir), detach, log_level)


# -- talking to the agent ----------------------------------------------------------------------


@node_app.command("join-token")
def join_token(
    role: Annotated[str, typer.Argument(help="worker or manager.")],
    rotate: Annotated[bool, typer.Option("--rotate", help="Replace the token's secret.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print the token only.")] = False,
    host: HostOpt = None,
) -> None:
    """Print (or rotate) the token a worker or a manager joins with."""
    if role not in ("worker", "manager"):
        raise FlagError("ROLE", role, "expected worker or manager")
    reply = _call(host, "join_token", {"role": role, "rotate": rotate})
    if quiet:
        typer.echo(reply["token"])
        return
    if rotate:
        typer.echo(f"Successfully rotated {role} join token.\n")
    typer.echo(_join_text(role, reply["token"], reply["addr"]))


def _node_row(view: dict[str, Any]) -> list[str]:
    return [
        view["ID"] + (" *" if view.get("Self") else ""),
        view["Hostname"],
        view["Status"],
        view["Availability"],
        view["ManagerStatus"],
        view["EngineVersion"],
        view.get("Overlay", "-"),
    ]


NODE_HEADERS = [
    "ID",
    "HOSTNAME",
    "STATUS",
    "AVAILABILITY",
    "MANAGER STATUS",
    "ENGINE VERSION",
    "OVERLAY",
]


@node_app.command("ls")
def ls(
    fmt: FormatOpt = "table",
    quiet: IdsOnlyOpt = False,
    filters: Annotated[
        list[str] | None,
        typer.Option("--filter", "-f", help="id=, name=, role=, membership=, node.label=K[=V]"),
    ] = None,
    host: HostOpt = None,
) -> None:
    """List the nodes of the cluster (on a manager)."""
    check_format(fmt)
    wanted = node_filters(filters or [])
    reply = _call(host, "node_ls")
    nodes = [n for n in reply["nodes"] if node_matches(n, wanted)]
    if quiet:
        for n in nodes:
            typer.echo(n["ID"])
    elif fmt == "json":
        _print_json(nodes)
    else:
        typer.echo(table(NODE_HEADERS, [_node_row(n) for n in nodes]))


@node_app.command()
def inspect(
    nodes: Annotated[list[str], typer.Argument(help="Node ids, id prefixes, names or self.")],
    fmt: Annotated[str, typer.Option("--format", help="json.")] = "json",
    host: HostOpt = None,
) -> None:
    """Show nodes in detail, as JSON."""
    if fmt != "json":
        raise FlagError("--format", fmt, "expected json")
    _print_json([_call(host, "node_inspect", {"node": n}) for n in nodes])


@node_app.command()
def ps(
    nodes: Annotated[list[str] | None, typer.Argument(help="Nodes (default: self).")] = None,
    no_trunc: Annotated[bool, typer.Option("--no-trunc", help="Whole ids and errors.")] = False,
    fmt: FormatOpt = "table",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only the task IDs.")] = False,
    host: HostOpt = None,
) -> None:
    """List the tasks on nodes, with their history."""
    import shutil

    from meshkit.cli.service import ps_rows

    check_format(fmt)
    tasks: list[dict[str, Any]] = []
    for ref in nodes or ["self"]:
        tasks += _call(host, "node_ps", {"node": ref})["tasks"]
    if quiet:
        for t in tasks:
            typer.echo(t["ID"] if no_trunc else t["ID"][:12])
    elif fmt == "json":
        _print_json(tasks)
    else:
        width = shutil.get_terminal_size((0, 0)).columns if sys.stdout.isatty() else None
        headers, rows = ps_rows(tasks, time.time(), no_trunc, width or None)
        typer.echo(table(headers, rows))


@node_app.command()
def unlock(host: HostOpt = None) -> None:
    """Unlock a manager that autolock keeps locked after a restart (the key from the
    terminal, or a line of stdin)."""
    _call(host, "unlock", {"key": read_unlock_key()})


def read_unlock_key() -> str:
    """The unlock key from the terminal (not echoed), or a line of stdin."""
    if sys.stdin.isatty():
        import getpass

        key = getpass.getpass("Enter unlock key: ")
    else:
        key = sys.stdin.readline()
    if not key.strip():
        raise FlagError("unlock key", "", "no key given")
    return key.strip()


@node_app.command()
def promote(
    nodes: Annotated[list[str], typer.Argument(help="Nodes to make managers.")],
    host: HostOpt = None,
) -> None:
    """Make workers managers."""
    _change_roles(
        host,
        nodes,
        "node_promote",
        "Node {} promoted to a manager in the swarm.",
        "Node {} is already a manager.",
    )


@node_app.command()
def demote(
    nodes: Annotated[list[str], typer.Argument(help="Managers to make workers.")],
    host: HostOpt = None,
) -> None:
    """Make managers workers (never the last manager)."""
    _change_roles(
        host,
        nodes,
        "node_demote",
        "Manager {} demoted in the swarm.",
        "Node {} is already a worker.",
    )


def _change_roles(
    host: str | None, nodes: list[str], method: str, changed: str, unchanged: str
) -> None:
    """promote/demote: one call per node, and Docker's line for what it did (or not)."""
    for ref in nodes:
        reply = _call(host, method, {"node": ref})
        typer.echo((changed if reply.get("changed") else unchanged).format(ref))


@node_app.command("rm")
def rm(
    nodes: Annotated[list[str], typer.Argument(help="Nodes to remove.")],
    force: Annotated[
        bool, typer.Option("--force", "-f", help="Also a node that is Ready.")
    ] = False,
    host: HostOpt = None,
) -> None:
    """Remove nodes from the cluster (a Ready one only with --force)."""
    for ref in nodes:
        _call(host, "node_rm", {"node": ref, "force": force})
        typer.echo(ref)


@node_app.command()
def update(
    node: Annotated[str, typer.Argument(help="The node to change.")],
    availability: Annotated[
        str | None, typer.Option(help="active, pause (no new tasks) or drain (tasks move).")
    ] = None,
    label_add: Annotated[
        list[str] | None, typer.Option("--label-add", help="K=V label to add; repeatable.")
    ] = None,
    label_rm: Annotated[
        list[str] | None, typer.Option("--label-rm", help="Label key to remove; repeatable.")
    ] = None,
    host: HostOpt = None,
) -> None:
    """Change a node's availability or labels."""
    from meshkit.cluster.model.state import AVAILABILITIES, CommandError, parse_label

    if availability is not None and availability not in AVAILABILITIES:
        raise FlagError("--availability", availability, "expected active, pause or drain")
    adds: dict[str, str] = {}
    for text in label_add or []:
        try:
            k, v = parse_label(text)
        except CommandError as exc:
            raise FlagError("--label-add", text, str(exc)) from None
        adds[k] = v
    for key in label_rm or []:
        if not key or "=" in key:
            raise FlagError("--label-rm", key, "expected a label key")
    if availability is None and not adds and not label_rm:
        raise FlagError(
            "--availability",
            "",
            "nothing to change: give --availability, --label-add or --label-rm",
        )
    _call(
        host,
        "node_update",
        {
            "node": node,
            "availability": availability,
            "label_add": adds,
            "label_rm": list(label_rm or []),
        },
    )
    typer.echo(node)


@node_app.command()
def leave(
    force: Annotated[
        bool, typer.Option("--force", "-f", help="Leave even as the last manager.")
    ] = False,
    host: HostOpt = None,
) -> None:
    """Leave the cluster: the agent stops and forgets its certificate and state."""
    _call(host, "leave", {"force": force})
    typer.echo("Node left the swarm.")

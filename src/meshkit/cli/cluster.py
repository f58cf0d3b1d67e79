"""`meshkit cluster`: the cluster-wide settings Docker keeps in `swarm inspect/update`, and the
autolock unlock key. Every command asks the local agent (a manager) over its Unix socket."""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

import typer

from meshkit.base.errors import FlagError
from meshkit.cli.node import HostOpt, agent_call

cluster_app = typer.Typer(
    name="cluster",
    help="Cluster settings: inspect, update, unlock-key, ca [--rotate].",
    no_args_is_help=True,
)


def unlock_text(key: str) -> str:
    return (
        "To unlock a swarm manager after it restarts, run the `meshkit node unlock`\n"
        "command and provide the following key:\n\n"
        f"    {key}\n\n"
        "Remember to store this key in a password manager, since without it you\n"
        "will not be able to restart the manager.\n"
    )


def pretty(view: dict[str, Any]) -> str:
    """`cluster inspect --pretty`: the Swarm section of Docker's `docker info`."""
    from meshkit.base.durations import go_duration

    spec = view["Spec"]
    created = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(view["CreatedAt"]))
    lines = [
        f"ID:                     {view['ID']}",
        f"Created:                {created}",
        f"Managers:               {view['Managers']}",
        f"Nodes:                  {view['Nodes']}",
        "Orchestration:",
        f" Task History Retention Limit: {spec['Orchestration']['TaskHistoryRetentionLimit']}",
        "Dispatcher:",
        f" Heartbeat Period: {go_duration(spec['Dispatcher']['HeartbeatPeriod'])}",
        "CA Configuration:",
        f" Expiry Duration: {go_duration(spec['CAConfig']['NodeCertExpiry'])}",
        f"Autolock Managers:      {str(spec['EncryptionConfig']['AutoLockManagers']).lower()}",
        "Overlay Encryption:",
        f" Key Rotation: {go_duration(spec['Overlay']['EncryptionKeyRotation'])}",
        f"Default Address Pool:   {' '.join(view['DefaultAddrPool'])}",
        f"SubnetSize:             {view['SubnetSize']}",
        f"Data Path Port:         {view['DataPathPort']}",
    ]
    return "\n".join(lines)


@cluster_app.command()
def inspect(
    pretty_out: Annotated[
        bool, typer.Option("--pretty", help="Docker's `info` layout instead of JSON.")
    ] = False,
    host: HostOpt = None,
) -> None:
    """Show the cluster's settings."""
    view = agent_call(host, "cluster_inspect")
    typer.echo(pretty(view) if pretty_out else json.dumps([view], indent=4))


def _seconds(flag: str, text: str, minimum: float) -> float:
    from meshkit.base.durations import parse_duration

    value = parse_duration(text, flag)
    if value < minimum:
        raise FlagError(flag, text, f"must be at least {minimum:g}s")
    return value


def parse_bool(flag: str, text: str) -> bool:
    low = text.strip().lower()
    if low in ("true", "1", "yes"):
        return True
    if low in ("false", "0", "no"):
        return False
    raise FlagError(flag, text, "expected true or false")


@cluster_app.command()
def update(
    dispatcher_heartbeat: Annotated[
        str | None, typer.Option(help="Heartbeat period of the nodes (e.g. 5s).")
    ] = None,
    task_history_limit: Annotated[
        str | None, typer.Option(help="Tasks kept per slot, the running one included.")
    ] = None,
    cert_expiry: Annotated[
        str | None, typer.Option(help="Lifetime of node certificates (e.g. 2160h).")
    ] = None,
    autolock: Annotated[
        str | None, typer.Option("--autolock", help="true or false: lock the managers' keys.")
    ] = None,
    encryption_key_rotation: Annotated[
        str | None, typer.Option(help="How often encrypted overlays rotate their keys (12h).")
    ] = None,
    host: HostOpt = None,
) -> None:
    """Change cluster settings (Docker's `swarm update`)."""
    settings: dict[str, Any] = {}
    if dispatcher_heartbeat is not None:
        settings["heartbeat_period"] = _seconds("--dispatcher-heartbeat", dispatcher_heartbeat, 0.1)
    if task_history_limit is not None:
        try:
            limit = int(task_history_limit)
        except ValueError:
            raise FlagError(
                "--task-history-limit", task_history_limit, "expected a number"
            ) from None
        if limit < 0:
            raise FlagError("--task-history-limit", task_history_limit, "must be 0 or more")
        settings["task_history_limit"] = limit
    if cert_expiry is not None:
        settings["cert_lifetime"] = _seconds("--cert-expiry", cert_expiry, 3600)
    if encryption_key_rotation is not None:
        settings["encryption_key_rotation"] = _seconds(
            "--encryption-key-rotation", encryption_key_rotation, 60
        )
    if autolock is not None:
        settings["autolock"] = parse_bool("--autolock", autolock)
    if not settings:
        raise FlagError("--dispatcher-heartbeat", "", "nothing to change: give a setting")
    reply = agent_call(host, "cluster_update", {"settings": settings})
    typer.echo("Swarm updated.")
    if reply.get("unlock_key"):
        typer.echo(unlock_text(reply["unlock_key"]))


@cluster_app.command("unlock-key")
def unlock_key(
    rotate: Annotated[bool, typer.Option("--rotate", help="Make a new unlock key.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print the key only.")] = False,
    host: HostOpt = None,
) -> None:
    """Show (or rotate) the key that unlocks a restarted manager."""
    key = agent_call(host, "unlock_key", {"rotate": rotate})["unlock_key"]
    if quiet:
        typer.echo(key)
        return
    if rotate:
        typer.echo("Successfully rotated manager unlock key.\n")
    typer.echo(unlock_text(key))


def rotation_line(status: dict[str, Any]) -> str:
    """Docker's progress line: every node renews once per phase (trust, sign, drop)."""
    return (
        f"rotated CA certificates: [{status.get('nodes_done', 0)}/"
        f"{status.get('nodes_total', 0)}] (phase {status['phase']}: "
        f"{status['done']}/{status['total']} nodes)"
    )


@cluster_app.command("ca")
def ca(
    rotate: Annotated[
        bool, typer.Option("--rotate", help="Make a new root CA and re-certify every node.")
    ] = False,
    detach: Annotated[
        bool, typer.Option("--detach", "-d", help="Start the rotation and return at once.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress lines.")] = False,
    host: HostOpt = None,
) -> None:
    """Print the cluster's root CA certificate, or rotate the CA (Docker's `swarm ca`)."""
    if detach and not rotate:
        raise FlagError("--detach", "", "only with --rotate")
    if not rotate:
        typer.echo(agent_call(host, "ca_status")["root"].rstrip("\n"))
        return
    status = agent_call(host, "ca_rotate")
    last = ""
    while status["phase"] and not detach:
        line = rotation_line(status)
        if line != last and not quiet:
            typer.echo(line)
            last = line
        time.sleep(0.5)
        status = agent_call(host, "ca_status")
    if status["phase"]:
        typer.echo(f"CA rotation {status['id']} started: {rotation_line(status)}")
        return
    if not quiet:
        typer.echo(f"rotated CA certificates: [{status['total']}/{status['total']}] nodes")
    typer.echo(status["root"].rstrip("\n"))

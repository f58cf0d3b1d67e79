"""`meshkit volume ls|rm`: this node's local volumes (Docker's local driver: volumes are per
node, made on first use by a task's `--mount type=volume,src=NAME,...`, kept under the agent's
data dir). Both ask the local agent over its Unix socket; `rm` is refused while a task on this
node uses the volume."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from meshkit.base.errors import FlagError, MeshkitError
from meshkit.cli.node import HostOpt
from meshkit.cli.node import agent_call as _call

volume_app = typer.Typer(
    name="volume", help="Local volumes of this node (for --mount type=volume).",
    no_args_is_help=True,
)  # fmt: skip


@volume_app.command("ls")
def ls(
    fmt: Annotated[str, typer.Option("--format", help="table or json.")] = "table",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only the names.")] = False,
    host: HostOpt = None,
) -> None:
    """List this node's volumes: DRIVER, VOLUME NAME."""
    if fmt not in ("table", "json"):
        raise FlagError("--format", fmt, "expected table or json")
    volumes = _call(host, "volume_ls")["volumes"]
    if quiet:
        for v in volumes:
            typer.echo(v["Name"])
    elif fmt == "json":
        typer.echo(json.dumps(volumes, indent=4))
    else:
        from meshkit.base.table import table

        typer.echo(table(["DRIVER", "VOLUME NAME"], [[v["Driver"], v["Name"]] for v in volumes]))


@volume_app.command("rm")
def rm(
    names: Annotated[list[str], typer.Argument(help="Volume names.")],
    host: HostOpt = None,
) -> None:
    """Remove volumes of this node (refused while a task here uses one)."""
    failed = []
    for name in names:
        try:
            _call(host, "volume_rm", {"name": name})
            typer.echo(name)
        except MeshkitError as exc:
            failed.append(str(exc))
    if failed:
        raise MeshkitError("; ".join(failed))

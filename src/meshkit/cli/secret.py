"""`meshkit secret` and `meshkit config` commands: Docker's flags in, Docker's tables out.

Both live on the managers (ask the local agent, which must be one). A secret's value is read
from a file or stdin, sent to the agent once, and never shown again: `secret inspect` prints
its metadata only. Configs are not secret: `config inspect --pretty` prints the data.
"""

from __future__ import annotations

import base64
import json
import sys
import time
from typing import Annotated, Any

import typer

from meshkit.base.errors import FlagError, MeshkitError
from meshkit.cli.node import FormatOpt, HostOpt, IdsOnlyOpt, check_format, print_listing
from meshkit.cli.node import agent_call as _call

LS_HEADERS = ["ID", "NAME", "CREATED", "UPDATED"]


def parse_labels(labels: list[str]) -> dict[str, str]:
    out = {}
    for text in labels:
        key, _, value = text.partition("=")
        if not key:
            raise FlagError("--label", text, "expected KEY=VALUE")
        out[key] = value
    return out


def read_data(path: str, kind: str) -> bytes:
    """FILE, or `-` for stdin (as `docker secret create NAME -`)."""
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise MeshkitError(f"cannot read the {kind} from {path}: {exc.strerror or exc}") from None


def _ago(when: float, now: float) -> str:
    from meshkit.cli.service import human_duration

    return f"{human_duration(max(0.0, now - when))} ago"


def _make(kind: str, helptext: str) -> typer.Typer:
    app = typer.Typer(name=kind, help=helptext, no_args_is_help=True)

    @app.command()
    def create(
        name: Annotated[str, typer.Argument(help="Its name.")],
        file: Annotated[str, typer.Argument(help="A file to read, or - for stdin.")],
        label: Annotated[list[str] | None, typer.Option("--label", "-l", help="K=V.")] = None,
        host: HostOpt = None,
    ) -> None:
        """Create from a file or stdin (prints its ID)."""
        from meshkit.cluster.model import secrets as rules

        try:
            rules.check_name(name)
        except rules.RefError as exc:
            raise FlagError("NAME", name, str(exc)) from None
        data = read_data(file, kind)
        try:
            rules.check_size(kind, len(data))
        except rules.RefError as exc:
            raise MeshkitError(str(exc)) from None
        params: dict[str, Any] = {
            "name": name,
            "data": base64.b64encode(data).decode("ascii"),
            "labels": parse_labels(label or []),
        }
        typer.echo(_call(host, f"{kind}_create", params)["id"])

    @app.command("ls")
    def ls(
        fmt: FormatOpt = "table",
        quiet: IdsOnlyOpt = False,
        host: HostOpt = None,
    ) -> None:
        """List: ID, NAME, CREATED, UPDATED."""
        check_format(fmt)
        items = _call(host, f"{kind}_ls")[kind + "s"]
        now = time.time()
        print_listing(
            items,
            fmt,
            quiet,
            LS_HEADERS,
            lambda r: [r["ID"], r["Name"], _ago(r["CreatedAt"], now), _ago(r["UpdatedAt"], now)],
        )

    def _inspect(
        refs: Annotated[list[str], typer.Argument(help="Names or ids.")],
        pretty: Annotated[bool, typer.Option("--pretty", help="Human-readable.")] = False,
        host: HostOpt = None,
    ) -> None:
        views = [_call(host, f"{kind}_inspect", {kind: r}) for r in refs]
        if not pretty:
            typer.echo(json.dumps(views, indent=4))
            return
        blocks = []
        for v in views:
            lines = [f"ID:              {v['ID']}", f"Name:            {v['Name']}"]
            if v["Labels"]:
                lines.append("Labels:")
                lines += [f" - {k}={val}" for k, val in v["Labels"].items()]
            lines.append(f"Created at:      {time.ctime(v['CreatedAt'])}")
            lines.append(f"Updated at:      {time.ctime(v['UpdatedAt'])}")
            if "Data" in v:
                data = base64.b64decode(v["Data"]).decode("utf-8", "replace")
                lines.append("Data:")
                lines.append(data.rstrip("\n"))
            blocks.append("\n".join(lines))
        typer.echo("\n\n".join(blocks))

    _inspect.__doc__ = (
        "Show details as JSON (never a secret's value)."
        if kind == "secret"
        else "Show details as JSON; --pretty prints the data."
    )
    app.command("inspect")(_inspect)

    @app.command()
    def rm(
        refs: Annotated[list[str], typer.Argument(help="Names or ids.")],
        host: HostOpt = None,
    ) -> None:
        """Remove (refused while a service uses it)."""
        for ref in refs:
            _call(host, f"{kind}_rm", {kind: ref})
            typer.echo(ref)

    return app


secret_app = _make(
    "secret",
    "Secrets: sealed in the cluster state, files at /run/secrets/TARGET in the tasks that use "
    "them.",
)
config_app = _make("config", "Configs: non-secret files placed in the tasks that use them.")

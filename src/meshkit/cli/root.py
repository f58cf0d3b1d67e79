"""The root `meshkit` typer app; each area's sub-CLI module is imported only when it is asked for.

`meshkit service ls` imports `cli/service.py` and what it needs, not the agent, the web server
or the ingress proxy; `meshkit --help` imports the sub-CLI modules for their one-line help, but
none of the machinery they drive (that is imported inside each command's function).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Annotated, Any

import typer
import typer.core
from typer._coercion import RuntimeParam, TypeDescriptor
from typer._coercion import build_runtime_param as _typer_runtime_param
from typer.core import TyperGroup
from typer.main import get_command_from_info, get_group_from_info
from typer.models import CommandInfo, TyperInfo

from meshkit import __version__

# -- text parameters without pydantic ----------------------------------------------------------
# typer 0.29 (pinned) checks every parameter's value with a pydantic TypeAdapter, built when the
# command runs; importing pydantic and building the adapters costs more than the rest of a
# `meshkit service ls`. Nearly every meshkit flag is `str`, `list[str]` or a `bool` flag, whose
# adapters hand a str (a list of them, a bool) back unchanged: those values are answered here,
# and anything else (an int, a bool given as text, a custom parser) goes through typer's own
# adapter, built then.


@dataclass(frozen=True)
class _PlainParam(RuntimeParam):
    descriptor: TypeDescriptor | None = None

    def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
        if type(value) is str and self.annotation is str:
            return value
        if type(value) is bool and self.annotation is bool:
            return value
        if (
            type(value) in (list, tuple)
            and self.annotation == list[str]
            and all(type(v) is str for v in value)
        ):
            return list(value)
        assert self.descriptor is not None
        return _typer_runtime_param(self.descriptor)._coerce_value(value, param=param, ctx=ctx)


def _runtime_param(descriptor: TypeDescriptor) -> RuntimeParam:
    plain = descriptor.file_annotation is None and descriptor.parameter_info.parser is None
    if plain and descriptor.annotation in (str, bool, list[str]):
        return _PlainParam(descriptor.parameter_info, descriptor.annotation, descriptor)
    return _typer_runtime_param(descriptor)


# typer.core calls the name it imported from typer._coercion.
typer.core.build_runtime_param = _runtime_param  # type: ignore[attr-defined]

# name -> (module, attribute, kind): "group" is a named sub-app (`meshkit node ...`), "app" a
# sub-app of one command merged into the root, "command" a plain function. Help lists them in
# this order.
LAZY: dict[str, tuple[str, str, str]] = {
    "ingress": ("meshkit.cli.ingress", "ingress_app", "app"),
    "doctor": ("meshkit.cli.network", "doctor", "command"),
    "node": ("meshkit.cli.node", "node_app", "group"),
    "service": ("meshkit.cli.service", "service_app", "group"),
    "network": ("meshkit.cli.network", "network_app", "group"),
    "run": ("meshkit.cli.run", "run", "command"),
    "stack": ("meshkit.cli.stack", "stack_app", "group"),
    "secret": ("meshkit.cli.secret", "secret_app", "group"),
    "config": ("meshkit.cli.secret", "config_app", "group"),
    "volume": ("meshkit.cli.volume", "volume_app", "group"),
    "web": ("meshkit.cli.web", "web_app", "app"),
    "cluster": ("meshkit.cli.cluster", "cluster_app", "group"),
    "events": ("meshkit.cli.events", "events", "command"),
}


class LazyGroup(TyperGroup):
    """A typer group whose sub-commands are built from their modules on first use."""

    def list_commands(self, ctx: Any) -> list[str]:
        return [*LAZY, *(name for name in super().list_commands(ctx) if name not in LAZY)]

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        cmd = super().get_command(ctx, cmd_name)
        if cmd is None and cmd_name in LAZY:
            cmd = self._load(cmd_name)
            self.add_command(cmd, cmd_name)
        return cmd

    def _load(self, name: str) -> Any:
        module, attr, kind = LAZY[name]
        obj = getattr(importlib.import_module(module), attr)
        settings: dict[str, Any] = {
            "pretty_exceptions_short": app.pretty_exceptions_short,
            "rich_markup_mode": app.rich_markup_mode,
        }
        if kind == "command":
            return get_command_from_info(CommandInfo(name=name, callback=obj), **settings)
        # As app.add_typer(obj, name=...) would have built it at start-up.
        info = TyperInfo(obj, name=name) if kind == "group" else TyperInfo(obj)
        group = get_group_from_info(info, suggest_commands=app.suggest_commands, **settings)
        return group if kind == "group" else group.commands[name]


app = typer.Typer(
    name="meshkit",
    cls=LazyGroup,
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

"""`meshkit run`: a one-off task on an attachable overlay network, on this node, its output on the
terminal and its exit code the command's (Docker's `docker run --network NET`).

The local agent (`--host`, MESHKIT_HOST) attaches it (meshkit.cluster.api.runs); the process
itself is started here (meshkit.cluster.tasks.oneoff). Exit codes as `docker run`'s: 125 when
meshkit itself fails (the network is not attachable, no agent), 126 when the command cannot be
run, 127 when it is not found, else the command's own.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated, Any

import typer

from meshkit.base.errors import FlagError, MeshkitError
from meshkit.cli.node import HostOpt

EXIT_MESHKIT = 125
EXIT_CANNOT_RUN = 126
EXIT_NOT_FOUND = 127


def _fail(code: int, text: str) -> typer.Exit:
    print(f"meshkit: {text}", file=sys.stderr)
    return typer.Exit(code)


def run(
    command: Annotated[list[str], typer.Argument(help="The command and its arguments (after --).")],
    network: Annotated[
        str | None,
        typer.Option(help="An attachable overlay network (network create --attachable)."),
    ] = None,
    rm: Annotated[bool, typer.Option("--rm", help="Remove its record when it exits.")] = False,
    interactive: Annotated[
        bool, typer.Option("--interactive", "-i", help="Keep stdin attached.")
    ] = False,
    tty: Annotated[bool, typer.Option("--tty", "-t", help="Run it on this terminal.")] = False,
    env: Annotated[
        list[str] | None, typer.Option("--env", "-e", help="KEY=VALUE in its environment.")
    ] = None,
    name: Annotated[str | None, typer.Option(help="Its name (default: run-<id>).")] = None,
    host: HostOpt = None,
) -> None:
    """Run a one-off command on an attachable overlay network, on this node: it resolves and
    reaches the network's services by name (DNS at 127.0.0.11), its output comes here and its
    exit code is meshkit's."""
    from meshkit.cluster.tasks import oneoff
    from meshkit.cluster.tasks.process import LaunchError

    if not command or not command[0]:
        raise FlagError("COMMAND", "", "give the command to run after --")
    for item in env or []:
        if "=" not in item or item.startswith("="):
            raise FlagError("--env", item, "expected KEY=VALUE")
    if tty and not os.isatty(0):
        raise _fail(1, "the input device is not a TTY (-t needs a terminal on stdin)")
    if name is not None and not name.strip():
        raise FlagError("--name", name, "a name cannot be empty")
    try:
        launch = oneoff.plan(command, env or [], os.uname().nodename, tty)
    except LaunchError as exc:
        raise _fail(EXIT_NOT_FOUND if "not found" in str(exc) or "no such" in str(exc)
                    else EXIT_CANNOT_RUN, str(exc)) from None  # fmt: skip
    if network is None:
        # no network: the node's own namespace, as a task without networks runs
        try:
            code = oneoff.run(launch, netns=None, resolv=None, interactive=interactive, tty=tty)
        except LaunchError as exc:
            raise _fail(EXIT_CANNOT_RUN, str(exc)) from None
        raise typer.Exit(code)
    reply = _attach(host, network, name, command, rm)
    code = EXIT_CANNOT_RUN
    try:
        agent = int(reply["agent_pid"])
        # as the agent sees it: its bind mount may not reach our mount namespace (a plain file
        # of the same name then stands here)
        ns = oneoff.agent_path(agent, f"/run/netns/{reply['netns']}")
        with oneoff.resolv_conf(agent, str(reply["netns"])) as resolv:
            try:
                code = oneoff.run(launch, netns=ns, resolv=resolv, interactive=interactive, tty=tty)
            except LaunchError as exc:
                print(f"meshkit: {exc}", file=sys.stderr)
    finally:
        _detach(host, str(reply["id"]), code, rm)
    raise typer.Exit(code)


def _attach(
    host: str | None, network: str, name: str | None, command: list[str], rm: bool
) -> dict[str, Any]:
    from meshkit.cluster.rpc.local import call

    params: dict[str, Any] = {
        "network": network,
        "pid": os.getpid(),
        "command": command,
        "rm": rm,
    }
    if name:
        params["name"] = name
    try:
        return dict(call(host, "run_attach", params, timeout=60.0))
    except MeshkitError as exc:
        raise _fail(EXIT_MESHKIT, f"Error response from daemon: {exc}") from None


def _detach(host: str | None, run_id: str, code: int, rm: bool) -> None:
    from meshkit.cluster.rpc.local import call

    try:
        call(host, "run_detach", {"id": run_id, "exit_code": code, "rm": rm}, timeout=30.0)
    except MeshkitError as exc:
        print(f"meshkit: could not detach {run_id[:12]}: {exc}", file=sys.stderr)

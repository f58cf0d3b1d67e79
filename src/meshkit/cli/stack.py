"""`meshkit stack` commands: compose files of processes deployed as services and networks.

The file becomes specs in meshkit.cli.stackfile (pure); this module reads the files, asks the
local agent (a manager) what the stack has now, and makes the difference with the service and
network methods every other command uses. A stack's services are `STACK_SERVICE`, its
networks `STACK_NETWORK`, its secrets and configs `STACK_KEY`, and all of them carry the label
`com.docker.stack.namespace=STACK` (and `meshkit.stack=STACK`), by which `ls`, `ps`,
`services` and `rm` find them.

Secrets and configs are made before the networks and services, once: as in Docker their data
cannot change in place. A redeploy reads each file again and compares it with what the cluster
holds without showing either: a config's data is read back; a secret's never is, so a stack
secret carries the label `meshkit.stack.digest` (a salted SHA-256 of its bytes; whoever may
read labels may run a task that reads the secret). Different content is refused, naming the
secret: rename it in the file, as Docker advises.

Redeploying updates only the services whose spec changed (with their update policy: a rolling
update when the task part changed, nothing restarted when only replicas or labels did). As
`docker stack deploy`, services no longer in the file are kept unless `--prune` is given; the
deploy names them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import shutil
import sys
import time
from typing import TYPE_CHECKING, Annotated, Any

import typer

from meshkit.base.errors import FlagError, MeshkitError
from meshkit.cli.node import FormatOpt, HostOpt
from meshkit.cli.node import agent_call as _call

if TYPE_CHECKING:  # the compose reader (and PyYAML) load with `stack deploy` only
    from meshkit.cli.stackfile import FilePlan

stack_app = typer.Typer(
    name="stack",
    help="Stacks: services and networks from compose files (format 3) of processes.",
    no_args_is_help=True,
)

NameArg = Annotated[str, typer.Argument(help="Stack name.")]
LABEL = "com.docker.stack.namespace"
DIGEST_LABEL = "meshkit.stack.digest"
NETWORK_RM_WAIT = 30.0
FILE_RM_WAIT = 5.0


def _check_format(fmt: str) -> None:
    if fmt not in ("table", "json"):
        raise FlagError("--format", fmt, "expected table or json")


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def _of_stack(views: list[dict[str, Any]], stack: str) -> list[dict[str, Any]]:
    """The views labelled with `stack`, checked here too: an agent from before the label
    filter answers with everything, and a prune must never reach another stack's service."""
    return [v for v in views if (v.get("Labels") or {}).get(LABEL) == stack]


def _services(host: str | None, stack: str) -> list[dict[str, Any]]:
    reply = _call(host, "service_ls", {"label": f"{LABEL}={stack}"})
    return _of_stack(reply["services"], stack)


def _networks(host: str | None, stack: str) -> list[dict[str, Any]]:
    reply = _call(host, "network_ls", {"label": f"{LABEL}={stack}"})
    return _of_stack(reply["networks"], stack)


def _files_of(host: str | None, kind: str, stack: str) -> list[dict[str, Any]]:
    return _of_stack(_call(host, f"{kind}_ls")[kind + "s"], stack)


def _digest(data: bytes, salt: str | None = None) -> str:
    salt = salt if salt is not None else secrets.token_hex(8)
    return f"sha256:{salt}:{hashlib.sha256(salt.encode() + data).hexdigest()}"


def _same_content(host: str | None, plan: FilePlan, have: dict[str, Any], data: bytes) -> bool:
    """Whether the secret (config) `have` holds `data`, compared without printing either; a
    secret made by hand (no digest label) with the same size is taken as it is, with a
    warning."""
    if have.get("Size") not in (None, len(data)):
        return False
    if plan.kind == "config":
        view = _call(host, "config_inspect", {"config": have["ID"]})
        return hmac.compare_digest(base64.b64decode(view.get("Data") or ""), data)
    label = (have.get("Labels") or {}).get(DIGEST_LABEL, "")
    algo, _, rest = label.partition(":")
    salt, _, _hex = rest.partition(":")
    if algo != "sha256" or not _hex:
        typer.echo(
            f"warning: secret {plan.name} exists and was not made by stack deploy: its content "
            f"cannot be compared with {plan.file}; it is used as it is",
            err=True,
        )
        return True
    return hmac.compare_digest(_digest(data, salt), label)


def _read_file(plan: FilePlan) -> bytes:
    from meshkit.cluster.model import secrets as rules

    try:
        with open(plan.file, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise MeshkitError(
            f"{plan.where}: cannot read {plan.file}: {exc.strerror or exc}"
        ) from None
    try:
        rules.check_size(plan.kind, len(data))
    except rules.RefError as exc:
        raise MeshkitError(f"{plan.where}: {plan.file}: {exc}") from None
    return data


def _check_files(host: str | None, plans: list[FilePlan]) -> list[tuple[FilePlan, bytes]]:
    """The secrets and configs to create, with their data, after every check (external ones
    exist, files are readable, existing ones unchanged): a refused deploy changes nothing."""
    existing: dict[str, dict[str, dict[str, Any]]] = {}
    todo: list[tuple[FilePlan, bytes]] = []
    for plan in plans:
        if plan.kind not in existing:
            views = _call(host, f"{plan.kind}_ls")[plan.kind + "s"]
            existing[plan.kind] = {v["Name"]: v for v in views}
        have = existing[plan.kind].get(plan.name)
        if plan.external:
            if have is None:
                raise MeshkitError(
                    f"{plan.where}: {plan.kind} {plan.name} is declared as external but does "
                    f"not exist (make it with `meshkit {plan.kind} create {plan.name} FILE`)"
                )
            continue
        data = _read_file(plan)
        if have is None:
            todo.append((plan, data))
        elif not _same_content(host, plan, have, data):
            raise MeshkitError(
                f"{plan.where}: {plan.kind} {plan.name} already exists with other content "
                f"than {plan.file}; a {plan.kind}'s data cannot be updated in place (only its "
                f"labels): rename it (a new key, or name: in the file), redeploy, then "
                f"remove {plan.name}"
            )
    return todo


def _create_files(host: str | None, todo: list[tuple[FilePlan, bytes]]) -> None:
    for plan, data in todo:
        typer.echo(f"Creating {plan.kind} {plan.name}")
        labels = dict(plan.labels)
        if plan.kind == "secret":
            labels[DIGEST_LABEL] = _digest(data)
        params = {
            "name": plan.name,
            "data": base64.b64encode(data).decode("ascii"),
            "labels": labels,
        }
        _call(host, f"{plan.kind}_create", params)


@stack_app.command()
def deploy(
    name: NameArg,
    compose_file: Annotated[
        list[str],
        typer.Option(
            "--compose-file", "-c", help="Compose file (repeatable; later files override)."
        ),
    ],
    prune: Annotated[
        bool, typer.Option("--prune", help="Remove the stack's services no longer in the file.")
    ] = False,
    host: HostOpt = None,
) -> None:
    """Create or update a stack from compose files."""
    from meshkit.cli.stackfile import load_stack

    sources = []
    for path in compose_file:
        try:
            sources.append((path, sys.stdin.read() if path == "-" else _read(path)))
        except OSError as exc:
            raise FlagError("--compose-file", path, exc.strerror or str(exc)) from None
    plan = load_stack(sources, dict(os.environ), name, _read)
    for w in plan.warnings:
        typer.echo(f"warning: {w}", err=True)

    files = _check_files(host, plan.secrets + plan.configs)
    existing_nets = {n["Name"] for n in _call(host, "network_ls")["networks"]}
    for net in plan.networks:
        if net.external:
            if net.name not in existing_nets:
                raise MeshkitError(
                    f"network {net.name} is declared as external but does not exist "
                    f"(make it with `meshkit network create -d overlay {net.name}`)"
                )
            continue
        if net.name not in existing_nets:
            typer.echo(f"Creating network {net.name}")
            _call(host, "network_create", net.request)
    _create_files(host, files)

    current = {s["Name"]: s for s in _services(host, name)}
    for spec in plan.services:
        svc = current.pop(spec["name"], None)
        if svc is None:
            typer.echo(f"Creating service {spec['name']}")
            _call(host, "service_create", {"spec": spec})
            continue
        record = _call(host, "service_inspect", {"service": svc["ID"]})
        old = record["spec"]
        new = dict(spec, force_update=old.get("force_update", 0))
        if new == old:
            typer.echo(f"Service {spec['name']} is unchanged")
            continue
        if new["mode"] != old["mode"]:
            raise MeshkitError(
                f"service {spec['name']}: the mode of a service cannot change "
                f"({old['mode']} -> {new['mode']}); remove the stack (or the service) first"
            )
        typer.echo(f"Updating service {spec['name']} (id: {svc['ID']})")
        _call(host, "service_update", {"service": svc["ID"], "spec": new})
    for gone in sorted(current):
        if prune:
            typer.echo(f"Removing service {gone}")
            _call(host, "service_rm", {"service": current[gone]["ID"]})
        else:
            typer.echo(
                f"Service {gone} is no longer in the file: kept (`--prune` removes it)", err=True
            )


@stack_app.command("ls")
def ls(fmt: FormatOpt = "table", host: HostOpt = None) -> None:
    """List stacks: NAME, SERVICES."""
    _check_format(fmt)
    counts: dict[str, int] = {}
    for svc in _call(host, "service_ls", {"label": LABEL})["services"]:
        stack = (svc.get("Labels") or {}).get(LABEL)
        if stack:
            counts[stack] = counts.get(stack, 0) + 1
    rows = [{"Name": k, "Services": str(v)} for k, v in sorted(counts.items())]
    if fmt == "json":
        typer.echo(json.dumps(rows, indent=4))
        return
    from meshkit.base.table import table

    typer.echo(table(["NAME", "SERVICES"], [[r["Name"], r["Services"]] for r in rows]))


def _need(host: str | None, stack: str) -> list[dict[str, Any]]:
    services = _services(host, stack)
    if not services:
        raise MeshkitError(f"nothing found in stack: {stack}")
    return services


@stack_app.command("services")
def services(
    name: NameArg,
    fmt: FormatOpt = "table",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only the IDs.")] = False,
    host: HostOpt = None,
) -> None:
    """List the services of a stack: ID, NAME, MODE, REPLICAS, COMMAND, PORTS."""
    from meshkit.cli.node import print_listing

    _check_format(fmt)
    print_listing(
        _need(host, name),
        fmt,
        quiet,
        ["ID", "NAME", "MODE", "REPLICAS", "COMMAND", "PORTS"],
        lambda s: [s["ID"][:12], s["Name"], s["Mode"], s["Replicas"], s["Command"], s["Ports"]],
    )


@stack_app.command("ps")
def ps(
    name: NameArg,
    no_trunc: Annotated[bool, typer.Option("--no-trunc", help="Whole ids and errors.")] = False,
    fmt: FormatOpt = "table",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only the task IDs.")] = False,
    host: HostOpt = None,
) -> None:
    """List the tasks of a stack's services, with the history of each slot."""
    from meshkit.cli.service import ps_rows

    _check_format(fmt)
    per_service = [
        _call(host, "service_ps", {"service": s["ID"]})["tasks"] for s in _need(host, name)
    ]
    tasks = [t for ts in per_service for t in ts]
    if quiet:
        for t in tasks:
            typer.echo(t["ID"] if no_trunc else t["ID"][:12])
        return
    if fmt == "json":
        typer.echo(json.dumps(tasks, indent=4))
        return
    from meshkit.base.table import table

    width = shutil.get_terminal_size((0, 0)).columns if sys.stdout.isatty() else None
    now = time.time()
    headers: list[str] = []
    rows: list[list[str]] = []
    for ts in per_service:  # ps_rows groups by slot: one service at a time
        headers, more = ps_rows(ts, now, no_trunc, width or None)
        rows.extend(more)
    if not headers:
        headers, _ = ps_rows([], now, no_trunc, None)
    typer.echo(table(headers, rows))


@stack_app.command("rm")
def rm(
    names: Annotated[list[str], typer.Argument(help="Stack names.")],
    host: HostOpt = None,
) -> None:
    """Remove stacks: their services, then their secrets and configs, then their networks."""
    failed = []
    for stack in names:
        services = _services(host, stack)
        networks = _networks(host, stack)
        files = {kind: _files_of(host, kind, stack) for kind in ("secret", "config")}
        if not services and not networks and not any(files.values()):
            failed.append(f"nothing found in stack: {stack}")
            continue
        for svc in services:
            typer.echo(f"Removing service {svc['Name']}")
            _call(host, "service_rm", {"service": svc["ID"]})
        for kind, views in files.items():
            for view in views:
                typer.echo(f"Removing {kind} {view['Name']}")
                try:
                    _remove(host, kind, view["ID"], FILE_RM_WAIT)
                except MeshkitError as exc:
                    failed.append(f"{kind} {view['Name']}: {exc}")
        for net in networks:
            typer.echo(f"Removing network {net['Name']}")
            try:
                _remove(host, "network", net["ID"], NETWORK_RM_WAIT)
            except MeshkitError as exc:
                failed.append(f"network {net['Name']}: {exc}")
    if failed:
        raise MeshkitError("; ".join(failed))


def _remove(host: str | None, kind: str, ref: str, wait: float) -> None:
    """A network stays in use until the removed services' tasks have let go of their
    addresses, a secret until the manager asked has applied the services' removal: wait for
    that, a while."""
    deadline = time.monotonic() + wait
    while True:
        try:
            _call(host, f"{kind}_rm", {kind: ref})
            return
        except MeshkitError as exc:
            if "in use" not in str(exc) or time.monotonic() > deadline:
                raise
        time.sleep(0.5)

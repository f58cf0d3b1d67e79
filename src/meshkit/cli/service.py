"""`meshkit service` commands: flags in, tables and progress out; the work is on the managers.

Every command asks the local agent over its Unix socket (`--host`, MESHKIT_HOST, default
/run/meshkit/meshkit.sock), which must be a manager. Flags are turned into a service spec here
(meshkit.cli.servicespec.build_spec / update_spec, errors name the flag) before anything is
sent. `create`, `update`, `scale` and `rollback` then follow the service until it converges, as
Docker 17.10+ does, with one progress line per slot (or per node for a global service), unless
`--detach`.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from typing import Annotated, Any

import typer

from meshkit.base.errors import FlagError, MeshkitError
from meshkit.cli.node import FormatOpt, HostOpt, IdsOnlyOpt, agent_call_idempotent
from meshkit.cli.node import agent_call as _call

service_app = typer.Typer(
    name="service",
    help="Services: tasks (processes) scheduled across the nodes.",
    no_args_is_help=True,
)

DetachOpt = Annotated[
    bool,
    typer.Option("--detach", "-d", help="Return at once instead of following the service."),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Print less.")]

# flags `service create` and `service update` share (values checked by cli/servicespec.py)
RestartDelayOpt = Annotated[str | None, typer.Option("--restart-delay")]
RestartMaxAttemptsOpt = Annotated[str | None, typer.Option("--restart-max-attempts")]
RestartWindowOpt = Annotated[str | None, typer.Option("--restart-window")]
HealthCmdOpt = Annotated[str | None, typer.Option("--health-cmd")]
HealthIntervalOpt = Annotated[str | None, typer.Option("--health-interval")]
HealthTimeoutOpt = Annotated[str | None, typer.Option("--health-timeout")]
HealthRetriesOpt = Annotated[str | None, typer.Option("--health-retries")]
HealthStartPeriodOpt = Annotated[str | None, typer.Option("--health-start-period")]
UpdateParallelismOpt = Annotated[str | None, typer.Option("--update-parallelism")]
UpdateDelayOpt = Annotated[str | None, typer.Option("--update-delay")]
UpdateFailureActionOpt = Annotated[str | None, typer.Option("--update-failure-action")]
UpdateMonitorOpt = Annotated[str | None, typer.Option("--update-monitor")]
UpdateMaxFailureRatioOpt = Annotated[str | None, typer.Option("--update-max-failure-ratio")]
UpdateOrderOpt = Annotated[str | None, typer.Option("--update-order")]
StopGracePeriodOpt = Annotated[str | None, typer.Option("--stop-grace-period")]
# the task runtime (cli/taskflags.py): Docker's names and units
LimitCpuOpt = Annotated[str | None, typer.Option("--limit-cpu", help="CPUs, e.g. 0.5.")]
LimitMemoryOpt = Annotated[str | None, typer.Option("--limit-memory", help="e.g. 256M.")]
LimitPidsOpt = Annotated[str | None, typer.Option("--limit-pids", help="Max processes.")]
ReserveCpuOpt = Annotated[str | None, typer.Option("--reserve-cpu", help="CPUs to reserve.")]
ReserveMemoryOpt = Annotated[str | None, typer.Option("--reserve-memory", help="e.g. 1G.")]
HostnameOpt = Annotated[
    str | None, typer.Option("--hostname", help="Task hostname ({{.Task.Slot}}...).")
]
StopSignalOpt = Annotated[str | None, typer.Option("--stop-signal", help="e.g. SIGINT.")]

CONVERGE_STABLE = 1.0
"""Seconds every task must keep running before the service counts as converged."""

POLL = 0.25


# -- human-readable times (Docker's units.HumanDuration) -----------------------------------------


def human_duration(seconds: float) -> str:
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    m = s // 60
    if m == 1:
        return "About a minute"
    if m < 60:
        return f"{m} minutes"
    h = round(s / 3600)
    if h == 1:
        return "About an hour"
    if h < 48:
        return f"{h} hours"
    if h < 24 * 7 * 2:
        return f"{h // 24} days"
    if h < 24 * 30 * 2:
        return f"{h // 24 // 7} weeks"
    if h < 24 * 365 * 2:
        return f"{h // 24 // 30} months"
    return f"{h // 24 // 365} years"


def one_line(error: str) -> str:
    """An error on one table line: its lines joined with " | " (the whole text stays in
    `inspect` and `ps --format json`)."""
    return " | ".join(x.strip() for x in error.splitlines() if x.strip())


def current_state(task: dict[str, Any], now: float) -> str:
    state = str(task["State"]).capitalize()
    when = task.get("UpdatedAt") or task.get("CreatedAt") or now
    return f"{state} {human_duration(max(0.0, now - when))} ago"


# -- flags -> spec -------------------------------------------------------------------------------


def _spec_from(flags: dict[str, Any]) -> dict[str, Any]:
    from meshkit.cli.servicespec import build_spec

    return build_spec(flags)


_NOT_SPEC_FLAGS = frozenset({"detach", "quiet", "host", "service"})


def _spec_flags(params: dict[str, Any]) -> dict[str, Any]:
    """A command's parameters (its locals() on entry) as the raw flags the spec functions
    take: only the spec's own flags, and only those the user gave."""
    return {
        k: v
        for k, v in params.items()
        if k not in _NOT_SPEC_FLAGS and v is not None and v != [] and v is not False
    }


# -- progress ------------------------------------------------------------------------------------


def _slots(reply: dict[str, Any]) -> tuple[dict[str, list[dict[str, Any]]], int]:
    """slot key -> tasks of that slot, newest first; and the number of slots wanted."""
    svc = reply["service"]
    slots: dict[str, list[dict[str, Any]]] = {}
    for t in reply["tasks"]:
        key = str(t["Slot"]) if t["Slot"] else t["NodeID"]
        slots.setdefault(key, []).append(t)
    for tasks in slots.values():
        tasks.sort(key=lambda t: t.get("CreatedAt", 0.0), reverse=True)
    return slots, int(svc["Desired"])


def progress(reply: dict[str, Any], version: int) -> tuple[list[str], bool, int, int]:
    """The progress lines, whether every slot runs the current version, done and wanted."""
    slots, desired = _slots(reply)
    mode = reply["service"]["Mode"]
    lines = []
    done = 0
    ordered = sorted(slots, key=lambda k: (len(k), k))
    keys: list[str | None] = list(ordered)
    extra = False
    if mode == "replicated":
        # The slots kept are not always 1..N: a scale-down keeps the lowest slots that still
        # have a task, so after a node loss slot 2 may be the one left. As Docker's CLI maps
        # slots to display positions, the live slots are shown in order, then "waiting" for
        # each replica not started yet; a slot past the replicas still running (a scale-down
        # under way) keeps the service from counting as converged.
        live = [k for k in ordered if any(t["DesiredState"] == "running" for t in slots[k])]
        extra = len(live) > desired
        keys = [*live[:desired], *[None] * max(0, desired - len(live))]
    bar_width = 50
    for i, key in enumerate(keys, 1):
        tasks = [t for t in slots.get(key or "", []) if t["DesiredState"] == "running"]
        current = [t for t in tasks if t["Current"]]
        t = current[0] if current else (tasks[0] if tasks else None)
        label = f"{i}/{len(keys)}" if mode == "replicated" else ((key or "")[:12] or "?")
        if t is None:
            lines.append(f"{label}: waiting")
            continue
        state = t["State"]
        order = ["new", "pending", "assigned", "accepted", "preparing", "starting", "running"]
        step = order.index(state) + 1 if state in order else 0
        if state == "running" and t["Current"]:
            done += 1
        filled = bar_width * step // len(order)
        bar = "[" + "=" * max(0, filled - 1) + (">" if filled else "") + " " * (bar_width - filled)
        bar += "]"
        text = f"{label}: {state:<10} {bar}"
        failed = [x for x in slots.get(key or "", []) if x["State"] in ("failed", "rejected")]
        if failed and (state != "running" or not t["Current"]):
            err = failed[0]["Error"].splitlines()
            # the last line of a failure's stderr says most (e.g. the exception)
            text += "  " + (
                err[0] + (f" ... {err[-1].strip()}" if len(err) > 1 else "")
                if err
                else failed[0]["State"]
            )
        lines.append(text)
    old_running = any(
        t["State"] == "running" and not t["Current"] for tasks in slots.values() for t in tasks
    )
    converged = done == len(keys) and not old_running and not extra
    return lines, converged, done, len(keys)


def follow(host: str | None, service: str, version: int, quiet: bool) -> None:
    """Print progress until the service converges (every slot running the new version for
    CONVERGE_STABLE seconds); Ctrl-C stops following, not the service."""
    tty = sys.stdout.isatty() and not quiet
    drawn = 0
    shown: dict[int, str] = {}  # without a terminal: each line once, when it changes
    stable_since: float | None = None
    try:
        while True:
            reply = _call(host, "service_ps", {"service": service})
            svc = reply["service"]
            status = svc.get("UpdateStatus") or {}
            lines, converged, done, total = progress(reply, max(version, int(svc["Version"])))
            head = f"overall progress: {done} out of {total} tasks"
            out = [head, *lines]
            if status.get("state") in ("paused", "rollback_paused"):
                out.append(f"update paused: {status.get('message', '')}")
            if tty:
                if drawn:
                    sys.stdout.write(f"\x1b[{drawn}F\x1b[J")
                sys.stdout.write("\n".join(out) + "\n")
                sys.stdout.flush()
                drawn = len(out)
            elif not quiet:
                for i, line in enumerate(out):
                    if i and shown.get(i) != line:
                        typer.echo(line)
                        shown[i] = line
            if status.get("state") in ("paused", "rollback_paused"):
                raise MeshkitError(
                    f"update paused for service {service}: {status.get('message', '')}"
                )
            now = time.monotonic()
            if converged:
                stable_since = stable_since or now
                if now - stable_since >= CONVERGE_STABLE:
                    if not quiet:
                        typer.echo("verify: Service converged")
                    return
            else:
                stable_since = None
            time.sleep(POLL)
    except KeyboardInterrupt:
        typer.echo("Operation continuing in background.", err=True)
        typer.echo(f"Use `meshkit service ps {service}` to check progress.", err=True)


# -- commands ------------------------------------------------------------------------------------

ListOpt = list[str] | None


@service_app.command(
    context_settings={"allow_interspersed_args": False, "ignore_unknown_options": False}
)
def create(
    command: Annotated[list[str], typer.Argument(help="The command and its arguments.")],
    name: Annotated[str | None, typer.Option("--name", help="Service name.")] = None,
    replicas: Annotated[str | None, typer.Option("--replicas", help="Number of tasks.")] = None,
    mode: Annotated[str | None, typer.Option("--mode", help="replicated or global.")] = None,
    network: Annotated[ListOpt, typer.Option("--network", help="Attach to a network.")] = None,
    publish: Annotated[
        ListOpt,
        typer.Option("--publish", "-p", help="[mode=ingress|host,]PUBLISHED:TARGET[/tcp|/udp]"),
    ] = None,
    port: Annotated[ListOpt, typer.Option("--port", help="TARGET[/proto] served by tasks.")] = None,
    env: Annotated[ListOpt, typer.Option("--env", "-e", help="K=V in the environment.")] = None,
    workdir: Annotated[str | None, typer.Option("--workdir", "-w", help="Working dir.")] = None,
    user: Annotated[str | None, typer.Option("--user", "-u", help="user[:group]")] = None,
    constraint: Annotated[
        ListOpt, typer.Option("--constraint", help="node.hostname==x, node.labels.k!=v...")
    ] = None,
    restart_condition: Annotated[
        str | None, typer.Option("--restart-condition", help="any, on-failure or none.")
    ] = None,
    restart_delay: RestartDelayOpt = None,
    restart_max_attempts: RestartMaxAttemptsOpt = None,
    restart_window: RestartWindowOpt = None,
    health_cmd: HealthCmdOpt = None,
    health_interval: HealthIntervalOpt = None,
    health_timeout: HealthTimeoutOpt = None,
    health_retries: HealthRetriesOpt = None,
    health_start_period: HealthStartPeriodOpt = None,
    update_parallelism: UpdateParallelismOpt = None,
    update_delay: UpdateDelayOpt = None,
    update_failure_action: UpdateFailureActionOpt = None,
    update_monitor: UpdateMonitorOpt = None,
    update_max_failure_ratio: UpdateMaxFailureRatioOpt = None,
    update_order: UpdateOrderOpt = None,
    stop_grace_period: StopGracePeriodOpt = None,
    endpoint_mode: Annotated[str | None, typer.Option("--endpoint-mode")] = None,
    secret: Annotated[
        ListOpt,
        typer.Option(
            "--secret",
            help="src=NAME[,target=T,uid=U,gid=G,mode=0400]: a file at "
            "/run/secrets/T in each task.",
        ),
    ] = None,
    config: Annotated[
        ListOpt,
        typer.Option(
            "--config",
            help="src=NAME[,target=/path,uid=U,gid=G,mode=0444]: a file "
            "at /path in each task (default /run/configs/NAME).",
        ),
    ] = None,
    limit_cpu: LimitCpuOpt = None,
    limit_memory: LimitMemoryOpt = None,
    limit_pids: LimitPidsOpt = None,
    reserve_cpu: ReserveCpuOpt = None,
    reserve_memory: ReserveMemoryOpt = None,
    mount: Annotated[
        ListOpt,
        typer.Option(
            "--mount",
            help="type=bind|volume|tmpfs,src=...,dst=/path[,readonly][,tmpfs-size=64M]",
        ),
    ] = None,
    hostname: HostnameOpt = None,
    stop_signal: StopSignalOpt = None,
    env_file: Annotated[ListOpt, typer.Option("--env-file", help="KEY=VALUE lines.")] = None,
    label: Annotated[ListOpt, typer.Option("--label", "-l", help="Service label K=V.")] = None,
    group: Annotated[ListOpt, typer.Option("--group", help="Supplementary group.")] = None,
    dns: Annotated[ListOpt, typer.Option("--dns", help="DNS server (resolv.conf).")] = None,
    dns_search: Annotated[ListOpt, typer.Option("--dns-search")] = None,
    dns_option: Annotated[ListOpt, typer.Option("--dns-option")] = None,
    init: Annotated[bool, typer.Option("--init", help="Reap orphans with a tiny init.")] = False,
    detach: DetachOpt = False,
    quiet: QuietOpt = False,
    host: HostOpt = None,
) -> None:
    """Create a service: `meshkit service create --name web --replicas 2 -- CMD ARGS...`."""
    flags = _spec_flags(locals())
    spec = _spec_from(flags)
    reply = agent_call_idempotent(host, "service_create", {"spec": spec}, call=_call)
    typer.echo(reply["id"])
    if not detach:
        follow(host, reply["id"], 1, quiet)


@service_app.command("ls")
def ls(
    fmt: FormatOpt = "table",
    quiet: IdsOnlyOpt = False,
    host: HostOpt = None,
) -> None:
    """List services: ID, NAME, MODE, REPLICAS, COMMAND, PORTS."""
    from meshkit.cli.node import check_format, print_listing

    check_format(fmt)  # before asking the agent
    services = _call(host, "service_ls")["services"]
    print_listing(
        services,
        fmt,
        quiet,
        ["ID", "NAME", "MODE", "REPLICAS", "COMMAND", "PORTS"],
        lambda s: [s["ID"][:12], s["Name"], s["Mode"], s["Replicas"], s["Command"], s["Ports"]],
    )


def ps_rows(
    tasks: list[dict[str, Any]], now: float, no_trunc: bool, width: int | None
) -> tuple[list[str], list[list[str]]]:
    """`service ps` rows: slots in order, the newest task first, older ones under ` \\_ `.
    The ERROR column is the whole error with --no-trunc or when `width` is None (not a
    terminal), else cut to what the terminal width leaves for it (never under 40 chars)."""
    headers = ["ID", "NAME", "NODE", "DESIRED STATE", "CURRENT STATE", "ERROR", "PORTS"]
    groups: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for t in tasks:
        key = (int(t["Slot"]), "" if t["Slot"] else t["NodeID"])
        groups.setdefault(key, []).append(t)
    rows: list[list[str]] = []
    for key in sorted(groups):
        ts = sorted(groups[key], key=lambda t: t.get("CreatedAt", 0.0), reverse=True)
        for i, t in enumerate(ts):
            name = t["Name"] if i == 0 else f" \\_ {t['Name']}"
            err = one_line(t["Error"])
            rows.append(
                [
                    t["ID"] if no_trunc else t["ID"][:12],
                    name,
                    t["Node"],
                    str(t["DesiredState"]).capitalize(),
                    current_state(t, now),
                    f'"{err}"' if err else "",
                    t["Ports"],
                ]
            )
    if not no_trunc and width is not None:
        fixed = sum(max(len(headers[i]), *(len(r[i]) for r in rows)) + 3 for i in (0, 1, 2, 3, 4))
        ports = max([len("PORTS"), *(len(r[6]) for r in rows)])
        room = max(40, width - fixed - ports - 3)
        for r in rows:
            if len(r[5]) > room:
                r[5] = r[5][: room - 4] + '..."'
    return headers, rows


@service_app.command("ps")
def ps(
    service: Annotated[str, typer.Argument(help="Service name or id.")],
    no_trunc: Annotated[bool, typer.Option("--no-trunc", help="Whole ids and errors.")] = False,
    fmt: Annotated[str, typer.Option("--format", help="table or json.")] = "table",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only the task IDs.")] = False,
    host: HostOpt = None,
) -> None:
    """List the tasks of a service, with the history of each slot."""
    if fmt not in ("table", "json"):
        raise FlagError("--format", fmt, "expected table or json")
    reply = _call(host, "service_ps", {"service": service})
    tasks = reply["tasks"]
    if quiet:
        for t in tasks:
            typer.echo(t["ID"] if no_trunc else t["ID"][:12])
        return
    if fmt == "json":
        typer.echo(json.dumps(tasks, indent=4))
        return
    from meshkit.base.table import table

    width = shutil.get_terminal_size((0, 0)).columns if sys.stdout.isatty() else None
    headers, rows = ps_rows(tasks, time.time(), no_trunc, width or None)
    typer.echo(table(headers, rows))


@service_app.command()
def inspect(
    services: Annotated[list[str], typer.Argument(help="Service names or ids.")],
    pretty: Annotated[bool, typer.Option("--pretty", help="Human-readable.")] = False,
    host: HostOpt = None,
) -> None:
    """Show services in detail, as JSON (tasks with their whole errors)."""
    out = []
    for ref in services:
        svc = _call(host, "service_inspect", {"service": ref})
        svc["tasks"] = _call(host, "service_ps", {"service": ref})["tasks"]
        out.append(svc)
    if pretty:
        from meshkit.cli.servicepretty import pretty_service

        for svc in out:
            typer.echo(pretty_service(svc))
        return
    typer.echo(json.dumps(out, indent=4))


@service_app.command()
def scale(
    pairs: Annotated[list[str], typer.Argument(help="SERVICE=REPLICAS ...")],
    detach: DetachOpt = False,
    host: HostOpt = None,
) -> None:
    """Set the number of tasks of replicated services."""
    wanted: list[tuple[str, int]] = []
    for pair in pairs:
        ref, sep, num = pair.partition("=")
        if not sep or not ref or not num.isdigit():
            raise FlagError("SERVICE=REPLICAS", pair, "expected e.g. web=3")
        wanted.append((ref, int(num)))
    for ref, count in wanted:
        reply = _call(host, "service_scale", {"service": ref, "replicas": count})
        typer.echo(f"{ref} scaled to {count}")
        if not detach:
            follow(host, reply["id"], int(reply["version"]), False)


@service_app.command(context_settings={"allow_interspersed_args": True})
def update(
    service: Annotated[str, typer.Argument(help="Service name or id.")],
    replicas: Annotated[str | None, typer.Option("--replicas")] = None,
    args: Annotated[str | None, typer.Option("--args", help="The new command line.")] = None,
    env_add: Annotated[ListOpt, typer.Option("--env-add")] = None,
    env_rm: Annotated[ListOpt, typer.Option("--env-rm")] = None,
    constraint_add: Annotated[ListOpt, typer.Option("--constraint-add")] = None,
    constraint_rm: Annotated[ListOpt, typer.Option("--constraint-rm")] = None,
    publish_add: Annotated[ListOpt, typer.Option("--publish-add")] = None,
    publish_rm: Annotated[ListOpt, typer.Option("--publish-rm")] = None,
    secret_add: Annotated[ListOpt, typer.Option("--secret-add", help="As --secret.")] = None,
    secret_rm: Annotated[ListOpt, typer.Option("--secret-rm", help="A secret's name.")] = None,
    config_add: Annotated[ListOpt, typer.Option("--config-add", help="As --config.")] = None,
    config_rm: Annotated[ListOpt, typer.Option("--config-rm", help="A config's name.")] = None,
    workdir: Annotated[str | None, typer.Option("--workdir", "-w")] = None,
    user: Annotated[str | None, typer.Option("--user", "-u")] = None,
    restart_condition: Annotated[str | None, typer.Option("--restart-condition")] = None,
    restart_delay: RestartDelayOpt = None,
    restart_max_attempts: RestartMaxAttemptsOpt = None,
    restart_window: RestartWindowOpt = None,
    health_cmd: HealthCmdOpt = None,
    health_interval: HealthIntervalOpt = None,
    health_timeout: HealthTimeoutOpt = None,
    health_retries: HealthRetriesOpt = None,
    health_start_period: HealthStartPeriodOpt = None,
    update_parallelism: UpdateParallelismOpt = None,
    update_delay: UpdateDelayOpt = None,
    update_failure_action: UpdateFailureActionOpt = None,
    update_monitor: UpdateMonitorOpt = None,
    update_max_failure_ratio: UpdateMaxFailureRatioOpt = None,
    update_order: UpdateOrderOpt = None,
    stop_grace_period: StopGracePeriodOpt = None,
    limit_cpu: LimitCpuOpt = None,
    limit_memory: LimitMemoryOpt = None,
    limit_pids: LimitPidsOpt = None,
    reserve_cpu: ReserveCpuOpt = None,
    reserve_memory: ReserveMemoryOpt = None,
    mount_add: Annotated[ListOpt, typer.Option("--mount-add", help="As --mount.")] = None,
    mount_rm: Annotated[ListOpt, typer.Option("--mount-rm", help="A mount's target.")] = None,
    hostname: HostnameOpt = None,
    stop_signal: StopSignalOpt = None,
    label_add: Annotated[ListOpt, typer.Option("--label-add")] = None,
    label_rm: Annotated[ListOpt, typer.Option("--label-rm")] = None,
    group_add: Annotated[ListOpt, typer.Option("--group-add")] = None,
    group_rm: Annotated[ListOpt, typer.Option("--group-rm")] = None,
    dns_add: Annotated[ListOpt, typer.Option("--dns-add")] = None,
    dns_rm: Annotated[ListOpt, typer.Option("--dns-rm")] = None,
    dns_search_add: Annotated[ListOpt, typer.Option("--dns-search-add")] = None,
    dns_search_rm: Annotated[ListOpt, typer.Option("--dns-search-rm")] = None,
    dns_option_add: Annotated[ListOpt, typer.Option("--dns-option-add")] = None,
    dns_option_rm: Annotated[ListOpt, typer.Option("--dns-option-rm")] = None,
    init: Annotated[bool | None, typer.Option("--init/--no-init")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace the tasks even unchanged.")] = (
        False
    ),
    detach: DetachOpt = False,
    quiet: QuietOpt = False,
    host: HostOpt = None,
) -> None:
    """Change a service; its tasks are replaced by a rolling update."""
    flags = _spec_flags(locals())  # first: nothing but the parameters in locals() yet
    if init is False:
        flags["init"] = False  # --no-init (_spec_flags drops false values)
    import shlex

    from meshkit.cli.servicespec import update_spec

    if args is not None:
        try:
            flags["args"] = shlex.split(args)  # Docker splits --args the way a shell would
        except ValueError as exc:
            raise FlagError("--args", args, str(exc)) from None
        if not flags["args"]:
            raise FlagError("--args", args, "the command line is empty")
    current = _call(host, "service_inspect", {"service": service})
    spec = update_spec(current["spec"], flags)
    if spec == current["spec"] and not force:
        typer.echo(current["id"])
        typer.echo("service unchanged (use --force to replace its tasks anyway)", err=True)
        return
    reply = _call(host, "service_update", {"service": current["id"], "spec": spec})
    typer.echo(current["spec"]["name"])
    if not detach:
        follow(host, current["id"], int(reply["version"]), quiet)


@service_app.command()
def rollback(
    service: Annotated[str, typer.Argument(help="Service name or id.")],
    detach: DetachOpt = False,
    quiet: QuietOpt = False,
    host: HostOpt = None,
) -> None:
    """Go back to the service's previous spec."""
    reply = _call(host, "service_rollback", {"service": service})
    typer.echo(service)
    if not detach:
        follow(host, reply["id"], int(reply["version"]), quiet)


@service_app.command("rm")
def rm(
    services: Annotated[list[str], typer.Argument(help="Service names or ids.")],
    host: HostOpt = None,
) -> None:
    """Remove services (their tasks are stopped)."""
    failed = []
    for ref in services:
        try:
            _call(host, "service_rm", {"service": ref})
            typer.echo(ref)
        except MeshkitError as exc:
            failed.append(f"{ref}: {exc}")
    if failed:
        raise MeshkitError("; ".join(failed))


@service_app.command()
def logs(
    service: Annotated[str, typer.Argument(help="Service name or id.")],
    follow_: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing.")] = False,
    tail: Annotated[str, typer.Option("--tail", help="Last lines of each task, or all.")] = ("all"),
    since: Annotated[
        str | None,
        typer.Option(
            "--since", help="Lines written from this time: RFC 3339, Unix seconds or 10m/1h ago."
        ),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option("--until", help="Lines written up to this time (same forms as --since)."),
    ] = None,
    timestamps: Annotated[
        bool, typer.Option("--timestamps", "-t", help="Show when each line was written.")
    ] = False,
    no_task_ids: Annotated[bool, typer.Option("--no-task-ids")] = False,
    host: HostOpt = None,
) -> None:
    """Print the output of every task of a service, from every node."""
    from meshkit.cli.events import parse_time

    n: int | None = None
    if tail != "all":
        if not tail.isdigit():
            raise FlagError("--tail", tail, "expected a number of lines or all")
        n = int(tail)
    now = time.time()
    times: dict[str, Any] = {}
    if since is not None:
        times["since_ns"] = _ns("--since", since, parse_time("--since", since, now))
    if until is not None:
        times["until_ns"] = _ns("--until", until, parse_time("--until", until, now))
    if timestamps:
        times["timestamps"] = True
    offsets: dict[str, Any] = {}
    first = True
    try:
        while True:
            params = {"service": service, "tail": n if first else None, "since": offsets}
            if first or "until_ns" in times:
                # --since picks the first lines; later rounds go on from the offsets
                params.update(
                    times if first else {k: v for k, v in times.items() if k != "since_ns"}
                )
            elif timestamps:
                params["timestamps"] = True
            reply = _call(host, "service_logs", params)
            first = False
            for err in reply.get("errors") or []:
                typer.echo(f"error: {err}", err=True)
            for name, stream, text, *when in reply["lines"]:
                label = name.split("@")[0] if not no_task_ids else name.split(".")[0]
                node = name.split("@")[1] if "@" in name else ""
                line = f"{label}@{node}    | {text}"
                if timestamps and when:
                    line = f"{rfc3339_nano(int(when[0]))} {line}"
                typer.echo(line, err=stream == "stderr")
            offsets = reply.get("since") or offsets
            if not follow_ or ("until_ns" in times and time.time_ns() > times["until_ns"]):
                return
            time.sleep(0.5)
    except KeyboardInterrupt:
        return


def _ns(flag: str, text: str, seconds: float) -> int:
    if seconds < 0:
        raise FlagError(flag, text, "a time before 1970")
    return round(seconds * 1e9)


def rfc3339_nano(ns: int) -> str:
    """Docker's --timestamps form: UTC, nine fraction digits (RFC3339NanoFixed)."""
    secs, frac = divmod(ns, 10**9)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{frac:09d}Z"

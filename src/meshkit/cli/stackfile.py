"""Compose files (format 3) -> the networks and service specs of a stack (pure).

`load_stack()` takes the files' texts (name and contents), the environment to interpolate
`${VAR}` from, the stack's name and a reader for `env_file`s, and returns a `Stack`: the
networks to create (or that must exist), the checked service specs and the warnings to print.
Nothing here talks to an agent; `meshkit.cli.stack` does the deploying, as docker/cli's
compose loader and convert package sit in front of the swarm API.

A compose file describes processes here, not images: a service runs `entrypoint` + `command`
(or `x-meshkit-command`, which wins, so that one file can serve Docker and meshkit). What each
key does (translated, refused by name, ignored with a warning) is in
meshkit.cli.composekeys; every error names the file, the line and the path: `app.yml:12:
services.web.cap_ad: unknown key`.

Top-level `secrets`/`configs` are planned as networks are: a `file:` one becomes a `FilePlan`
to create (named `STACK_KEY`, or its `name:`; labelled with the stack) and an `external` one
must exist. The plan holds the file's path, not its bytes: the CLI reads it, compares it with
what the cluster has and creates what is missing. A service's references (short `- KEY` or
long `{source, target, uid, gid, mode}`) go through the grammar of `--secret`/`--config`
(meshkit.cli.servicespec.file_ref) with compose's defaults: a secret's target is the key
(`/run/secrets/KEY`); a config's is `/run/configs/KEY` (Docker's `/KEY` is in a container's
root, a process's root is the host's).
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from meshkit.base.durations import DurationError, parse_duration
from meshkit.base.errors import InvalidValue
from meshkit.cli import composeruntime
from meshkit.cli.composefile import (
    Doc,
    Path,
    StackError,
    interpolate_tree,
    label_map,
    merge,
    normalise_service,
    parse_compose,
)
from meshkit.cli.composekeys import (
    DEPLOY_KEYS,
    FILE_KEYS,
    HEALTH_KEYS,
    IGNORED,
    NETWORK_KEYS,
    NOT_YET,
    PLACEMENT_KEYS,
    PORT_KEYS,
    REF_KEYS,
    RESTART_KEYS,
    SERVICE_KEYS,
    TOP_KEYS,
    UPDATE_KEYS,
)
from meshkit.cluster.model import secrets as secretrules
from meshkit.cluster.model.services import (
    ENDPOINT_MODES,
    ENV_KEY_RE,
    NAME_RE,
    SpecError,
    check_port,
    check_spec,
    default_health,
    default_spec,
    parse_constraint,
)

__all__ = [
    "MESHKIT_LABEL",
    "STACK_LABEL",
    "FilePlan",
    "NetworkPlan",
    "Stack",
    "StackError",
    "load_stack",
    "parse_compose",
    "stack_labels",
]

STACK_LABEL = "com.docker.stack.namespace"
MESHKIT_LABEL = "meshkit.stack"

STACK_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_SERVICE_KEY_RE = re.compile(r"^[A-Za-z0-9._-]+$")


@dataclass
class NetworkPlan:
    """One network of the stack: `name` in the cluster; created from `request` (the
    network_create parameters) unless `external`, when it must exist already."""

    key: str
    name: str
    external: bool
    request: dict[str, Any]


@dataclass
class FilePlan:
    """One secret or config (`kind`) of the stack: `name` in the cluster. Unless `external`
    (then it must exist already), created with `labels` from the bytes of `file` (relative
    paths are taken from the first compose file's folder); `where` is `file:line: path`, for
    the CLI's messages."""

    kind: str
    key: str
    name: str
    external: bool
    file: str
    labels: dict[str, str]
    where: str


@dataclass
class Stack:
    name: str
    networks: list[NetworkPlan]
    services: list[dict[str, Any]]
    warnings: list[str] = field(default_factory=list)
    secrets: list[FilePlan] = field(default_factory=list)
    configs: list[FilePlan] = field(default_factory=list)


def stack_labels(stack: str) -> dict[str, str]:
    return {STACK_LABEL: stack, MESHKIT_LABEL: stack}


# -- the translation -------------------------------------------------------------------------


class _Ctx:
    """Locations for messages: the file and line of a path, from the last file that set it."""

    def __init__(self) -> None:
        self.locs: dict[Path, tuple[str, int]] = {}
        self.first = ""
        self.warnings: list[str] = []

    def add(self, doc: Doc) -> None:
        self.first = self.first or doc.name
        for path, line in doc.lines.items():
            self.locs[path] = (doc.name, line)

    def where(self, path: Path) -> str:
        p = tuple(path)
        while p and p not in self.locs:
            p = p[:-1]
        name, line = self.locs.get(p, (self.first, 0))
        text = ".".join(str(x) for x in path) if path else "(top)"
        return f"{name}:{line}: {text}" if line else f"{name}: {text}"

    def error(self, path: Path, reason: str) -> StackError:
        return StackError(f"{self.where(path)}: {reason}")

    def warn(self, path: Path, reason: str) -> None:
        self.warnings.append(f"{self.where(path)}: {reason}")


def _text(ctx: _Ctx, value: Any, path: Path) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ctx.error(path, f"expected text, got {_kind(value)}")
    return str(value)


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true/false"
    return {dict: "a mapping", list: "a list", str: "text", int: "a number", float: "a number"}.get(
        type(value), type(value).__name__
    )


def _mapping(
    ctx: _Ctx, value: Any, path: Path, keys: frozenset[str] | None = None
) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ctx.error(path, f"expected a mapping, got {_kind(value)}")
    if keys is not None:
        for k in value:
            if k not in keys and not str(k).startswith("x-"):
                raise ctx.error((*path, k), "unknown key (not in compose file format 3)")
    return value


def _words(ctx: _Ctx, value: Any, path: Path) -> list[str]:
    """`command`-like values: a list, or a string split as a shell would."""
    if value is None:
        return []
    if isinstance(value, list):
        return [_text(ctx, v, (*path, i)) for i, v in enumerate(value)]
    text = _text(ctx, value, path)
    try:
        return shlex.split(text)
    except ValueError as exc:
        raise ctx.error(path, f"cannot split {text!r} into words: {exc}") from None


def _duration(ctx: _Ctx, value: Any, path: Path) -> float:
    text = _text(ctx, value, path)
    try:
        return parse_duration(text)
    except DurationError as exc:
        raise ctx.error(path, f"invalid duration {text!r}: {exc.reason}") from None


def _int(ctx: _Ctx, value: Any, path: Path, minimum: int = 0) -> int:
    if isinstance(value, bool):
        raise ctx.error(path, "expected a whole number, got true/false")
    try:
        n = int(str(value).strip())
    except ValueError:
        raise ctx.error(path, f"expected a whole number, got {value!r}") from None
    if n < minimum:
        raise ctx.error(path, f"must be {minimum} or more, got {n}")
    return n


def _choice(ctx: _Ctx, value: Any, path: Path, choices: Sequence[str]) -> str:
    text = _text(ctx, value, path)
    if text not in choices:
        raise ctx.error(path, f"{text!r} is not one of {', '.join(choices)}")
    return text


def _str_map(ctx: _Ctx, value: Any, path: Path) -> dict[str, str]:
    if isinstance(value, list):
        value = label_map(value)
    out: dict[str, str] = {}
    for k, v in _mapping(ctx, value, path).items():
        out[str(k)] = "" if v is None else _text(ctx, v, (*path, k))
    return out


def _environment(
    ctx: _Ctx, svc: Mapping[str, Any], path: Path, env: Mapping[str, str],
    read: Callable[[str], str], base_dir: str,
) -> list[str]:  # fmt: skip
    values: dict[str, str] = {}
    files = svc.get("env_file")
    if files is not None:
        names = [files] if isinstance(files, str) else files
        if not isinstance(names, list):
            raise ctx.error((*path, "env_file"), "expected a file name or a list of them")
        for i, f in enumerate(names):
            fpath = (*path, "env_file", i) if isinstance(files, list) else (*path, "env_file")
            fname = os.path.join(base_dir, _text(ctx, f, fpath))
            try:
                text = read(fname)
            except OSError as exc:
                raise ctx.error(fpath, f"cannot read {fname}: {exc.strerror or exc}") from None
            for n, line in enumerate(text.splitlines(), 1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                k, eq, v = line.partition("=")
                k = k.strip()
                if not ENV_KEY_RE.match(k):
                    raise ctx.error(fpath, f"{fname}:{n}: {line!r} is not KEY=VALUE")
                if eq:
                    values[k] = v
                elif k in env:
                    values[k] = env[k]
    raw = svc.get("environment")
    if raw is not None:
        epath = (*path, "environment")
        for k, v in _mapping(ctx, raw, epath).items():
            key = str(k)
            if not ENV_KEY_RE.match(key):
                raise ctx.error((*epath, key), f"{key!r} is not a variable name")
            if v is None:
                if key in env:  # `- NAME` alone: from the deploying shell, as Docker
                    values[key] = env[key]
                continue
            if isinstance(v, bool):
                values[key] = "true" if v else "false"
            else:
                values[key] = _text(ctx, v, (*epath, key))
    return [f"{k}={v}" for k, v in values.items()]


_PORT_RANGE = re.compile(
    r"^(?:(?P<p1>\d+)(?:-(?P<p2>\d+))?:)?(?P<t1>\d+)(?:-(?P<t2>\d+))?(?P<proto>/[A-Za-z]+)?$"
)


def _short_ports(ctx: _Ctx, value: Any, path: Path) -> list[dict[str, Any]]:
    """`"8080:80"`, `80`, `"8080:80/udp"`, ranges `"8000-8001:80-81"` -> spec ports."""
    from meshkit.cli.servicespec import parse_publish

    text = _text(ctx, value, path)
    m = _PORT_RANGE.match(text)
    if m is not None and (m.group("p2") or m.group("t2")):
        t1, t2 = int(m.group("t1")), int(m.group("t2") or m.group("t1"))
        proto = m.group("proto") or ""
        targets = list(range(t1, t2 + 1))
        if m.group("p1"):
            p1, p2 = int(m.group("p1")), int(m.group("p2") or m.group("p1"))
            published: list[int | None] = list(range(p1, p2 + 1))
            if len(published) != len(targets):
                raise ctx.error(path, f"{text!r}: the two ranges differ in length")
        else:
            published = [None] * len(targets)
        texts = [
            f"{p}:{t}{proto}" if p else f"{t}{proto}"
            for p, t in zip(published, targets, strict=True)
        ]
    else:
        texts = [text]
    out = []
    for t in texts:
        try:
            out.append(parse_publish(t, ".".join(str(p) for p in path)))
        except InvalidValue as exc:
            raise ctx.error(path, f"invalid port {text!r}: {exc.reason}") from None
    return out


def _ports(ctx: _Ctx, svc: Mapping[str, Any], path: Path) -> list[dict[str, Any]]:
    ports: list[dict[str, Any]] = []
    raw = svc.get("ports")
    if raw is not None:
        if not isinstance(raw, list):
            raise ctx.error((*path, "ports"), f"expected a list, got {_kind(raw)}")
        for i, item in enumerate(raw):
            ipath = (*path, "ports", i)
            if isinstance(item, dict):
                _mapping(ctx, item, ipath, PORT_KEYS)
                if "target" not in item:
                    raise ctx.error(ipath, "a port needs a target")
                port: dict[str, Any] = {
                    "target": _int(ctx, item["target"], (*ipath, "target"), 1),
                    "published": None,
                    "protocol": _choice(
                        ctx, item.get("protocol", "tcp"), (*ipath, "protocol"), ("tcp", "udp")
                    ),
                    "mode": _choice(
                        ctx, item.get("mode", "ingress"), (*ipath, "mode"), ("ingress", "host")
                    ),
                }
                if item.get("published") is not None:
                    port["published"] = _int(ctx, item["published"], (*ipath, "published"), 1)
                try:
                    ports.append(check_port(port))
                except SpecError as exc:
                    raise ctx.error(ipath, str(exc)) from None
            else:
                ports.extend(_short_ports(ctx, item, ipath))
    for i, item in enumerate(svc.get("expose") or []):
        ipath = (*path, "expose", i)
        for p in _short_ports(ctx, item, ipath):
            if p["published"] is not None:
                raise ctx.error(ipath, "expose names a port the tasks serve; publish in ports")
            if not any((q["target"], q["protocol"]) == (p["target"], p["protocol"]) for q in ports):
                ports.append(p)
    return ports


def _health(ctx: _Ctx, value: Any, path: Path) -> dict[str, Any] | None:
    hc = _mapping(ctx, value, path, HEALTH_KEYS)
    if hc.get("disable") is True:
        return None
    test = hc.get("test")
    if test is None:
        raise ctx.error(path, "a healthcheck needs a test (or disable: true)")
    tpath = (*path, "test")
    if isinstance(test, list):
        words = [_text(ctx, w, (*tpath, i)) for i, w in enumerate(test)]
        if not words:
            raise ctx.error(tpath, "an empty test")
        if words[0] == "NONE":
            return None
        if words[0] == "CMD-SHELL" and len(words) == 2:
            cmd = words[1]
        elif words[0] == "CMD" and len(words) > 1:
            cmd = shlex.join(words[1:])
        else:
            raise ctx.error(
                tpath, 'expected ["CMD", ARGS...], ["CMD-SHELL", "COMMAND"] or ["NONE"]'
            )
    else:
        cmd = _text(ctx, test, tpath)
    if not cmd.strip():
        raise ctx.error(tpath, "an empty test")
    health = default_health()
    health["cmd"] = cmd
    for key in ("interval", "timeout", "start_period"):
        if hc.get(key) is not None:
            health[key] = _duration(ctx, hc[key], (*path, key))
            if key != "start_period" and health[key] <= 0:
                raise ctx.error((*path, key), "must be more than 0")
    if hc.get("retries") is not None:
        health["retries"] = _int(ctx, hc["retries"], (*path, "retries"), 1)
    return health


def _update_cfg(ctx: _Ctx, value: Any, path: Path, rollback: bool) -> dict[str, Any]:
    cfg = _mapping(ctx, value, path, UPDATE_KEYS)
    out: dict[str, Any] = {}
    if "parallelism" in cfg:
        out["parallelism"] = _int(ctx, cfg["parallelism"], (*path, "parallelism"))
    for key in ("delay", "monitor"):
        if key in cfg:
            out[key] = _duration(ctx, cfg[key], (*path, key))
    if "failure_action" in cfg:
        actions = ("pause", "continue") if rollback else ("pause", "continue", "rollback")
        out["failure_action"] = _choice(
            ctx, cfg["failure_action"], (*path, "failure_action"), actions
        )
    if "max_failure_ratio" in cfg:
        try:
            ratio = float(cfg["max_failure_ratio"])
        except (TypeError, ValueError):
            ratio = -1.0
        if not 0.0 <= ratio <= 1.0:
            raise ctx.error((*path, "max_failure_ratio"), "expected a number from 0 to 1")
        out["max_failure_ratio"] = ratio
    if "order" in cfg:
        out["order"] = _choice(ctx, cfg["order"], (*path, "order"), ("stop-first", "start-first"))
    return out


def _deploy(ctx: _Ctx, value: Any, path: Path, spec: dict[str, Any]) -> None:
    d = _mapping(ctx, value, path, DEPLOY_KEYS)
    if "mode" in d:
        spec["mode"] = _choice(ctx, d["mode"], (*path, "mode"), ("replicated", "global"))
    if d.get("replicas") is not None:
        if spec["mode"] == "global":
            raise ctx.error((*path, "replicas"), "replicas can only be used with replicated mode")
        spec["replicas"] = _int(ctx, d["replicas"], (*path, "replicas"))
    if d.get("resources"):
        composeruntime.resources(ctx, d["resources"], (*path, "resources"), spec)
    if "endpoint_mode" in d:
        spec["endpoint_mode"] = _choice(
            ctx, d["endpoint_mode"], (*path, "endpoint_mode"), ENDPOINT_MODES
        )
    if "labels" in d:
        spec["labels"].update(_str_map(ctx, d["labels"], (*path, "labels")))
    pl = _mapping(ctx, d.get("placement"), (*path, "placement"), PLACEMENT_KEYS)
    for key in ("preferences", "max_replicas_per_node"):
        if pl.get(key):
            raise ctx.error((*path, "placement", key), NOT_YET)
    cons = pl.get("constraints")
    if cons is not None:
        cpath = (*path, "placement", "constraints")
        if not isinstance(cons, list):
            raise ctx.error(cpath, f"expected a list, got {_kind(cons)}")
        for i, c in enumerate(cons):
            try:
                spec["constraints"].append(str(parse_constraint(_text(ctx, c, (*cpath, i)))))
            except ValueError as exc:
                raise ctx.error((*cpath, i), str(exc)) from None
    for key, section in (("update_config", "update"), ("rollback_config", "rollback")):
        if key in d:
            spec[section].update(_update_cfg(ctx, d[key], (*path, key), section == "rollback"))
    if "restart_policy" in d:
        rpath = (*path, "restart_policy")
        rp = _mapping(ctx, d["restart_policy"], rpath, RESTART_KEYS)
        if "condition" in rp:
            spec["restart"]["condition"] = _choice(
                ctx, rp["condition"], (*rpath, "condition"), ("none", "on-failure", "any")
            )
        for key in ("delay", "window"):
            if rp.get(key) is not None:
                spec["restart"][key] = _duration(ctx, rp[key], (*rpath, key))
        if rp.get("max_attempts") is not None:
            spec["restart"]["max_attempts"] = _int(
                ctx, rp["max_attempts"], (*rpath, "max_attempts")
            )


def _refs(
    ctx: _Ctx, value: Any, path: Path, names: Mapping[str, str], what: str
) -> list[dict[str, Any]]:
    """A service's `secrets`/`configs`, short (`- KEY`) or long (`source`, `target`, `uid`,
    `gid`, `mode`), as the spec's references to the cluster's names; the defaults are
    compose's, by KEY rather than the cluster's name: a secret's target is KEY
    (`/run/secrets/KEY`), a config's `/run/configs/KEY` (where Docker has `/KEY`: a container's
    root; a relative config target is taken from /run/configs)."""
    from meshkit.cli.servicespec import file_ref

    kind = what[:-1]
    if not isinstance(value, list):
        raise ctx.error(path, f"expected a list, got {_kind(value)}")
    refs = []
    for i, item in enumerate(value):
        ipath = (*path, i)
        fields: dict[str, Any] = {}
        if isinstance(item, dict):
            _mapping(ctx, item, ipath, REF_KEYS)
            if item.get("source") is None:
                raise ctx.error(ipath, f"a {kind} reference needs a source")
            source = _text(ctx, item["source"], (*ipath, "source"))
            fields = {k: v for k, v in item.items() if k in REF_KEYS and v is not None}
        else:
            source = _text(ctx, item, ipath)
        if source not in names:
            raise ctx.error(
                ipath, f"undefined {kind} {source!r} (declare it under top-level {what})"
            )
        target = _text(ctx, fields["target"], (*ipath, "target")) if "target" in fields else ""
        target = target or source
        if kind == "config" and not target.startswith("/"):
            # Docker's `/KEY` is the root of a container; a process's root is the host's,
            # where a config can only be bound over an existing file: meshkit's own default
            target = f"{secretrules.CONFIGS_DIR}/{target}"
        fields.update(source=names[source], target=target)
        try:
            refs.append(file_ref(kind, fields))
        except ValueError as exc:
            key = str(exc).split(":")[0].split(" ")[0]  # "mode: ...", "uid: ..."
            where = (*ipath, key) if isinstance(item, dict) and key in item else ipath
            raise ctx.error(where, str(exc)) from None
    return refs


def _files(
    ctx: _Ctx, stack: str, what: str, top: Mapping[str, Any], used: set[str], base_dir: str
) -> tuple[list[FilePlan], dict[str, str]]:
    """Top-level `secrets` or `configs`: every one checked, the used ones planned; and the
    cluster name of each key."""
    kind = what[:-1]
    declared = _mapping(ctx, top.get(what), (what,))
    plans: list[FilePlan] = []
    names: dict[str, str] = {}
    for key in declared:
        path: Path = (what, str(key))
        cfg = _mapping(ctx, declared[key], path, FILE_KEYS)
        for k in ("driver", "driver_opts", "template_driver"):
            if cfg.get(k):
                raise ctx.error((*path, k), f"{NOT_YET}: a {kind} is the bytes of a file")
        ext = cfg.get("external")
        external = bool(ext)
        name = ""
        if isinstance(ext, dict):
            _mapping(ctx, ext, (*path, "external"), frozenset({"name"}))
            if ext.get("name"):
                name = _text(ctx, ext["name"], (*path, "external", "name"))
        elif ext is not None and not isinstance(ext, bool):
            raise ctx.error((*path, "external"), "expected true, false or {name: NAME}")
        if cfg.get("name"):
            name = _text(ctx, cfg["name"], (*path, "name"))
        name = name or (str(key) if external else f"{stack}_{key}")
        try:
            secretrules.check_name(name)
        except secretrules.RefError as exc:
            where = (*path, "name") if "name" in cfg else path
            raise ctx.error(where, f"the {kind} name {name!r}: {exc}") from None
        names[str(key)] = name
        file = ""
        if external:
            if cfg.get("file") is not None:
                raise ctx.error((*path, "file"), f"an external {kind} has no file")
        else:
            if cfg.get("file") is None:
                raise ctx.error(path, f"a {kind} needs file: PATH (or external: true)")
            file = _text(ctx, cfg["file"], (*path, "file"))
            if not file:
                raise ctx.error((*path, "file"), "an empty path")
            file = os.path.join(base_dir, file)
        labels = _str_map(ctx, cfg.get("labels"), (*path, "labels"))
        labels.update(stack_labels(stack))
        if str(key) in used:
            plans.append(FilePlan(kind, str(key), name, external, file, labels, ctx.where(path)))
    return plans, names


def _service(
    ctx: _Ctx, stack: str, key: str, svc: Any, file_names: Mapping[str, Mapping[str, str]],
    net_names: Mapping[str, str], env: Mapping[str, str], read: Callable[[str], str],
    base_dir: str,
) -> dict[str, Any]:  # fmt: skip
    path: Path = ("services", key)
    if not _SERVICE_KEY_RE.match(key):
        raise ctx.error(path, "a service name is letters, digits, '.', '_' and '-'")
    svc = _mapping(ctx, svc, path)
    for k in svc:
        kind = SERVICE_KEYS.get(k)
        if str(k).startswith("x-"):
            continue
        if kind is None:
            raise ctx.error((*path, k), "unknown key (not in compose file format 3)")
        if kind == NOT_YET:
            raise ctx.error((*path, k), f"{NOT_YET}: meshkit runs processes on the host")
        if kind == IGNORED:
            ctx.warn((*path, k), IGNORED)
    spec = default_spec()
    name = f"{stack}_{key}"
    if not NAME_RE.match(name):
        raise ctx.error(
            path, f"the service name {name!r} is not a DNS label (at most 63 letters, digits, "
            "'_' and '-')",
        )  # fmt: skip
    spec["name"] = name
    if "x-meshkit-command" in svc:
        command = _words(ctx, svc["x-meshkit-command"], (*path, "x-meshkit-command"))
    else:
        command = _words(ctx, svc.get("entrypoint"), (*path, "entrypoint")) + _words(
            ctx, svc.get("command"), (*path, "command")
        )
    if "image" in svc:
        if not command:
            raise ctx.error(
                (*path, "image"), "meshkit runs processes, not images: give the process to run "
                "in command (or x-meshkit-command)",
            )  # fmt: skip
        ctx.warn((*path, "image"), "ignored: meshkit runs the service's command as a process")
    if not command:
        raise ctx.error(path, "no command: give command (or entrypoint, or x-meshkit-command)")
    spec["command"] = command
    spec["env"] = _environment(ctx, svc, path, env, read, base_dir)
    if svc.get("working_dir") is not None:
        spec["workdir"] = _text(ctx, svc["working_dir"], (*path, "working_dir"))
    if svc.get("user") is not None:
        spec["user"] = _text(ctx, svc["user"], (*path, "user"))
    if svc.get("stop_grace_period") is not None:
        spec["stop_grace_period"] = _duration(
            ctx, svc["stop_grace_period"], (*path, "stop_grace_period")
        )
    # volumes, tmpfs, hostname, dns, dns_search, init, stop_signal
    composeruntime.apply(ctx, svc, path, spec, file_names["volumes"], base_dir)
    if svc.get("healthcheck") is not None:
        spec["health"] = _health(ctx, svc["healthcheck"], (*path, "healthcheck"))
    _deploy(ctx, svc.get("deploy"), (*path, "deploy"), spec)
    spec["labels"].update(stack_labels(stack))
    spec["ports"] = _ports(ctx, svc, path)
    nets = svc.get("networks")
    npath = (*path, "networks")
    if nets is None or nets == {}:
        spec["networks"] = [net_names["default"]]
    else:
        for n, opts in _mapping(ctx, nets, npath).items():
            if n not in net_names:
                raise ctx.error(
                    (*npath, n), f"undefined network {n!r} (declare it under top-level networks)"
                )
            spec["networks"].append(net_names[n])
            o = _mapping(
                ctx,
                opts,
                (*npath, n),
                frozenset({"aliases", "ipv4_address", "ipv6_address", "priority"}),
            )
            for k in o:
                if k in ("ipv4_address", "ipv6_address"):
                    raise ctx.error((*npath, n, k), NOT_YET)
                ctx.warn((*npath, n, k), IGNORED)
    for what in ("secrets", "configs"):
        if svc.get(what) is not None:
            spec[what] = _refs(ctx, svc[what], (*path, what), file_names[what], what)
    try:
        return check_spec(spec)
    except SpecError as exc:
        raise ctx.error(path, str(exc)) from None


def _networks(
    ctx: _Ctx, stack: str, top: Mapping[str, Any], used: set[str]
) -> tuple[list[NetworkPlan], dict[str, str]]:
    declared = _mapping(ctx, top.get("networks"), ("networks",))
    plans: list[NetworkPlan] = []
    names: dict[str, str] = {}
    keys = list(declared)
    if "default" not in declared:
        keys.append("default")
    for key in keys:
        path: Path = ("networks", key)
        cfg = _mapping(ctx, declared.get(key), path, NETWORK_KEYS)
        ext = cfg.get("external")
        external = bool(ext)
        name = f"{stack}_{key}"
        if isinstance(ext, dict):
            _mapping(ctx, ext, (*path, "external"), frozenset({"name"}))
            if ext.get("name"):
                name = _text(ctx, ext["name"], (*path, "external", "name"))
        elif ext is not None and not isinstance(ext, bool):
            raise ctx.error((*path, "external"), "expected true, false or {name: NAME}")
        if cfg.get("name"):
            name = _text(ctx, cfg["name"], (*path, "name"))
        elif external and not isinstance(ext, dict):
            name = key
        names[key] = name
        request: dict[str, Any] = {}
        if not external:
            driver = _text(ctx, cfg.get("driver", "overlay"), (*path, "driver"))
            if driver != "overlay":
                raise ctx.error(
                    (*path, "driver"), f"{driver!r}: meshkit makes overlay networks only"
                )
            if cfg.get("driver_opts"):
                raise ctx.error((*path, "driver_opts"), NOT_YET)
            ipam = _mapping(ctx, cfg.get("ipam"), (*path, "ipam"), frozenset({"driver", "config"}))
            request = {"name": name, "driver": "overlay"}
            if ipam.get("driver") not in (None, "default"):
                raise ctx.error((*path, "ipam", "driver"), NOT_YET)
            conf = ipam.get("config") or []
            if not isinstance(conf, list) or len(conf) > 1:
                raise ctx.error((*path, "ipam", "config"), "expected a list of one {subnet: CIDR}")
            if conf:
                c = _mapping(ctx, conf[0], (*path, "ipam", "config", 0), frozenset({"subnet"}))
                if c.get("subnet"):
                    request["subnet"] = _text(
                        ctx, c["subnet"], (*path, "ipam", "config", 0, "subnet")
                    )
            composeruntime.network_flags(ctx, cfg, path, request)
            labels = _str_map(ctx, cfg.get("labels"), (*path, "labels"))
            labels.update(stack_labels(stack))
            request["labels"] = labels
            from meshkit.cluster.model.networks import NAME_RE as NET_NAME_RE

            if not NET_NAME_RE.match(name):
                raise ctx.error(path, f"invalid network name {name!r}")
        if key in used:  # every declared network is checked; the used ones are made
            plans.append(NetworkPlan(key, name, external, request))
    return plans, names


def load_stack(
    sources: Sequence[tuple[str, str]],
    env: Mapping[str, str],
    stack: str,
    read: Callable[[str], str] | None = None,
) -> Stack:
    """The stack `stack` from compose files [(name, text)], later files overriding earlier
    ones; `env` for `${VAR}`; `read(path)` reads an env_file (relative paths are taken from
    the directory of the first file, as Docker does). StackError names what is wrong."""
    if not STACK_NAME_RE.match(stack):
        raise StackError(
            f"invalid stack name {stack!r}: letters, digits, '_' and '-', starting with a "
            "letter or digit"
        )
    if not sources:
        raise StackError("no compose file: give one with -c FILE")
    ctx = _Ctx()
    merged: dict[str, Any] = {}
    for name, text in sources:
        doc = parse_compose(name, text)
        ctx.add(doc)
        data = _mapping(ctx, doc.data, (), None)
        for k in data:
            if k not in TOP_KEYS and not str(k).startswith("x-"):
                raise ctx.error((k,), "unknown key (not in compose file format 3)")
        version = data.get("version")
        if version is not None and not str(version).startswith("3"):
            raise ctx.error(
                ("version",), f"version {version!r}: stack deploy reads compose file format 3"
            )
        data = interpolate_tree(data, (), env, ctx.where, ctx.warnings)
        services = _mapping(ctx, data.get("services"), ("services",))
        data["services"] = {k: normalise_service(v) for k, v in services.items()}
        merged = merge(merged, data, ())
    services = _mapping(ctx, merged.get("services"), ("services",))
    if not services:
        raise ctx.error(("services",), "the stack has no services")
    for what in ("volumes", "secrets", "configs"):
        _mapping(ctx, merged.get(what), (what,))
    file_names = {"volumes": composeruntime.volume_names(ctx, stack, merged.get("volumes"))}
    used: set[str] = set()
    for v in services.values():
        nets = v.get("networks") if isinstance(v, dict) else None
        used.update(nets or {"default": None})
    plans, names = _networks(ctx, stack, merged, used)
    reader = read if read is not None else _no_reader
    base_dir = os.path.dirname(sources[0][0])
    files: dict[str, list[FilePlan]] = {}
    for what in ("secrets", "configs"):
        refs_used = {
            str(r.get("source") if isinstance(r, dict) else r)
            for v in services.values()
            if isinstance(v, dict) and isinstance(v.get(what), list)
            for r in v[what]
        }
        files[what], file_names[what] = _files(ctx, stack, what, merged, refs_used, base_dir)
    specs = [
        _service(ctx, stack, key, svc, file_names, names, env, reader, base_dir)
        for key, svc in services.items()
    ]
    return Stack(stack, plans, specs, ctx.warnings, files["secrets"], files["configs"])


def _no_reader(path: str) -> str:
    raise OSError(f"no file reader given for {path}")

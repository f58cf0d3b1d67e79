"""Services and tasks: the record shapes, spec defaults and checks, constraints.

A service spec is what the user asked for (swarm's defaults fill the rest); `check_spec()`
turns any spec dict into a complete, valid one or raises `SpecError` naming the field. (The
flags of `service create`/`update` become a spec in meshkit.cli.servicespec.) Task records are
plain JSON dicts; `new_task()` makes one, `task_is_up()` says whether it may take traffic.
Everything here is pure: no clock, no I/O.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from meshkit.base.errors import MeshkitError
from meshkit.cluster.model import secrets as secretrules
from meshkit.cluster.model import taskrt
from meshkit.cluster.model.records import NodeRecord

TASK_STATES = (
    "new",
    "pending",
    "assigned",
    "accepted",
    "preparing",
    "starting",
    "running",
    "complete",
    "failed",
    "shutdown",
    "rejected",
    "orphaned",
)
STATE_INDEX = {s: i for i, s in enumerate(TASK_STATES)}
TERMINAL = frozenset({"complete", "failed", "shutdown", "rejected", "orphaned"})
DESIRED_STATES = ("running", "shutdown", "remove")
DESIRED_INDEX = {s: i for i, s in enumerate(DESIRED_STATES)}

MODES = ("replicated", "global")
RESTART_CONDITIONS = ("any", "on-failure", "none")
FAILURE_ACTIONS = ("pause", "continue", "rollback")
UPDATE_ORDERS = ("stop-first", "start-first")
ENDPOINT_MODES = ("vip", "dnsrr")
PORT_MODES = ("ingress", "host")
PROTOCOLS = ("tcp", "udp")
UPDATE_STATES = (
    "updating",
    "paused",
    "completed",
    "rollback_started",
    "rollback_paused",
    "rollback_completed",
)

HISTORY_PER_SLOT = 5
"""Tasks kept per slot (swarm's task history retention limit), the current one included."""

# The part of a service spec every task carries: the executor needs nothing else.
TASK_SPEC_KEYS = (
    "command",
    "env",
    "workdir",
    "user",
    "health",
    "stop_grace_period",
    "networks",
    "ports",
    "force_update",
    "secrets",
    "configs",
    *taskrt.defaults(),  # resources, mounts, hostname, stop_signal, groups, dns, init
)

# Service names are DNS labels: tasks find each other by them. '_' is allowed inside, as
# Docker allows it: stacks name their services STACK_SERVICE.
NAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?$")
LABEL_KEY_RE = re.compile(r"^[^=\s]{1,256}$")
MAX_LABEL_VALUE = 4096
ENV_KEY_RE = re.compile(r"^[^=\s]+$")
_LABEL_CONSTRAINT_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._/-]*[A-Za-z0-9])?$")
_CONSTRAINT_VALUE_RE = re.compile(r"^[A-Za-z0-9:\-_\s.*()?+\[\]\\^$|/@]*$")


class SpecError(MeshkitError):
    """A service spec that cannot be used; the message names the field."""


# -- defaults ----------------------------------------------------------------------------------


def default_restart() -> dict[str, Any]:
    return {"condition": "any", "delay": 5.0, "max_attempts": 0, "window": 0.0}


def default_update() -> dict[str, Any]:
    return {
        "parallelism": 1,
        "delay": 0.0,
        "failure_action": "pause",
        "monitor": 5.0,
        "max_failure_ratio": 0.0,
        "order": "stop-first",
    }


def default_health() -> dict[str, Any]:
    return {"cmd": "", "interval": 30.0, "timeout": 30.0, "retries": 3, "start_period": 0.0}


def default_spec() -> dict[str, Any]:
    return {
        "name": "",
        "mode": "replicated",
        "replicas": 1,
        "command": [],
        "env": [],
        "workdir": "",
        "user": "",
        "constraints": [],
        "networks": [],
        "ports": [],
        "endpoint_mode": "vip",
        "restart": default_restart(),
        "health": None,
        "update": default_update(),
        "rollback": default_update(),
        "stop_grace_period": 10.0,
        "force_update": 0,
        "labels": {},
        "secrets": [],
        "configs": [],
        **taskrt.defaults(),
    }


# -- spec checks -------------------------------------------------------------------------------


def _num(value: Any, where: str, *, integer: bool = False, minimum: float = 0.0) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecError(f"{where}: expected a number, got {value!r}")
    if integer and value != int(value):
        raise SpecError(f"{where}: expected a whole number, got {value!r}")
    if value < minimum:
        raise SpecError(f"{where}: must be at least {minimum:g}, got {value!r}")
    return int(value) if integer else float(value)


def _choice(value: Any, choices: Sequence[str], where: str) -> str:
    if value not in choices:
        raise SpecError(f"{where}: {value!r} is not one of {', '.join(choices)}")
    return str(value)


def _strings(value: Any, where: str) -> list[str]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise SpecError(f"{where}: expected a list of strings, got {value!r}")
    return list(value)


def _section(value: Any, defaults: dict[str, Any], where: str) -> dict[str, Any]:
    if value is None:
        return defaults
    if not isinstance(value, Mapping):
        raise SpecError(f"{where}: expected an object, got {value!r}")
    unknown = sorted(set(value) - set(defaults))
    if unknown:
        raise SpecError(f"{where}: unknown field {unknown[0]!r}")
    out = dict(defaults)
    out.update(value)
    return out


def _check_update(value: Any, where: str) -> dict[str, Any]:
    cfg = _section(value, default_update(), where)
    cfg["parallelism"] = _num(cfg["parallelism"], f"{where}.parallelism", integer=True)
    cfg["delay"] = _num(cfg["delay"], f"{where}.delay")
    cfg["monitor"] = _num(cfg["monitor"], f"{where}.monitor")
    cfg["max_failure_ratio"] = _num(cfg["max_failure_ratio"], f"{where}.max_failure_ratio")
    if cfg["max_failure_ratio"] > 1:
        raise SpecError(f"{where}.max_failure_ratio: must be between 0 and 1")
    cfg["failure_action"] = _choice(
        cfg["failure_action"], FAILURE_ACTIONS, f"{where}.failure_action"
    )
    cfg["order"] = _choice(cfg["order"], UPDATE_ORDERS, f"{where}.order")
    return cfg


def check_port(value: Any, where: str = "ports") -> dict[str, Any]:
    base = {
        "protocol": "tcp",
        "target": 0,
        "published": None,
        "mode": "ingress",
        "proxy_protocol": False,
    }
    port = _section(value, base, where)
    port["protocol"] = _choice(port["protocol"], PROTOCOLS, f"{where}.protocol")
    port["mode"] = _choice(port["mode"], PORT_MODES, f"{where}.mode")
    port["target"] = _num(port["target"], f"{where}.target", integer=True, minimum=1)
    if port["target"] > 65535:
        raise SpecError(f"{where}.target: {port['target']} is not a port (1-65535)")
    if port["published"] is not None:
        port["published"] = _num(port["published"], f"{where}.published", integer=True, minimum=1)
        if port["published"] > 65535:
            raise SpecError(f"{where}.published: {port['published']} is not a port (1-65535)")
    if not isinstance(port["proxy_protocol"], bool):
        raise SpecError(f"{where}.proxy_protocol: expected true or false")
    return port


def check_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """A complete, checked copy of `spec` with swarm's defaults filled in.

    Raises SpecError naming the first field that is wrong.
    """
    if not isinstance(spec, Mapping):
        raise SpecError(f"a service spec is an object, got {spec!r}")
    out = _section(copy.deepcopy(dict(spec)), default_spec(), "spec")
    name = out["name"]
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise SpecError(
            f"name: invalid service name {name!r}: 1 to 63 letters, digits and '-', "
            "not starting or ending with '-'"
        )
    out["mode"] = _choice(out["mode"], MODES, "mode")
    out["replicas"] = _num(out["replicas"], "replicas", integer=True)
    if out["mode"] == "global":
        out["replicas"] = 0
    out["command"] = _strings(out["command"], "command")
    if not out["command"]:
        raise SpecError("command: a service needs a command to run")
    out["env"] = _strings(out["env"], "env")
    for item in out["env"]:
        key = item.partition("=")[0]
        if "=" not in item or not ENV_KEY_RE.match(key):
            raise SpecError(f"env: {item!r} is not KEY=VALUE")
    for key in ("workdir", "user"):
        if not isinstance(out[key], str):
            raise SpecError(f"{key}: expected a string, got {out[key]!r}")
    out["constraints"] = _strings(out["constraints"], "constraints")
    for text in out["constraints"]:
        try:
            parse_constraint(text)
        except ValueError as exc:
            raise SpecError(f"constraints: {exc}") from None
    out["networks"] = _strings(out["networks"], "networks")
    if not isinstance(out["ports"], list):
        raise SpecError(f"ports: expected a list, got {out['ports']!r}")
    out["ports"] = [check_port(p, f"ports[{i}]") for i, p in enumerate(out["ports"])]
    seen: set[tuple[int, str]] = set()
    for p in out["ports"]:
        if p["published"] is None:
            continue
        key = (p["published"], p["protocol"])
        if key in seen:
            raise SpecError(f"ports: published port {p['published']}/{p['protocol']} twice")
        seen.add(key)
    out["endpoint_mode"] = _choice(out["endpoint_mode"], ENDPOINT_MODES, "endpoint_mode")
    if out["endpoint_mode"] == "dnsrr" and any(p["mode"] == "ingress" for p in out["ports"]):
        raise SpecError("endpoint_mode: dnsrr cannot publish ingress ports; use mode=host for them")
    restart = _section(out["restart"], default_restart(), "restart")
    restart["condition"] = _choice(restart["condition"], RESTART_CONDITIONS, "restart.condition")
    restart["delay"] = _num(restart["delay"], "restart.delay")
    restart["max_attempts"] = _num(restart["max_attempts"], "restart.max_attempts", integer=True)
    restart["window"] = _num(restart["window"], "restart.window")
    out["restart"] = restart
    if out["health"] is not None:
        health = _section(out["health"], default_health(), "health")
        if not isinstance(health["cmd"], str) or not health["cmd"].strip():
            raise SpecError("health.cmd: a health check needs a command")
        for key in ("interval", "timeout", "start_period"):
            health[key] = _num(health[key], f"health.{key}")
        for key in ("interval", "timeout"):
            if health[key] <= 0:
                raise SpecError(f"health.{key}: must be more than 0")
        health["retries"] = _num(health["retries"], "health.retries", integer=True, minimum=1)
        out["health"] = health
    out["update"] = _check_update(out["update"], "update")
    out["rollback"] = _check_update(out["rollback"], "rollback")
    out["stop_grace_period"] = _num(out["stop_grace_period"], "stop_grace_period")
    out["force_update"] = _num(out["force_update"], "force_update", integer=True)
    out["labels"] = check_labels(out["labels"], "labels")
    for kind in ("secret", "config"):
        try:
            out[kind + "s"] = secretrules.check_refs(kind, out[kind + "s"])
        except secretrules.RefError as exc:
            raise SpecError(str(exc)) from None
    try:
        taskrt.check_runtime(out)
    except taskrt.RuntimeSpecError as exc:
        raise SpecError(str(exc)) from None
    return out


def check_labels(value: Any, where: str = "labels") -> dict[str, str]:
    """Service labels (`com.docker.stack.namespace=NAME`...): a map of text to text. They
    describe the service; tasks do not carry them, so changing one restarts nothing."""
    if not isinstance(value, Mapping):
        raise SpecError(f"{where}: expected an object of KEY: VALUE, got {value!r}")
    out: dict[str, str] = {}
    for key, val in value.items():
        if not isinstance(key, str) or not LABEL_KEY_RE.match(key):
            raise SpecError(f"{where}: invalid label name {key!r}")
        if not isinstance(val, str) or len(val) > MAX_LABEL_VALUE:
            raise SpecError(f"{where}.{key}: expected text of at most {MAX_LABEL_VALUE} chars")
        out[key] = val
    return out


def has_label(labels: Mapping[str, Any], selector: str) -> bool:
    """Docker's `--filter label=KEY` / `label=KEY=VALUE` test."""
    key, eq, value = selector.partition("=")
    if key not in labels:
        return False
    return not eq or str(labels[key]) == value


def task_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a (checked) service spec a task carries."""
    return {k: copy.deepcopy(spec.get(k)) for k in TASK_SPEC_KEYS}


# -- records -----------------------------------------------------------------------------------


def new_service(service_id: str, spec: Mapping[str, Any], now: float) -> dict[str, Any]:
    """A service record for `service_create` (the spec is checked here)."""
    return {
        "id": service_id,
        "spec": check_spec(spec),
        "previous_spec": None,
        "version": 1,
        "created_at": now,
        "updated_at": now,
        "update_status": None,
    }


def new_task(
    task_id: str,
    service: Mapping[str, Any],
    slot: int,
    now: float,
    *,
    node_id: str = "",
    restarts: Iterable[float] = (),
    error: str = "",
) -> dict[str, Any]:
    """A task record in state pending, made from the service's current spec.

    `restarts` are the times this slot was restarted under the same spec version, kept so the
    restart policy's max_attempts / window survive the history being pruned.
    """
    spec = service["spec"]
    return {
        "id": task_id,
        "service_id": service["id"],
        "service_name": spec["name"],
        "slot": slot,
        "node_id": node_id,
        "spec_version": int(service["version"]),
        "spec": task_spec(spec),
        "desired_state": "running",
        "state": "pending",
        "message": "pending task scheduling",
        "error": error,
        "exit_code": None,
        "pid": None,
        "healthy": None,
        "created_at": now,
        "updated_at": now,
        "started_at": None,
        "restarts": list(restarts),
    }


_TASK_DEFAULTS: dict[str, Any] = {
    "service_name": "",
    "slot": 0,
    "node_id": "",
    "spec_version": 0,
    "spec": {},
    "desired_state": "running",
    "state": "new",
    "message": "",
    "error": "",
    "exit_code": None,
    "pid": None,
    "healthy": None,
    "created_at": 0.0,
    "updated_at": 0.0,
    "started_at": None,
    "restarts": [],
    "networks": [],  # attachments, given in the state (meshkit.cluster.model.networks)
}


def check_task(task: Mapping[str, Any]) -> dict[str, Any]:
    """A complete copy of a task record; SpecError when a field is impossible."""
    if not isinstance(task, Mapping) or not task.get("id") or not task.get("service_id"):
        raise SpecError(f"a task needs an id and a service_id: {task!r}")
    out = copy.deepcopy(_TASK_DEFAULTS)
    out.update(copy.deepcopy(dict(task)))
    if out["state"] not in STATE_INDEX:
        raise SpecError(f"task {out['id']}: unknown state {out['state']!r}")
    if out["desired_state"] not in DESIRED_INDEX:
        raise SpecError(f"task {out['id']}: unknown desired state {out['desired_state']!r}")
    return out


def is_terminal(task: Mapping[str, Any]) -> bool:
    return task["state"] in TERMINAL


def task_name(task: Mapping[str, Any]) -> str:
    """`svc.slot` for replicated services, `svc.nodeid` for global ones (Docker's names)."""
    if task.get("slot"):
        return f"{task['service_name']}.{task['slot']}"
    return f"{task['service_name']}.{task.get('node_id') or task.get('want_node') or '?'}"


def task_is_up(task: Mapping[str, Any]) -> bool:
    """Whether the task may take traffic: running, and healthy when it has a health check."""
    if task.get("state") != "running":
        return False
    healthy = task.get("healthy")
    if healthy is False:
        return False
    has_check = bool((task.get("spec") or {}).get("health"))
    return healthy is True or not has_check


# -- constraints -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Constraint:
    key: str  # "node.id", "node.hostname", "node.role" or "node.labels.<label>"
    op: str  # "==" or "!="
    value: str

    def __str__(self) -> str:
        return f"{self.key}{self.op}{self.value}"


def parse_constraint(text: str) -> Constraint:
    """`node.labels.zone == a` -> Constraint; ValueError naming the constraint when bad."""
    for op in ("==", "!="):
        key, sep, value = text.partition(op)
        if sep:
            break
    else:
        raise ValueError(f"constraint {text!r} has no == or != operator")
    key, value = key.strip(), value.strip()
    if "==" in value or "!=" in value:
        raise ValueError(f"constraint {text!r} has more than one operator")
    if key in ("node.id", "node.hostname", "node.role"):
        pass
    elif key.startswith("node.labels."):
        label = key[len("node.labels.") :]
        if not _LABEL_CONSTRAINT_RE.match(label):
            raise ValueError(f"constraint {text!r}: invalid label name {label!r}")
    else:
        raise ValueError(
            f"constraint {text!r}: unknown key {key!r} (use node.id, node.hostname, "
            "node.role or node.labels.<name>)"
        )
    if not _CONSTRAINT_VALUE_RE.match(value):
        raise ValueError(f"constraint {text!r}: invalid value {value!r}")
    if key == "node.role" and value.lower() not in ("manager", "worker"):
        raise ValueError(f"constraint {text!r}: node.role is manager or worker")
    return Constraint(key, op, value)


def node_matches(node: NodeRecord, constraints: Iterable[str | Constraint]) -> bool:
    """Whether `node` satisfies every constraint (swarm compares without case).

    A label the node does not have compares as the empty string, so `!=` matches it.
    """
    for item in constraints:
        c = item if isinstance(item, Constraint) else parse_constraint(item)
        if c.key == "node.id":
            actual = node.id
        elif c.key == "node.hostname":
            actual = node.hostname
        elif c.key == "node.role":
            actual = node.role
        else:
            actual = node.labels.get(c.key[len("node.labels.") :], "")
        equal = actual.lower() == c.value.lower()
        if equal != (c.op == "=="):
            return False
    return True

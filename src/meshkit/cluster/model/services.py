"""Services and tasks: the record shapes, spec defaults and checks, constraints, CLI flags.

A service spec is what the user asked for (swarm's defaults fill the rest); `check_spec()`
turns any spec dict into a complete, valid one or raises `SpecError` naming the field.
`build_spec()` / `update_spec()` turn the raw values of `service create` / `service update`
flags into a spec and raise `FlagError` naming the flag as the user typed it. Task records are
plain JSON dicts; `new_task()` makes one, `task_is_up()` says whether it may take traffic.
Everything here is pure: no clock, no I/O.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from meshkit.base.errors import FlagError, MeshkitError

if TYPE_CHECKING:
    from meshkit.cluster.model.state import NodeRecord

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
)

# Service names are DNS labels: tasks find each other by them.
_NAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_ENV_KEY_RE = re.compile(r"^[^=\s]+$")
_LABEL_CONSTRAINT_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._/-]*[A-Za-z0-9])?$")
_CONSTRAINT_VALUE_RE = re.compile(r"^[A-Za-z0-9:\-_\s.*()?+\[\]\\^$|/@]*$")


_REPLICAS_GLOBAL = "replicas can only be used with replicated mode"


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
    if not isinstance(name, str) or not _NAME_RE.match(name):
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
        if "=" not in item or not _ENV_KEY_RE.match(key):
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
    return out


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
    return f"{task['service_name']}.{task.get('node_id') or '?'}"


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


# -- CLI flags -> spec -------------------------------------------------------------------------

_DURATION_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Go/Docker durations ("1m30s", "500ms", "1.5h") or plain seconds ("5"); ValueError."""
    text = text.strip()
    if not text:
        raise ValueError("empty duration")
    if text.startswith("-"):
        raise ValueError("a duration cannot be negative")
    try:
        seconds = float(text)
    except ValueError:
        pos, seconds = 0, 0.0
        for m in _DURATION_RE.finditer(text):
            if m.start() != pos:
                break
            seconds += float(m.group(1)) * _UNIT[m.group(2)]
            pos = m.end()
        if pos != len(text) or pos == 0:
            raise ValueError("expected a duration like 5s, 500ms, 1m30s or 2h") from None
    if seconds < 0 or seconds != seconds or seconds == float("inf"):
        raise ValueError("a duration cannot be negative")
    return seconds


def _flag_name(key: str) -> str:
    return "--" + key.replace("_", "-")


def _given(flags: Mapping[str, Any], key: str) -> bool:
    value = flags.get(key)
    if value is None:
        return False
    return not (isinstance(value, (list, tuple)) and not value)


def _text(flags: Mapping[str, Any], key: str) -> str:
    return str(flags[key]).strip()


def _list(flags: Mapping[str, Any], key: str) -> list[str]:
    value = flags.get(key)
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def _flag_int(flags: Mapping[str, Any], key: str, minimum: int = 0) -> int:
    raw = flags[key]
    try:
        value = int(str(raw).strip())
    except ValueError:
        raise FlagError(_flag_name(key), str(raw), "expected a whole number") from None
    if value < minimum:
        raise FlagError(_flag_name(key), str(raw), f"must be {minimum} or more")
    return value


def _flag_float(flags: Mapping[str, Any], key: str) -> float:
    raw = flags[key]
    try:
        value = float(str(raw).strip())
    except ValueError:
        raise FlagError(_flag_name(key), str(raw), "expected a number") from None
    if not 0.0 <= value <= 1.0:
        raise FlagError(_flag_name(key), str(raw), "expected a number from 0 to 1")
    return value


def _flag_duration(flags: Mapping[str, Any], key: str) -> float:
    raw = flags[key]
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        raw = str(raw)
    try:
        return parse_duration(str(raw))
    except ValueError as exc:
        raise FlagError(_flag_name(key), str(raw), str(exc)) from None


def _flag_choice(flags: Mapping[str, Any], key: str, choices: Sequence[str]) -> str:
    value = _text(flags, key)
    if value not in choices:
        raise FlagError(_flag_name(key), value, f"expected {', '.join(choices)}")
    return value


def _env_items(flags: Mapping[str, Any], key: str) -> list[str]:
    out = []
    for item in _list(flags, key):
        name = item.partition("=")[0]
        if "=" not in item or not _ENV_KEY_RE.match(name):
            raise FlagError(_flag_name(key), item, "expected KEY=VALUE")
        out.append(item)
    return out


def _merge_env(env: list[str], add: list[str]) -> list[str]:
    """Later values win; each key keeps the place it first had."""
    order: list[str] = []
    values: dict[str, str] = {}
    for item in [*env, *add]:
        key = item.partition("=")[0]
        if key not in values:
            order.append(key)
        values[key] = item
    return [values[k] for k in order]


def _constraints(flags: Mapping[str, Any], key: str) -> list[str]:
    out = []
    for text in _list(flags, key):
        try:
            c = parse_constraint(text)
        except ValueError as exc:
            raise FlagError(_flag_name(key), text, str(exc)) from None
        out.append(str(c))
    return out


def parse_publish(text: str, flag: str = "--publish") -> dict[str, Any]:
    """`8080:80`, `8080:80/udp`, `80`, `mode=host,8081:81/udp` or the long form
    `published=8080,target=80,protocol=udp,mode=host,proxy-protocol=v2` (or true)."""
    port: dict[str, Any] = {
        "protocol": "tcp",
        "target": None,
        "published": None,
        "mode": "ingress",
        "proxy_protocol": False,
    }

    def number(value: str, what: str) -> int:
        if not value.isdigit() or not 1 <= int(value) <= 65535:
            raise FlagError(flag, text, f"{what} {value!r} is not a port number (1-65535)")
        return int(value)

    for part in (p.strip() for p in text.split(",")):
        if not part:
            raise FlagError(flag, text, "empty field")
        key, eq, value = part.partition("=")
        if not eq:
            spec, _, proto = part.partition("/")
            if proto:
                port["protocol"] = proto
            published, colon, target = spec.rpartition(":")
            if colon:
                if ":" in published:
                    raise FlagError(flag, text, "expected [PUBLISHED:]TARGET[/PROTOCOL]")
                port["published"] = number(published, "published port") if published else None
            port["target"] = number(target, "target port")
            continue
        key = key.strip().replace("-", "_")
        value = value.strip()
        if key == "published":
            port["published"] = number(value, "published port")
        elif key == "target":
            port["target"] = number(value, "target port")
        elif key == "protocol":
            port["protocol"] = value
        elif key == "mode":
            port["mode"] = value
        elif key == "proxy_protocol":
            if value.lower() == "v1":
                raise FlagError(
                    flag, text, "the routing mesh sends PROXY protocol v2 (it carries UDP "
                    "too); use proxy-protocol=v2"
                )
            if value.lower() not in ("v2", "true", "false", "1", "0"):
                raise FlagError(flag, text, f"proxy-protocol is v2, true or false, not {value!r}")
            port["proxy_protocol"] = value.lower() in ("v2", "true", "1")
        else:
            raise FlagError(flag, text, f"unknown field {key!r}")
    if port["protocol"] not in PROTOCOLS:
        raise FlagError(flag, text, f"protocol {port['protocol']!r} is not tcp or udp")
    if port["mode"] not in PORT_MODES:
        raise FlagError(flag, text, f"mode {port['mode']!r} is not ingress or host")
    if port["target"] is None:
        raise FlagError(flag, text, "no target port")
    return port


def _apply_common(spec: dict[str, Any], flags: Mapping[str, Any], *, create: bool) -> None:
    """Flags with the same meaning for create and update."""
    for key in ("workdir", "user"):
        if _given(flags, key):
            spec[key] = str(flags[key])
    if _given(flags, "endpoint_mode"):
        spec["endpoint_mode"] = _flag_choice(flags, "endpoint_mode", ENDPOINT_MODES)
    if _given(flags, "stop_grace_period"):
        spec["stop_grace_period"] = _flag_duration(flags, "stop_grace_period")
    restart = spec["restart"]
    if _given(flags, "restart_condition"):
        restart["condition"] = _flag_choice(flags, "restart_condition", RESTART_CONDITIONS)
    for key in ("restart_delay", "restart_window"):
        if _given(flags, key):
            restart[key[len("restart_") :]] = _flag_duration(flags, key)
    if _given(flags, "restart_max_attempts"):
        restart["max_attempts"] = _flag_int(flags, "restart_max_attempts")
    for section in ("update", "rollback"):
        cfg = spec[section]
        p = section + "_"
        if _given(flags, p + "parallelism"):
            cfg["parallelism"] = _flag_int(flags, p + "parallelism")
        for key in ("delay", "monitor"):
            if _given(flags, p + key):
                cfg[key] = _flag_duration(flags, p + key)
        if _given(flags, p + "failure_action"):
            actions = FAILURE_ACTIONS if section == "update" else ("pause", "continue")
            cfg["failure_action"] = _flag_choice(flags, p + "failure_action", actions)
        if _given(flags, p + "max_failure_ratio"):
            cfg["max_failure_ratio"] = _flag_float(flags, p + "max_failure_ratio")
        if _given(flags, p + "order"):
            cfg["order"] = _flag_choice(flags, p + "order", UPDATE_ORDERS)
    _apply_health(spec, flags, create=create)


def _apply_health(spec: dict[str, Any], flags: Mapping[str, Any], *, create: bool) -> None:
    health_keys = (
        "health_cmd",
        "health_interval",
        "health_timeout",
        "health_retries",
        "health_start_period",
    )
    touched = [k for k in health_keys if _given(flags, k)]
    if flags.get("no_healthcheck"):
        if touched:
            raise FlagError(
                "--no-healthcheck", "true", f"cannot be used with {_flag_name(touched[0])}"
            )
        spec["health"] = None
        return
    if not touched:
        return
    health = dict(spec["health"] or default_health())
    if _given(flags, "health_cmd"):
        health["cmd"] = str(flags["health_cmd"])
        if not health["cmd"].strip():
            raise FlagError("--health-cmd", health["cmd"], "empty command")
    for key in ("interval", "timeout", "start_period"):
        if _given(flags, "health_" + key):
            health[key] = _flag_duration(flags, "health_" + key)
            if key != "start_period" and health[key] <= 0:
                raise FlagError(
                    _flag_name("health_" + key), str(flags["health_" + key]), "must be more than 0"
                )
    if _given(flags, "health_retries"):
        health["retries"] = _flag_int(flags, "health_retries", minimum=1)
    if not health["cmd"]:
        raise FlagError(
            _flag_name(touched[0]), str(flags[touched[0]]), "needs --health-cmd as well"
        )
    spec["health"] = health


def _checked(spec: dict[str, Any]) -> dict[str, Any]:
    try:
        return check_spec(spec)
    except SpecError as exc:
        # Flags were checked one by one; what is left is a combination (e.g. no command).
        field = str(exc).partition(":")[0].split(".")[0].split("[")[0]
        flag = {
            "constraints": "--constraint",
            "networks": "--network",
            "ports": "--publish",
            "command": "COMMAND",
        }.get(field, _flag_name(field))
        raise FlagError(flag, "", str(exc)) from None


def build_spec(flags: Mapping[str, Any]) -> dict[str, Any]:
    """The service spec of `service create` from its raw flag values; FlagError when wrong."""
    spec = default_spec()
    name = _text(flags, "name") if _given(flags, "name") else ""
    if not name:
        raise FlagError("--name", "", "a service needs a name")
    if not _NAME_RE.match(name):
        raise FlagError(
            "--name", name, "1 to 63 letters, digits and '-', not starting or ending with '-'"
        )
    spec["name"] = name
    if _given(flags, "mode"):
        spec["mode"] = _flag_choice(flags, "mode", MODES)
    if _given(flags, "replicas"):
        if spec["mode"] == "global":
            raise FlagError("--replicas", str(flags["replicas"]), _REPLICAS_GLOBAL)
        spec["replicas"] = _flag_int(flags, "replicas")
    spec["command"] = _list(flags, "command")
    if not spec["command"]:
        raise FlagError("COMMAND", "", "a service needs a command to run (after --)")
    spec["env"] = _merge_env([], _env_items(flags, "env"))
    spec["constraints"] = _constraints(flags, "constraint")
    spec["networks"] = list(dict.fromkeys(_list(flags, "network")))
    spec["ports"] = [parse_publish(p) for p in _list(flags, "publish")]
    for text in _list(flags, "port"):
        port = parse_publish(text, "--port")
        if port["published"] is not None:
            raise FlagError("--port", text, "names a port the tasks serve; publish with --publish")
        if not any(
            (p["target"], p["protocol"]) == (port["target"], port["protocol"])
            for p in spec["ports"]
        ):
            spec["ports"].append(port)
    _apply_common(spec, flags, create=True)
    return _checked(spec)


def _port_key(text: str, flag: str) -> tuple[int, str]:
    """`--publish-rm` names a port by target, `80` or `80/udp` (or a whole publish text)."""
    if "," in text or "=" in text or ":" in text:
        p = parse_publish(text, flag)
        return p["target"], p["protocol"]
    target, _, proto = text.partition("/")
    if not target.isdigit():
        raise FlagError(flag, text, "expected TARGET[/PROTOCOL]")
    proto = proto or "tcp"
    if proto not in PROTOCOLS:
        raise FlagError(flag, text, f"protocol {proto!r} is not tcp or udp")
    return int(target), proto


def update_spec(spec: Mapping[str, Any], flags: Mapping[str, Any]) -> dict[str, Any]:
    """The new spec of `service update` from the current one and the raw flag values."""
    out = check_spec(spec)
    if _given(flags, "mode") and _text(flags, "mode") != out["mode"]:
        raise FlagError("--mode", _text(flags, "mode"), "the mode of a service cannot change")
    if _given(flags, "name") and _text(flags, "name") != out["name"]:
        raise FlagError("--name", _text(flags, "name"), "a service cannot be renamed")
    if _given(flags, "replicas"):
        if out["mode"] == "global":
            raise FlagError("--replicas", str(flags["replicas"]), _REPLICAS_GLOBAL)
        out["replicas"] = _flag_int(flags, "replicas")
    for key in ("command", "args"):
        if _given(flags, key):
            out["command"] = _list(flags, key)
    removed = set(_list(flags, "env_rm"))
    env = [e for e in out["env"] if e.partition("=")[0] not in removed]
    out["env"] = _merge_env(env, _env_items(flags, "env_add"))
    drop = set(_constraints(flags, "constraint_rm"))
    kept = [c for c in out["constraints"] if c not in drop]
    out["constraints"] = list(dict.fromkeys(kept + _constraints(flags, "constraint_add")))
    gone = set(_list(flags, "network_rm"))
    nets = [n for n in out["networks"] if n not in gone]
    out["networks"] = list(dict.fromkeys(nets + _list(flags, "network_add")))
    rm_ports = {_port_key(t, "--publish-rm") for t in _list(flags, "publish_rm")}
    ports = [p for p in out["ports"] if (p["target"], p["protocol"]) not in rm_ports]
    for text in _list(flags, "publish_add"):
        new = parse_publish(text, "--publish-add")
        ports = [
            p for p in ports if (p["target"], p["protocol"]) != (new["target"], new["protocol"])
        ]
        ports.append(new)
    out["ports"] = ports
    _apply_common(out, flags, create=False)
    if flags.get("force"):
        out["force_update"] = int(out["force_update"]) + 1
    return _checked(out)

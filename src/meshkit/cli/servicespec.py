"""`service create` and `service update` flags -> a service spec (pure).

`build_spec()` / `update_spec()` take the raw flag values (a mapping keyed by the option's
Python name) and return a checked spec, or raise `FlagError` naming the flag as the user typed
it. The spec's own rules (meshkit.cluster.model.services.check_spec) stay with the model that
raft applies; this module only translates the command line.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from meshkit.base.durations import DurationError, parse_duration
from meshkit.base.errors import FlagError
from meshkit.base.publish import parse_port_config
from meshkit.cluster.model import secrets as secretrules
from meshkit.cluster.model.services import (
    ENDPOINT_MODES,
    ENV_KEY_RE,
    FAILURE_ACTIONS,
    MODES,
    NAME_RE,
    RESTART_CONDITIONS,
    UPDATE_ORDERS,
    SpecError,
    check_spec,
    default_health,
    default_spec,
    parse_constraint,
)

__all__ = ["build_spec", "file_ref", "parse_file_ref", "parse_publish", "update_spec"]

_REPLICAS_GLOBAL = "replicas can only be used with replicated mode"


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
    raw = str(flags[key])
    try:
        return parse_duration(raw)
    except DurationError as exc:
        raise FlagError(_flag_name(key), raw, exc.reason, what="duration") from None


def _flag_choice(flags: Mapping[str, Any], key: str, choices: Sequence[str]) -> str:
    value = _text(flags, key)
    if value not in choices:
        raise FlagError(_flag_name(key), value, f"expected {', '.join(choices)}")
    return value


def _env_items(flags: Mapping[str, Any], key: str) -> list[str]:
    out = []
    for item in _list(flags, key):
        name = item.partition("=")[0]
        if "=" not in item or not ENV_KEY_RE.match(name):
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
    `published=8080,target=80,protocol=udp,mode=host,proxy-protocol=v2` (or true), as a
    port of the service spec (the grammar is meshkit.base.publish's)."""
    port = parse_port_config(text, flag)
    return {
        "protocol": port.proto,
        "target": port.target,
        "published": port.published,
        "mode": port.mode,
        "proxy_protocol": port.proxy_protocol,
    }


_REF_KEYS = {"source": "source", "src": "source", "target": "target", "uid": "uid", "gid": "gid"}


def file_ref(kind: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    """One secret (config) reference from its fields, `source` (or `src`), `target`, `uid`,
    `gid`, `mode` (a number, or octal text): the grammar `--secret`/`--config` and a compose
    file's `secrets:`/`configs:` share. Docker's defaults filled and checked (the model's
    check_ref); ValueError says which field is wrong."""
    ref: dict[str, Any] = {}
    for raw_key, value in fields.items():
        key = str(raw_key).strip().lower()
        if key == "mode":
            if isinstance(value, str):
                try:
                    value = int(value, 8)
                except ValueError:
                    raise ValueError(f"mode {value!r} is not an octal mode") from None
            ref["mode"] = value
        elif key in _REF_KEYS:
            ref[_REF_KEYS[key]] = value if value is None or isinstance(value, str) else str(value)
        else:
            raise ValueError(f"unknown field {key!r} (source, target, uid, gid, mode)")
    if not ref.get("source"):
        raise ValueError(f"a {kind} reference needs source=NAME")
    try:
        return secretrules.check_ref(kind, ref, kind)
    except secretrules.RefError as exc:
        raise ValueError(str(exc).removeprefix(kind + ".")) from None


def parse_file_ref(text: str, kind: str, flag: str = "") -> dict[str, Any]:
    """`--secret NAME` or `--secret src=NAME,target=T,uid=U,gid=G,mode=0400` (Docker's
    grammar; `--config` the same) as a checked reference of the service spec."""
    flag = flag or f"--{kind}"
    fields: dict[str, str] = {}
    if "=" not in text:
        fields["source"] = text.strip()
    else:
        for part in text.split(","):
            key, sep, value = part.partition("=")
            if not sep:
                raise FlagError(flag, text, f"{part!r}: expected KEY=VALUE")
            fields[key] = value
    try:
        return file_ref(kind, fields)
    except ValueError as exc:
        raise FlagError(flag, text, str(exc)) from None


def _refs(flags: Mapping[str, Any], key: str, kind: str) -> list[dict[str, Any]]:
    return [parse_file_ref(t, kind, _flag_name(key)) for t in _list(flags, key)]


def _update_refs(out: dict[str, Any], flags: Mapping[str, Any], kind: str) -> None:
    """`--secret-rm NAME` (every reference to it) then `--secret-add REF` (one with the same
    target is replaced): rotation is `--secret-rm old --secret-add src=new,target=same`."""
    gone = set(_list(flags, kind + "_rm"))
    refs = [r for r in out[kind + "s"] if r["source"] not in gone]
    for new in _refs(flags, kind + "_add", kind):
        refs = [r for r in refs if r["target"] != new["target"]]
        refs.append(new)
    out[kind + "s"] = refs


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
            "secrets": "--secret",
            "configs": "--config",
            "mounts": "--mount",
            "resources": "--reserve-memory" if "memory" in str(exc) else "--reserve-cpu",
            "dns": "--dns",
            "groups": "--group",
        }.get(field, _flag_name(field))
        raise FlagError(flag, "", str(exc)) from None


def build_spec(flags: Mapping[str, Any]) -> dict[str, Any]:
    """The service spec of `service create` from its raw flag values; FlagError when wrong."""
    spec = default_spec()
    name = _text(flags, "name") if _given(flags, "name") else ""
    if not name:
        raise FlagError("--name", "", "a service needs a name")
    if not NAME_RE.match(name):
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
    from meshkit.cli import taskflags

    spec["env"] = _merge_env(taskflags.env_from_files(flags), _env_items(flags, "env"))
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
    spec["secrets"] = _refs(flags, "secret", "secret")
    spec["configs"] = _refs(flags, "config", "config")
    taskflags.apply(spec, flags, create=True)
    _apply_common(spec, flags, create=True)
    return _checked(spec)


def _port_key(text: str, flag: str) -> tuple[int, str]:
    """`--publish-rm` names a port by target, `80` or `80/udp` (or a whole publish text)."""
    p = parse_publish(text, flag)
    return p["target"], p["protocol"]


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
    _update_refs(out, flags, "secret")
    _update_refs(out, flags, "config")
    from meshkit.cli import taskflags

    taskflags.apply(out, flags, create=False)
    _apply_common(out, flags, create=False)
    if flags.get("force"):
        out["force_update"] = int(out["force_update"]) + 1
    return _checked(out)

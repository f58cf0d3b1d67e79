"""The task-runtime flags of `service create` / `service update` -> spec fields (pure but for
reading `--env-file`): resources, `--mount`, `--hostname`, `--stop-signal`, `--env-file`,
`--label`, `--group`, `--dns*`, `--init`. Every error names the flag as the user typed it;
the spec's own rules are meshkit.cluster.model.taskrt's."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from meshkit.base.errors import FlagError
from meshkit.cluster.model import taskrt
from meshkit.cluster.model.services import ENV_KEY_RE

_MOUNT_KEYS = {
    "type": "type",
    "source": "source",
    "src": "source",
    "target": "target",
    "dst": "target",
    "destination": "target",
    "readonly": "readonly",
    "ro": "readonly",
    "tmpfs-size": "tmpfs_size",
    "tmpfs-mode": "tmpfs_mode",
}
_TRUE = ("", "1", "true", "yes")
_FALSE = ("0", "false", "no")


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _list(flags: Mapping[str, Any], key: str) -> list[str]:
    value = flags.get(key)
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def parse_mount(text: str, flag: str = "--mount") -> dict[str, Any]:
    """Docker's `--mount type=bind,src=/a,dst=/b,readonly`, `type=tmpfs,dst=/t,tmpfs-size=64M,
    tmpfs-mode=1770`, `type=volume,src=NAME,dst=/v` (type defaults to volume) as a checked
    mount of the spec."""
    mount: dict[str, Any] = {"type": "volume"}
    for part in text.split(","):
        raw_key, sep, value = part.partition("=")
        key = raw_key.strip().lower()
        if key not in _MOUNT_KEYS:
            raise FlagError(
                flag, text, f"unknown field {key!r} (type, source, target, readonly, "
                "tmpfs-size, tmpfs-mode)"
            )  # fmt: skip
        field = _MOUNT_KEYS[key]
        if field == "readonly":
            if value.lower() in _TRUE:
                mount["readonly"] = True
            elif value.lower() in _FALSE:
                mount["readonly"] = False
            else:
                raise FlagError(flag, text, f"readonly={value}: expected true or false")
            continue
        if not sep:
            raise FlagError(flag, text, f"{part!r}: expected KEY=VALUE")
        if field == "tmpfs_size":
            try:
                mount[field] = taskrt.parse_bytes(value)
            except ValueError as exc:
                raise FlagError(flag, text, f"tmpfs-size={value}: {exc}") from None
        elif field == "tmpfs_mode":
            try:
                mount[field] = int(value, 8)
            except ValueError:
                raise FlagError(
                    flag, text, f"tmpfs-mode={value}: not an octal mode like 1777"
                ) from None
        else:
            mount[field] = value.strip()
    if not mount.get("target"):
        raise FlagError(flag, text, "a mount needs a target (dst=/path)")
    try:
        return taskrt.check_mount(mount, "mount")
    except taskrt.RuntimeSpecError as exc:
        raise FlagError(flag, text, str(exc).removeprefix("mount").lstrip(".: ")) from None


def read_env_file(path: str, flag: str = "--env-file") -> list[str]:
    """Docker's env file: KEY=VALUE lines, `#` comments and blank lines skipped, a bare KEY
    takes its value from this environment (left out when unset)."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        why = getattr(exc, "strerror", None) or exc
        raise FlagError(flag, path, f"cannot read it: {why}") from None
    out = []
    for num, line in enumerate(lines, 1):
        text = line.lstrip()
        if not text or text.startswith("#"):
            continue
        key, sep, value = text.partition("=")
        if not ENV_KEY_RE.match(key):
            raise FlagError(flag, f"{path}:{num}", f"{key!r} is not a variable name")
        if sep:
            out.append(f"{key}={value}")
        elif key in os.environ:
            out.append(f"{key}={os.environ[key]}")
    return out


def _bytes(flags: Mapping[str, Any], key: str) -> int:
    raw = str(flags[key])
    try:
        return taskrt.parse_bytes(raw)
    except ValueError as exc:
        raise FlagError(_flag(key), raw, str(exc)) from None


def _cpus(flags: Mapping[str, Any], key: str) -> int:
    raw = str(flags[key])
    try:
        return taskrt.parse_cpus(raw)
    except ValueError as exc:
        raise FlagError(_flag(key), raw, str(exc)) from None


def _labels(items: list[str], flag: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        if not key or any(c.isspace() for c in key):
            raise FlagError(flag, item, "expected KEY=VALUE (or KEY)")
        out[key] = value
    return out


def _edit(current: list[str], add: list[str], rm: list[str]) -> list[str]:
    gone = set(rm)
    return list(dict.fromkeys([x for x in current if x not in gone] + add))


def apply(spec: dict[str, Any], flags: Mapping[str, Any], *, create: bool) -> None:
    """Put the runtime flags into ``spec`` (a copy the caller checks afterwards)."""
    res = spec["resources"] = taskrt.check_resources(spec.get("resources"))
    for key, part, field, parse in (
        ("limit_cpu", "limits", "nano_cpus", _cpus),
        ("limit_memory", "limits", "memory_bytes", _bytes),
        ("reserve_cpu", "reservations", "nano_cpus", _cpus),
        ("reserve_memory", "reservations", "memory_bytes", _bytes),
    ):
        if flags.get(key) is not None:
            res[part][field] = parse(flags, key)
    if flags.get("limit_pids") is not None:
        raw = str(flags["limit_pids"]).strip()
        if not raw.isdigit():
            raise FlagError("--limit-pids", raw, "expected a whole number (0: no limit)")
        res["limits"]["pids"] = int(raw)
    if flags.get("limit_memory") is not None:
        mem = res["limits"]["memory_bytes"]
        if 0 < mem < taskrt.MIN_MEMORY:
            raise FlagError("--limit-memory", str(flags["limit_memory"]), "the minimum is 6MiB")
    for key in ("hostname", "stop_signal"):
        if flags.get(key) is not None:
            spec[key] = str(flags[key]).strip()
    if spec.get("stop_signal"):
        try:
            taskrt.parse_signal(spec["stop_signal"])
        except ValueError as exc:
            raise FlagError("--stop-signal", spec["stop_signal"], str(exc)) from None
    if spec.get("hostname"):
        try:
            taskrt.check_hostname(spec["hostname"])
        except taskrt.RuntimeSpecError as exc:
            raise FlagError("--hostname", spec["hostname"], str(exc).partition(": ")[2]) from None
    if flags.get("init") is not None:
        spec["init"] = bool(flags["init"])
    dns = spec["dns"] = taskrt.check_dns(spec.get("dns"))
    if create:
        spec["mounts"] = [parse_mount(t) for t in _list(flags, "mount")]
        spec["labels"] = _labels(_list(flags, "label"), "--label")
        spec["groups"] = list(dict.fromkeys(_list(flags, "group")))
        dns["nameservers"] = _list(flags, "dns")
        dns["search"] = _list(flags, "dns_search")
        dns["options"] = _list(flags, "dns_option")
    else:
        gone = {t.rstrip("/") or "/" for t in _list(flags, "mount_rm")}
        mounts = [m for m in spec["mounts"] if (m["target"].rstrip("/") or "/") not in gone]
        for text in _list(flags, "mount_add"):
            new = parse_mount(text, "--mount-add")
            mounts = [m for m in mounts if m["target"] != new["target"]]
            mounts.append(new)
        spec["mounts"] = mounts
        labels = dict(spec.get("labels") or {})
        for key in _list(flags, "label_rm"):
            labels.pop(key, None)
        labels.update(_labels(_list(flags, "label_add"), "--label-add"))
        spec["labels"] = labels
        spec["groups"] = _edit(spec["groups"], _list(flags, "group_add"), _list(flags, "group_rm"))
        for field, key in (("nameservers", "dns"), ("search", "dns_search"),
                           ("options", "dns_option")):  # fmt: skip
            dns[field] = _edit(dns[field], _list(flags, key + "_add"), _list(flags, key + "_rm"))
    try:
        spec["dns"] = taskrt.check_dns(dns)
    except taskrt.RuntimeSpecError as exc:
        raise FlagError("--dns", "", str(exc)) from None


def env_from_files(flags: Mapping[str, Any]) -> list[str]:
    """The variables of every `--env-file`, in order (`--env` wins over them)."""
    out: list[str] = []
    for path in _list(flags, "env_file"):
        out.extend(read_env_file(path))
    return out

"""A task's runtime in the service spec: resources, mounts, hostname, signals, DNS, init.

The fields (all carried by every task, see ``services.TASK_SPEC_KEYS``)::

    resources    {"limits": {"nano_cpus", "memory_bytes", "pids"},
                  "reservations": {"nano_cpus", "memory_bytes"}}     0 = none
    mounts       [{"type": bind|volume|tmpfs, "source", "target", "readonly",
                   "tmpfs_size" (bytes, 0 = the kernel's default), "tmpfs_mode" (0 = 1777)}]
    hostname     text, may hold {{.Node.Hostname}} {{.Service.Name}} {{.Task.Slot}}
                 {{.Task.Name}} {{.Node.ID}} {{.Service.ID}} {{.Task.ID}} (Docker's templates)
    stop_signal  a signal name (SIGTERM, HUP...) or number; "" = SIGTERM
    groups       supplementary groups (names or gids) added to the user's
    dns          {"nameservers", "search", "options"}   written into the task's resolv.conf
    init         whether a tiny init runs the command and reaps orphaned processes

Units are Docker's: ``parse_bytes`` is go-units' RAMInBytes (binary: 256M = 256 MiB),
``format_bytes`` its BytesSize (``256MiB``), CPUs are decimal (0.5 -> 500000000 nano CPUs).
Everything here is pure.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Mapping
from typing import Any

from meshkit.base.errors import MeshkitError

MOUNT_TYPES = ("bind", "volume", "tmpfs")
VOLUME_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
HOSTNAME_TEMPLATES = (
    "{{.Node.Hostname}}",
    "{{.Node.ID}}",
    "{{.Service.Name}}",
    "{{.Service.ID}}",
    "{{.Task.Slot}}",
    "{{.Task.Name}}",
    "{{.Task.ID}}",
)
_TEMPLATE_RE = re.compile(r"\{\{\s*(\.[A-Za-z.]+)\s*\}\}")
_HOSTNAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,62})$")
_BYTES_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b)?$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
NANO = 1_000_000_000
MIN_MEMORY = 6 * 1024 * 1024  # Docker's minimum memory limit (6 MiB)


class RuntimeSpecError(MeshkitError):
    """A runtime field that cannot be used; the message names it."""


def default_resources() -> dict[str, Any]:
    return {
        "limits": {"nano_cpus": 0, "memory_bytes": 0, "pids": 0},
        "reservations": {"nano_cpus": 0, "memory_bytes": 0},
    }


def default_dns() -> dict[str, list[str]]:
    return {"nameservers": [], "search": [], "options": []}


def defaults() -> dict[str, Any]:
    """The runtime part of ``services.default_spec()``."""
    return {
        "resources": default_resources(),
        "mounts": [],
        "hostname": "",
        "stop_signal": "",
        "groups": [],
        "dns": default_dns(),
        "init": False,
    }


# -- units -------------------------------------------------------------------------------------


def parse_bytes(text: str) -> int:
    """``256M``, ``1g``, ``512MiB``, ``1.5G``, ``4096`` -> bytes (binary units, as Docker's
    RAMInBytes); ValueError when it is not a size."""
    m = _BYTES_RE.match(str(text).strip())
    if not m:
        raise ValueError("expected a size like 256M, 1G or 4096 (bytes)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def format_bytes(n: int) -> str:
    """go-units' BytesSize: 268435456 -> ``256MiB``, 1610612736 -> ``1.5GiB``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            text = f"{value:.4g}"
            return f"{text}{unit}"
        value /= 1024
    return f"{n}B"  # pragma: no cover


def parse_cpus(text: str) -> int:
    """``0.5`` -> 500000000 nano CPUs; ValueError when it is not a number of CPUs."""
    try:
        value = float(str(text).strip())
    except ValueError:
        raise ValueError("expected a number of CPUs like 0.5 or 2") from None
    if not value >= 0 or value > 1 << 20:
        raise ValueError("expected a number of CPUs like 0.5 or 2")
    return round(value * NANO)


def format_cpus(nano: int) -> str:
    return f"{nano / NANO:g}"


def parse_signal(text: str) -> int:
    """``SIGINT``, ``INT``, ``int``, ``2`` -> 2; ValueError naming the bad signal."""
    raw = str(text).strip()
    if raw.isdigit():
        num = int(raw)
        if not 0 < num < signal.NSIG:
            raise ValueError(f"{raw} is not a signal number (1-{signal.NSIG - 1})")
        return num
    name = raw.upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    try:
        return int(signal.Signals[name])
    except KeyError:
        raise ValueError(f"unknown signal {raw!r} (e.g. SIGTERM, SIGINT, HUP or 15)") from None


# -- checks ------------------------------------------------------------------------------------


def _int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise RuntimeSpecError(f"{where}: expected a whole number of at least 0, got {value!r}")
    return value


def _strings(value: Any, where: str) -> list[str]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise RuntimeSpecError(f"{where}: expected a list of strings, got {value!r}")
    return list(value)


def _known(value: Any, keys: Mapping[str, Any], where: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise RuntimeSpecError(f"{where}: expected an object, got {value!r}")
    unknown = sorted(set(value) - set(keys))
    if unknown:
        raise RuntimeSpecError(f"{where}: unknown field {unknown[0]!r}")
    return {**keys, **value}


def check_resources(value: Any) -> dict[str, Any]:
    base = default_resources()
    if value is None:
        return base
    res = _known(value, base, "resources")
    out: dict[str, Any] = {}
    for part in ("limits", "reservations"):
        section = _known(res[part] or {}, base[part], f"resources.{part}")
        out[part] = {k: _int(v, f"resources.{part}.{k}") for k, v in section.items()}
    mem = out["limits"]["memory_bytes"]
    if 0 < mem < MIN_MEMORY:
        raise RuntimeSpecError(
            f"resources.limits.memory_bytes: {format_bytes(mem)} is under the minimum of 6MiB"
        )
    for key in ("nano_cpus", "memory_bytes"):
        limit, reserve = out["limits"][key], out["reservations"][key]
        if limit and reserve > limit:
            raise RuntimeSpecError(
                f"resources.reservations.{key}: the reservation is over the limit"
            )
    return out


def check_mount(value: Any, where: str) -> dict[str, Any]:
    base = {
        "type": "volume",
        "source": "",
        "target": "",
        "readonly": False,
        "tmpfs_size": 0,
        "tmpfs_mode": 0,
    }
    m = _known(value, base, where)
    if m["type"] not in MOUNT_TYPES:
        raise RuntimeSpecError(f"{where}.type: {m['type']!r} is not one of bind, volume, tmpfs")
    for key in ("source", "target"):
        if not isinstance(m[key], str):
            raise RuntimeSpecError(f"{where}.{key}: expected text, got {m[key]!r}")
    target = m["target"]
    if not target.startswith("/") or "\0" in target:
        raise RuntimeSpecError(f"{where}.target: {target!r} is not an absolute path")
    if target.rstrip("/") in ("", "/proc", "/sys", "/dev"):
        raise RuntimeSpecError(f"{where}.target: cannot mount over {target}")
    if not isinstance(m["readonly"], bool):
        raise RuntimeSpecError(f"{where}.readonly: expected true or false")
    m["tmpfs_size"] = _int(m["tmpfs_size"], f"{where}.tmpfs_size")
    m["tmpfs_mode"] = _int(m["tmpfs_mode"], f"{where}.tmpfs_mode")
    if m["tmpfs_mode"] > 0o7777:
        raise RuntimeSpecError(f"{where}.tmpfs_mode: {m['tmpfs_mode']:o} is not a file mode")
    kind, source = m["type"], m["source"]
    if kind == "bind" and not source.startswith("/"):
        raise RuntimeSpecError(f"{where}.source: a bind mount needs an absolute host path")
    if kind == "volume" and not VOLUME_NAME_RE.match(source):
        raise RuntimeSpecError(
            f"{where}.source: {source!r} is not a volume name (letters, digits, '_', '.', '-')"
        )
    if kind == "tmpfs":
        if source:
            raise RuntimeSpecError(f"{where}.source: a tmpfs mount has no source")
    elif m["tmpfs_size"] or m["tmpfs_mode"]:
        raise RuntimeSpecError(f"{where}: tmpfs-size and tmpfs-mode are for type=tmpfs only")
    return m


def check_mounts(value: Any) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise RuntimeSpecError(f"mounts: expected a list, got {value!r}")
    out = [check_mount(m, f"mounts[{i}]") for i, m in enumerate(value)]
    seen: set[str] = set()
    for m in out:
        target = m["target"].rstrip("/")
        if target in seen:
            raise RuntimeSpecError(f"mounts: {m['target']} is mounted twice")
        seen.add(target)
    return out


def check_hostname(value: Any) -> str:
    if not isinstance(value, str):
        raise RuntimeSpecError(f"hostname: expected text, got {value!r}")
    for m in _TEMPLATE_RE.finditer(value):
        if "{{" + m.group(1) + "}}" not in HOSTNAME_TEMPLATES:
            raise RuntimeSpecError(
                f"hostname: unknown placeholder {m.group(0)} (known: "
                f"{', '.join(HOSTNAME_TEMPLATES)})"
            )
    probe = expand_hostname(value, node_hostname="n", node_id="n", service_name="s",
                            service_id="s", slot=1, task_id="t")  # fmt: skip
    if value and not _HOSTNAME_RE.match(probe):
        raise RuntimeSpecError(
            f"hostname: {value!r} is not a host name (up to 63 letters, digits, '-', '.')"
        )
    return value


def check_dns(value: Any) -> dict[str, list[str]]:
    if value is None:
        return default_dns()
    dns = _known(value, default_dns(), "dns")
    out = {k: _strings(v, f"dns.{k}") for k, v in dns.items()}
    for server in out["nameservers"]:
        import ipaddress

        try:
            ipaddress.ip_address(server)
        except ValueError:
            raise RuntimeSpecError(f"dns.nameservers: {server!r} is not an IP address") from None
    for item in out["search"] + out["options"]:
        if not item or any(c.isspace() for c in item):
            raise RuntimeSpecError(f"dns: {item!r} is empty or holds spaces")
    return out


def check_runtime(spec: dict[str, Any]) -> None:
    """Check (and normalise in place) the runtime fields of a service spec."""
    spec["resources"] = check_resources(spec.get("resources"))
    spec["mounts"] = check_mounts(spec.get("mounts"))
    spec["hostname"] = check_hostname(spec.get("hostname") or "")
    stop = spec.get("stop_signal") or ""
    if not isinstance(stop, str):
        stop = str(stop)
    if stop:
        try:
            parse_signal(stop)
        except ValueError as exc:
            raise RuntimeSpecError(f"stop_signal: {exc}") from None
    spec["stop_signal"] = stop
    spec["groups"] = _strings(spec.get("groups") or [], "groups")
    for g in spec["groups"]:
        if not g or ":" in g or any(c.isspace() for c in g):
            raise RuntimeSpecError(f"groups: {g!r} is not a group name or id")
    spec["dns"] = check_dns(spec.get("dns"))
    if not isinstance(spec.get("init", False), bool):
        raise RuntimeSpecError(f"init: expected true or false, got {spec.get('init')!r}")


# -- templates ---------------------------------------------------------------------------------


def expand_hostname(
    template: str,
    *,
    node_hostname: str,
    node_id: str,
    service_name: str,
    service_id: str,
    slot: int,
    task_id: str,
) -> str:
    """Docker's service templates in ``--hostname``."""
    task_name = f"{service_name}.{slot}" if slot else f"{service_name}.{node_id}"
    values = {
        ".Node.Hostname": node_hostname,
        ".Node.ID": node_id,
        ".Service.Name": service_name,
        ".Service.ID": service_id,
        ".Task.Slot": str(slot),
        ".Task.Name": f"{task_name}.{task_id}",
        ".Task.ID": task_id,
    }
    return _TEMPLATE_RE.sub(lambda m: values.get(m.group(1), m.group(0)), template)


def reservation(spec: Mapping[str, Any]) -> tuple[int, int]:
    """(nano CPUs, memory bytes) a task of ``spec`` reserves on its node."""
    res = (spec.get("resources") or {}).get("reservations") or {}
    return int(res.get("nano_cpus") or 0), int(res.get("memory_bytes") or 0)


def limits(spec: Mapping[str, Any]) -> dict[str, int]:
    lim = (spec.get("resources") or {}).get("limits") or {}
    return {k: int(lim.get(k) or 0) for k in ("nano_cpus", "memory_bytes", "pids")}

"""Compose keys of a task's runtime -> spec fields, for `meshkit stack deploy` (cli/stackfile.py):
``deploy.resources`` (limits: cpus, memory, pids; reservations: cpus, memory), ``volumes``
(short ``SRC:DST[:ro]`` and long form; bind, volume, tmpfs), ``tmpfs``, ``hostname``,
``dns``, ``dns_search``, ``init`` and ``stop_signal``; a network's ``internal`` and
``attachable`` (``network create --internal|--attachable``). Named volumes are the stack's
(``STACK_NAME``, as Docker names them) unless declared ``external`` or given a ``name``.
Errors are the stack file's: file:line, the key, and why (``ctx.error``)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from meshkit.cluster.model import taskrt

_RES_KEYS = {"limits": ("cpus", "memory", "pids"), "reservations": ("cpus", "memory")}
_LONG_KEYS = frozenset({"type", "source", "target", "read_only", "tmpfs", "volume", "bind"})


def _words(ctx: Any, value: Any, path: tuple[Any, ...]) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, (str, int)) for v in value):
        return [str(v) for v in value]
    raise ctx.error(path, "expected a string or a list of strings")


def resources(ctx: Any, value: Any, path: tuple[Any, ...], spec: dict[str, Any]) -> None:
    """``deploy.resources``: limits and reservations in Docker's units."""
    if not isinstance(value, Mapping):
        raise ctx.error(path, "expected a mapping")
    res = spec["resources"] = taskrt.check_resources(spec.get("resources"))
    for part, value_part in value.items():
        if part not in _RES_KEYS:
            raise ctx.error((*path, part), "unknown key (limits, reservations)")
        if not isinstance(value_part, Mapping):
            raise ctx.error((*path, part), "expected a mapping")
        for key, raw in value_part.items():
            where = (*path, part, key)
            if key not in _RES_KEYS[part]:
                raise ctx.error(where, f"unknown key ({', '.join(_RES_KEYS[part])})")
            try:
                if key == "cpus":
                    res[part]["nano_cpus"] = taskrt.parse_cpus(str(raw))
                elif key == "memory":
                    res[part]["memory_bytes"] = taskrt.parse_bytes(str(raw))
                elif isinstance(raw, int) and not isinstance(raw, bool) and raw >= 0:
                    res[part]["pids"] = raw
                else:
                    raise ValueError("expected a whole number")
            except ValueError as exc:
                raise ctx.error(where, str(exc)) from None


def volume_names(ctx: Any, stack: str, top: Any) -> dict[str, str]:
    """The top-level ``volumes``: compose name -> the node's volume name."""
    out: dict[str, str] = {}
    for key, opts in (top or {}).items():
        opts = opts or {}
        if not isinstance(opts, Mapping):
            raise ctx.error(("volumes", key), "expected a mapping")
        driver = opts.get("driver", "local")
        if driver != "local" or opts.get("driver_opts"):
            raise ctx.error(("volumes", key), "not supported yet: only local volumes")
        if opts.get("name"):
            out[str(key)] = str(opts["name"])
        else:
            out[str(key)] = str(key) if opts.get("external") else f"{stack}_{key}"
    return out


def _mount(
    ctx: Any, item: Any, where: tuple[Any, ...], names: Mapping[str, str], base_dir: str
) -> dict[str, Any]:
    if isinstance(item, str):
        parts = item.split(":")
        if len(parts) == 1:
            raise ctx.error(where, "not supported yet: anonymous volumes (give SOURCE:TARGET)")
        if len(parts) > 3 or (len(parts) == 3 and parts[2] not in ("ro", "rw")):
            raise ctx.error(where, "expected SOURCE:TARGET[:ro|rw]")
        src, target = parts[0], parts[1]
        kind = "bind" if src.startswith(("/", ".", "~")) else "volume"
        m: dict[str, Any] = {"type": kind, "source": src, "target": target,
                             "readonly": len(parts) == 3 and parts[2] == "ro"}  # fmt: skip
    elif isinstance(item, Mapping):
        unknown = sorted(set(item) - _LONG_KEYS)
        if unknown:
            raise ctx.error((*where, unknown[0]), "unknown key")
        m = {
            "type": str(item.get("type") or "volume"),
            "source": str(item.get("source") or ""),
            "target": str(item.get("target") or ""),
            "readonly": bool(item.get("read_only")),
        }
        size = (item.get("tmpfs") or {}).get("size") if m["type"] == "tmpfs" else None
        if size is not None:
            try:
                m["tmpfs_size"] = taskrt.parse_bytes(str(size))
            except ValueError as exc:
                raise ctx.error((*where, "tmpfs", "size"), str(exc)) from None
    else:
        raise ctx.error(where, "expected SOURCE:TARGET or a mapping")
    if m["type"] == "bind":
        m["source"] = os.path.normpath(os.path.join(base_dir, os.path.expanduser(m["source"])))
    elif m["type"] == "volume":
        if m["source"] not in names:
            raise ctx.error(where, f"undefined volume {m['source']!r} (declare it under volumes)")
        m["source"] = names[m["source"]]
    try:
        return taskrt.check_mount(m, "volume")
    except taskrt.RuntimeSpecError as exc:
        raise ctx.error(where, str(exc).removeprefix("volume").lstrip(".: ")) from None


def apply(
    ctx: Any,
    svc: Mapping[str, Any],
    path: tuple[Any, ...],
    spec: dict[str, Any],
    names: Mapping[str, str],
    base_dir: str,
) -> None:
    """The service's runtime keys into ``spec`` (checked again with the whole spec)."""
    mounts = []
    for i, item in enumerate(svc.get("volumes") or []):
        mounts.append(_mount(ctx, item, (*path, "volumes", i), names, base_dir))
    tmpfs = _words(ctx, svc["tmpfs"], (*path, "tmpfs")) if "tmpfs" in svc else []
    for target in tmpfs:
        mounts.append(_mount(ctx, {"type": "tmpfs", "target": target}, (*path, "tmpfs"), names,
                             base_dir))  # fmt: skip
    spec["mounts"] = mounts
    if svc.get("hostname") is not None:
        spec["hostname"] = str(svc["hostname"])
    dns = spec["dns"] = taskrt.check_dns(spec.get("dns"))
    if svc.get("dns") is not None:
        dns["nameservers"] = _words(ctx, svc["dns"], (*path, "dns"))
    if svc.get("dns_search") is not None:
        dns["search"] = _words(ctx, svc["dns_search"], (*path, "dns_search"))
    if svc.get("init") is not None:
        if not isinstance(svc["init"], bool):
            raise ctx.error((*path, "init"), "expected true or false")
        spec["init"] = svc["init"]
    if svc.get("stop_signal") is not None:
        sig = str(svc["stop_signal"])
        try:
            taskrt.parse_signal(sig)
        except ValueError as exc:
            raise ctx.error((*path, "stop_signal"), str(exc)) from None
        spec["stop_signal"] = sig
    for key, check in (("hostname", taskrt.check_hostname), ("dns", taskrt.check_dns)):
        try:
            check(spec[key])
        except taskrt.RuntimeSpecError as exc:
            raise ctx.error((*path, key), str(exc).partition(": ")[2] or str(exc)) from None


def network_flags(
    ctx: Any, cfg: Mapping[str, Any], path: tuple[Any, ...], request: dict[str, Any]
) -> None:
    """A top-level network's ``internal`` (no way out) and ``attachable`` (``meshkit run
    --network`` may join it): true or false, as Compose takes them."""
    for key in ("internal", "attachable"):
        value = cfg.get(key)
        if value is None:
            continue
        if not isinstance(value, bool):
            raise ctx.error((*path, key), f"expected true or false, not {value!r}")
        if value:
            request[key] = True

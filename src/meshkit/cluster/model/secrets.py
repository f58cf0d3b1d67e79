"""Secrets and configs in the replicated state, and the references services make to them
(sans-IO).

A secret or config record: ``{"id", "name", "labels", "created_at", "updated_at", "size",
"data"}``. A secret's ``data`` is the value sealed by the manager that took it (AES-GCM under
a key derived from the cluster data key: meshkit.cluster.raft.sealing.seal_bytes), so the raft
journal and snapshots never hold it in clear; a config's ``data`` is its bytes in base64 (configs
are not secret). The rules here only see the opaque text.

Commands (applied by meshkit.cluster.model.state):

    secret_create  kind ("secret"|"config"), record {...}, now   (names are unique per kind)
    secret_rm      kind, id                  (refused while a service uses it, naming them)

A service spec refers to them by name: ``spec["secrets"]`` / ``spec["configs"]`` are lists of
``{"source", "target", "uid", "gid", "mode"}``; `check_refs` fills Docker's defaults and checks
each one (a secret's target is a file name under /run/secrets, a config's an absolute path).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from meshkit.base.errors import MeshkitError

KINDS = ("secret", "config")
MAX_SIZE = {"secret": 500 * 1024, "config": 1000 * 1024}
"""Docker's limits: swarmkit's MaxSecretSize (500 KiB) and MaxConfigSize (1000 KiB)."""

# swarmkit's validateSecretAnnotations / validateConfigAnnotations name rule
NAME_RE = re.compile(r"^[a-zA-Z0-9]+(?:[a-zA-Z0-9-_.]*[a-zA-Z0-9])?$")
MAX_NAME = 64
SECRETS_DIR = "/run/secrets"
CONFIGS_DIR = "/run/configs"
DEFAULT_MODE = 0o444  # Docker's default file mode for secrets and configs


class RefError(MeshkitError):
    """A secret or config that cannot be created, referenced or removed."""


def check_name(name: Any) -> str:
    """Docker's name rule, with Docker's message."""
    if not isinstance(name, str) or len(name) > MAX_NAME or not NAME_RE.match(name):
        raise RefError(
            f"invalid name {name!r}, only 64 [a-zA-Z0-9-_.] characters allowed, and the start "
            "and end character must be [a-zA-Z0-9]"
        )
    return name


def check_size(kind: str, size: int) -> None:
    limit = MAX_SIZE[kind]
    if not 0 < size <= limit:
        raise RefError(
            f"{kind} data must be larger than 0 and less than {limit} bytes (got {size} bytes)"
        )


def _store(state: Any, kind: str) -> dict[str, dict[str, Any]]:
    if kind not in KINDS:
        raise RefError(f"unknown kind {kind!r}: expected secret or config")
    out: dict[str, dict[str, Any]] = state.secrets if kind == "secret" else state.configs
    return out


def find(state: Any, kind: str, ref: str) -> dict[str, Any]:
    """A secret (config) by id, name or unique id prefix; RefError "No such secret: X"."""
    items = _store(state, kind)
    if ref in items:
        return items[ref]
    for rec in items.values():
        if rec["name"] == ref:
            return rec
    by_prefix = [r for r in items.values() if ref and r["id"].startswith(ref)]
    if len(by_prefix) == 1:
        return by_prefix[0]
    raise RefError(f"No such {kind}: {ref}")


def by_name(state: Any, kind: str, name: str) -> dict[str, Any] | None:
    for rec in _store(state, kind).values():
        if rec["name"] == name:
            return rec
    return None


def users(state: Any, kind: str, name: str) -> list[str]:
    """Names of the services whose spec refers to the secret (config) called `name`."""
    key = kind + "s"
    return sorted(
        s["spec"]["name"]
        for s in state.services.values()
        if any(r.get("source") == name for r in s["spec"].get(key) or [])
    )


def op_create(state: Any, cmd: Mapping[str, Any]) -> dict[str, Any]:
    kind = str(cmd.get("kind", ""))
    items = _store(state, kind)
    raw = cmd.get("record")
    if not isinstance(raw, Mapping) or not raw.get("id"):
        raise RefError(f"{kind}_create needs a record with an id")
    name = check_name(raw.get("name"))
    data = raw.get("data")
    if not isinstance(data, str) or not data:
        raise RefError(f"{kind} {name}: no data")
    size = int(raw.get("size") or 0)
    check_size(kind, size)
    if raw["id"] in items:
        raise RefError(f"{kind} {raw['id']} already exists")
    if by_name(state, kind, name) is not None:
        raise RefError(f"{kind} {name} already exists")
    labels = raw.get("labels") or {}
    if not isinstance(labels, Mapping):
        raise RefError(f"{kind} {name}: labels must be an object")
    now = float(cmd.get("now", 0.0))
    items[str(raw["id"])] = {
        "id": str(raw["id"]),
        "name": name,
        "labels": {str(k): str(v) for k, v in labels.items()},
        "created_at": now,
        "updated_at": now,
        "size": size,
        "data": data,
    }
    return {"id": str(raw["id"]), "name": name}


def op_rm(state: Any, cmd: Mapping[str, Any]) -> dict[str, Any]:
    kind = str(cmd.get("kind", ""))
    items = _store(state, kind)
    rec = items.get(str(cmd.get("id", "")))
    if rec is None:
        raise RefError(f"No such {kind}: {cmd.get('id')}")
    used = users(state, kind, rec["name"])
    if used:
        plural = "s" if len(used) > 1 else ""
        raise RefError(
            f"{kind} '{rec['name']}' is in use by the following service{plural}: " + ", ".join(used)
        )
    del items[rec["id"]]
    return {"id": rec["id"], "name": rec["name"]}


def view(rec: Mapping[str, Any], kind: str, *, with_data: bool = False) -> dict[str, Any]:
    """The JSON shape of `ls --format json` and `inspect`: never a secret's value; a config's
    data (base64) only when asked for."""
    out: dict[str, Any] = {
        "ID": rec["id"],
        "Name": rec["name"],
        "Labels": dict(sorted(rec.get("labels", {}).items())),
        "CreatedAt": rec["created_at"],
        "UpdatedAt": rec["updated_at"],
        "Size": rec.get("size", 0),
    }
    if kind == "config" and with_data:
        out["Data"] = rec["data"]
    return out


# -- references in a service spec ------------------------------------------------------------


def _mode(value: Any, where: str) -> int:
    if isinstance(value, str):
        try:
            value = int(value, 8)
        except ValueError:
            raise RefError(f"{where}.mode: {value!r} is not an octal file mode") from None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0o777:
        raise RefError(f"{where}.mode: {value!r} is not a file mode (0000-0777)")
    return value


def _id(value: Any, where: str, key: str) -> str:
    text = str(value if value is not None else "0")
    if not text.isdigit():
        raise RefError(f"{where}.{key}: {text!r} is not a numeric id")
    return text


def check_ref(kind: str, ref: Any, where: str) -> dict[str, Any]:
    """One reference, complete: Docker's defaults (target = source for a secret, uid/gid "0",
    mode 0444); a secret's target is a file name (it lands in /run/secrets), a config's an
    absolute path (default /run/configs/SOURCE)."""
    if not isinstance(ref, Mapping):
        raise RefError(f"{where}: expected an object, got {ref!r}")
    unknown = sorted(set(ref) - {"source", "target", "uid", "gid", "mode"})
    if unknown:
        raise RefError(f"{where}: unknown field {unknown[0]!r}")
    try:
        source = check_name(ref.get("source"))
    except RefError as exc:
        raise RefError(f"{where}.source: {exc}") from None
    target = ref.get("target") or ""
    if not isinstance(target, str):
        raise RefError(f"{where}.target: expected a string")
    if kind == "secret":
        target = target or source
        if target.startswith(SECRETS_DIR + "/"):
            target = target[len(SECRETS_DIR) + 1 :]
        if "/" in target or target in (".", "..") or "\x00" in target:
            raise RefError(
                f"{where}.target: {target!r} must be a file name (it goes in {SECRETS_DIR})"
            )
    else:
        target = target or f"{CONFIGS_DIR}/{source}"
        parts = target.split("/")
        if not target.startswith("/") or ".." in parts or "\x00" in target or target.endswith("/"):
            raise RefError(f"{where}.target: {target!r} must be an absolute file path")
    return {
        "source": source,
        "target": target,
        "uid": _id(ref.get("uid"), where, "uid"),
        "gid": _id(ref.get("gid"), where, "gid"),
        "mode": _mode(ref.get("mode", DEFAULT_MODE), where),
    }


def check_refs(kind: str, refs: Any) -> list[dict[str, Any]]:
    where = kind + "s"
    if refs is None:
        return []
    if not isinstance(refs, list):
        raise RefError(f"{where}: expected a list, got {refs!r}")
    out = [check_ref(kind, r, f"{where}[{i}]") for i, r in enumerate(refs)]
    targets = [r["target"] for r in out]
    for t in targets:
        if targets.count(t) > 1:
            raise RefError(f"{where}: target {t!r} is used more than once")
    return out


def missing_refs(state: Any, spec: Mapping[str, Any]) -> str:
    """Docker's error for the first secret or config a spec names that does not exist."""
    for kind in KINDS:
        for ref in spec.get(kind + "s") or []:
            if by_name(state, kind, ref["source"]) is None:
                return f"{kind} not found: {ref['source']}"
    return ""

"""What every agent RPC method accepts, checked before its handler runs (sans-IO).

Each method has a schema: its parameter names, each with a check and whether it is required.
`check_params(method, params)` runs them all and raises `ParamError` naming the method, the
parameter and what is wrong, e.g. ``invalid join parameter api_port: 1000000 is not a port
(1-65535)``; the API turns that into the RPC's normal ``bad_request`` reply. So a value of the
wrong type or range never reaches a handler (no ``internal`` error, no traceback), and what
reaches the state and the tables has a known shape: host names are RFC 1123 names, addresses
are IP addresses, ports are ports. An optional parameter may be absent or null; parameters
a schema does not name are ignored (the handlers never read them), so that nodes of a newer
version may send more.

`printable(text)` is for every client-supplied value shown in a table or written to a log:
control characters (ANSI escapes, newlines) come out as ``\\xHH``, so a value cannot forge a
table row or a log line.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from meshkit.base.errors import MeshkitError
from meshkit.base.text import printable as printable  # re-exported: the API's callers use it

Check = Callable[[Any], None]
"""Raises `Invalid` (with why) when a value is not acceptable."""

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# RFC 1123 labels, plus inner underscores: Linux lets a host be called `db_1`, and such a
# host must still be able to join with its own name
_HOST_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?")
_NODE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+_-]{0,63}")

MAX_HOSTNAME = 253
MAX_NAME = 256  # references to nodes, services, networks; label keys
MAX_TEXT = 4096  # label values, epochs, tokens
MAX_CSR = 16 * 1024
MAX_ITEMS = 10_000  # list and map lengths


class Invalid(Exception):
    """Why one value is not acceptable (internal to the checks)."""


class ParamError(MeshkitError):
    """A request parameter that is missing or not acceptable; the message names both."""

    def __init__(self, method: str, name: str, why: str) -> None:
        self.method = method
        self.name = name
        self.why = why
        super().__init__(f"invalid {method} parameter {name}: {why}")


def _show(value: Any) -> str:
    """A value as an error message quotes it: short, repr-like, printable."""
    text = repr(value) if isinstance(value, str) else printable(value)
    return printable(text, 80)


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), "a number" if isinstance(value, (int, float)) else "null"
    )


# -- checks ----------------------------------------------------------------------------------


def string(
    max_len: int = MAX_NAME,
    *,
    pattern: re.Pattern[str] | None = None,
    what: str = "",
    choices: tuple[str, ...] = (),
    allow_empty: bool = False,
) -> Check:
    """A string of at most ``max_len`` characters and no control characters; with
    ``pattern`` it must match it whole (``what`` names the shape in the error), with
    ``choices`` it must be one of them."""

    def check(value: Any) -> None:
        if not isinstance(value, str):
            raise Invalid(f"expected a string, got {_kind(value)}")
        if not value and not allow_empty:
            raise Invalid("must not be empty")
        if len(value) > max_len:
            raise Invalid(f"{len(value)} characters is too long (at most {max_len})")
        if choices and value not in choices:
            raise Invalid(f"{_show(value)} is not one of {', '.join(choices)}")
        if _CONTROL.search(value):
            raise Invalid(f"{_show(value)} holds control characters")
        if pattern is not None and value and not pattern.fullmatch(value):
            raise Invalid(f"{_show(value)} is not {what or 'valid'}")

    return check


def text(max_len: int) -> Check:
    """Any string up to ``max_len`` characters (a PEM document: newlines are fine)."""

    def check(value: Any) -> None:
        if not isinstance(value, str):
            raise Invalid(f"expected a string, got {_kind(value)}")
        if not value:
            raise Invalid("must not be empty")
        if len(value) > max_len:
            raise Invalid(f"{len(value)} characters is too long (at most {max_len})")

    return check


def integer(lo: int, hi: int, what: str = "") -> Check:
    """A whole number from ``lo`` to ``hi`` (booleans are not numbers)."""

    def check(value: Any) -> None:
        if not isinstance(value, int) or isinstance(value, bool):
            raise Invalid(f"{_show(value)} is not {what or 'a whole number'}")
        if not lo <= value <= hi:
            raise Invalid(f"{value} is not {what or 'in range'} ({lo}-{hi})")

    return check


def number(lo: float, hi: float) -> Check:
    """A finite number from ``lo`` to ``hi``."""

    def check(value: Any) -> None:
        if (
            not isinstance(value, (int, float))
            or isinstance(value, bool)
            or not math.isfinite(value)
        ):
            raise Invalid(f"{_show(value)} is not a number")
        if not lo <= value <= hi:
            raise Invalid(f"{value} is out of range ({lo:g}-{hi:g})")

    return check


def boolean(value: Any) -> None:
    """true or false."""
    if not isinstance(value, bool):
        raise Invalid(f"{_show(value)} is not true or false")


port = integer(1, 65535, "a port")


def ip_address(value: Any) -> None:
    """An IPv4 or IPv6 address other nodes can reach (not 0.0.0.0, ::, or multicast)."""
    if not isinstance(value, str):
        raise Invalid(f"expected a string, got {_kind(value)}")
    try:
        addr = ipaddress.ip_address(value)
    except ValueError:
        raise Invalid(f"{_show(value)} is not an IP address") from None
    if addr.is_unspecified or addr.is_multicast:
        raise Invalid(f"{value} is not an address other nodes can reach")


def ip_or_empty(value: Any) -> None:
    """An IP address as `ip_address`, or "" (meaning: the address the request came from)."""
    if value != "":
        ip_address(value)


def hostname(value: Any) -> None:
    """An RFC 1123 host name: dot-separated labels of letters, digits and inner hyphens (or
    underscores), 1-63 characters each, at most 253 in all."""
    if not isinstance(value, str):
        raise Invalid(f"expected a string, got {_kind(value)}")
    if not value:
        raise Invalid("must not be empty")
    if len(value) > MAX_HOSTNAME:
        raise Invalid(f"{len(value)} characters is too long for a host name (at most 253)")
    if not all(_HOST_LABEL.fullmatch(label) for label in value.split(".")):
        raise Invalid(
            f"{_show(value)} is not a host name (RFC 1123: labels of letters, digits and "
            "inner hyphens or underscores, 1-63 characters each, separated by dots)"
        )


node_id = string(128, pattern=_NODE_ID, what="a node id")
version = string(64, pattern=_VERSION, what="a version")
name = string(MAX_NAME)
short_text = string(MAX_TEXT, allow_empty=True)


def list_of(item: Check, max_items: int = MAX_ITEMS) -> Check:
    """A list of at most ``max_items`` values, each passing ``item``."""

    def check(value: Any) -> None:
        if not isinstance(value, list):
            raise Invalid(f"expected a list, got {_kind(value)}")
        if len(value) > max_items:
            raise Invalid(f"{len(value)} items is too many (at most {max_items})")
        for i, v in enumerate(value):
            try:
                item(v)
            except Invalid as exc:
                raise Invalid(f"item {i}: {exc}") from None

    return check


def map_of(key: Check, val: Check, max_items: int = MAX_ITEMS) -> Check:
    """An object of at most ``max_items`` entries; keys pass ``key``, values ``val``."""

    def check(value: Any) -> None:
        if not isinstance(value, dict):
            raise Invalid(f"expected an object, got {_kind(value)}")
        if len(value) > max_items:
            raise Invalid(f"{len(value)} entries is too many (at most {max_items})")
        for k, v in value.items():
            try:
                key(k)
                val(v)
            except Invalid as exc:
                raise Invalid(f"entry {_show(k)}: {exc}") from None

    return check


def obj(value: Any) -> None:
    """Any JSON object (its contents are checked by the handler: a service spec, ...)."""
    if not isinstance(value, dict):
        raise Invalid(f"expected an object, got {_kind(value)}")


def anything(value: Any) -> None:
    """Any JSON value (an opaque token the server handed out and compares as it is)."""


def record(schema: Mapping[str, Field]) -> Check:
    """An object whose named fields pass their checks (others are ignored)."""

    def check(value: Any) -> None:
        if not isinstance(value, dict):
            raise Invalid(f"expected an object, got {_kind(value)}")
        for key, spec in schema.items():
            v = value.get(key)
            if v is None:
                if spec.required:
                    raise Invalid(f"{key}: missing")
                continue
            try:
                spec.check(v)
            except Invalid as exc:
                raise Invalid(f"{key}: {exc}") from None

    return check


@dataclass(frozen=True)
class Field:
    """One parameter: its check, and whether it must be there (not absent, not null)."""

    check: Check
    required: bool = False


def req(check: Check) -> Field:
    return Field(check, required=True)


def opt(check: Check) -> Field:
    return Field(check)


Schema = Mapping[str, Field]

# -- the methods -----------------------------------------------------------------------------

_WATCH: Schema = {
    "node_id": req(node_id),
    "version": opt(integer(0, 2**62)),
    "epoch": opt(string(64)),
    "wait": opt(number(0, 3600)),
}
_NODE_REF: Schema = {"node": req(name)}
_SERVICE_REF: Schema = {"service": req(name)}
_NETWORK_REF: Schema = {"network": req(name)}
_SINCE = map_of(string(MAX_NAME), anything)
# service logs --since/--until (ns of the Unix clock) and --timestamps
_LOG_TIMES = {
    "since_ns": opt(integer(0, 2**62)),
    "until_ns": opt(integer(0, 2**62)),
    "timestamps": opt(boolean),
}

_PEM64 = string(128 * 1024)  # base64 PEM (api.certs checks it decodes)
_WEBCERT: dict[str, Schema] = {  # meshkit.cluster.api.certs
    "webcert_lease": {
        "node_id": req(node_id),
        "name": req(hostname),
        "ttl": req(number(0.1, 86400)),
    },
    "webcert_release": {
        "node_id": req(node_id),
        "name": req(hostname),
        "hold": opt(number(0, 86400)),
    },
    "webcert_store": {
        "node_id": req(node_id),
        "name": req(hostname),
        "ca": opt(string(MAX_TEXT, allow_empty=True)),
        "chain": req(_PEM64),
        "key": req(_PEM64),
        "not_after": opt(string(64, allow_empty=True)),
        "obtained": opt(string(64, allow_empty=True)),
    },
    "webcert_account": {
        "node_id": req(node_id),
        "ca": req(string(MAX_TEXT)),
        "email": opt(string(MAX_NAME, allow_empty=True)),
        "key": req(_PEM64),
        "regr": opt(text(64 * 1024)),  # JSON, newlines and all
    },
    "webcert_challenge": {
        "node_id": req(node_id),
        "kind": req(string(16, choices=("http-01", "tls-alpn-01"))),
        "id": req(string(MAX_NAME)),
        "value": opt(
            record(
                {
                    "keyauth": opt(short_text),
                    "name": opt(short_text),
                    "cert": opt(text(16 * 1024)),
                    "key": opt(text(16 * 1024)),
                }
            )
        ),
    },
    "webcert_watch": _WATCH,
}

TCP_PARAMS: dict[str, Schema] = {
    # no certificate needed
    "ca_bundle": {},
    "join": {
        "token": req(string(MAX_TEXT)),
        "csr": req(text(MAX_CSR)),
        "hostname": opt(hostname),
        "advertise_addr": opt(ip_or_empty),  # "" = the address the join came from
        "version": opt(version),
        "api_port": opt(port),
        "raft_port": opt(port),
        "request_id": opt(string(64)),  # a retried join gets the node the first one made
    },
    # any node certificate
    "heartbeat": {
        "node_id": req(node_id),
        "status": opt(
            record({"version": opt(version), "overlay": opt(obj), "resources": opt(obj)})
        ),
    },
    "renew": {"node_id": req(node_id), "csr": req(text(MAX_CSR))},
    "leave": {"node_id": req(node_id)},
    "tasks_watch": _WATCH,
    "netmap_watch": _WATCH,
    # CA rotation (meshkit.cluster.api.carotation): status and rotate for managers, ack by a node
    "ca_status": {},
    "ca_rotate": {},
    "ca_ack": {"node_id": req(node_id), "id": req(string(MAX_NAME)), "phase": req(string(64))},
    # a `meshkit run` on the caller's node (meshkit.cluster.api.runs)
    "network_attach": {
        "node_id": req(node_id),
        "network": req(name),
        "id": req(node_id),
        "name": opt(string(MAX_NAME, allow_empty=True)),
        "command": opt(list_of(string(MAX_TEXT, allow_empty=True), 1024)),
    },
    "network_detach": {
        "node_id": req(node_id),
        "id": req(node_id),
        "exit_code": opt(integer(-(2**31), 2**31)),
        "rm": opt(boolean),
    },
    "task_report": {"node_id": req(node_id), "updates": req(list_of(obj))},
    "task_logs": {
        "tasks": opt(list_of(string(MAX_NAME))),
        "tail": opt(integer(0, 10**9)),
        "since": opt(_SINCE),
        **_LOG_TIMES,
    },
    # managers
    "node_ls": {},
    "node_inspect": _NODE_REF,
    "node_update": {
        "node": req(name),
        "availability": opt(string(16, choices=("active", "pause", "drain"))),
        "label_add": opt(map_of(name, short_text, 1000)),
        "label_rm": opt(list_of(name, 1000)),
    },
    "node_promote": _NODE_REF,
    "node_demote": _NODE_REF,
    "node_rm": {"node": req(name), "force": opt(boolean)},
    "join_token": {
        "role": req(string(16, choices=("worker", "manager"))),
        "rotate": opt(boolean),
    },
    "beats": {"seen": opt(list_of(node_id))},
    "cluster_status": {},
    "service_create": {"spec": req(obj), "request_id": opt(string(64))},
    "service_ls": {"label": opt(string(MAX_TEXT))},
    "service_inspect": _SERVICE_REF,
    "service_ps": _SERVICE_REF,
    "service_update": {"service": req(name), "spec": req(obj)},
    "service_scale": {"service": req(name), "replicas": req(integer(0, 1_000_000))},
    "service_rollback": _SERVICE_REF,
    "service_rm": _SERVICE_REF,
    "service_logs": {
        "service": req(name),
        "tail": opt(integer(0, 10**9)),
        "since": opt(_SINCE),
        **_LOG_TIMES,
    },
    "node_ps": {"node": req(name)},
    "cluster_inspect": {},
    "cluster_update": {"settings": req(obj)},
    "unlock_key": {"rotate": opt(boolean)},
    "events": {
        "after": opt(integer(0, 2**62)),
        "since": opt(number(0, 1e11)),
        "until": opt(number(0, 1e11)),
        "types": opt(list_of(string(16))),
        "wait": opt(number(0, 60)),
    },
    "network_create": {  # netstate.check_request checks the values and the options
        "name": req(name),
        "driver": opt(string(64)),
        "subnet": opt(string(64, allow_empty=True)),
        "gateway": opt(string(64, allow_empty=True)),
        "dataplane": opt(string(64)),
        "labels": opt(map_of(name, short_text, 1000)),
        "mtu": opt(integer(0, 65535)),
        "internal": opt(boolean),
        "encrypted": opt(boolean),
        "attachable": opt(boolean),
    },
    "network_rotate_key": _NETWORK_REF,
    "network_ls": {"label": opt(string(MAX_TEXT))},
    "network_inspect": _NETWORK_REF,
    "network_rm": _NETWORK_REF,
    "overlay_pairs": {},
    "task_secrets": {"node_id": req(node_id), "task_id": req(name)},
    **_WEBCERT,
    **{
        f"{kind}_{verb}": schema
        for kind in ("secret", "config")
        for verb, schema in (
            (
                "create",
                {
                    "name": req(string(64)),  # Docker's name rule is the handler's
                    "data": req(string(2 * 1024 * 1024)),  # base64; the size rule is the handler's
                    "labels": opt(map_of(name, short_text, 1000)),
                },
            ),
            ("ls", {}),
            ("inspect", {kind: req(name)}),
            ("rm", {kind: req(name)}),
        )
    },
}
"""Parameters of the methods on the manager port (TLS)."""

LOCAL_PARAMS: dict[str, Schema] = {
    **TCP_PARAMS,
    "info": {},
    "leave": {"force": opt(boolean)},
    "unlock": {"key": req(string(256))},
    "mesh_watch": {
        "service": opt(string(MAX_NAME, allow_empty=True)),
        "version": opt(anything),
        "wait": opt(number(0, 3600)),
    },
    "volume_ls": {},
    "volume_rm": {"name": req(name)},
    "run_attach": {
        "network": req(name),
        "pid": req(integer(1, 2**22)),
        "rm": opt(boolean),
        "name": opt(string(MAX_NAME, allow_empty=True)),
        "command": opt(list_of(string(MAX_TEXT, allow_empty=True), 1024)),
    },
    "run_detach": {
        "id": req(node_id),
        "exit_code": opt(integer(-(2**31), 2**31)),
        "rm": opt(boolean),
    },
}
"""Parameters of the methods on the local Unix socket (`leave` differs: it is this node's)."""


def check_params(method: str, params: Mapping[str, Any], *, local: bool = False) -> None:
    """Raise ParamError unless ``params`` fit ``method``'s schema (an unknown method passes:
    dispatch refuses it by name)."""
    schema = (LOCAL_PARAMS if local else TCP_PARAMS).get(method)
    if schema is None:
        return
    for key, spec in schema.items():
        value = params.get(key)
        if value is None:
            if spec.required:
                raise ParamError(method, key, "missing")
            continue
        try:
            spec.check(value)
        except Invalid as exc:
            raise ParamError(method, key, str(exc)) from None

"""Cluster state and the commands raft applies to it (sans-IO).

The replicated state is a `ClusterState`: the cluster's settings, its token secrets, the raft
secret, the CA, and one `NodeRecord` per node. Every change is a command, a plain dict with an
``"op"`` key, applied by `apply()` on every manager in the same order. `apply()` is
deterministic: it reads nothing but the state and the command (times come inside the command,
stamped by the manager that proposed it), so every replica ends in the same state. A command
that cannot be applied raises `CommandError`, the same way on every replica; the store turns
that into the caller's error.

Commands (``op``, then fields):

    init          cluster: {...ClusterState fields...}, node: {...NodeRecord...}
    add_node      node: {...NodeRecord...}, request_id?  (a join's: a replay returns the node
                  the first made, {"node_id", "replayed": true})
    update_node   node_id, availability?, label_add? {k: v}, label_rm? [k], now
    set_role      node_id, role, now        (refuses to demote the last manager)
    remove_node   node_id, force, now       (a manager: demote first; Ready: needs force)
    leave         node_id, force, now       (a node leaving on its own: managers too)
    set_status    statuses {node_id: "ready"|"down"}, left?, now  (left: the node said so)
    set_addr      node_id, addr, api_port, raft_port, version, hostname, now
    set_raft_ops  node_id, ops [str], now  (a manager's build: the raft entry kinds it applies)
    rotate_token  role, secret, now
    cluster_update, force_new_cluster   see meshkit.cluster.model.clusterops
    service_create         service: {...service record...}, now   (names are unique)
    service_update         service_id, spec, rollback?, now   (version += 1, update starts)
    service_rm             service_id, now   (its tasks get desired state "remove")
    service_update_status  service_id, update_status, now
    tasks_write            create?, desired?, node?, status?, remove?, now  (the orchestrator's)
    task_status            updates [{id, state, message, error, exit_code, pid, healthy,
                           started_at?}], now   (workers' reports; forward-only)
    network_create         network: {id, name, driver, subnet?, gateway?, mtu, dataplane,
                           labels}, now   (subnet, VNI and node endpoints allocated here)
    network_rm             network_id   (refused while a service or task uses it)
    set_overlay            node_id, overlay   (a node's overlay report, from its heartbeat)
    set_resources          node_id, resources {NanoCPUs, MemoryBytes}   (from its heartbeat)
    secret_create          kind (secret|config), record {id, name, labels, size, data}, now
    secret_rm              kind, id   (refused while a service uses it, naming the services)
    cert_lease, cert_release, cert_store, cert_account, cert_challenge
                           the --web nodes' certificates: see meshkit.cluster.model.certs

Secrets and configs, and the rules of the references services make to them, live in
meshkit.cluster.model.secrets: a service naming one that does not exist is refused.

Networks, their address books and the network map live in meshkit.cluster.model.networks: a new
task gets its addresses in tasks_write, and gives them back when it ends or is removed.

Services and tasks are plain JSON dicts (shapes in meshkit.cluster.model.services). A task's state
only moves forward and a terminal state is final; its desired state only moves forward too
(running, shutdown, remove), so replaying a tasks_write or task_status changes nothing.

The heartbeat liveness tracker (`Liveness`) is a state machine driven by the clock the caller
passes in: the leader feeds it beats and asks it which replicated statuses are out of date.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from meshkit.cluster.model import attachments, netkeys
from meshkit.cluster.model import certs as certrules
from meshkit.cluster.model import networks as netstate
from meshkit.cluster.model import secrets as secretrules
from meshkit.cluster.model import services as sv
from meshkit.cluster.model.clusterops import HANDLERS as CLUSTER_HANDLERS
from meshkit.cluster.model.records import (
    AVAILABILITIES,
    DOWN,
    NODE_ID_RE,
    NOT_A_MANAGER,
    READY,
    ROLES,
    ClusterState,
    CommandError,
    NodeNotFound,
    NodeRecord,
    check_label_key,
    check_node,
    parse_label,
)

# The records are re-exported: callers know them as the state's.
__all__ = [
    "AVAILABILITIES",
    "COMMANDS",
    "DOWN",
    "IDEMPOTENT",
    "NODE_ID_RE",
    "NOT_A_MANAGER",
    "READY",
    "ROLES",
    "ClusterState",
    "CommandError",
    "Liveness",
    "NodeNotFound",
    "NodeRecord",
    "apply",
    "check_label_key",
    "check_node",
    "node_view",
    "parse_label",
    "resolve_node",
]

# -- node references ---------------------------------------------------------------------------


def resolve_node(state: ClusterState, ref: str) -> NodeRecord:
    """A node by full id, unique id prefix, or hostname, as Docker resolves them."""
    if ref in state.nodes:
        return state.nodes[ref]
    by_name = [n for n in state.nodes.values() if n.hostname == ref]
    if len(by_name) == 1:
        return by_name[0]
    if len(by_name) > 1:
        raise CommandError(f"node {ref} is ambiguous ({len(by_name)} matches)")
    by_prefix = [n for n in state.nodes.values() if ref and n.id.startswith(ref)]
    if len(by_prefix) == 1:
        return by_prefix[0]
    if len(by_prefix) > 1:
        raise CommandError(f"node {ref} is ambiguous ({len(by_prefix)} matches)")
    raise NodeNotFound(f"node {ref} not found")


# -- commands ----------------------------------------------------------------------------------


def apply(state: ClusterState, cmd: Mapping[str, Any]) -> dict[str, Any]:
    """Apply one command to `state` in place; returns the command's result.

    Raises CommandError (and leaves the state unchanged) for a command the state refuses.
    """
    op = cmd.get("op")
    handler = _HANDLERS.get(str(op))
    if handler is None:
        raise CommandError(f"unknown command {op!r}")
    if op not in ("init", "force_new_cluster") and not state.initialized:
        raise CommandError("this cluster is not initialized")
    result = handler(state, cmd)
    state.index += 1
    return result


def _now(cmd: Mapping[str, Any]) -> float:
    return float(cmd.get("now", 0.0))


def _op_init(state: ClusterState, cmd: Mapping[str, Any]) -> dict[str, Any]:
    if state.initialized:
        raise CommandError(f"this cluster is already initialized (cluster id {state.cluster_id})")
    new = ClusterState.from_dict(cmd["cluster"])
    if not new.cluster_id:
        raise CommandError("init needs a cluster id")
    node = NodeRecord.from_dict(cmd["node"])
    if node.role != "manager":
        raise CommandError("the first node of a cluster is a manager")
    new.nodes = {node.id: node}
    new.index = state.index
    state.__dict__.update(new.__dict__)
    netstate.node_added(state, node.id)
    return {"cluster_id": state.cluster_id, "node_id": node.id}


def _op_add_node(state: ClusterState, cmd: Mapping[str, Any]) -> dict[str, Any]:
    node = NodeRecord.from_dict(cmd["node"])
    request = str(cmd.get("request_id") or "")
    made = state.join_requests.get(request) if request else None
    if made is not None and made in state.nodes:  # a retried join: the node the first made
        if state.nodes[made].role != node.role:
            raise CommandError(f"join request {request[:12]} made a {state.nodes[made].role}")
        return {"node_id": made, "replayed": True}
    if node.id in state.nodes:
        raise CommandError(f"node {node.id} already exists")
    state.nodes[node.id] = node
    if request:
        state.join_requests[request] = node.id
    if node.role == "manager":
        state.manager_changes += 1
    netstate.node_added(state, node.id)
    return {"node_id": node.id}


def _forget_joins(state: ClusterState, node_id: str) -> None:
    """A node gone: its join request id no longer names it."""
    for key in [k for k, v in state.join_requests.items() if v == node_id]:
        del state.join_requests[key]


def _op_update_node(state: ClusterState, cmd: Mapping[str, Any]) -> dict[str, Any]:
    node = resolve_node(state, str(cmd["node_id"]))
    availability = cmd.get("availability")
    if availability is not None and availability not in AVAILABILITIES:
        raise CommandError(
            f"invalid availability {availability!r}: expected active, pause or drain"
        )
    label_add = dict(cmd.get("label_add") or {})
    label_rm = list(cmd.get("label_rm") or [])
    for key in list(label_add) + label_rm:
        check_label_key(str(key))
    missing = [k for k in label_rm if k not in node.labels and k not in label_add]
    if missing:
        raise CommandError(f"key {missing[0]} doesn't exist in node's labels")
    if availability is not None:
        node.availability = availability
    for key in label_rm:
        node.labels.pop(key, None)
    node.labels.update({str(k): str(v) for k, v in label_add.items()})
    node.updated_at = _now(cmd)
    return {"node_id": node.id}


def _op_set_role(state: ClusterState, cmd: Mapping[str, Any]) -> dict[str, Any]:
    node = resolve_node(state, str(cmd["node_id"]))
    role = str(cmd["role"])
    if role not in ROLES:
        raise CommandError(f"invalid role {role!r}: expected worker or manager")
    if node.role == role:
        return {"node_id": node.id, "changed": False}
    if role == "worker" and len(state.managers()) <= 1:
        raise CommandError(
            f"attempting to demote the last manager of the swarm: node {node.id} is the only "
            "manager; promote another node first"
        )
    node.role = role
    node.updated_at = _now(cmd)
    state.manager_changes += 1
    return {"node_id": node.id, "changed": True}


def _op_remove_node(state: ClusterState, cmd: Mapping[str, Any]) -> dict[str, Any]:
    node = resolve_node(state, str(cmd["node_id"]))
    force = bool(cmd.get("force"))
    if node.role == "manager":
        raise CommandError(
            f"rejected removal of node {node.id}: it is a manager; "
            f"demote it first with `meshkit node demote {node.id}`"
        )
    if node.status == READY and not force:
        raise CommandError(
            f"node {node.id} is not down and can't be removed; "
            "shut it down, make it leave, or use --force"
        )
    del state.nodes[node.id]
    netstate.node_removed(state, node.id)
    _forget_joins(state, node.id)
    if node.role == "manager":
        state.manager_changes += 1
    return {"node_id": node.id}


def _op_leave(state: ClusterState, cmd: Mapping[str, Any]) -> dict[str, Any]:
    node = resolve_node(state, str(cmd["node_id"]))
    if node.role == "manager" and len(state.managers()) <= 1 and not cmd.get("force"):
        raise CommandError(
            "you are attempting to leave the swarm on a node that is its last manager: "
            "the cluster state would be lost; use --force to leave anyway"
        )
    del state.nodes[node.id]
    netstate.node_removed(state, node.id)
    _forget_joins(state, node.id)
    if node.role == "manager":
        state.manager_changes += 1
    return {"node_id": node.id}


def _op_set_status(state: ClusterState, cmd: Mapping[str, Any]) -> dict[str, Any]:
    changed = []
    for node_id, status in dict(cmd["statuses"]).items():
        if status not in (READY, DOWN):
            raise CommandError(f"invalid status {status!r}")
        node = state.nodes.get(node_id)
        if node is not None and node.status != status:
            node.status = status
            node.updated_at = _now(cmd)
            changed.append(node_id)
    return {"changed": sorted(changed)}


def _op_set_addr(state: ClusterState, cmd: Mapping[str, Any]) -> dict[str, Any]:
    node = resolve_node(state, str(cmd["node_id"]))
    for key in ("addr", "hostname", "version"):
        if cmd.get(key):
            setattr(node, key, str(cmd[key]))
    for key in ("api_port", "raft_port"):
        if cmd.get(key):
            setattr(node, key, int(cmd[key]))
    node.updated_at = _now(cmd)
    if node.role == "manager":
        state.manager_changes += 1
    return {"node_id": node.id}


def _op_set_raft_ops(state: ClusterState, cmd: Mapping[str, Any]) -> dict[str, Any]:
    node = resolve_node(state, str(cmd["node_id"]))
    ops = cmd.get("ops")
    if not isinstance(ops, list) or not all(isinstance(o, str) for o in ops):
        raise CommandError(f"set_raft_ops: ops must be a list of names, got {ops!r}")
    node.raft_ops = sorted(set(ops))
    node.updated_at = _now(cmd)
    return {"node_id": node.id}


def _op_set_resources(state: ClusterState, cmd: Mapping[str, Any]) -> dict[str, Any]:
    node = state.nodes.get(str(cmd["node_id"]))
    if node is None:
        return {"changed": False}
    raw = cmd.get("resources") or {}
    try:
        resources = {k: max(0, int(raw.get(k) or 0)) for k in ("NanoCPUs", "MemoryBytes")}
    except (TypeError, ValueError, AttributeError):
        raise CommandError(f"resources of node {node.id}: expected whole numbers") from None
    changed = node.resources != resources
    node.resources = resources
    return {"changed": changed}


def _op_rotate_token(state: ClusterState, cmd: Mapping[str, Any]) -> dict[str, Any]:
    role = str(cmd["role"])
    secret = str(cmd["secret"])
    if role not in ROLES:
        raise CommandError(f"invalid role {role!r}: expected worker or manager")
    if not secret:
        raise CommandError("a token needs a secret")
    if role == "manager":
        state.manager_secret = secret
    else:
        state.worker_secret = secret
    return {"role": role}


# -- services and tasks ------------------------------------------------------------------------


def _spec(spec: Any) -> dict[str, Any]:
    try:
        return sv.check_spec(spec)
    except sv.SpecError as exc:
        raise CommandError(f"invalid service spec: {exc}") from None


def _service(state: ClusterState, cmd: Mapping[str, Any]) -> dict[str, Any]:
    service_id = str(cmd.get("service_id", ""))
    svc = state.services.get(service_id)
    if svc is None:
        raise CommandError(f"no such service: {service_id}")
    return svc


def _name_taken(state: ClusterState, name: str, but: str = "") -> bool:
    return any(s["spec"]["name"] == name and s["id"] != but for s in state.services.values())


def _op_service_create(state: ClusterState, cmd: Mapping[str, Any]) -> dict[str, Any]:
    record = cmd.get("service")
    if not isinstance(record, Mapping) or not record.get("id"):
        raise CommandError("service_create needs a service record with an id")
    spec = _spec(record.get("spec"))
    service_id = str(record["id"])
    request_id = str(cmd.get("request_id") or "")
    for svc in state.services.values() if request_id else ():
        if svc.get("request_id") == request_id:  # a retried create: the service it made
            return {"service_id": svc["id"], "name": svc["spec"]["name"], "replayed": True}
    if service_id in state.services:
        raise CommandError(f"service {service_id} already exists")
    if _name_taken(state, spec["name"]):
        raise CommandError(f"service {spec['name']} already exists (names are unique)")
    _refs_exist(state, spec)
    now = _now(cmd)
    svc = {
        "id": service_id,
        "spec": spec,
        "previous_spec": None,
        "version": int(record.get("version") or 1),
        "created_at": float(record.get("created_at") or now),
        "updated_at": float(record.get("updated_at") or now),
        "update_status": None,
        "vips": {},
    }
    if request_id:
        svc["request_id"] = request_id
    _endpoints(state, svc, cmd)
    state.services[service_id] = svc
    return {"service_id": service_id, "name": spec["name"]}


def _refs_exist(state: ClusterState, spec: Mapping[str, Any]) -> None:
    """Every secret and config the spec names must exist (Docker's "secret not found: X")."""
    missing = secretrules.missing_refs(state, spec)
    if missing:
        raise CommandError(missing)


def _secret_op(
    handler: Callable[[Any, Mapping[str, Any]], dict[str, Any]],
) -> Callable[[ClusterState, Mapping[str, Any]], dict[str, Any]]:
    def run(state: ClusterState, cmd: Mapping[str, Any]) -> dict[str, Any]:
        try:
            return handler(state, cmd)
        except secretrules.RefError as exc:
            raise CommandError(str(exc)) from None

    return run


def _endpoints(state: ClusterState, svc: dict[str, Any], cmd: Mapping[str, Any]) -> None:
    """The routing mesh's network and the service's VIPs for its (new) spec; a published port
    another service holds is refused (every node listens on it)."""
    for port in svc["spec"].get("ports") or []:
        if not port.get("published"):
            continue
        for other in state.services.values():
            if other["id"] == svc["id"]:
                continue
            if any(
                (p.get("published"), p.get("protocol")) == (port["published"], port["protocol"])
                for p in other["spec"].get("ports") or []
            ):
                raise CommandError(
                    f"port {port['published']}/{port['protocol']} is already published by "
                    f"service {other['spec']['name']}"
                )
    try:
        netstate.ensure_ingress(state, svc["spec"], dict(cmd, service_id=svc["id"]))
        netstate.assign_vips(state, svc)
    except netstate.NetError as exc:
        raise CommandError(str(exc)) from None


def _op_service_update(state: ClusterState, cmd: Mapping[str, Any]) -> dict[str, Any]:
    svc = _service(state, cmd)
    now = _now(cmd)
    rollback = bool(cmd.get("rollback"))
    if rollback:
        if not svc.get("previous_spec"):
            raise CommandError(f"service {svc['spec']['name']} does not have a previous spec")
        spec = _spec(svc["previous_spec"])
    else:
        spec = _spec(cmd.get("spec"))
    old = svc["spec"]
    if spec["mode"] != old["mode"]:
        raise CommandError(
            f"service {old['name']}: the mode cannot change ({old['mode']} to {spec['mode']})"
        )
    if spec["name"] != old["name"] and _name_taken(state, spec["name"], but=svc["id"]):
        raise CommandError(f"service {spec['name']} already exists (names are unique)")
    _refs_exist(state, spec)
    svc["spec"] = spec
    try:
        _endpoints(state, svc, cmd)
    except CommandError:
        svc["spec"] = old
        raise
    svc["previous_spec"] = old
    svc["version"] = int(svc["version"]) + 1
    svc["updated_at"] = now
    svc["update_status"] = {
        "state": "rollback_started" if rollback else "updating",
        "started_at": now,
        "completed_at": None,
        "message": "rollback in progress" if rollback else "update in progress",
    }
    return {"service_id": svc["id"], "version": svc["version"]}


def _op_service_rm(state: ClusterState, cmd: Mapping[str, Any]) -> dict[str, Any]:
    svc = _service(state, cmd)
    del state.services[svc["id"]]
    netstate.release_vips(state, svc["id"])
    for task in state.tasks.values():
        if task["service_id"] == svc["id"] and task["desired_state"] != "remove":
            task["desired_state"] = "remove"
    return {"service_id": svc["id"], "name": svc["spec"]["name"]}


def _op_service_update_status(state: ClusterState, cmd: Mapping[str, Any]) -> dict[str, Any]:
    status = cmd.get("update_status")
    if status is not None:
        if not isinstance(status, Mapping) or status.get("state") not in sv.UPDATE_STATES:
            raise CommandError(f"invalid update status {status!r}")
        status = dict(status)
    svc = state.services.get(str(cmd.get("service_id", "")))
    # The service may have been removed after the orchestrator planned this: nothing to do.
    if svc is None:
        return {"changed": False}
    changed = svc.get("update_status") != status
    svc["update_status"] = status
    return {"changed": changed}


def _set_status(task: dict[str, Any], update: Mapping[str, Any], now: float) -> bool:
    """One forward-only state report; True when the task changed.

    An earlier state is ignored and a terminal state is final. A report of the current state
    refreshes its details (health, pid, message) without counting as a state change.
    """
    new_state = update.get("state", task["state"])
    if new_state not in sv.STATE_INDEX:
        raise CommandError(f"task {task['id']}: unknown state {new_state!r}")
    current = sv.STATE_INDEX[task["state"]]
    target = sv.STATE_INDEX[new_state]
    if target < current or task["state"] in sv.TERMINAL:
        return False
    before = dict(task)
    if target > current:
        task["state"] = new_state
        task["updated_at"] = now
    for key in ("message", "error", "exit_code", "pid", "healthy", "started_at"):
        if key in update:
            task[key] = update[key]
    return task != before


def _release_if_ended(state: ClusterState, task: dict[str, Any]) -> None:
    """A task that ended gives its overlay addresses back."""
    if task["state"] in sv.TERMINAL and task.get("networks"):
        netstate.release_task(state, task["id"])


def _op_tasks_write(state: ClusterState, cmd: Mapping[str, Any]) -> dict[str, Any]:
    now = _now(cmd)
    created, changed = [], 0
    new_tasks = []
    for raw in cmd.get("create") or []:
        try:
            new_tasks.append(sv.check_task(raw))
        except sv.SpecError as exc:
            raise CommandError(str(exc)) from None
    desired = dict(cmd.get("desired") or {})
    for value in desired.values():
        if value not in sv.DESIRED_INDEX:
            raise CommandError(f"invalid desired state {value!r}")
    for new in new_tasks:
        # A replayed write, or one planned for a service removed since: skip it.
        if new["id"] in state.tasks or new["service_id"] not in state.services:
            continue
        if new.get("state") not in sv.TERMINAL and not new.get("networks"):
            error = netstate.attach_task(state, new)
            if error:
                new.update(state="rejected", message="rejected", error=error, updated_at=now)
        state.tasks[new["id"]] = new
        created.append(new["id"])
    for task_id, node_id in dict(cmd.get("node") or {}).items():
        task: dict[str, Any] | None = state.tasks.get(task_id)
        if task is None or task["node_id"] or node_id not in state.nodes:
            continue
        if sv.STATE_INDEX[task["state"]] >= sv.STATE_INDEX["assigned"]:
            continue
        task.update(node_id=node_id, state="assigned", message="assigned", error="", updated_at=now)
        changed += 1
    for task_id, value in desired.items():
        task = state.tasks.get(task_id)
        if task is not None and sv.DESIRED_INDEX[value] > sv.DESIRED_INDEX[task["desired_state"]]:
            task["desired_state"] = value
            changed += 1
    for update in cmd.get("status") or []:
        task = state.tasks.get(str(update.get("id", "")))
        if task is not None and _set_status(task, update, now):
            changed += 1
            _release_if_ended(state, task)
    removed = 0
    for task_id in cmd.get("remove") or []:
        if state.tasks.pop(task_id, None) is not None:
            netstate.release_task(state, task_id)
            removed += 1
    if created or removed or cmd.get("node"):
        state.placements += 1
    return {"created": created, "changed": changed, "removed": removed}


def _op_task_status(state: ClusterState, cmd: Mapping[str, Any]) -> dict[str, Any]:
    now = _now(cmd)
    changed = []
    for update in cmd.get("updates") or []:
        if not isinstance(update, Mapping):
            raise CommandError(f"a task status update is an object, got {update!r}")
        task = state.tasks.get(str(update.get("id", "")))
        if task is not None and _set_status(task, update, now):
            changed.append(task["id"])
            _release_if_ended(state, task)
    return {"changed": changed}


def _net(
    handler: Callable[[Any, Mapping[str, Any]], dict[str, Any]],
) -> Callable[[ClusterState, Mapping[str, Any]], dict[str, Any]]:
    def run(state: ClusterState, cmd: Mapping[str, Any]) -> dict[str, Any]:
        try:
            return handler(state, cmd)
        except netstate.NetError as exc:
            raise CommandError(str(exc)) from None

    return run


_HANDLERS = {
    "init": _op_init,
    "add_node": _op_add_node,
    "update_node": _op_update_node,
    "set_role": _op_set_role,
    "remove_node": _op_remove_node,
    "leave": _op_leave,
    "set_status": _op_set_status,
    "set_addr": _op_set_addr,
    "set_raft_ops": _op_set_raft_ops,
    "rotate_token": _op_rotate_token,
    "service_create": _op_service_create,
    "service_update": _op_service_update,
    "service_rm": _op_service_rm,
    "service_update_status": _op_service_update_status,
    "tasks_write": _op_tasks_write,
    "task_status": _op_task_status,
    "network_create": _net(netstate.op_network_create),
    "network_rm": _net(netstate.op_network_rm),
    "network_attach": _net(attachments.op_network_attach),
    "network_detach": _net(attachments.op_network_detach),
    "set_overlay": _net(netstate.set_overlay),
    "netkeys_set": _net(netkeys.op_netkeys_set),
    "set_resources": _op_set_resources,
    "secret_create": _secret_op(secretrules.op_create),
    "secret_rm": _secret_op(secretrules.op_rm),
    **certrules.HANDLERS,  # cert_*: the --web nodes' certificates (meshkit.cluster.model.certs)
}
_HANDLERS.update(CLUSTER_HANDLERS)  # cluster_update, force_new_cluster

COMMANDS = tuple(_HANDLERS)

# Commands that leave the same state when applied twice: a write whose outcome is unknown
# (the raft leader changed under it) may be sent again.
IDEMPOTENT = frozenset(
    {
        "update_node",
        "set_role",
        "set_status",
        "set_addr",
        "set_raft_ops",
        "rotate_token",
        "service_update_status",
        "tasks_write",
        "task_status",
        "set_overlay",
        "network_attach",
        "network_detach",
        "set_resources",
    }
    | certrules.IDEMPOTENT
)


# -- views -------------------------------------------------------------------------------------


def node_view(node: NodeRecord, *, self_id: str = "", manager_status: str = "") -> dict[str, Any]:
    """The JSON shape of one node in `node ls --format json` and `node inspect`."""
    return {
        "ID": node.id,
        "Self": node.id == self_id,
        "Hostname": node.hostname,
        "Status": "Ready" if node.status == READY else "Down",
        "Availability": node.availability.capitalize(),
        "ManagerStatus": manager_status,
        "Role": node.role,
        "Addr": node.addr,
        "APIPort": node.api_port,
        "RaftPort": node.raft_port,
        "Labels": dict(sorted(node.labels.items())),
        "EngineVersion": node.version,
        # Docker's Description.Resources: what the node offers tasks ({} until it reported)
        "Resources": dict(node.resources),
        "CreatedAt": node.created_at,
        "UpdatedAt": node.updated_at,
    }


# -- liveness ----------------------------------------------------------------------------------


class Liveness:
    """Which nodes have sent a heartbeat recently, driven by the clock the caller passes.

    A node is alive while its last beat is at most `misses` periods old. Nodes never heard
    from since `start()` count as seen at that moment (a new leader gives every node a full
    grace time before it calls any of them Down).
    """

    def __init__(self, period: float, misses: int = 3) -> None:
        if period <= 0:
            raise ValueError("period must be positive")
        self.period = period
        self.misses = misses
        self.started_at = 0.0
        self.last_seen: dict[str, float] = {}

    @property
    def grace(self) -> float:
        return self.period * self.misses

    def start(self, now: float) -> None:
        self.started_at = now
        self.last_seen.clear()

    def beat(self, node_id: str, now: float) -> bool:
        """Record a beat; True when the node was not alive just before it."""
        was_alive = self.alive(node_id, now)
        prev = self.last_seen.get(node_id, 0.0)
        self.last_seen[node_id] = max(prev, now)
        return not was_alive

    def forget(self, node_id: str) -> None:
        self.last_seen.pop(node_id, None)

    def mark_down(self, node_id: str) -> None:
        """A node that said it is leaving: Down now, Ready again only at a new beat."""
        self.last_seen[node_id] = float("-inf")

    def alive(self, node_id: str, now: float) -> bool:
        seen = self.last_seen.get(node_id, self.started_at)
        return now - seen <= self.grace

    def changes(self, statuses: Mapping[str, str], now: float) -> dict[str, str]:
        """The statuses that differ from what the beats say: {node_id: "ready"|"down"}."""
        # (inlined `alive`: the leader runs this over every node twice a second)
        seen, start, grace = self.last_seen, self.started_at, self.grace
        out: dict[str, str] = {}
        for node_id, status in statuses.items():
            want = READY if now - seen.get(node_id, start) <= grace else DOWN
            if want != status:
                out[node_id] = want
        return out

    def node_changes(self, nodes: Mapping[str, Any], now: float) -> dict[str, str]:
        """`changes` read straight from the node records ({id: record with .status}): the
        leader runs it twice a second over every node, and building the {id: status} dict
        first doubled its cost (py-spy of a 5,000-node leader: ~7 % of its samples)."""
        seen, start, grace = self.last_seen, self.started_at, self.grace
        out: dict[str, str] = {}
        for node_id, node in nodes.items():
            want = READY if now - seen.get(node_id, start) <= grace else DOWN
            if want != node.status:
                out[node_id] = want
        return out

    def next_deadline(self, node_ids: Iterable[str], now: float) -> float | None:
        """The earliest time a node that is alive now would turn Down, if none beats."""
        times = [
            self.last_seen.get(n, self.started_at) + self.grace
            for n in node_ids
            if self.alive(n, now)
        ]
        return min(times) if times else None

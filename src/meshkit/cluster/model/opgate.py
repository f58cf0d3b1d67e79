"""Which commands the cluster may commit while its managers run different builds.

Every manager applies every raft entry. A manager whose build does not know a command refuses
it (`unknown command`) while the others apply it, and from then on its state differs from
theirs without anyone being told: the failure a rolling upgrade must never produce. So a
command newer than `BASELINE_OPS` is committed only once every manager has said that its
build applies it. Each manager says so once per start, by recording the names of the commands
and raft entry kinds it applies in its node record (`set_raft_ops`, with `OPS_MARK` among
them); the leader of a mixed cluster refuses the command with the reason before it enters
the log, and the user upgrades the other managers first.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

from meshkit.cluster.model.records import ClusterState

OPS_MARK = "ops:1"
"""In a manager's `raft_ops`: this build records every command it applies, not only the raft
entry kinds beyond single commands (what the builds before this gate recorded)."""

BASELINE_OPS = frozenset({
    "add_node", "ca_rotate_ack", "ca_rotate_start", "cert_account", "cert_challenge",
    "cert_lease", "cert_release", "cert_store", "cluster_update", "force_new_cluster", "init",
    "leave", "netkeys_set", "network_attach", "network_create", "network_detach", "network_rm",
    "remove_node", "rotate_token", "secret_create", "secret_rm", "service_create",
    "service_rm", "service_update", "service_update_status", "set_addr", "set_overlay",
    "set_raft_ops", "set_resources", "set_role", "set_status", "task_status", "tasks_write",
    "update_node",
})  # fmt: skip
"""The commands every build that can still be a manager of this cluster applies: those of the
build that brought this gate (a frozen list, never computed from the handlers: a command added
later must be announced before it is used)."""


def announced_ops(commands: Iterable[str], entry_kinds: Iterable[str]) -> list[str]:
    """What a manager records in its node record: its commands, its raft entry kinds beyond
    single commands (batch) and `OPS_MARK`, sorted."""
    return sorted({*commands, *entry_kinds, OPS_MARK})


def refusal(state: ClusterState, op: str, commands: Collection[str]) -> str | None:
    """Why `op` may not be committed now (some manager's build cannot apply it), or None.
    `commands` are this build's: one it does not know either is left to the state machine's
    own refusal (`unknown command`)."""
    if op in BASELINE_OPS or op not in commands:
        return None
    for manager in state.managers():
        if OPS_MARK not in manager.raft_ops or op not in manager.raft_ops:
            return (
                f"manager {manager.hostname} ({manager.id[:12]}) runs a meshkit build that "
                f"cannot apply the {op!r} command yet (or has not said which it applies since "
                f"it started); upgrade every manager to this version first, then try again"
            )
    return None

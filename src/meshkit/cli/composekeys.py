"""The keys of compose's format 3 and what `meshkit stack` does with each (data only): a
service key is translated ("use"), refused by name ("not supported yet": what would run would
differ from what the file says) or ignored with a warning (container-only settings); the other
key sets are the sub-keys compose's schema allows, so that a key it does not have is an error,
as Docker's schema check makes it."""

from __future__ import annotations

__all__ = [
    "DEPLOY_KEYS",
    "FILE_KEYS",
    "HEALTH_KEYS",
    "IGNORED",
    "NETWORK_KEYS",
    "NOT_YET",
    "PLACEMENT_KEYS",
    "PORT_KEYS",
    "REF_KEYS",
    "RESTART_KEYS",
    "SERVICE_KEYS",
    "TOP_KEYS",
    "UPDATE_KEYS",
    "USE",
]

USE = "use"
NOT_YET = "not supported yet"
IGNORED = "ignored: not supported"

SERVICE_KEYS: dict[str, str] = {
    # translated into the spec
    "command": USE, "entrypoint": USE, "environment": USE, "env_file": USE, "working_dir": USE,
    "user": USE, "deploy": USE, "ports": USE, "expose": USE, "networks": USE,
    "healthcheck": USE, "stop_grace_period": USE, "stop_signal": USE, "image": USE,
    "secrets": USE, "configs": USE, "volumes": USE, "hostname": USE, "dns": USE,
    "dns_search": USE, "tmpfs": USE, "init": USE,
    # what runs would differ from the file: refused by name
    "network_mode": NOT_YET, "devices": NOT_YET, "extra_hosts": NOT_YET, "ulimits": NOT_YET,
    "sysctls": NOT_YET, "userns_mode": NOT_YET, "pid": NOT_YET,
    "ipc": NOT_YET, "privileged": NOT_YET, "read_only": NOT_YET, "shm_size": NOT_YET,
    # container settings with no meaning for a process (Docker ignores several in stacks)
    "build": IGNORED, "cap_add": IGNORED, "cap_drop": IGNORED, "cgroup_parent": IGNORED,
    "container_name": IGNORED, "credential_spec": IGNORED, "depends_on": IGNORED,
    "domainname": IGNORED, "external_links": IGNORED, "isolation": IGNORED,
    "labels": IGNORED, "links": IGNORED, "logging": IGNORED, "mac_address": IGNORED,
    "restart": IGNORED, "security_opt": IGNORED, "stdin_open": IGNORED, "tty": IGNORED,
}  # fmt: skip

DEPLOY_KEYS = frozenset(
    {
        "mode", "replicas", "labels", "placement", "update_config", "rollback_config",
        "restart_policy", "resources", "endpoint_mode",
    }
)  # fmt: skip
UPDATE_KEYS = frozenset(
    {"parallelism", "delay", "failure_action", "monitor", "max_failure_ratio", "order"}
)
RESTART_KEYS = frozenset({"condition", "delay", "max_attempts", "window"})
HEALTH_KEYS = frozenset({"test", "interval", "timeout", "retries", "start_period", "disable"})
PLACEMENT_KEYS = frozenset({"constraints", "preferences", "max_replicas_per_node"})
PORT_KEYS = frozenset({"target", "published", "protocol", "mode"})
NETWORK_KEYS = frozenset(
    {"driver", "driver_opts", "ipam", "external", "internal", "attachable", "labels", "name"}
)
TOP_KEYS = frozenset({"version", "services", "networks", "volumes", "secrets", "configs"})
FILE_KEYS = frozenset(
    {"file", "external", "name", "labels", "driver", "driver_opts", "template_driver"}
)
REF_KEYS = frozenset({"source", "target", "uid", "gid", "mode"})

"""This node's local volumes on its Unix socket: ``volume_ls`` and ``volume_rm`` (refused with
code conflict while a task of this node uses the volume). Volumes are per node, as Docker's
local driver keeps them: the folders under DATA_DIR/volumes (meshkit.cluster.tasks.mounts)."""

from __future__ import annotations

from typing import Any

from meshkit.cluster.api.context import NodeContext
from meshkit.cluster.rpc.transport import RpcError
from meshkit.cluster.tasks import mounts as taskmounts

VOLUME_METHODS = frozenset({"volume_ls", "volume_rm"})


def _users(node: NodeContext) -> dict[str, list[str]]:
    ex = node.executor
    return {} if ex is None else ex.volume_users()


async def volume_call(node: NodeContext, method: str, params: dict[str, Any]) -> Any:
    users = _users(node)
    if method == "volume_ls":
        names = sorted(set(taskmounts.list_volumes(node.data_dir)) | set(users))
        return {
            "volumes": [
                {
                    "Driver": "local",
                    "Name": name,
                    "Mountpoint": str(taskmounts.volume_path(node.data_dir, name)),
                    "UsedBy": users.get(name, []),
                }
                for name in names
            ]
        }
    name = str(params["name"])
    if users.get(name):
        raise RpcError(
            "conflict",
            f"remove {name}: volume is in use - [{', '.join(users[name])}]",
        )
    try:
        taskmounts.remove_volume(node.data_dir, name)
    except FileNotFoundError:
        raise RpcError("not_found", f"get {name}: no such volume") from None
    except OSError as exc:
        raise RpcError("conflict", f"remove {name}: {exc.strerror or exc}") from None
    return {"name": name}

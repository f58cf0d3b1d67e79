"""The RPC methods of `meshkit cluster ca [--rotate]` (the phases are
meshkit.cluster.model.carotation; the node side is meshkit.cluster.node.renewal).

    ca_status   {}  -> {"root": pem of the signing root, "phase", "id", "done", "total",
                        "nodes_done", "nodes_total"}                          (managers)
    ca_rotate   {}  -> the same, after the rotation started                 (managers)
    ca_ack      {"node_id", "id", "phase"} -> {"phase"}   a node took the renewed certificate
                of a rotation phase into use (any node certificate; CN = node_id)

The new root's key and the new join secrets are sealed (the cluster data key, which autolock
wraps) before they are proposed to raft, like the first root's key.
"""

from __future__ import annotations

import os
import time
from typing import Any

from meshkit.cluster.api.common import caller, loaded_state, str_param
from meshkit.cluster.api.context import NodeContext
from meshkit.cluster.model import carotation
from meshkit.cluster.model.records import ClusterState
from meshkit.cluster.raft.sealing import SealError
from meshkit.cluster.rpc.pki import ClusterCA, key_id
from meshkit.cluster.rpc.tokens import ca_digest, new_secret
from meshkit.cluster.rpc.transport import Peer, RpcError

CA_MANAGER_METHODS = frozenset({"ca_status", "ca_rotate"})
CA_NODE_METHODS = frozenset({"ca_ack"})


def beat_extra(st: ClusterState) -> dict[str, Any]:
    """What a heartbeat reply says about a rotation in progress: the bundle digest and the
    signing root a node's certificate must have (nothing outside a rotation)."""
    rot = carotation.active(st)
    if rot is None:
        return {}
    return {
        "ca": {
            "id": rot["id"],
            "phase": rot["phase"],
            "bundle": ca_digest(carotation.bundle(st).encode()),
            "signer": key_id(st.ca_cert_pem.encode()),
        }
    }


def retired_text(st: ClusterState, digest: str) -> str | None:
    """The refusal of a token whose digest is a root a rotation retired."""
    if digest in carotation.retired_digests(st):
        return (
            "invalid join token: the cluster CA was rotated (`meshkit cluster ca --rotate`) and "
            "this token belongs to the old CA; ask a manager for a new one with "
            "`meshkit node join-token worker` or `manager`"
        )
    return None


class CaRotationMethods:
    """ca_status, ca_rotate and ca_ack."""

    def __init__(self, node: NodeContext) -> None:
        self.node = node

    def _status(self) -> dict[str, Any]:
        st = loaded_state(self.node)
        return {"root": st.ca_cert_pem, **carotation.progress(st)}

    async def ca_status(self, peer: Peer, params: dict[str, Any]) -> Any:
        st = loaded_state(self.node)
        rot = carotation.active(st)
        if rot is not None and set(carotation.required(st)) <= set(rot["done"]):
            # The nodes still missing went Down since the last ack: nothing else would move
            # the phase on, so the poll of `cluster ca --rotate` does (an ack re-checks).
            await self.node.submit(
                {
                    "op": "ca_rotate_ack",
                    "node_id": rot["done"][0],
                    "id": rot["id"],
                    "phase": rot["phase"],
                }
            )
        return self._status()

    async def ca_rotate(self, peer: Peer, params: dict[str, Any]) -> Any:
        st = loaded_state(self.node)
        if carotation.active(st) is not None:
            return self._status()  # `--rotate` again while one runs: follow that one
        sealer = self.node.sealer
        try:
            old = ClusterCA.from_pem(st.ca_cert_pem.encode(), sealer.open(st.ca_key_pem).encode())
            new = ClusterCA.create(st.cluster_id, path_length=1)
            rotation = {
                "id": os.urandom(8).hex(),
                "new_cert": new.cert_pem.decode(),
                "new_key": sealer.seal(new.key_pem.decode()),
                "cross": old.cross_sign(new.cert).decode(),
                "new_worker_secret": sealer.seal(new_secret()),
                "new_manager_secret": sealer.seal(new_secret()),
                "old_digest": ca_digest(st.ca_cert_pem.encode()),
            }
        except SealError as exc:
            raise RpcError("unavailable", str(exc)) from None
        await self.node.submit({"op": "ca_rotate_start", "rotation": rotation, "now": time.time()})
        return self._status()

    async def ca_ack(self, peer: Peer, params: dict[str, Any]) -> Any:
        node = caller(self.node, peer, params)
        return await self.node.submit(
            {
                "op": "ca_rotate_ack",
                "node_id": node.id,
                "id": str_param(params, "id"),
                "phase": str_param(params, "phase"),
            }
        )

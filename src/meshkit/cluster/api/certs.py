"""The RPC methods through which `--web` nodes share their certificates (the rules and the state
are meshkit.cluster.model.certs; the node side is meshkit.cluster.node.webcerts).

Node methods (any node certificate of the cluster whose CN is the node asked about), served by
managers:

    webcert_lease     {"node_id", "name", "ttl"}  -> {"taken", "holder", "expires", "site"?}
                      the order lease for a name (compare-and-set); "site" is the certificate
                      stored for it, key opened: {"name", "ca", "chain", "key" (base64 PEM),
                      "not_after", ...}
    webcert_release   {"node_id", "name", "hold"?}  -> {"released"}   hold: seconds the lease
                      stays the caller's (its failed order's backoff)
    webcert_store     {"node_id", "name", "ca", "chain", "key" (base64 PEM), "not_after",
                       "obtained"}                 -> {"name"}
    webcert_account   {"node_id", "ca", "email", "key" (base64 PEM), "regr"} -> {"account"}
    webcert_challenge {"node_id", "kind", "id", "value"} -> {"id", "removed"}
    webcert_watch     {"node_id", "epoch"?, "version"?, "wait"?}
                      -> {"epoch", "version", "sites", "accounts", "tokens", "alpn"}
                      a long poll like netmap_watch: keys opened (base64), for the node's
                      memory only

Private keys arrive in clear over the mutual-TLS channel and are sealed here (AES-GCM under
the cluster data key, meshkit.cluster.raft.sealing) before they are proposed to raft; they are
opened only to answer a node (never logged).
"""

from __future__ import annotations

import base64
import binascii
import os
import time
from collections.abc import Mapping
from typing import Any

from meshkit.cluster.api.common import caller, loaded_state, str_param
from meshkit.cluster.api.context import NodeContext
from meshkit.cluster.api.longpoll import ChangeSignal
from meshkit.cluster.model import certs as certrules
from meshkit.cluster.rpc.transport import Peer, RpcError

NODE_CERT_METHODS = frozenset(
    {
        "webcert_lease",
        "webcert_release",
        "webcert_store",
        "webcert_account",
        "webcert_challenge",
        "webcert_watch",
    }
)

WATCH_WAIT = 20.0
MAX_PEM = 64 * 1024


def site_aad(name: str) -> str:
    return "webcert site " + name


def account_aad(ref: str) -> str:
    return "webcert account " + ref


def _pem(params: Mapping[str, Any], key: str) -> bytes:
    text = params.get(key)
    if not isinstance(text, str) or not text or len(text) > 2 * MAX_PEM:
        raise RpcError("bad_request", f"parameter {key!r} must be base64 PEM of at most 64 KiB")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RpcError("bad_request", f"parameter {key!r} is not base64") from None


class CertMethods:
    """The webcert_* methods of one node's API."""

    def __init__(self, node: NodeContext) -> None:
        self.node = node
        self.epoch = os.urandom(6).hex()
        self.version = 0
        self._changed = ChangeSignal()
        self._pending: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())

    # -- change notification (every applied command) -------------------------------------------

    def applied(self, cmd: Mapping[str, Any]) -> None:
        op = str(cmd.get("op"))
        if op not in certrules.HANDLERS:
            return
        st = self.node.state
        if st is None:
            return
        # leases are not followed, but ending or taking over an order drops challenges
        pending = (tuple(certrules.area(st, "tokens")), tuple(certrules.area(st, "alpn")))
        changed, self._pending = pending != self._pending, pending
        if op in ("cert_lease", "cert_release") and not changed:
            return
        self.version += 1
        self._changed.notify()

    # -- sealing -------------------------------------------------------------------------------

    def _seal(self, data: bytes, aad: str) -> str:
        from meshkit.cluster.raft.sealing import SealError

        try:
            return self.node.sealer.seal_bytes(data, aad)
        except SealError as exc:
            raise RpcError("unavailable", str(exc)) from None

    def _open(self, sealed: str, aad: str) -> str:
        from meshkit.cluster.raft.sealing import SealError

        try:
            return base64.b64encode(self.node.sealer.open_bytes(sealed, aad)).decode("ascii")
        except SealError as exc:
            raise RpcError("unavailable", str(exc)) from None

    def _site_view(self, site: Mapping[str, Any]) -> dict[str, Any]:
        return {**site, "key": self._open(str(site["key"]), site_aad(str(site["name"])))}

    # -- methods -------------------------------------------------------------------------------

    async def webcert_lease(self, peer: Peer, params: dict[str, Any]) -> Any:
        node = caller(self.node, peer, params)
        ttl = params.get("ttl")
        if isinstance(ttl, bool) or not isinstance(ttl, (int, float)):
            raise RpcError("bad_request", "parameter 'ttl' must be a number of seconds")
        result = await self.node.submit(
            {
                "op": "cert_lease",
                "name": str_param(params, "name"),
                "holder": node.id,
                "ttl": float(ttl),
                "now": time.time(),
            }
        )
        out = dict(result)
        site = out.pop("site", None)
        if site:
            out["site"] = self._site_view(site)
        return out

    async def webcert_release(self, peer: Peer, params: dict[str, Any]) -> Any:
        node = caller(self.node, peer, params)
        hold = params.get("hold")
        if hold is not None and (isinstance(hold, bool) or not isinstance(hold, (int, float))):
            raise RpcError("bad_request", "parameter 'hold' must be a number of seconds")
        return await self.node.submit(
            {
                "op": "cert_release",
                "name": str_param(params, "name"),
                "holder": node.id,
                "hold": float(hold or 0.0),
                "now": time.time(),
            }
        )

    async def webcert_store(self, peer: Peer, params: dict[str, Any]) -> Any:
        node = caller(self.node, peer, params)
        name = str_param(params, "name")
        chain = _pem(params, "chain")
        site = {
            "name": name,
            "ca": str_param(params, "ca", required=False),
            "chain": chain.decode("ascii", "replace"),
            "key": self._seal(_pem(params, "key"), site_aad(name)),
            "not_after": str_param(params, "not_after", required=False),
            "obtained": str_param(params, "obtained", required=False),
        }
        return await self.node.submit(
            {"op": "cert_store", "site": site, "holder": node.id, "now": time.time()}
        )

    async def webcert_account(self, peer: Peer, params: dict[str, Any]) -> Any:
        caller(self.node, peer, params)
        ca = str_param(params, "ca")
        email = str_param(params, "email", required=False)
        ref = certrules.account_key(ca, email)
        account = {
            "ca": ca,
            "email": email,
            "key": self._seal(_pem(params, "key"), account_aad(ref)),
            "regr": str_param(params, "regr", required=False),
        }
        return await self.node.submit({"op": "cert_account", "account": account})

    async def webcert_challenge(self, peer: Peer, params: dict[str, Any]) -> Any:
        node = caller(self.node, peer, params)
        value = params.get("value")
        if value is not None and not isinstance(value, dict):
            raise RpcError("bad_request", "parameter 'value' must be an object or null")
        return await self.node.submit(
            {
                "op": "cert_challenge",
                "kind": str_param(params, "kind"),
                "id": str_param(params, "id"),
                "value": value,
                "holder": node.id,
            }
        )

    async def webcert_watch(self, peer: Peer, params: dict[str, Any]) -> Any:
        caller(self.node, peer, params)
        wait = params.get("wait")
        wait = min(float(wait), 60.0) if isinstance(wait, (int, float)) else WATCH_WAIT
        if params.get("epoch") == self.epoch and params.get("version") == self.version:
            version = self.version
            await self._changed.wait_until(lambda: self.version != version, wait)
        feed = certrules.feed(loaded_state(self.node))
        return {
            "epoch": self.epoch,
            "version": self.version,
            "sites": {n: self._site_view(s) for n, s in feed["sites"].items()},
            "accounts": {
                ref: {**a, "key": self._open(str(a["key"]), account_aad(ref))}
                for ref, a in feed["accounts"].items()
            },
            "tokens": feed["tokens"],
            "alpn": feed["alpn"],
        }

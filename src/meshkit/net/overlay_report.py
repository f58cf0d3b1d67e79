"""What a node's overlay reports: the summary riding on heartbeats (`node ls`, `meshkit
doctor`) and the data-plane counters; part of meshkit.net.overlay.NodeOverlay."""

from __future__ import annotations

from typing import Any

from meshkit.net.overlay_net import BuiltNet as _Net


class OverlayReport:
    """NodeOverlay's reporting; the attributes are NodeOverlay's."""

    _nets: dict[str, _Net]
    _dataplane: Any
    _control: dict[str, bool]
    _errors: dict[str, str]
    _map: dict[str, Any]
    gateway: Any

    def report(self) -> dict[str, Any]:
        """This node's overlay in a few stable facts (no timings, so that it changes, and is
        committed, only when something flips)."""
        planes = {net_id: b.plane for net_id, b in self._nets.items()}
        distinct = sorted(set(planes.values()))
        peers: dict[str, dict[str, Any]] = {}
        for built in self._nets.values():
            if built.probe is None:
                continue
            for peer_id, res in built.probe.results().items():
                facts = {
                    "control": self._control.get(peer_id),
                    "vxlan": res.reachable,
                    "mtu": res.path_mtu,
                    "overlay_mtu": built.mtu,
                    "network": built.name,
                }
                old = peers.get(peer_id)
                # across networks: a peer counts as reachable when any network reaches it
                if old is None or (old["vxlan"] is not True and res.reachable is True):
                    peers[peer_id] = facts
        for peer_id, ok in self._control.items():
            peers.setdefault(
                peer_id,
                {"control": ok, "vxlan": None, "mtu": None, "overlay_mtu": None, "network": ""},
            )
        gateway = self.gateway.status() if self.gateway is not None else None
        if gateway is not None and not gateway["subnet"] and not self._map.get("gateways"):
            gateway = None  # no network map yet (or a cluster without gateway subnets)
        if not planes and not peers and not self._errors and gateway is None:
            return {}  # no overlay here: nothing to commit on every node's first beat
        out: dict[str, Any] = {
            "dataplane": "/".join(distinct),
            "dataplanes": planes,
            "peers": peers,
        }
        if gateway is not None:
            out["gateway"] = gateway
        if self._errors:
            out["errors"] = dict(self._errors)
        return out

    def built(self) -> set[str]:
        """The networks whose namespace, bridge and VXLAN port are up on this node."""
        return {net_id for net_id, n in self._nets.items() if n.ready.is_set()}

    def nodes(self) -> dict[str, Any]:
        """The nodes of the last network map: id -> {addr, api_port, hostname}."""
        return dict(self._map.get("nodes") or {})

    def stats(self) -> dict[str, Any]:
        """Data-plane counters (userspace) for `meshkit doctor --json`, and the encrypted
        networks: name -> {"key_ids", "tx_key", "dataplane"} (key ids only, never keys)."""
        if self._dataplane is None:
            return {}
        out = dict(self._dataplane.stats())
        out["encrypted"] = {
            b.name: {
                "key_ids": [k.id for k in b.keys],
                "tx_key": b.tx_id,
                "dataplane": "userspace (forced: encrypted network)",
            }
            for b in self._nets.values()
            if b.encrypted
        }
        return out

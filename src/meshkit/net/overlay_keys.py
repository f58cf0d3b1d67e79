"""The keys of a node's encrypted overlay networks, given to the userspace plane: part of
meshkit.net.overlay.NodeOverlay (its module docstring says when a key is used for what)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from meshkit.net.overlay_net import BuiltNet as _Net
from meshkit.net.overlay_net import OverlayError

log = logging.getLogger("meshkit.net.overlay")

TX_SWITCH_DELAY = 2.0  # seconds between receiving with a new key and sending with it


class OverlayKeys:
    """NodeOverlay's key handling; the attributes are NodeOverlay's."""

    _nets: dict[str, _Net]
    _dataplane: Any

    def _take_keys(self, built: _Net, entries: list[dict[str, Any]]) -> None:
        """Give the plane an encrypted network's keys: receive with all of them now, send
        with the newest one now when there is no usable sending key yet, else after
        TX_SWITCH_DELAY (see the module docstring)."""
        from meshkit.net.vxlan import seal
        from meshkit.net.vxlan.plane import DataplaneError

        try:
            keys = sorted((seal.key_from_wire(e) for e in entries), key=lambda k: k.id)
        except seal.SealError as exc:
            raise OverlayError(f"network {built.name}: {exc}") from None
        ids = [k.id for k in keys]
        if keys == built.keys:
            return
        newest = ids[-1] if ids else None
        tx = built.tx_id if built.tx_id in ids else newest
        try:
            self._dataplane.set_keys(built.vni, keys, tx or 0)
        except DataplaneError as exc:
            raise OverlayError(f"userspace data plane: {exc}") from None
        built.keys, built.tx_id = keys, tx
        if built.switch is not None:
            built.switch.cancel()
            built.switch = None
        if newest is not None and tx != newest:
            built.switch = asyncio.get_running_loop().call_later(
                TX_SWITCH_DELAY, self._switch_tx, built, newest
            )
        log.info("overlay network %s: keys %s, sending with %s", built.name, ids, tx)

    def _switch_tx(self, built: _Net, key_id: int) -> None:
        built.switch = None
        if self._nets.get(built.id) is not built or key_id not in [k.id for k in built.keys]:
            return
        try:
            self._dataplane.set_keys(built.vni, built.keys, key_id)
            built.tx_id = key_id
            log.info("overlay network %s: sending with key %s", built.name, key_id)
        except Exception as exc:  # the plane is gone (closing): nothing to send with
            log.warning("overlay network %s: key %s not taken: %s", built.name, key_id, exc)

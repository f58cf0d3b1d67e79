"""A VIP on every port, on one node: which path the node uses and the I/O that keeps it built.

The plan (meshkit.mesh.plan) gives, per overlay namespace, its VIPs with their up tasks and the
ports their relays already serve. The node's path (meshkit.net.vipnat) is chosen once, on the
first namespace that has a VIP, from ``MESHKIT_VIP_PATH`` (auto, nft, relay, ports) and what
the kernel takes:

- ``nft``: the namespace's table DNATs every other TCP/UDP port to the tasks (kernel fast
  path, flows pinned by conntrack);
- ``relay``: nft only redirects TCP (and hands UDP over by tproxy) to one relay per namespace
  (meshkit.l4.origdst: SO_ORIGINAL_DST, IP_RECVORIGDSTADDR), for kernels whose nf_tables
  lacks the NAT/numgen expressions the first needs, or when asked for (policies of the
  connection table, flow counts in doctor);
- ``ports``: no nft at all: a VIP answers on its declared ports only, as before, and
  ``meshkit doctor`` says why.

Declared ports are never touched: their relays listen on the VIP as they always did.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

from meshkit.l4.origdst import OrigDstRelay
from meshkit.net import vipnat
from meshkit.net.gateway import GatewayError

log = logging.getLogger("meshkit.mesh")

WHY = {
    "nft": "nftables DNAT (kernel, round robin, flows pinned by conntrack)",
    "relay": "nftables redirect (TCP, SO_ORIGINAL_DST) and tproxy (UDP) to the L4 relay",
    "ports": "declared ports only",
}


class VipPorts:
    """Every overlay namespace's VIP table (and relay, on the relay path) on this node."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        try:
            self.setting = vipnat.wanted_path(env)
            self._bad_setting = ""
        except ValueError as exc:
            self.setting = "auto"
            self._bad_setting = str(exc)
            log.error("mesh: %s; using auto", exc)
        self.path = ""  # decided with the first namespace that has a VIP
        self.why = ""
        self._applied: dict[str, vipnat.NsVips] = {}
        self._relays: dict[str, tuple[OrigDstRelay, Any]] = {}
        self.errors: dict[str, str] = {}

    async def sync(self, wanted: Mapping[str, vipnat.NsVips]) -> None:
        for ns in [n for n in self._applied if n not in wanted]:
            self._applied.pop(ns)
            self._close_relay(ns)  # the namespace went (its table with it)
            self.errors.pop(ns, None)
        for ns, entries in sorted(wanted.items()):
            if self._applied.get(ns) == entries:
                continue
            if not entries[1] and ns not in self._applied:
                continue  # never had a VIP: no table needed
            try:
                await self._apply(ns, entries)
            except (GatewayError, OSError) as exc:
                text = str(exc)
                if self.errors.get(ns) != text:
                    log.error("mesh: VIPs on every port in %s: %s", ns, text)
                self.errors[ns] = text
                continue
            self.errors.pop(ns, None)
            self._applied[ns] = entries

    async def _apply(self, ns: str, entries: vipnat.NsVips) -> None:
        if not self.path:
            await self._decide(ns, entries)
            return
        if self.path == "nft":
            await asyncio.to_thread(vipnat.apply_in, ns, vipnat.nat_ruleset(entries[1], entries[0]))
        elif self.path == "relay":
            await self._apply_relay(ns, entries)

    async def _decide(self, ns: str, entries: vipnat.NsVips) -> None:
        """The node's path: the first that works of those the setting allows."""
        if self.setting == "ports":
            self.path, self.why = "ports", f"{vipnat.ENV}=ports"
        elif not vipnat.have_nft():
            self.path, self.why = "ports", "no nft binary (Debian's nftables package)"
        else:
            tried: list[str] = []
            order = ["nft", "relay"] if self.setting in ("auto", "nft") else ["relay"]
            if self.setting == "nft":
                order = ["nft"]
            for path in order:
                try:
                    if path == "nft":
                        await asyncio.to_thread(
                            vipnat.apply_in, ns, vipnat.nat_ruleset(entries[1], entries[0])
                        )
                    else:
                        await self._apply_relay(ns, entries)
                except GatewayError as exc:  # nft or the kernel said no (an OSError, e.g.
                    tried.append(f"{path}: {exc}")  # the namespace gone, decides nothing)
                    continue
                self.path = path
                self.why = WHY[path] + (f" ({'; '.join(tried)})" if tried else "")
                break
            else:
                self.path, self.why = "ports", "; ".join(tried)
        log.info("mesh: VIPs answer %s: %s", "every port" if self.path != "ports" else
                 "their declared ports only", self.why)  # fmt: skip

    async def _apply_relay(self, ns: str, entries: vipnat.NsVips) -> None:
        have = self._relays.get(ns)
        if have is None:
            from meshkit.base.netns import NetnsRef

            ref = NetnsRef.open_name(ns)
            relay = OrigDstRelay(asyncio.get_running_loop(), ref)
            try:
                relay.start()
            except OSError:
                relay.close()
                ref.close()
                raise
            have = self._relays[ns] = (relay, ref)
        relay = have[0]
        try:
            await asyncio.to_thread(
                vipnat.apply_in,
                ns,
                vipnat.redirect_ruleset(entries[1], relay.port, relay.udp_port),
                routed_only=True,
            )
        except GatewayError:
            self._close_relay(ns)
            raise
        relay.set_vips({e.vip: e.backends for e in entries[1]})

    def _close_relay(self, ns: str) -> None:
        have = self._relays.pop(ns, None)
        if have is not None:
            have[0].close()
            have[1].close()

    def report(self) -> dict[str, Any]:
        """What doctor shows: the path, why, and per namespace what failed."""
        out: dict[str, Any] = {
            "path": self.path or "none yet (no VIP on this node)",
            "why": self._bad_setting + ("; " if self._bad_setting else "") + self.why,
        }
        if self._relays:
            out["relay_flows"] = sum(r.open_flows() for r, _ in self._relays.values())
        if self.errors:
            out["errors"] = dict(self.errors)
        return out

    async def close(self) -> None:
        """The agent stops: relays go (their flows with them); tables stay, as the gateway's
        do, so that an agent restart keeps the kernel path's flows."""
        for ns in list(self._relays):
            self._close_relay(ns)
        if self.path == "relay":
            for ns in list(self._applied):
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(vipnat.remove_in, ns)
        self._applied.clear()

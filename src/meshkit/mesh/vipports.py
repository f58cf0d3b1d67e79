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

On the ``nft`` path, the declared ports of a service that needs no relay-only feature
(VipEntry.kernel: no PROXY protocol, a policy numgen does; decided once per service by
meshkit.mesh.plan) are DNATed like its other ports and its relay is not opened (meshkit.mesh.node
asks ``kernel_serves``); their flows are counted by nft (named counters, read for doctor). The
relay's retry of a refused connect on another task is kept in kernel terms: a task's first
refusal of a flow is held back (the client sends its SYN again) and the flows of tasks that
leave the map are forgotten (meshkit.net.ctflush), so the SYN is DNATed to a live task.
``MESHKIT_VIP_DECLARED=relay`` keeps every declared port on its relay, as on the ``relay``
and ``ports`` paths.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
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
DECLARED_ENV = "MESHKIT_VIP_DECLARED"
COUNT_EVERY = 2.0  # seconds: doctor's declared-port flow counts are at most this old (+ a read)


def wanted_declared(env: Mapping[str, str]) -> str:
    """``auto`` (the default: the declared ports of services that need no relay-only feature
    are DNATed on the nft path) or ``relay`` (every declared port keeps its relay)."""
    value = env.get(DECLARED_ENV, "").strip().lower() or "auto"
    if value not in ("auto", "relay"):
        raise ValueError(f"{DECLARED_ENV}={value!r}: expected auto or relay")
    return value


class VipPorts:
    """Every overlay namespace's VIP table (and relay, on the relay path) on this node."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        import os

        env = os.environ if env is None else env
        self._bad_setting = ""
        try:
            self.setting = vipnat.wanted_path(env)
        except ValueError as exc:
            self.setting = "auto"
            self._bad_setting = str(exc)
            log.error("mesh: %s; using auto", exc)
        try:
            self.declared = wanted_declared(env)
        except ValueError as exc:
            self.declared = "auto"
            self._bad_setting += ("; " if self._bad_setting else "") + str(exc)
            log.error("mesh: %s; using auto", exc)
        self._counts: dict[str, int] = {}  # VIP -> flows DNATed to its declared ports
        self._counted_at = 0.0
        self._counting: asyncio.Task[None] | None = None
        self.path = ""  # decided with the first namespace that has a VIP
        self.why = ""
        self._applied: dict[str, vipnat.NsVips] = {}
        self._relays: dict[str, tuple[OrigDstRelay, Any]] = {}
        self.errors: dict[str, str] = {}

    async def sync(self, wanted: Mapping[str, vipnat.NsVips]) -> None:
        if self.declared == "relay":
            wanted = {
                ns: (src, tuple(dataclasses.replace(e, kernel=False) for e in entries))
                for ns, (src, entries) in wanted.items()
            }
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
            # the flows of tasks that left are forgotten once the new table is in (marked
            # flows of kernel services only): their next packet is DNATed to a live task
            forget = vipnat.gone_marks(self._applied.get(ns, ("", ()))[1], entries[1])
            document = vipnat.nat_ruleset(entries[1], entries[0])
            await asyncio.to_thread(vipnat.apply_in, ns, document, forget=forget)
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

    def kernel_serves(self, ns: str, vip: str) -> bool:
        """Whether the table in force in ``ns`` DNATs ``vip``'s declared ports (no relay)."""
        if self.path != "nft" or ns not in self._applied:
            return False
        return any(e.vip == vip and e.kernel for e in self._applied[ns][1])

    def declared_flows(self, vip: str) -> int:
        """Flows DNATed to ``vip``'s declared ports, as last counted (see report)."""
        return self._counts.get(vip, 0)

    def _count_soon(self) -> None:
        """Read the named counters again in a worker thread if the last read is old."""
        if self._counting is not None and not self._counting.done():
            return
        if time.monotonic() - self._counted_at < COUNT_EVERY:
            return
        namespaces = [ns for ns, (_, es) in self._applied.items() if any(e.kernel for e in es)]
        if self.path != "nft" or not namespaces:
            return

        def read() -> dict[str, int]:
            counts: dict[str, int] = {}
            for ns in namespaces:
                with contextlib.suppress(OSError):
                    counts.update(vipnat.declared_flows(vipnat.list_in(ns)))
            return counts

        async def count() -> None:
            self._counts = await asyncio.to_thread(read)
            self._counted_at = time.monotonic()

        with contextlib.suppress(RuntimeError):  # no running loop: the counts stay as they are
            self._counting = asyncio.get_running_loop().create_task(count())

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
        if self.declared == "relay":  # doctor prints "why"
            out["why"] += f"; {DECLARED_ENV}=relay: every declared port through its relay"
        self._count_soon()
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
        if self._counting is not None:
            self._counting.cancel()
        if self.path == "relay":
            for ns in list(self._applied):
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(vipnat.remove_in, ns)
        self._applied.clear()

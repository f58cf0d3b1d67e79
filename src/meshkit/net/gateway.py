"""Outbound access for tasks: the node's gateway bridge and its NAT (Docker's docker_gwbridge).

Every node has, in its own network namespace, the bridge ``meshkit_gwbr`` (Docker's name,
``docker_gwbridge``, is 15 bytes; ``meshkit_gwbridge`` would be 16, one more than a Linux
interface name holds). Its subnet is the node's gateway subnet from the cluster state (carved
from the end of the address pools, see meshkit.cluster.model.networks); the bridge holds the
subnet's first host address. A task with at least one network that is not ``--internal`` gets
one more interface, ``gw0``, a veth to the bridge, with an address from that subnet (handed out
here, by the node: the subnet is the node's alone) and the default route through the bridge.
Overlay subnets and VIPs stay on the task's ``eth*`` links (connected routes, more specific
than the default), so only traffic to the outside takes ``gw0``.

The node masquerades that traffic with nftables, through Debian's ``nft`` and its JSON
interface (``nft -j -f -``), run as a subprocess in a worker thread: one table ``ip meshkit``
with a ``postrouting`` NAT chain (source in the gateway subnet, not leaving by the bridge:
masquerade) and a ``forward`` filter chain (from the bridge: accept; to the bridge: only
replies, so the outside cannot open connections to tasks through the node). IPv4 forwarding
is switched on (``/proc/sys/net/ipv4/ip_forward`` of the node's namespace) and put back as it
was when the gateway is removed. All of it is made idempotently when the first network map
names the node's subnet, and removed when the node leaves the cluster (a plain agent restart
keeps it: the tasks, adopted by the next agent, keep their way out).

A node advertised on a loopback address, or run with ``MESHKIT_GATEWAY=off``, has no gateway
(several agents sharing one namespace, as one-host test clusters do, would share one bridge).

When ``nft`` is missing or nf_tables NAT is refused, one line says so in the agent's log and
tasks start without a gateway interface (no way out, but everything else works). ``status()``
is what ``meshkit doctor`` shows per node: the NAT rule present, forwarding on, and by name
what is missing.

The addresses handed out to tasks are kept in ``DATA_DIR/gateway.json`` (task id -> address),
so an agent restart that adopts running tasks never gives their addresses again.

``ruleset``, ``delete_document`` and ``nat_rule_present`` are pure (tested without a kernel).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from meshkit.net import ipam

log = logging.getLogger("meshkit.net.gateway")

BRIDGE = "meshkit_gwbr"
TASK_IFNAME = "gw0"
TABLE = "meshkit"
FAMILY = "ip"
IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
BOOK_FILE = "gateway.json"
NFT_TIMEOUT = 10.0
TASK_NETNS_DIR = Path("/run/netns")


def gateway_wanted(advertise_addr: str, env: Mapping[str, str] | None = None) -> bool:
    """Whether a node builds a gateway: not with ``MESHKIT_GATEWAY=off`` (or 0, no, false),
    and not for a node advertised on a loopback address (several agents of a one-host test
    cluster share one namespace, and nothing outside could be reached through them anyway)."""
    value = (os.environ if env is None else env).get("MESHKIT_GATEWAY", "").strip().lower()
    if value in ("off", "0", "no", "false"):
        return False
    try:
        return not ipaddress.ip_address(advertise_addr).is_loopback
    except ValueError:
        return True


class GatewayError(Exception):
    """A step of the gateway failed; the message names it and what the system said."""


# -- the nftables documents (pure) ---------------------------------------------------------


def _prefix(subnet: str) -> dict[str, Any]:
    net = ipaddress.ip_network(subnet, strict=True)
    return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}


def _iface(key: str) -> dict[str, Any]:
    return {"meta": {"key": key}}


def ruleset(subnet: str, bridge: str = BRIDGE) -> dict[str, Any]:
    """The JSON document that makes (or remakes) the table: added, flushed, then filled, so
    applying it twice leaves one copy of every rule."""
    table = {"family": FAMILY, "name": TABLE}
    base = {"family": FAMILY, "table": TABLE}
    saddr = {"payload": {"protocol": "ip", "field": "saddr"}}
    return {
        "nftables": [
            {"metainfo": {"json_schema_version": 1}},
            {"add": {"table": table}},
            {"flush": {"table": table}},
            {"add": {"chain": base | {"name": "postrouting", "type": "nat",
                                      "hook": "postrouting", "prio": 100, "policy": "accept"}}},
            {"add": {"chain": base | {"name": "forward", "type": "filter", "hook": "forward",
                                      "prio": 0, "policy": "accept"}}},
            {"add": {"rule": base | {"chain": "postrouting", "comment": "meshkit-gateway-nat",
                                     "expr": [
                {"match": {"op": "==", "left": saddr, "right": _prefix(subnet)}},
                {"match": {"op": "!=", "left": _iface("oifname"), "right": bridge}},
                {"masquerade": None},
            ]}}},
            {"add": {"rule": base | {"chain": "forward", "expr": [
                {"match": {"op": "==", "left": _iface("iifname"), "right": bridge}},
                {"accept": None},
            ]}}},
            {"add": {"rule": base | {"chain": "forward", "expr": [
                {"match": {"op": "==", "left": _iface("oifname"), "right": bridge}},
                {"match": {"op": "in", "left": {"ct": {"key": "state"}},
                           "right": ["established", "related"]}},
                {"accept": None},
            ]}}},
            {"add": {"rule": base | {"chain": "forward", "expr": [
                {"match": {"op": "==", "left": _iface("oifname"), "right": bridge}},
                {"drop": None},
            ]}}},
        ]
    }  # fmt: skip


def delete_document() -> dict[str, Any]:
    """The JSON document that removes the table (and everything in it)."""
    return {"nftables": [{"delete": {"table": {"family": FAMILY, "name": TABLE}}}]}


def nat_rule_present(listing: Mapping[str, Any], subnet: str, bridge: str = BRIDGE) -> bool:
    """Whether ``nft -j list table ip meshkit`` shows the masquerade rule for ``subnet``."""
    want = _prefix(subnet)["prefix"]
    for item in listing.get("nftables") or []:
        rule = item.get("rule") if isinstance(item, Mapping) else None
        if not rule or rule.get("table") != TABLE or rule.get("chain") != "postrouting":
            continue
        exprs = rule.get("expr") or []
        has_masq = any(isinstance(e, Mapping) and "masquerade" in e for e in exprs)
        rights = [
            e["match"].get("right")
            for e in exprs
            if isinstance(e, Mapping) and isinstance(e.get("match"), Mapping)
        ]
        has_src = any(isinstance(r, Mapping) and r.get("prefix") == want for r in rights)
        if has_masq and has_src:
            return True
    return False


def bridge_address(subnet: str) -> str:
    """The bridge's address: the subnet's first host (the tasks' default gateway)."""
    return str(ipaddress.ip_network(subnet).network_address + 1)


# -- the system steps (blocking: run them in a worker thread) --------------------------------


NFT_PATHS = ("/usr/sbin/nft", "/sbin/nft")


def find_nft() -> str | None:
    """The nft binary: on PATH, else where Debian puts it (an agent's PATH may lack sbin)."""
    return shutil.which("nft") or next((p for p in NFT_PATHS if os.access(p, os.X_OK)), None)


def run_nft(document: Mapping[str, Any] | None, *args: str) -> str:
    """``nft -j -f -`` with ``document`` (or ``nft -j ARGS``); its stdout. GatewayError with
    nft's own words (or "no nft binary") when it fails."""
    exe = find_nft()
    if exe is None:
        raise GatewayError("no nft binary (install Debian's nftables package)")
    argv = [exe, "-j", *(args or ("-f", "-"))]
    text = json.dumps(document) if document is not None else None
    try:
        proc = subprocess.run(
            argv, input=text, capture_output=True, text=True, timeout=NFT_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise GatewayError(f"nft: {exc}") from None
    if proc.returncode != 0:
        words = " ".join((proc.stderr or proc.stdout).split())[:400]
        if document is not None and (
            "Operation not supported" in words or "No such file or directory" in words
        ):
            words += " (no nf_tables NAT in this kernel?)"
        raise GatewayError(f"nft: {words or f'exit code {proc.returncode}'}")
    return proc.stdout


def read_forwarding() -> bool | None:
    try:
        return IP_FORWARD.read_text().strip() == "1"
    except OSError:
        return None


def write_forwarding(on: bool) -> None:
    try:
        IP_FORWARD.write_text("1\n" if on else "0\n")
    except OSError as exc:
        raise GatewayError(f"cannot write {IP_FORWARD}: {exc.strerror or exc}") from None


class NodeGateway:
    """This node's gateway bridge, its NAT, and the addresses of its tasks on it."""

    def __init__(self, state_dir: Path | None) -> None:
        self._book_path = None if state_dir is None else Path(state_dir) / BOOK_FILE
        self._book: dict[str, str] | None = None  # task id -> address
        self.subnet = ""
        self.bridge_ok = False
        self.nat_ok = False
        self.forwarding: bool | None = None
        self.error = ""  # the last build error, as logged
        self._forward_before: bool | None = None
        self._lock = asyncio.Lock()

    @property
    def ready(self) -> bool:
        """Tasks get a gateway interface only when the bridge and NAT both work."""
        return self.bridge_ok and self.nat_ok

    # -- building and removing ---------------------------------------------------------------

    async def ensure(self, subnet: str) -> None:
        """Make the bridge, forwarding and NAT for ``subnet`` (idempotent; cheap when built)."""
        async with self._lock:
            if subnet == self.subnet and self.ready:
                return
            try:
                await asyncio.to_thread(self._build, subnet)
                self.error = ""
            except GatewayError as exc:
                text = f"gateway: tasks get no outbound access on this node: {exc}"
                if text != self.error:
                    log.error("%s", text)
                self.error = text
            else:
                log.info(
                    "gateway bridge %s up: %s, NAT (nftables table %s %s) and forwarding on",
                    BRIDGE, subnet, FAMILY, TABLE,
                )  # fmt: skip

    def _build(self, subnet: str) -> None:
        from meshkit.net import links

        if self._book is None:
            self._book = self._load_book()
        if self.subnet and subnet != self.subnet:
            self._book.clear()  # a new subnet: the old addresses mean nothing there
            self._save_book()
        self.subnet = subnet
        net = ipam.parse_subnet(subnet)
        gw = bridge_address(subnet)
        try:
            with links.NsLinks.here() as here:
                here.ensure_bridge(
                    BRIDGE, mtu=1500, mac=ipam.mac_for(gw), addrs=[f"{gw}/{net.prefixlen}"]
                )
        except links.LinkError as exc:
            self.bridge_ok = False
            raise GatewayError(f"bridge {BRIDGE}: {exc}") from None
        self.bridge_ok = True
        before = read_forwarding()
        if self._forward_before is None and before is not None:
            self._forward_before = before
        if before is not True:
            try:
                write_forwarding(True)
            except GatewayError:
                self.forwarding = read_forwarding()
                self.nat_ok = False
                raise
        self.forwarding = read_forwarding()
        try:
            run_nft(ruleset(subnet))
        except GatewayError:
            self.nat_ok = False
            raise
        self.nat_ok = True

    async def remove(self) -> None:
        """Take it all down (the node leaves the cluster): table, bridge, forwarding as it was,
        the address book."""
        async with self._lock:
            await asyncio.to_thread(self._remove)

    def _remove(self) -> None:
        from meshkit.net import links

        if not self.subnet:
            return
        with contextlib.suppress(GatewayError):
            run_nft(delete_document())
        try:
            with links.NsLinks.here() as here:
                here.delete_link(BRIDGE)
        except links.LinkError as exc:
            log.warning("gateway: %s", exc)
        if self._forward_before is False:
            with contextlib.suppress(GatewayError):
                write_forwarding(False)
        if self._book_path is not None:
            with contextlib.suppress(FileNotFoundError):
                self._book_path.unlink()
        self._book = {}
        self.subnet = ""
        self.bridge_ok = self.nat_ok = False
        log.info("gateway bridge %s and nftables table %s %s removed", BRIDGE, FAMILY, TABLE)

    # -- tasks -------------------------------------------------------------------------------

    async def attach(self, task_id: str, task_ns: str) -> str | None:
        """Give a task ``gw0`` on the bridge with the default route; its address, or None
        when this node's gateway does not work (the task then has no way out)."""
        async with self._lock:
            if not self.ready:
                return None
            return await asyncio.to_thread(self._attach, task_id, task_ns)

    def _attach(self, task_id: str, task_ns: str) -> str:
        from meshkit.net import links

        book = self._book if self._book is not None else {}
        self._book = book
        ip = book.get(task_id)
        net = ipam.parse_subnet(self.subnet)
        if ip is None or ipaddress.IPv4Address(ip) not in net:
            taken = {v: f"task:{k}" for k, v in book.items()}
            taken[bridge_address(self.subnet)] = "gateway"
            ip = ipam.allocate({"next": 1, "addrs": taken}, self.subnet, f"task:{task_id}")
            book[task_id] = ip
            self._save_book()
        gw = bridge_address(self.subnet)
        try:
            with links.NsLinks.here() as here:
                here.ensure_veth_to_task(
                    bridge=BRIDGE,
                    local_ifname=f"gw{task_id[:12]}",
                    task_ns=task_ns,
                    task_ifname=TASK_IFNAME,
                    mac=ipam.mac_for(ip),
                    addr_cidr=f"{ip}/{net.prefixlen}",
                    mtu=1500,
                )
            with links.NsLinks(task_ns) as task:
                idx = task.index(TASK_IFNAME)
                task.ipr.route("replace", dst="0.0.0.0", dst_len=0, gateway=gw, oif=idx)
        except Exception as exc:
            raise GatewayError(f"task {task_id[:12]}: {TASK_IFNAME}: {exc}") from None
        return ip

    async def release(self, task_id: str) -> None:
        """The task's namespace is gone (its veth with it): its address is free again."""
        if self._book is None or task_id not in self._book:
            return
        async with self._lock:
            self._book.pop(task_id, None)
            await asyncio.to_thread(self._save_book)

    # -- the address book --------------------------------------------------------------------

    def _load_book(self) -> dict[str, str]:
        if self._book_path is None:
            return {}
        try:
            data = json.loads(self._book_path.read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict):
            return {}
        # a task whose namespace is gone holds nothing any more
        return {str(k): str(v) for k, v in data.items() if (TASK_NETNS_DIR / f"mk-{k}").exists()}

    def _save_book(self) -> None:
        if self._book_path is None:
            return
        from meshkit.base.files import write_private

        with contextlib.suppress(OSError):
            write_private(self._book_path, json.dumps(self._book or {}, sort_keys=True))

    # -- what doctor shows -------------------------------------------------------------------

    async def check(self) -> None:
        """Look again at what the kernel has (the table may have been flushed by someone)."""
        if not self.subnet or not self.bridge_ok:
            return
        self.forwarding, self.nat_ok = await asyncio.to_thread(self._look)

    def _look(self) -> tuple[bool | None, bool]:
        try:
            listing = json.loads(run_nft(None, "list", "table", FAMILY, TABLE) or "{}")
        except (GatewayError, ValueError):
            return read_forwarding(), False
        return read_forwarding(), nat_rule_present(listing, self.subnet)

    def status(self) -> dict[str, Any]:
        """{"bridge", "subnet", "nat", "forwarding", "ok", "missing": [what, by name]}."""
        missing: list[str] = []
        if not self.subnet:
            missing.append("no gateway subnet for this node (address pools full?)")
        elif not self.bridge_ok:
            missing.append(self.error or f"no bridge {BRIDGE}")
        else:
            if not self.nat_ok:
                why = self.error.split(": ", 1)[-1] if self.error else ""
                missing.append(
                    f"no NAT rule (nftables table {FAMILY} {TABLE})" + (f": {why}" if why else "")
                )
            if self.forwarding is False:
                missing.append("ip_forward off (net.ipv4.ip_forward = 0)")
            elif self.forwarding is None:
                missing.append(f"ip_forward unknown ({IP_FORWARD} unreadable)")
        return {
            "bridge": BRIDGE,
            "subnet": self.subnet,
            "nat": self.nat_ok,
            "forwarding": self.forwarding,
            "ok": not missing,
            "missing": missing,
        }

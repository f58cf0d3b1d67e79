"""A VIP answers on every port: the nftables rules of one overlay namespace (Docker's VIP is an
IPVS service on the whole address; kube-proxy's nftables mode is the model here).

A VIP lives on the bridge ``br0`` of each overlay network's namespace, on every node (its ARP
is answered there, see meshkit.mesh.plan). A task sending to ``VIP:any port`` reaches that
namespace through the bridge, where one table, ``ip meshkit_vip``, handles it in one of two
ways (the *path*):

``nft`` (the kernel fast path)
    prerouting: a packet to a VIP on a port the service declares (``--port``/``--publish``) goes on
    to the L4 relay listening there when the service needs the relay (``kernel`` False: see
    meshkit.mesh.plan), else it is DNATed like the others, through a rule of its own that counts the
    declared-port flows in a named counter (kept across rebuilds); any other TCP or UDP port is
    DNATed to one of the service's up tasks, ``dnat to numgen inc mod N map {0: task, 1: task,
    ...}``: round robin over new flows, each flow then pinned by conntrack. postrouting: DNATed
    flows leaving by the bridge are SNATed to this node's endpoint address on the network (unique;
    the bridge's first address is the gateway, the same on every node), so replies come back through
    this namespace to be un-NATed (the client and the task share the bridge; without it the task
    would answer the client directly from its own address). forward: a DNATed flow whose task is no
    longer one of the live tasks (it left the map) is reset (TCP) or refused (UDP) on its next
    packet, so nothing waits on it.
``relay`` (where the NAT expressions are missing, or asked for with ``MESHKIT_VIP_PATH``)
    prerouting: TCP to a VIP on an undeclared port is redirected to one L4 relay of the
    namespace (meshkit.l4.origdst), which reads the port the client asked for with
    SO_ORIGINAL_DST and relays the flow to a task picked by the connection table on that port.

The table is rebuilt whole, in one nft transaction, when the namespace's VIPs or their tasks
change (a few per second at most): the numgen counter restarts, open flows keep their
conntrack entries. ``ip_forward`` is switched on in the namespace (the DNATed packets are
forwarded back out of the bridge) and ICMP redirects off.

The documents are pure (tested without a kernel); ``apply_in``/``remove_in`` run Debian's
``nft`` (meshkit.net.gateway.run_nft) forked from a thread that entered the namespace.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from meshkit.net.gateway import GatewayError, find_nft, run_nft

log = logging.getLogger("meshkit.mesh")

TABLE = "meshkit_vip"
FAMILY = "ip"
PATHS = ("nft", "relay", "ports")
ENV = "MESHKIT_VIP_PATH"
PROTOS = ("tcp", "udp")


@dataclass(frozen=True)
class VipEntry:
    """One VIP of one namespace: its up tasks, and the ports the relays already serve."""

    vip: str
    service: str
    backends: tuple[str, ...]
    declared: tuple[tuple[int, str], ...] = field(default=())  # (port, "tcp" | "udp")
    # the declared ports need nothing only the relay does (no PROXY protocol, a policy numgen
    # does): on the nft path they are DNATed too and their relay is not opened
    kernel: bool = False


NsVips = tuple[str, tuple[VipEntry, ...]]
"""One namespace's VIPs: (this node's endpoint address there, its VIPs)."""


def wanted_path(env: Mapping[str, str] | None = None) -> str:
    """``auto`` (the default) or the path ``MESHKIT_VIP_PATH`` forces; ValueError for others."""
    value = (os.environ if env is None else env).get(ENV, "").strip().lower() or "auto"
    if value not in ("auto", *PATHS):
        raise ValueError(f"{ENV}={value!r}: expected auto, nft, relay or ports")
    return value


# -- the documents (pure) ----------------------------------------------------------------------


def _base() -> dict[str, str]:
    return {"family": FAMILY, "table": TABLE}


def _chain(name: str, kind: str, hook: str, prio: int) -> dict[str, Any]:
    return {"add": {"chain": _base() | {"name": name, "type": kind, "hook": hook, "prio": prio,
                                        "policy": "accept"}}}  # fmt: skip


def _rule(chain: str, *expr: dict[str, Any], comment: str = "") -> dict[str, Any]:
    rule: dict[str, Any] = _base() | {"chain": chain, "expr": list(expr)}
    if comment:
        rule["comment"] = comment[:120]
    return {"add": {"rule": rule}}


def _match(left: dict[str, Any], right: Any, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


def _daddr(ip: str) -> dict[str, Any]:
    return _match({"payload": {"protocol": "ip", "field": "daddr"}}, ip)


def _l4(protos: Sequence[str]) -> dict[str, Any]:
    right: Any = protos[0] if len(protos) == 1 else {"set": list(protos)}
    return _match({"meta": {"key": "l4proto"}}, right)


def _skip_declared(entry: VipEntry) -> list[dict[str, Any]]:
    """`ip daddr VIP tcp dport {declared} return`, per protocol: the relay listens there."""
    out = []
    for proto in PROTOS:
        ports = sorted({p for p, pr in entry.declared if pr == proto})
        if not ports:
            continue
        right: Any = ports[0] if len(ports) == 1 else {"set": ports}
        dport = {"payload": {"protocol": proto, "field": "dport"}}
        out.append(_rule("prerouting", _daddr(entry.vip), _match(dport, right), {"return": None}))
    return out


def counter_name(vip: str) -> str:
    """The named counter of the flows DNATed to ``vip``'s declared ports."""
    return "declared_" + vip.replace(".", "_")


def _declared_dnat(entry: VipEntry) -> list[dict[str, Any]]:
    """`ip daddr VIP tcp dport {declared} counter name C dnat to ...`, per protocol: the
    declared ports of a service that needs no relay, counted apart for doctor."""
    out = []
    for proto in PROTOS:
        ports = sorted({p for p, pr in entry.declared if pr == proto})
        if not ports:
            continue
        right: Any = ports[0] if len(ports) == 1 else {"set": ports}
        dport = {"payload": {"protocol": proto, "field": "dport"}}
        out.append(
            _rule("prerouting", _daddr(entry.vip), _l4([proto]), _match(dport, right),
                  {"counter": counter_name(entry.vip)}, *_marked_dnat_to(entry.backends),
                  comment=f"vip {entry.service} declared")
        )  # fmt: skip
    return out


MARK_MASK = 0x7FFFFFFF  # ct mark bits naming a flow's task; the top bit: "its refusal was held"
_HELD = 0x80000000


def flow_mark(ip: str) -> int:
    """The ct mark of a flow DNATed to task ``ip`` (declared ports of a kernel service): its
    address, less the top bit (tasks of one network differ below it)."""
    return int(ipaddress.IPv4Address(ip)) & MARK_MASK


def _marked_dnat_to(backends: Sequence[str]) -> list[dict[str, Any]]:
    """`ct mark set <task's mark> dnat to ct mark map {mark: task}`: the same round robin as
    _dnat_to, with each flow marked by its task so that its conntrack entry can be forgotten
    when the task leaves (meshkit.net.ctflush)."""
    mark = {"ct": {"key": "mark"}}
    if len(backends) == 1:
        return [{"mangle": {"key": mark, "value": flow_mark(backends[0])}},
                {"dnat": {"addr": backends[0]}}]  # fmt: skip
    pick = {"numgen": {"mode": "inc", "mod": len(backends), "offset": 0}}
    marks = {"set": [[i, flow_mark(ip)] for i, ip in enumerate(backends)]}
    table = {"set": [[flow_mark(ip), ip] for ip in backends]}
    return [
        {"mangle": {"key": mark, "value": {"map": {"key": pick, "data": marks}}}},
        {"dnat": {"addr": {"map": {"key": {"&": [mark, MARK_MASK]}, "data": table}}}},
    ]


def _hold_first_refusal() -> dict[str, Any]:
    """forward: the first RST a task answers a marked flow's SYN with (it is not listening:
    a task that just died, still in the map) is dropped and the flow flagged, so the client
    sends its SYN again (after about 1 s); by then the map has most often taken the task out
    and its flows were forgotten, and the SYN goes to a live task: what the relay does with a
    refused connect. A second RST passes (a port nobody serves is refused, a second late)."""
    mark = {"ct": {"key": "mark"}}
    return _rule(
        "forward",
        _match({"ct": {"key": "direction"}}, "reply"),
        _match({"ct": {"key": "status"}}, "dnat", op="in"),
        _match({"ct": {"key": "status"}}, "assured", op="!"),
        _match({"payload": {"protocol": "tcp", "field": "flags"}}, "rst", op="in"),
        _match({"&": [mark, MARK_MASK]}, 0, op="!="),
        _match({"&": [mark, _HELD]}, 0),
        {"mangle": {"key": mark, "value": {"|": [mark, _HELD]}}},
        {"drop": None},
    )


def _dnat_to(backends: Sequence[str]) -> dict[str, Any]:
    if len(backends) == 1:
        return {"dnat": {"addr": backends[0]}}
    pick = {"numgen": {"mode": "inc", "mod": len(backends), "offset": 0}}
    table = {"set": [[i, ip] for i, ip in enumerate(backends)]}
    return {"dnat": {"addr": {"map": {"key": pick, "data": table}}}}


def _head() -> list[dict[str, Any]]:
    table = {"family": FAMILY, "name": TABLE}
    return [
        {"metainfo": {"json_schema_version": 1}},
        {"add": {"table": table}},
        {"flush": {"table": table}},
        _chain("prerouting", "nat", "prerouting", -100),
    ]


def nat_ruleset(entries: Iterable[VipEntry], src: str = "", bridge: str = "br0") -> dict[str, Any]:
    """The ``nft`` path's table for one namespace (see the module docstring). ``src``: this
    node's endpoint address on the network, which DNATed flows leave from (masquerade would
    take the bridge's first address, the gateway, which every node holds)."""
    entries = sorted(entries, key=lambda e: e.vip)
    live = sorted({ip for e in entries for ip in e.backends})
    doc = [
        *_head(),
        _chain("postrouting", "nat", "postrouting", 100),
        _chain("forward", "filter", "forward", 0),
        {"add": {"set": _base() | {"name": "live", "type": "ipv4_addr"}}},
        {"flush": {"set": _base() | {"name": "live"}}},  # (flush table keeps set elements)
    ]
    if live:
        doc.append({"add": {"element": _base() | {"name": "live", "elem": live}}})
    for e in entries:
        if not e.backends:
            continue  # nothing listens on the VIP's other ports: the kernel refuses the flow
        if e.kernel:
            if e.declared:  # (an existing named counter is kept: "add" leaves it as it is)
                doc.append({"add": {"counter": _base() | {"name": counter_name(e.vip)}}})
            doc += _declared_dnat(e)
        else:
            doc += _skip_declared(e)
        dnat_to = _marked_dnat_to(e.backends) if e.kernel else [_dnat_to(e.backends)]
        doc.append(
            _rule("prerouting", _daddr(e.vip), _l4(PROTOS), *dnat_to, comment=f"vip {e.service}")
        )
    if any(e.kernel and e.backends for e in entries):
        doc.append(_hold_first_refusal())
    dnat = _match({"ct": {"key": "status"}}, "dnat", op="in")
    original = _match({"ct": {"key": "direction"}}, "original")
    gone = _match({"payload": {"protocol": "ip", "field": "daddr"}}, "@live", op="!=")
    doc += [
        _rule("postrouting", dnat, _match({"meta": {"key": "oifname"}}, bridge),
              {"snat": {"addr": src}} if src else {"masquerade": None}),
        _rule("forward", original, dnat, gone, _l4(["tcp"]),
              {"reject": {"type": "tcp reset"}}),
        _rule("forward", original, dnat, gone, {"reject": None}),
    ]  # fmt: skip
    return {"nftables": doc}


def redirect_ruleset(
    entries: Iterable[VipEntry], tcp_port: int, udp_port: int = 0
) -> dict[str, Any]:
    """The ``relay`` path's table: TCP to a VIP on an undeclared port goes to the relay on
    ``tcp_port`` of this namespace, which finds the port asked for with SO_ORIGINAL_DST; UDP
    (``udp_port``) is handed to the relay's transparent socket by TPROXY (the VIP is a local
    address here, so no policy routing is needed), which reads it with IP_RECVORIGDSTADDR."""
    doc = _head()
    if udp_port:
        doc.append(_chain("tproxy", "filter", "prerouting", -150))
    for e in sorted(entries, key=lambda e: e.vip):
        if not e.backends:
            continue
        doc += _skip_declared(e)
        doc.append(
            _rule("prerouting", _daddr(e.vip), _l4(["tcp"]), {"redirect": {"port": tcp_port}},
                  comment=f"vip {e.service}")
        )  # fmt: skip
        if udp_port:
            doc += [
                {"add": {"rule": dict(r["add"]["rule"], chain="tproxy")}}
                for r in _skip_declared(e)
                if r["add"]["rule"]["expr"][1]["match"]["left"]["payload"]["protocol"] == "udp"
            ]
            doc.append(
                _rule("tproxy", _daddr(e.vip), _l4(["udp"]), {"tproxy": {"port": udp_port}},
                      comment=f"vip {e.service}")
            )  # fmt: skip
    return {"nftables": doc}


def delete_document() -> dict[str, Any]:
    return {"nftables": [{"delete": {"table": {"family": FAMILY, "name": TABLE}}}]}


def dnat_targets(listing: Mapping[str, Any]) -> dict[str, list[str]]:
    """From ``nft -j list table ip meshkit_vip`` (or a document): VIP -> the task addresses
    its DNAT rule spreads new flows over (what the tests look at)."""
    out: dict[str, list[str]] = {}
    for item in listing.get("nftables") or []:
        if not isinstance(item, Mapping):
            continue
        rule = item.get("rule") or (item.get("add") or {}).get("rule")  # a listing or a document
        if not rule or rule.get("chain") != "prerouting":
            continue
        vip = ""
        targets: list[str] = []
        for e in rule.get("expr") or []:
            if not isinstance(e, Mapping):
                continue
            m = e.get("match")
            if isinstance(m, Mapping) and m.get("left") == {
                "payload": {"protocol": "ip", "field": "daddr"}
            }:
                vip = str(m.get("right"))
            dnat = e.get("dnat")
            if isinstance(dnat, Mapping):
                addr = dnat.get("addr")
                if isinstance(addr, str):
                    targets = [addr]
                elif isinstance(addr, Mapping):
                    data = ((addr.get("map") or {}).get("data") or {}).get("set") or []
                    targets = [str(pair[1]) for pair in data]
        if vip and targets:
            out[vip] = targets
    return out


def declared_flows(listing: Mapping[str, Any]) -> dict[str, int]:
    """From ``nft -j list table ip meshkit_vip``: VIP -> flows DNATed to its declared ports
    so far (the named counters; the nat chain sees a flow's first packet only)."""
    out: dict[str, int] = {}
    for item in listing.get("nftables") or []:
        counter = item.get("counter") if isinstance(item, Mapping) else None
        if not isinstance(counter, Mapping):
            continue
        name = str(counter.get("name") or "")
        if name.startswith("declared_"):
            out[name.removeprefix("declared_").replace("_", ".")] = int(counter.get("packets", 0))
    return out


# -- the system steps (blocking: run them in a worker thread) ------------------------------------


def _sysctl(path: str, value: str) -> None:
    with contextlib.suppress(OSError), open(path, "w") as f:
        f.write(value)


def gone_marks(before: Iterable[VipEntry], after: Iterable[VipEntry]) -> list[int]:
    """The marks of the tasks kernel services DNATed to before and no longer do: the flows
    to forget once the new table is in."""
    now = {ip for e in after if e.kernel for ip in e.backends}
    return sorted({flow_mark(ip) for e in before if e.kernel for ip in e.backends} -
                  {flow_mark(ip) for ip in now})  # fmt: skip


def apply_in(
    ns: str,
    document: Mapping[str, Any],
    bridge: str = "br0",
    *,
    routed_only: bool = False,
    forget: Sequence[int] = (),
) -> None:
    """Load ``document`` into namespace ``ns`` (forwarding on, redirects off first: the
    DNATed packets go back out of the bridge they came in by). ``routed_only``: frames the
    bridge forwards stop passing the IP hooks (bridge-nf-call-iptables 0, per namespace), as
    tproxy needs: br_netfilter loses the socket tproxy assigns. GatewayError says why not."""
    from meshkit.base.netns import NetnsRef, entered

    ref = NetnsRef.open_name(ns)  # NetnsError (an OSError) when it is gone
    try:
        with entered(ref):
            # /proc/sys/net is the opening thread's namespace's
            _sysctl("/proc/sys/net/ipv4/ip_forward", "1\n")
            _sysctl("/proc/sys/net/ipv4/conf/all/send_redirects", "0\n")
            _sysctl(f"/proc/sys/net/ipv4/conf/{bridge}/send_redirects", "0\n")
            if routed_only:
                _sysctl("/proc/sys/net/bridge/bridge-nf-call-iptables", "0\n")
            run_nft(document)  # forked from this thread: nft runs in the namespace
            if forget:  # after the new table: a flow's next packet meets the new map
                from meshkit.net.ctflush import flush_marks

                try:
                    flush_marks(list(forget), MARK_MASK)
                except OSError as exc:  # (no ctnetlink): such flows end as before, reset
                    log.warning("%s: forgetting the flows of tasks that left: %s", ns, exc)
    finally:
        ref.close()


def remove_in(ns: str) -> None:
    """Drop the table in ``ns`` (a namespace already gone is fine)."""
    from meshkit.base.netns import NetnsError, NetnsRef, entered

    try:
        ref = NetnsRef.open_name(ns)
    except NetnsError:
        return
    try:
        with entered(ref), contextlib.suppress(GatewayError):
            run_nft(delete_document())
    finally:
        ref.close()


def list_in(ns: str) -> dict[str, Any]:
    """``nft -j list table ip meshkit_vip`` in ``ns`` ({} when there is none)."""
    from meshkit.base.netns import NetnsRef, entered

    ref = NetnsRef.open_name(ns)
    try:
        with entered(ref):
            try:
                return dict(json.loads(run_nft(None, "list", "table", FAMILY, TABLE) or "{}"))
            except (GatewayError, ValueError):
                return {}
    finally:
        ref.close()


def have_nft() -> bool:
    return find_nft() is not None

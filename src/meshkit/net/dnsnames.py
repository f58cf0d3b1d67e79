"""The answers of the task DNS server at 127.0.0.11, sans-IO: a name index and a query -> reply
function, no sockets and no clock.

`Directory.from_netmap(netmap)` indexes the netmap's "services" section once per netmap
change; `answer(directory, query_wire, task_id, tcp=...)` then decides, per query, between an
`Answer` (the reply's wire bytes, ready to send), a `Forward` (a name that is not ours: the I/O
shell sends it to the host's resolvers) and None (a packet to drop).

What a task sees (as Docker swarm's embedded DNS answers it):
  NAME                    the service's VIP on each shared network (vip mode), or the IPs of
                          its up tasks (dnsrr)
  tasks.NAME              the IPs of the service's up tasks
  NAME.SLOT, NAME.SLOT.ID a task's IPs (up tasks only)
  _PORT._PROTO.NAME       SRV, one record per up task, for the service's target ports
  d.c.b.a.in-addr.arpa    PTR of a VIP (NAME.) or of an up task (its full task name)
only over networks the asking task shares with the target; everything else is forwarded, but a
single-label name, an unknown `tasks.X` or a reverse name inside an overlay subnet that is not
ours gets an authoritative NXDOMAIN here (it can only be a cluster name, so asking the host's
resolvers would only leak it). TTLs are 0 so answers follow tasks going up and down at once.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.PTR
import dns.rdtypes.IN.SRV
import dns.rrset

# What we advertise in EDNS replies: the size that avoids IP fragmentation (DNS flag day 2020).
OUR_PAYLOAD = 1232
# A client without EDNS takes at most 512 bytes over UDP (RFC 1035 4.2.1).
CLASSIC_UDP_LIMIT = 512
TCP_LIMIT = 65535
SRV_PRIORITY = 0
SRV_WEIGHT = 10
# Rendered replies kept per directory (cleared when full; a new netmap starts a new one),
# only small ones: at most MEMO_LIMIT * MEMO_MAX_REPLY bytes (8 MiB) per directory.
MEMO_LIMIT = 2048
MEMO_MAX_REPLY = 4096

_IN = dns.rdataclass.IN
_A = dns.rdatatype.A
_SRV = dns.rdatatype.SRV
_PTR = dns.rdatatype.PTR
_ANY = dns.rdatatype.ANY
_REVERSE_V4 = dns.name.from_text("in-addr.arpa.")
_PROTOCOLS = ("tcp", "udp")


@dataclass(frozen=True, slots=True)
class Answer:
    """A reply made here, ready to send (`rcode` for the server's counters)."""

    wire: bytes
    rcode: int = 0


@dataclass(frozen=True, slots=True)
class Forward:
    """A query for a name that is not ours: send it to the host's resolvers."""

    query: dns.message.Message


Reply = Answer | Forward


@dataclass(frozen=True, slots=True)
class _Task:
    """One task as DNS sees it."""

    full_name: str  # NAME.SLOT.TASKID, Docker's full task name
    up: bool
    addrs: Mapping[str, str]  # network id -> IPv4


@dataclass(frozen=True, slots=True)
class _Service:
    """One service as DNS sees it; `up` holds (ip, full task name) sorted per network."""

    name: str
    vip_mode: bool
    ports: frozenset[tuple[int, str]]  # (target port, protocol)
    nets: frozenset[str]  # every network the service has a VIP or a task address on
    vips: Mapping[str, str]
    up: Mapping[str, tuple[tuple[str, str], ...]]


@dataclass(frozen=True, slots=True)
class _Hit:
    """What a name is, for the asking task: A addresses, SRV targets, a PTR target, or a name
    that is ours and does not exist (`nx`)."""

    addrs: tuple[str, ...] = ()
    srv: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (full task name, its IPs)
    srv_port: int = 0
    ptr: str = ""
    nx: bool = False


_NXDOMAIN = _Hit(nx=True)


def _ipv4(value: Any) -> str | None:
    """`value` as a canonical IPv4 string, None when it is not one."""
    if not isinstance(value, str):
        return None
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        return None


def _addrs(raw: Any) -> dict[str, str]:
    if not isinstance(raw, Mapping):
        return {}
    out: dict[str, str] = {}
    for net, ip in raw.items():
        good = _ipv4(ip)
        if isinstance(net, str) and good is not None:
            out[net] = good
    return out


def _ports(raw: Any) -> frozenset[tuple[int, str]]:
    out: set[tuple[int, str]] = set()
    for port in raw if isinstance(raw, list) else []:
        if not isinstance(port, Mapping):
            continue
        target, proto = port.get("target"), str(port.get("protocol") or "tcp").lower()
        if isinstance(target, int) and 0 < target < 65536 and proto in _PROTOCOLS:
            out.add((target, proto))
    return frozenset(out)


def _ip_sort_key(ip: str) -> bytes:
    # canonical IPv4 text in, network-order bytes out: sorts numerically, and fast
    return socket.inet_aton(ip)


class Directory:
    """An immutable index of one netmap's names, built once per netmap change so that each
    query costs a few dict lookups whatever the number of tasks."""

    __slots__ = (
        "_memo",
        "_reverse",
        "_services",
        "_subnets",
        "_task_names",
        "_task_nets",
        "_turns",
    )

    def __init__(
        self,
        task_nets: Mapping[str, frozenset[str]],
        services: Mapping[str, tuple[_Service, ...]],
        task_names: Mapping[str, tuple[_Task, ...]],
        reverse: Mapping[str, tuple[tuple[str, str], ...]],
        subnets: tuple[ipaddress.IPv4Network, ...],
    ) -> None:
        self._task_nets = task_nets
        self._services = services
        self._task_names = task_names
        self._reverse = reverse
        self._subnets = subnets
        # Rendered replies by (query bytes after the id, task, tcp[, turn]): a reply depends on
        # nothing else while this directory lives, and dnspython's rendering is the costly part.
        self._memo: dict[tuple[tuple[bytes, str, bool], int], tuple[bytes, int]] = {}
        self._turns: dict[tuple[bytes, str, bool], int] = {}

    @classmethod
    def from_netmap(cls, netmap: Mapping[str, Any]) -> Directory:
        """Index `netmap` ("services" and the "networks" subnets); malformed entries (not the
        contract's shape, bad addresses) are left out rather than failing the whole map."""
        task_nets: dict[str, frozenset[str]] = {}
        services: dict[str, list[_Service]] = {}
        task_names: dict[str, list[_Task]] = {}
        reverse: dict[str, list[tuple[str, str]]] = {}
        subnets: list[ipaddress.IPv4Network] = []

        networks = netmap.get("networks")
        for net in networks.values() if isinstance(networks, Mapping) else []:
            if not isinstance(net, Mapping):
                continue
            # a task's networks also come from the endpoints: a one-off task attached to a
            # network (`meshkit run`) belongs to no service
            for ep in net.get("endpoints") or []:
                if isinstance(ep, Mapping) and ep.get("task_id") and isinstance(net.get("id"), str):
                    tid = str(ep["task_id"])
                    task_nets[tid] = task_nets.get(tid, frozenset()) | {net["id"]}
            try:
                subnets.append(ipaddress.IPv4Network(str(net.get("subnet")), strict=False))
            except ValueError:
                continue

        raw_services = netmap.get("services")
        for raw in raw_services.values() if isinstance(raw_services, Mapping) else []:
            if not isinstance(raw, Mapping) or not isinstance(raw.get("name"), str):
                continue
            name: str = raw["name"]
            if not name or name != name.strip():
                continue
            vips = _addrs(raw.get("vips"))
            vip_mode = raw.get("endpoint_mode", "vip") != "dnsrr"
            nets: set[str] = set(vips)
            up: dict[str, list[tuple[str, str]]] = {}
            raw_tasks = raw.get("tasks")
            for task in raw_tasks if isinstance(raw_tasks, list) else []:
                if not isinstance(task, Mapping) or not isinstance(task.get("id"), str):
                    continue
                addrs = _addrs(task.get("addrs"))
                task_id: str = task["id"]
                task_nets[task_id] = task_nets.get(task_id, frozenset()) | frozenset(addrs)
                nets.update(addrs)
                short = task.get("name")
                short = short if isinstance(short, str) and short else f"{name}.{task_id}"
                entry = _Task(f"{short}.{task_id}", task.get("up") is True, addrs)
                for key in {short.lower(), entry.full_name.lower()}:
                    task_names.setdefault(key, []).append(entry)
                if not entry.up:
                    continue
                for net, ip in addrs.items():
                    up.setdefault(net, []).append((ip, entry.full_name))
                    reverse.setdefault(ip, []).append((net, entry.full_name + "."))
            for net, ip in vips.items():
                reverse.setdefault(ip, []).append((net, name + "."))
            services.setdefault(name.lower(), []).append(
                _Service(
                    name=name,
                    vip_mode=vip_mode,
                    ports=_ports(raw.get("ports")),
                    nets=frozenset(nets),
                    vips=vips,
                    up={
                        net: tuple(sorted(set(items), key=lambda it: (_ip_sort_key(it[0]), it[1])))
                        for net, items in up.items()
                    },
                )
            )
        return cls(
            task_nets,
            {k: tuple(v) for k, v in services.items()},
            {k: tuple(v) for k, v in task_names.items()},
            {k: tuple(v) for k, v in reverse.items()},
            tuple(subnets),
        )

    @classmethod
    def empty(cls) -> Directory:
        """No cluster names at all (before the first netmap): everything is forwarded."""
        return cls.from_netmap({})

    def networks_of(self, task_id: str) -> frozenset[str] | None:
        """The networks a task is on, None when the task is not in the map."""
        return self._task_nets.get(task_id)

    # -- lookups, for a task on networks `nets` ------------------------------------------------

    def _visible(self, name: str, nets: frozenset[str]) -> tuple[_Service, ...]:
        return tuple(s for s in self._services.get(name, ()) if s.nets & nets)

    def _service_ips(
        self, services: Iterable[_Service], nets: frozenset[str], tasks_only: bool
    ) -> tuple[str, ...]:
        ips: set[str] = set()
        for svc in services:
            if svc.vip_mode and not tasks_only:
                ips.update(ip for net, ip in svc.vips.items() if net in nets)
            else:
                for net in svc.nets & nets:
                    ips.update(ip for ip, _ in svc.up.get(net, ()))
        return tuple(sorted(ips, key=_ip_sort_key))

    def _srv(self, services: Iterable[_Service], nets: frozenset[str]) -> _Hit:
        targets: dict[str, set[str]] = {}
        for svc in services:
            for net in svc.nets & nets:
                for ip, full in svc.up.get(net, ()):
                    targets.setdefault(full, set()).add(ip)
        return _Hit(
            srv=tuple(
                (full, tuple(sorted(ips, key=_ip_sort_key)))
                for full, ips in sorted(targets.items())
            )
        )

    def lookup(self, qname: dns.name.Name, nets: frozenset[str]) -> _Hit | None:
        """What `qname` is for a task on `nets`; None when the name is not ours."""
        labels = [label.decode("ascii", "replace").lower() for label in qname.labels[:-1]]
        if not labels:
            return None
        if qname.is_subdomain(_REVERSE_V4):
            return self._lookup_reverse(labels, nets)
        if len(labels) == 1:
            services = self._visible(labels[0], nets)
            if services:
                return _Hit(addrs=self._service_ips(services, nets, tasks_only=False))
            return _NXDOMAIN
        if labels[0].startswith("_") and labels[1].startswith("_") and len(labels) > 2:
            services = self._visible(".".join(labels[2:]), nets)
            if not services:
                return None
            port, proto = labels[0][1:], labels[1][1:]
            if not port.isdigit() or not any((int(port), proto) in s.ports for s in services):
                return _NXDOMAIN
            hit = self._srv(services, nets)
            return _Hit(srv=hit.srv, srv_port=int(port))
        if labels[0] == "tasks":
            services = self._visible(".".join(labels[1:]), nets)
            if not services:
                return _NXDOMAIN
            return _Hit(addrs=self._service_ips(services, nets, tasks_only=True))
        name = ".".join(labels)
        tasks = [t for t in self._task_names.get(name, ()) if nets.intersection(t.addrs)]
        if tasks:
            ips = {ip for t in tasks if t.up for net, ip in t.addrs.items() if net in nets}
            if not ips:
                return _NXDOMAIN
            return _Hit(addrs=tuple(sorted(ips, key=_ip_sort_key)))
        services = self._visible(name, nets)
        if services:
            return _Hit(addrs=self._service_ips(services, nets, tasks_only=False))
        return None

    def _lookup_reverse(self, labels: list[str], nets: frozenset[str]) -> _Hit | None:
        octets = labels[:-2]  # drop "in-addr", "arpa"
        if len(octets) != 4 or not all(o.isdigit() and len(o) <= 3 for o in octets):
            return None
        ip = _ipv4(".".join(reversed([str(int(o)) for o in octets])))
        if ip is None:
            return None
        targets = sorted({target for net, target in self._reverse.get(ip, ()) if net in nets})
        if targets:
            return _Hit(ptr=targets[0])
        address = ipaddress.IPv4Address(ip)
        if any(address in subnet for subnet in self._subnets):
            return _NXDOMAIN
        return None


# -- replies ---------------------------------------------------------------------------------


def udp_limit(query: dns.message.Message) -> int:
    """The largest UDP reply the client takes: 512, or what it said in EDNS."""
    if query.edns >= 0:
        return max(CLASSIC_UDP_LIMIT, min(int(query.payload), TCP_LIMIT))
    return CLASSIC_UDP_LIMIT


def _response(
    query: dns.message.Message, rcode: dns.rcode.Rcode, *, ours: bool
) -> dns.message.Message:
    resp = dns.message.make_response(query, recursion_available=True, our_payload=OUR_PAYLOAD)
    if ours:
        resp.flags |= dns.flags.AA
    resp.set_rcode(rcode)
    return resp


def _render(resp: dns.message.Message, limit: int) -> bytes:
    """The reply's wire form within `limit` bytes, in the order built (no shuffle): whole
    RRsets that do not fit are left out, glue silently, answers with TC set so that the client
    asks again over TCP."""
    return resp.to_wire(max_size=limit, prefer_truncation=True, want_shuffle=False)


def _formerr(wire: bytes) -> Answer | None:
    """FORMERR for a packet whose header is readable and that is a query, else None."""
    if len(wire) < 12 or wire[2] & 0x80:
        return None
    flags = 0x8000 | ((wire[2] & 0x79) << 8) | 0x0080 | dns.rcode.FORMERR
    return Answer(wire[:2] + struct.pack("!HHHHH", flags, 0, 0, 0, 0), dns.rcode.FORMERR)


def servfail(query: dns.message.Message, *, tcp: bool) -> bytes:
    """The SERVFAIL reply to a query that could not be forwarded."""
    resp = _response(query, dns.rcode.SERVFAIL, ours=False)
    return _render(resp, TCP_LIMIT if tcp else udp_limit(query))


def _rotated(items: tuple[Any, ...], rotate: int) -> tuple[Any, ...]:
    if len(items) < 2:
        return items
    k = rotate % len(items)
    return items[k:] + items[:k]


@functools.lru_cache(maxsize=65536)
def _a(ip: str) -> dns.rdata.Rdata:
    """The A record data of `ip`, kept as its 4 wire bytes: dnspython's own A type parses and
    re-encodes the address text on every construction and render, which made a 40-address
    answer cost milliseconds."""
    return dns.rdata.GenericRdata(_IN, _A, socket.inet_aton(ip))


def _srv_rdata(port: int, target: dns.name.Name) -> dns.rdata.Rdata:
    return dns.rdtypes.IN.SRV.SRV(  # type: ignore[no-untyped-call,no-any-return]
        _IN, _SRV, SRV_PRIORITY, SRV_WEIGHT, port, target
    )


def _ptr_rdata(target: dns.name.Name) -> dns.rdata.Rdata:
    return dns.rdtypes.ANY.PTR.PTR(_IN, _PTR, target)  # type: ignore[no-untyped-call,no-any-return]


def _fill(
    resp: dns.message.Message, qname: dns.name.Name, qtype: int, hit: _Hit, rotate: int
) -> None:
    """Put the records of `hit` that answer `qtype` into `resp` (none: NOERROR, no data)."""
    if hit.addrs and qtype in (_A, _ANY):
        rrset = resp.find_rrset(resp.answer, qname, _IN, _A, create=True)
        for ip in _rotated(hit.addrs, rotate):
            rrset.add(_a(ip), 0)
    elif hit.srv and qtype in (_SRV, _ANY):
        rrset = resp.find_rrset(resp.answer, qname, _IN, _SRV, create=True)
        for full, ips in _rotated(hit.srv, rotate):
            target = dns.name.from_text(full + ".")
            rrset.add(_srv_rdata(hit.srv_port, target), 0)
            glue = resp.find_rrset(resp.additional, target, _IN, _A, create=True)
            for ip in ips:
                glue.add(_a(ip), 0)
    elif hit.ptr and qtype in (_PTR, _ANY):
        rrset = resp.find_rrset(resp.answer, qname, _IN, _PTR, create=True)
        rrset.add(_ptr_rdata(dns.name.from_text(hit.ptr)), 0)


def answer(
    directory: Directory, query: bytes, task_id: str, *, tcp: bool, rotate: int = 0
) -> Reply | None:
    """The reply to one query from task `task_id` (see the module docstring).

    `rotate` turns multi-address answers round (pass a per-server counter to spread clients
    that take the first address); 0 gives them sorted."""
    key = (query[2:], task_id, tcp)
    turns = directory._turns.get(key)
    if turns is not None:
        found = directory._memo.get((key, rotate % turns))
        if found is not None:
            return Answer(query[:2] + found[0][2:], found[1])
    try:
        msg = dns.message.from_wire(query)
    except Exception:  # any malformed packet: dnspython raises many kinds
        return _formerr(query)
    if msg.flags & dns.flags.QR:
        return None
    limit = TCP_LIMIT if tcp else udp_limit(msg)
    if msg.opcode() != dns.opcode.QUERY:
        return Answer(
            _render(_response(msg, dns.rcode.NOTIMP, ours=False), limit), dns.rcode.NOTIMP
        )
    if len(msg.question) != 1:
        return Answer(
            _render(_response(msg, dns.rcode.FORMERR, ours=False), limit), dns.rcode.FORMERR
        )
    if msg.edns > 0:
        resp = _response(msg, dns.rcode.BADVERS, ours=False)
        return Answer(_render(resp, limit), dns.rcode.BADVERS)
    question = msg.question[0]
    nets = directory.networks_of(task_id)
    if nets is None or question.rdclass not in (_IN, dns.rdataclass.ANY):
        return Forward(msg)
    hit = directory.lookup(question.name, nets)
    if hit is None:
        return Forward(msg)
    rcode = dns.rcode.NXDOMAIN if hit.nx else dns.rcode.NOERROR
    resp = _response(msg, rcode, ours=True)
    if not hit.nx:
        _fill(resp, question.name, question.rdtype, hit, rotate)
    wire = _render(resp, limit)
    if len(wire) <= MEMO_MAX_REPLY:
        if len(directory._memo) >= MEMO_LIMIT:
            directory._memo.clear()
            directory._turns.clear()
        turns = max(1, len(hit.addrs), len(hit.srv))
        directory._turns[key] = turns
        directory._memo[(key, rotate % turns)] = (wire, rcode)
    return Answer(wire, rcode)

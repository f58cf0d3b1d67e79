"""The task DNS answers, sans-IO: a built netmap of two networks, a vip and a dnsrr service and
tasks up and down, queried as wire bytes the way a task's resolver sends them."""

from __future__ import annotations

import ipaddress
from typing import Any

import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshkit.net.dnsnames import Answer, Directory, Forward, answer, servfail, udp_limit

N1, N2 = "net1", "net2"
WEB_T1, WEB_T2, WEB_T3 = "w1aaaa", "w2bbbb", "w3cccc"


def task(tid: str, name: str, slot: int, up: bool, **addrs: str) -> dict[str, Any]:
    return {"id": tid, "name": name, "slot": slot, "node_id": "node1", "up": up, "addrs": addrs}


def service(
    sid: str,
    name: str,
    mode: str,
    ports: list[tuple[int, str]],
    vips: dict[str, str],
    tasks: list[dict[str, Any]],
) -> dict[str, Any]:
    return {
        "id": sid,
        "name": name,
        "endpoint_mode": mode,
        "ports": [
            {
                "target": p,
                "published": None,
                "protocol": proto,
                "mode": "ingress",
                "proxy_protocol": False,
            }
            for p, proto in ports
        ],
        "vips": vips,
        "tasks": tasks,
    }


def netmap() -> dict[str, Any]:
    return {
        "networks": {
            N1: {"id": N1, "name": "front", "subnet": "198.19.1.0/24", "gateway": "198.19.1.1"},
            N2: {"id": N2, "name": "back", "subnet": "198.19.2.0/24", "gateway": "198.19.2.1"},
        },
        "nodes": {},
        "services": {
            "s-web": service(
                "s-web",
                "web",
                "vip",
                [(80, "tcp")],
                {N1: "198.19.1.2"},
                [
                    task(WEB_T1, "web.1", 1, True, net1="198.19.1.5"),
                    task(WEB_T2, "web.2", 2, True, net1="198.19.1.6"),
                    task(WEB_T3, "web.3", 3, False, net1="198.19.1.7"),
                ],
            ),
            "s-db": service(
                "s-db",
                "db",
                "dnsrr",
                [(5432, "tcp")],
                {},
                [
                    task("d1", "db.1", 1, True, net2="198.19.2.5"),
                    task("d2", "db.2", 2, True, net2="198.19.2.6"),
                    task("d3", "db.3", 3, False, net2="198.19.2.7"),
                ],
            ),
            "s-api": service(
                "s-api",
                "api",
                "vip",
                [(8080, "tcp"), (8081, "udp")],
                {N1: "198.19.1.3", N2: "198.19.2.3"},
                [
                    task("a1", "api.1", 1, True, net1="198.19.1.10", net2="198.19.2.10"),
                ],
            ),
            "s-cli": service(
                "s-cli",
                "client",
                "vip",
                [],
                {N1: "198.19.1.4"},
                [
                    task("c1", "client.1", 1, True, net1="198.19.1.20"),
                ],
            ),
            "s-back": service(
                "s-back",
                "backcli",
                "vip",
                [],
                {N2: "198.19.2.4"},
                [
                    task("b1", "backcli.1", 1, True, net2="198.19.2.20"),
                ],
            ),
        },
    }


DIR = Directory.from_netmap(netmap())


def ask(
    name: str,
    rdtype: str = "A",
    task_id: str = "c1",
    *,
    tcp: bool = False,
    directory: Directory = DIR,
    rotate: int = 0,
    **kw: Any,
) -> dns.message.Message:
    """The parsed reply to a query made here (fails when the query is forwarded)."""
    query = dns.message.make_query(name, rdtype, **kw)
    reply = answer(directory, query.to_wire(), task_id, tcp=tcp, rotate=rotate)
    assert isinstance(reply, Answer), f"{name} {rdtype} from {task_id}: {reply!r}"
    msg = dns.message.from_wire(reply.wire)
    assert msg.id == query.id
    assert msg.question == query.question
    assert msg.rcode() == reply.rcode
    return msg


def forwarded(name: str, rdtype: str = "A", task_id: str = "c1") -> bool:
    query = dns.message.make_query(name, rdtype)
    reply = answer(DIR, query.to_wire(), task_id, tcp=False)
    if isinstance(reply, Forward):
        assert reply.query.id == query.id
        assert reply.query.question == query.question
        return True
    return False


def addrs(msg: dns.message.Message) -> list[str]:
    return [rd.address for rrset in msg.answer if rrset.rdtype == dns.rdatatype.A for rd in rrset]


def ours(msg: dns.message.Message, rcode: int = dns.rcode.NOERROR) -> None:
    assert msg.rcode() == rcode
    for flag in (dns.flags.QR, dns.flags.AA, dns.flags.RA, dns.flags.RD):
        assert msg.flags & flag, dns.flags.to_text(msg.flags)
    assert not msg.flags & dns.flags.TC
    assert all(rrset.ttl == 0 for rrset in msg.answer + msg.additional)


# -- service names ---------------------------------------------------------------------------


def test_vip_service_gives_its_vip_with_ttl_zero() -> None:
    msg = ask("web")
    ours(msg)
    assert addrs(msg) == ["198.19.1.2"]


def test_names_are_case_insensitive_with_or_without_trailing_dot() -> None:
    assert addrs(ask("WEB.")) == ["198.19.1.2"]
    assert addrs(ask("Tasks.Web")) == ["198.19.1.5", "198.19.1.6"]
    msg = ask("wEb")
    assert msg.question[0].name.labels[0] == b"wEb"  # the question is echoed as asked
    assert msg.answer[0].name == dns.name.from_text("wEb.")


def test_dnsrr_service_gives_its_up_tasks() -> None:
    msg = ask("db", task_id="b1")
    ours(msg)
    assert addrs(msg) == ["198.19.2.5", "198.19.2.6"]


def test_service_on_two_networks_gives_only_the_shared_networks_vip() -> None:
    assert addrs(ask("api", task_id="c1")) == ["198.19.1.3"]
    assert addrs(ask("api", task_id="b1")) == ["198.19.2.3"]
    assert addrs(ask("api", task_id="a1")) == ["198.19.1.3", "198.19.2.3"]


def test_service_on_another_network_is_unknown() -> None:
    ours(ask("db", task_id="c1"), dns.rcode.NXDOMAIN)
    ours(ask("web", task_id="b1"), dns.rcode.NXDOMAIN)
    ours(ask("tasks.db", task_id="c1"), dns.rcode.NXDOMAIN)


def test_unknown_single_label_name_is_nxdomain_for_every_type() -> None:
    for rdtype in ("A", "AAAA", "MX", "SRV", "TXT"):
        ours(ask("nosuch", rdtype), dns.rcode.NXDOMAIN)


def test_tasks_name_gives_up_tasks_in_both_modes() -> None:
    msg = ask("tasks.web")
    ours(msg)
    assert addrs(msg) == ["198.19.1.5", "198.19.1.6"]  # web.3 is down
    assert addrs(ask("tasks.db", task_id="b1")) == ["198.19.2.5", "198.19.2.6"]
    assert addrs(ask("tasks.api", task_id="c1")) == ["198.19.1.10"]


def test_unknown_tasks_name_is_nxdomain_not_forwarded() -> None:
    ours(ask("tasks.nosuch"), dns.rcode.NXDOMAIN)
    ours(ask("tasks.nosuch.example"), dns.rcode.NXDOMAIN)


def test_rotation_turns_the_sorted_list() -> None:
    assert addrs(ask("tasks.web", rotate=0)) == ["198.19.1.5", "198.19.1.6"]
    assert addrs(ask("tasks.web", rotate=1)) == ["198.19.1.6", "198.19.1.5"]
    assert addrs(ask("tasks.web", rotate=2)) == ["198.19.1.5", "198.19.1.6"]


# -- task names ------------------------------------------------------------------------------


def test_task_names_short_and_full() -> None:
    assert addrs(ask("web.1")) == ["198.19.1.5"]
    assert addrs(ask(f"web.2.{WEB_T2}")) == ["198.19.1.6"]
    assert addrs(ask(f"WEB.1.{WEB_T1.upper()}.")) == ["198.19.1.5"]
    assert addrs(ask("api.1", task_id="b1")) == ["198.19.2.10"]


def test_down_task_name_is_nxdomain() -> None:
    ours(ask("web.3"), dns.rcode.NXDOMAIN)
    ours(ask(f"web.3.{WEB_T3}"), dns.rcode.NXDOMAIN)


def test_task_name_on_another_network_is_not_ours() -> None:
    assert forwarded("web.1", task_id="b1")


# -- other types -----------------------------------------------------------------------------


def test_aaaa_and_other_types_of_known_names_are_nodata() -> None:
    for name in ("web", "tasks.web", "web.1"):
        for rdtype in ("AAAA", "MX", "TXT", "PTR"):
            msg = ask(name, rdtype)
            ours(msg)
            assert msg.answer == []


def test_any_gives_the_addresses() -> None:
    assert addrs(ask("web", "ANY")) == ["198.19.1.2"]


def test_srv_gives_one_record_per_up_task_with_glue() -> None:
    msg = ask("_80._tcp.web", "SRV")
    ours(msg)
    (rrset,) = msg.answer
    records = sorted((rd.priority, rd.weight, rd.port, rd.target.to_text()) for rd in rrset)
    assert records == [(0, 10, 80, f"web.1.{WEB_T1}."), (0, 10, 80, f"web.2.{WEB_T2}.")]
    glue = {rrset.name.to_text(): [rd.address for rd in rrset] for rrset in msg.additional}
    assert glue == {f"web.1.{WEB_T1}.": ["198.19.1.5"], f"web.2.{WEB_T2}.": ["198.19.1.6"]}


def test_srv_follows_protocol_and_shared_networks() -> None:
    msg = ask("_8081._udp.api", "SRV", task_id="b1")
    (rrset,) = msg.answer
    assert [rd.target.to_text() for rd in rrset] == ["api.1.a1."]
    assert [rd.address for rrset in msg.additional for rd in rrset] == ["198.19.2.10"]


def test_srv_for_a_port_the_service_lacks_is_nxdomain() -> None:
    ours(ask("_81._tcp.web", "SRV"), dns.rcode.NXDOMAIN)
    ours(ask("_80._udp.web", "SRV"), dns.rcode.NXDOMAIN)
    ours(ask("_http._tcp.web", "SRV"), dns.rcode.NXDOMAIN)


def test_a_query_for_an_srv_name_is_nodata() -> None:
    msg = ask("_80._tcp.web", "A")
    ours(msg)
    assert msg.answer == []


def test_srv_of_an_unknown_service_is_forwarded() -> None:
    assert forwarded("_80._tcp.nosuch", "SRV")


# -- reverse ---------------------------------------------------------------------------------


def ptr(ip: str, task_id: str = "c1") -> dns.message.Message:
    return ask(
        dns.name.from_text(ipaddress.ip_address(ip).reverse_pointer).to_text(), "PTR", task_id
    )


def test_ptr_of_a_vip_and_of_a_task() -> None:
    msg = ptr("198.19.1.2")
    ours(msg)
    assert [rd.target.to_text() for rd in msg.answer[0]] == ["web."]
    assert [rd.target.to_text() for rd in ptr("198.19.1.6").answer[0]] == [f"web.2.{WEB_T2}."]
    assert [rd.target.to_text() for rd in ptr("198.19.2.3", "b1").answer[0]] == ["api."]


def test_reverse_inside_an_overlay_that_is_not_ours_is_nxdomain() -> None:
    ours(ptr("198.19.1.99"), dns.rcode.NXDOMAIN)
    ours(ptr("198.19.1.7"), dns.rcode.NXDOMAIN)  # a down task
    ours(ptr("198.19.2.5", "c1"), dns.rcode.NXDOMAIN)  # a task on a network c1 is not on


def test_reverse_outside_the_overlays_is_forwarded() -> None:
    assert forwarded("9.113.0.203.in-addr.arpa", "PTR")
    assert forwarded("1.19.198.in-addr.arpa", "PTR")  # not a whole address


# -- forwarding ------------------------------------------------------------------------------


def test_dotted_names_that_are_not_ours_are_forwarded() -> None:
    assert forwarded("example.com")
    assert forwarded("example.com", "MX")
    assert forwarded("web.example.com")
    assert forwarded(".", "NS")


def test_a_task_missing_from_the_map_sees_nothing_and_everything_is_forwarded() -> None:
    assert forwarded("web", task_id="ghost")
    assert forwarded("tasks.web", task_id="ghost")
    assert forwarded("nosuch", task_id="ghost")
    empty = Directory.empty()
    query = dns.message.make_query("web", "A")
    assert isinstance(answer(empty, query.to_wire(), "c1", tcp=False), Forward)


def test_non_internet_class_is_forwarded() -> None:
    query = dns.message.make_query("version.bind", "TXT", rdclass=dns.rdataclass.CH)
    assert isinstance(answer(DIR, query.to_wire(), "c1", tcp=False), Forward)


def test_servfail_reply() -> None:
    query = dns.message.make_query("example.com", "A", use_edns=0)
    msg = dns.message.from_wire(servfail(query, tcp=False))
    assert msg.id == query.id and msg.rcode() == dns.rcode.SERVFAIL
    assert msg.flags & dns.flags.RA and not msg.flags & dns.flags.AA
    assert msg.edns == 0


# -- wire details ----------------------------------------------------------------------------


def big_directory(count: int) -> Directory:
    tasks = [
        task(f"t{i:03d}", f"big.{i}", i, True, net1=f"198.19.{1 + i // 200}.{20 + i % 200}")
        for i in range(count)
    ]
    nm = netmap()
    nm["services"]["s-big"] = service("s-big", "big", "dnsrr", [(80, "tcp")], {}, tasks)
    return Directory.from_netmap(nm)


def test_udp_reply_over_the_clients_limit_is_truncated() -> None:
    big = big_directory(100)  # 100 A records: about 1.6 kB
    msg = ask("tasks.big", directory=big)
    assert msg.flags & dns.flags.TC and msg.answer == []
    assert (
        len(answer(big, dns.message.make_query("tasks.big", "A").to_wire(), "c1", tcp=False).wire)
        <= 512
    )  # type: ignore[union-attr]
    # an EDNS client taking 4096 bytes gets them all, and so does TCP
    msg = ask("tasks.big", directory=big, use_edns=0, payload=4096)
    assert not msg.flags & dns.flags.TC and len(addrs(msg)) == 100
    assert msg.edns == 0
    msg = ask("tasks.big", directory=big, tcp=True)
    assert not msg.flags & dns.flags.TC and len(addrs(msg)) == 100
    # EDNS 1232 (dig's default): truncated too
    msg = ask("tasks.big", directory=big, use_edns=0, payload=1232)
    assert msg.flags & dns.flags.TC


def test_udp_limit() -> None:
    assert udp_limit(dns.message.make_query("a", "A")) == 512
    assert udp_limit(dns.message.make_query("a", "A", use_edns=0, payload=100)) == 512
    assert udp_limit(dns.message.make_query("a", "A", use_edns=0, payload=4096)) == 4096


def test_srv_glue_is_cut_before_answers() -> None:
    big = big_directory(14)  # 14 SRV records fit in 512 bytes, their glue does not
    msg = ask("_80._tcp.big", "SRV", directory=big)
    assert not msg.flags & dns.flags.TC
    assert len(msg.answer[0]) == 14
    assert len(msg.additional) < 14  # the glue that fits, whole RRsets only
    targets = {rd.target for rd in msg.answer[0]}
    assert all(rrset.name in targets and len(rrset) == 1 for rrset in msg.additional)
    msg = ask("_80._tcp.big", "SRV", directory=big, tcp=True)
    assert len(msg.additional) == 14


def test_edns_query_gets_an_edns_reply() -> None:
    msg = ask("web", use_edns=0, payload=1232)
    assert msg.edns == 0


def test_edns_version_above_zero_is_badvers() -> None:
    query = dns.message.make_query("web", "A", use_edns=1)
    reply = answer(DIR, query.to_wire(), "c1", tcp=False)
    assert isinstance(reply, Answer)
    assert dns.message.from_wire(reply.wire).rcode() == dns.rcode.BADVERS


def test_garbage_with_a_readable_header_gets_formerr() -> None:
    wire = b"\xab\xcd\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xff\xff\xff"
    reply = answer(DIR, wire, "c1", tcp=False)
    assert isinstance(reply, Answer)
    msg = dns.message.from_wire(reply.wire)
    assert msg.id == 0xABCD and msg.rcode() == dns.rcode.FORMERR
    assert msg.flags & dns.flags.QR and msg.flags & dns.flags.RD


def test_short_packets_and_responses_are_dropped() -> None:
    assert answer(DIR, b"", "c1", tcp=False) is None
    assert answer(DIR, b"\x00\x01\x02", "c1", tcp=False) is None
    response = dns.message.make_response(dns.message.make_query("web", "A"))
    assert answer(DIR, response.to_wire(), "c1", tcp=False) is None
    bad_response = b"\xab\xcd\x81\x00\x00\x01\x00\x00\x00\x00\x00\x00\xff"
    assert answer(DIR, bad_response, "c1", tcp=False) is None


def test_other_opcodes_are_notimp_and_two_questions_formerr() -> None:
    query = dns.message.make_query("web", "A")
    query.set_opcode(dns.opcode.NOTIFY)
    reply = answer(DIR, query.to_wire(), "c1", tcp=False)
    assert isinstance(reply, Answer) and reply.rcode == dns.rcode.NOTIMP
    query = dns.message.make_query("web", "A")
    query.question.append(
        dns.rrset.RRset(dns.name.from_text("api."), dns.rdataclass.IN, dns.rdatatype.A)
    )
    reply = answer(DIR, query.to_wire(), "c1", tcp=False)
    assert isinstance(reply, Answer) and reply.rcode == dns.rcode.FORMERR


def test_a_new_directory_changes_the_next_answer() -> None:
    nm = netmap()
    web = nm["services"]["s-web"]
    web["tasks"][0]["up"] = False
    web["tasks"][2]["up"] = True
    after = Directory.from_netmap(nm)
    assert addrs(ask("tasks.web", directory=after)) == ["198.19.1.6", "198.19.1.7"]
    ours(ask("web.1", directory=after), dns.rcode.NXDOMAIN)
    assert addrs(ask("web.3", directory=after)) == ["198.19.1.7"]


def test_malformed_netmap_entries_are_left_out() -> None:
    nm = netmap()
    nm["services"]["bad1"] = "not a service"
    nm["services"]["bad2"] = {"name": 5}
    nm["services"]["s-web"]["tasks"].append(
        {"id": "x1", "name": "web.9", "up": True, "addrs": {N1: "not-an-ip"}}
    )
    nm["services"]["s-web"]["vips"][N2] = "198.19.2.999"
    nm["networks"]["broken"] = {"id": "broken", "subnet": "nonsense"}
    directory = Directory.from_netmap(nm)
    assert addrs(ask("tasks.web", directory=directory)) == ["198.19.1.5", "198.19.1.6"]
    assert addrs(ask("web", directory=directory)) == ["198.19.1.2"]


# -- generated maps --------------------------------------------------------------------------

NETS = ["n0", "n1", "n2"]
ip_in = st.builds(lambda n, h: f"198.19.{n}.{h}", st.integers(0, 3), st.integers(1, 254))
addr_maps = st.dictionaries(st.sampled_from(NETS), ip_in, max_size=3)
task_ids = st.sampled_from([f"t{i}" for i in range(8)])
svc_names = st.sampled_from(["web", "db", "api", "Web", "tasks", "x-y"])


@st.composite
def netmaps(draw: st.DrawFn) -> dict[str, Any]:
    services: dict[str, Any] = {}
    for i in range(draw(st.integers(0, 4))):
        name = draw(svc_names)
        tasks = [
            {
                "id": draw(task_ids),
                "name": f"{name}.{slot}",
                "slot": slot,
                "node_id": "n",
                "up": draw(st.booleans()),
                "addrs": draw(addr_maps),
            }
            for slot in range(1, draw(st.integers(0, 4)) + 1)
        ]
        services[f"s{i}"] = {
            "id": f"s{i}",
            "name": name,
            "endpoint_mode": draw(st.sampled_from(["vip", "dnsrr"])),
            "ports": [{"target": draw(st.integers(1, 3)) * 80, "protocol": "tcp"}],
            "vips": draw(addr_maps),
            "tasks": tasks,
        }
    networks = {n: {"id": n, "subnet": f"198.19.{i}.0/24"} for i, n in enumerate(NETS)}
    return {"networks": networks, "services": services}


def allowed_addresses(nm: dict[str, Any], task_id: str) -> set[str]:
    nets: set[str] = set()
    for svc in nm["services"].values():
        for t in svc["tasks"]:
            if t["id"] == task_id:
                nets.update(t["addrs"])
    out: set[str] = set()
    for svc in nm["services"].values():
        out.update(ip for net, ip in svc["vips"].items() if net in nets)
        for t in svc["tasks"]:
            out.update(ip for net, ip in t["addrs"].items() if net in nets)
    return out


query_names = st.one_of(
    svc_names,
    svc_names.map(lambda n: f"tasks.{n}"),
    st.builds(lambda n, s: f"{n}.{s}", svc_names, st.integers(1, 4)),
    st.builds(lambda n, p: f"_{p}._tcp.{n}", svc_names, st.sampled_from([80, 160, 81])),
    ip_in.map(lambda ip: ipaddress.ip_address(ip).reverse_pointer),
    st.from_regex(r"[a-z0-9_-]{1,8}(\.[a-z0-9_-]{1,8}){0,3}", fullmatch=True),
)
rdtypes = st.sampled_from(["A", "AAAA", "SRV", "PTR", "ANY", "MX", "TXT"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    nm=netmaps(),
    name=query_names,
    rdtype=rdtypes,
    asker=task_ids,
    tcp=st.booleans(),
    rotate=st.integers(0, 10),
)
def test_generated_queries_only_see_shared_networks(
    nm: dict[str, Any], name: str, rdtype: str, asker: str, tcp: bool, rotate: int
) -> None:
    directory = Directory.from_netmap(nm)
    query = dns.message.make_query(name, rdtype)
    reply = answer(directory, query.to_wire(), asker, tcp=tcp, rotate=rotate)
    assert reply is not None
    if isinstance(reply, Forward):
        return
    msg = dns.message.from_wire(reply.wire)
    assert msg.id == query.id
    allowed = allowed_addresses(nm, asker)
    for rrset in msg.answer + msg.additional:
        for rd in rrset:
            if rrset.rdtype == dns.rdatatype.A:
                assert rd.address in allowed, (name, rd.address, allowed)
    if msg.answer and msg.answer[0].rdtype == dns.rdatatype.PTR:
        ip = ".".join(reversed(name.split(".")[:4]))
        assert ip in allowed


@settings(max_examples=300, deadline=None)
@given(wire=st.binary(max_size=80), nm=netmaps(), asker=task_ids, tcp=st.booleans())
def test_random_packets_never_raise(wire: bytes, nm: dict[str, Any], asker: str, tcp: bool) -> None:
    reply = answer(Directory.from_netmap(nm), wire, asker, tcp=tcp)
    if isinstance(reply, Answer):
        assert reply.wire[:2] == wire[:2]
        assert len(reply.wire) <= 65535


@settings(max_examples=200, deadline=None)
@given(
    name=query_names, rdtype=rdtypes, edns=st.sampled_from([-1, 0]), payload=st.integers(0, 65535)
)
def test_generated_queries_against_the_built_map(
    name: str, rdtype: str, edns: int, payload: int
) -> None:
    query = dns.message.make_query(name, rdtype, use_edns=edns, payload=payload)
    for asker in ("c1", "b1", "a1", "ghost"):
        reply = answer(DIR, query.to_wire(), asker, tcp=False)
        if isinstance(reply, Answer):
            assert len(reply.wire) <= udp_limit(query)
            msg = dns.message.from_wire(reply.wire)
            assert msg.question == query.question
        else:
            assert isinstance(reply, Forward)


def test_remembered_replies_equal_fresh_ones() -> None:
    nm = netmap()
    warm = Directory.from_netmap(nm)
    for rotate in range(5):
        for name, rdtype, task_id in [
            ("tasks.web", "A", "c1"),
            ("_80._tcp.web", "SRV", "c1"),
            ("nosuch", "A", "c1"),
            ("db", "A", "b1"),
            ("web", "A", "b1"),
        ]:
            for _ in range(2):  # the second time comes from the memo
                query = dns.message.make_query(name, rdtype)
                got = answer(warm, query.to_wire(), task_id, tcp=False, rotate=rotate)
                fresh = answer(
                    Directory.from_netmap(nm), query.to_wire(), task_id, tcp=False, rotate=rotate
                )
                assert isinstance(got, Answer) and got == fresh
                assert got.wire[:2] == query.to_wire()[:2]
    # the same bytes from another task or over TCP are not confused
    query = dns.message.make_query("web", "A").to_wire()
    assert isinstance(answer(warm, query, "c1", tcp=False), Answer)
    assert dns.message.from_wire(answer(warm, query, "b1", tcp=False).wire).rcode() == 3  # type: ignore[union-attr]
    assert isinstance(answer(warm, query, "ghost", tcp=False), Forward)

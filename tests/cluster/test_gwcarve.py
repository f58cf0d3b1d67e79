"""The kept taken ranges of gwcarve carve the same gateway subnet that ipam.carve_subnet over all
taken subnets gives (every manager must carve the same), through joins, removals, networks
with their own subnets, other states and a full pool."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from meshkit.cluster.model import networks as netstate
from meshkit.cluster.model import state as cs
from meshkit.net import ipam

POOLS = ["198.18.0.0/24", "198.51.100.0/24"]


def _state(mask: int) -> cs.ClusterState:
    state = cs.ClusterState()
    node = cs.NodeRecord(id="m" * 25, hostname="m1", role="manager", addr="198.18.0.1")
    cluster = {
        "cluster_id": "c" * 25,
        "default_addr_pool": POOLS,
        "default_addr_pool_mask_length": mask,
    }
    cs.apply(state, {"op": "init", "cluster": cluster, "node": node.to_dict(), "now": 1.0})
    return state


def _expected(state: cs.ClusterState) -> str:
    try:
        return ipam.carve_subnet(
            state.default_addr_pool,
            state.default_addr_pool_mask_length,
            netstate.taken_subnets(state),
            from_top=True,
        )
    except ipam.IpamError:
        return ""


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("join"), st.integers(0, 200)),
        st.tuples(st.just("leave"), st.integers(0, 200)),
        st.tuples(st.just("net"), st.integers(0, 255)),  # a network taking 198.51.100.X/29
        st.tuples(st.just("other_state"), st.integers(0, 0)),
    ),
    max_size=80,
)


@settings(max_examples=150, deadline=None)
@given(ops=OPS, mask=st.sampled_from([27, 28, 29]))
def test_same_subnet_as_a_full_carve(ops: list[tuple[str, int]], mask: int) -> None:
    state = _state(mask)
    for op, n in ops:
        node_id = f"n{n:024d}"
        if op == "join" and node_id not in state.gateway_subnets:
            want = _expected(state)
            assert netstate.ensure_gateway_subnet(state, node_id) == want
            assert state.gateway_subnets.get(node_id, "") == want
        elif op == "leave":
            netstate.node_removed(state, node_id)
        elif op == "net":
            subnet = f"198.51.100.{n & ~7}/29"
            nid = f"x{n:024d}"
            if not any(
                ipam.parse_subnet(subnet).overlaps(ipam.parse_subnet(t))
                for t in netstate.taken_subnets(state)
            ):
                req = {"id": nid, "name": f"net{n}", "subnet": subnet}
                cs.apply(state, {"op": "network_create", "network": req, "now": 2.0})
        elif op == "other_state":  # another state carves meanwhile: ours must not be mixed up
            other = _state(mask)
            netstate.ensure_gateway_subnet(other, "o" * 25)
    want = _expected(state)
    assert netstate.ensure_gateway_subnet(state, "z" * 25) == want


def test_a_full_pool_gives_no_subnet_and_a_freed_one_is_carved_again() -> None:
    state = _state(25)  # two /25 per pool, four in all; the manager holds the top one
    got = [netstate.ensure_gateway_subnet(state, f"n{i:024d}") for i in range(4)]
    assert got == ["198.51.100.0/25", "198.18.0.128/25", "198.18.0.0/25", ""]
    netstate.node_removed(state, f"n{1:024d}")
    assert netstate.ensure_gateway_subnet(state, "q" * 25) == "198.18.0.128/25"

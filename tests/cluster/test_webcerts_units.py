"""The --web nodes' certificates in the cluster state, sans-IO: the order lease (compare-and-set,
expiry, takeover), fencing of a holder whose lease was taken over, challenges, the state's
round trip, and the API's sealing of private keys."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import pytest

from meshkit.cluster.api.certs import CertMethods
from meshkit.cluster.model import certs as rules
from meshkit.cluster.model import state as cs
from meshkit.cluster.raft.sealing import Sealer, new_data_key
from meshkit.cluster.rpc.pki import PeerIdentity
from meshkit.cluster.rpc.transport import Peer, RpcError

M1, W1, W2 = "m" * 25, "w" * 25, "v" * 25
NAME = "site.test"


def _state() -> cs.ClusterState:
    st = cs.ClusterState()
    node = cs.NodeRecord(id=M1, hostname="m1", role="manager", addr="198.18.0.1").to_dict()
    cs.apply(st, {"op": "init", "cluster": {"cluster_id": "c" * 25}, "node": node, "now": 1.0})
    for nid in (W1, W2):
        rec = cs.NodeRecord(id=nid, hostname=nid[:2], role="worker", addr="198.18.0.2")
        cs.apply(st, {"op": "add_node", "node": rec.to_dict()})
    return st


def lease(st: cs.ClusterState, holder: str, now: float, ttl: float = 60.0) -> dict[str, Any]:
    return cs.apply(
        st, {"op": "cert_lease", "name": NAME, "holder": holder, "ttl": ttl, "now": now}
    )


def site(chain: str = "CHAIN") -> dict[str, Any]:
    return {"name": NAME, "ca": "https://ca.test/dir", "chain": chain, "key": "sealed"}


def test_one_holder_at_a_time_until_the_lease_expires() -> None:
    st = _state()
    got = lease(st, W1, now=100.0)
    assert got["taken"] and got["holder"] == W1 and got["expires"] == 160.0
    refused = lease(st, W2, now=159.9)
    assert not refused["taken"] and refused["holder"] == W1 and refused["expires"] == 160.0
    assert rules.lease_holder(st, NAME, 159.9) == W1
    # the holder may take it again: its lease is extended
    assert lease(st, W1, now=150.0)["expires"] == 210.0
    assert not lease(st, W2, now=209.0)["taken"]
    # the holder died: at expiry another node takes over
    assert rules.lease_holder(st, NAME, 210.0) == ""
    over = lease(st, W2, now=210.0)
    assert over["taken"] and over["holder"] == W2
    assert not lease(st, W1, now=211.0)["taken"]


def test_release_frees_the_name_only_for_its_holder() -> None:
    st = _state()
    lease(st, W1, now=10.0)
    assert cs.apply(st, {"op": "cert_release", "name": NAME, "holder": W2}) == {"released": False}
    assert not lease(st, W2, now=11.0)["taken"]
    assert cs.apply(st, {"op": "cert_release", "name": NAME, "holder": W1})["released"]
    assert lease(st, W2, now=12.0)["taken"]


def test_a_holder_whose_lease_was_taken_over_cannot_store() -> None:
    st = _state()
    lease(st, W1, now=0.0, ttl=10.0)
    lease(st, W2, now=20.0, ttl=10.0)  # W1 went quiet; W2 orders now
    with pytest.raises(cs.CommandError, match=f"node {W2} holds the order for {NAME}"):
        cs.apply(st, {"op": "cert_store", "site": site("LATE"), "holder": W1, "now": 21.0})
    cs.apply(st, {"op": "cert_store", "site": site("NEW"), "holder": W2, "now": 22.0})
    assert rules.area(st, "sites")[NAME]["chain"] == "NEW"
    # a lease taken afterwards carries the stored certificate (the taker sees it at once)
    cs.apply(st, {"op": "cert_release", "name": NAME, "holder": W2})
    got = lease(st, W1, now=30.0)
    assert got["taken"] and got["site"]["chain"] == "NEW" and got["site"]["holder"] == W2


def test_a_failed_order_keeps_the_lease_for_its_backoff() -> None:
    st = _state()
    lease(st, W1, now=0.0)
    release = {"op": "cert_release", "name": NAME, "holder": W1, "hold": 30.0, "now": 5.0}
    assert cs.apply(st, release)["released"]
    assert not lease(st, W2, now=34.9)["taken"]  # the other nodes wait out the backoff
    assert lease(st, W1, now=20.0)["taken"]  # the holder tries again when it wants
    cs.apply(st, dict(release, now=21.0))
    assert lease(st, W2, now=51.0)["taken"]  # a holder that died meanwhile loses it


def test_store_without_a_lease_and_bad_commands() -> None:
    st = _state()
    cs.apply(st, {"op": "cert_store", "site": site(), "holder": W1, "now": 1.0})
    with pytest.raises(cs.CommandError, match="cert_store site needs chain"):
        cs.apply(st, {"op": "cert_store", "site": {"name": NAME, "key": "k"}, "holder": W1})
    with pytest.raises(cs.CommandError, match="ttl 0 is not between"):
        lease(st, W1, now=1.0, ttl=0.0)
    with pytest.raises(cs.CommandError, match="unknown kind 'dns-01'"):
        cs.apply(st, {"op": "cert_challenge", "kind": "dns-01", "id": "t", "holder": W1})


def test_a_takeover_drops_the_dead_holders_challenges() -> None:
    st = _state()
    lease(st, W1, now=0.0, ttl=10.0)
    for token in ("t1", "t2"):
        value = {"keyauth": f"{token}.thumb", "name": NAME}
        cs.apply(
            st,
            {"op": "cert_challenge", "kind": "http-01", "id": token, "value": value, "holder": W1},
        )
    cs.apply(
        st,
        {
            "op": "cert_challenge",
            "kind": "tls-alpn-01",
            "id": NAME,
            "value": {"cert": "C", "key": "K"},
            "holder": W1,
        },
    )
    other = {"keyauth": "x.thumb", "name": "other.test"}
    cs.apply(
        st, {"op": "cert_challenge", "kind": "http-01", "id": "t3", "value": other, "holder": W1}
    )
    assert set(rules.feed(st)["tokens"]) == {"t1", "t2", "t3"}
    assert rules.feed(st)["alpn"][NAME]["cert"] == "C"
    lease(st, W2, now=11.0)
    feed = rules.feed(st)
    assert set(feed["tokens"]) == {"t3"} and feed["alpn"] == {}  # other names keep theirs
    # a challenge removed by its holder
    cs.apply(
        st, {"op": "cert_challenge", "kind": "http-01", "id": "t3", "value": None, "holder": W1}
    )
    assert rules.feed(st)["tokens"] == {}
    # the end of an order (its lease given back) takes what it left behind with it
    left = {"keyauth": "t4.thumb", "name": NAME}
    cs.apply(
        st, {"op": "cert_challenge", "kind": "http-01", "id": "t4", "value": left, "holder": W2}
    )
    cs.apply(st, {"op": "cert_release", "name": NAME, "holder": W1})  # not W1's: stays
    assert set(rules.feed(st)["tokens"]) == {"t4"}
    cs.apply(st, {"op": "cert_release", "name": NAME, "holder": W2})
    assert rules.feed(st)["tokens"] == {}


def test_the_state_round_trips_and_replays_the_same() -> None:
    cmds = [
        {"op": "cert_lease", "name": NAME, "holder": W1, "ttl": 60.0, "now": 5.0},
        {"op": "cert_store", "site": site(), "holder": W1, "now": 6.0},
        {"op": "cert_account", "account": {"ca": "https://ca.test/dir", "key": "s", "regr": "{}"}},
        {"op": "cert_release", "name": NAME, "holder": W1},
    ]
    a, b = _state(), _state()
    for cmd in cmds:
        cs.apply(a, cmd)
        cs.apply(b, cmd)
        assert cmd["op"] in cs.IDEMPOTENT
    assert a.to_dict() == b.to_dict()
    again = cs.ClusterState.from_dict(json.loads(json.dumps(a.to_dict())))
    assert again.to_dict() == a.to_dict()
    assert "https://ca.test/dir/default" in rules.area(again, "accounts")
    assert rules.feed(again)["sites"][NAME]["holder"] == W1
    assert "leases" not in rules.feed(again)


class _Node:
    """The little of a NodeContext the certificate methods use."""

    def __init__(self, st: cs.ClusterState) -> None:
        self.state = st
        self.sealer = Sealer(new_data_key())

    async def submit(self, cmd: dict[str, Any]) -> dict[str, Any]:
        return cs.apply(self.state, cmd)


def test_the_api_seals_keys_and_opens_them_for_nodes_only() -> None:
    st = _state()

    async def run() -> None:
        api = CertMethods(_Node(st))  # type: ignore[arg-type]
        w1 = Peer(identity=PeerIdentity(W1, "worker", "c" * 25), address="x")
        w2 = Peer(identity=PeerIdentity(W2, "worker", "c" * 25), address="y")
        key = b"-----BEGIN PRIVATE KEY-----\nsecret-key-bytes\n-----END PRIVATE KEY-----\n"
        b64 = base64.b64encode
        got = await api.webcert_lease(w1, {"node_id": W1, "name": NAME, "ttl": 30})
        assert got["taken"] and "site" not in got
        await api.webcert_store(
            w1,
            {
                "node_id": W1,
                "name": NAME,
                "ca": "https://ca.test/dir",
                "chain": b64(b"CHAIN").decode(),
                "key": b64(key).decode(),
            },
        )
        stored = rules.area(st, "sites")[NAME]
        assert stored["key"].startswith("aesgcm1:")
        assert b"secret-key-bytes" not in json.dumps(st.to_dict()).encode()
        with pytest.raises(RpcError, match="cannot speak for node"):
            await api.webcert_watch(w2, {"node_id": W1})
        feed = await api.webcert_watch(w2, {"node_id": W2})
        assert base64.b64decode(feed["sites"][NAME]["key"]) == key
        refused = await api.webcert_lease(w2, {"node_id": W2, "name": NAME, "ttl": 30})
        assert not refused["taken"] and base64.b64decode(refused["site"]["key"]) == key
        with pytest.raises(RpcError, match="'key' is not base64"):
            await api.webcert_store(w1, {"node_id": W1, "name": NAME, "chain": "Q0g=", "key": "!!"})

    asyncio.run(run())


class _Member:
    """Two nodes' NodeContext over one state: what NodeCerts uses (its own API, as on a
    manager)."""

    def __init__(self, node_id: str, st: cs.ClusterState, api: CertMethods) -> None:
        self.node_id = node_id
        self.state = st
        self.is_manager = True
        self.stopping = False
        self.api = api

    async def call_self(self, method: str, params: dict[str, Any]) -> Any:
        peer = Peer(identity=PeerIdentity(self.node_id, "manager", "c" * 25), address="self")
        return await getattr(self.api, method)(peer, params)


def test_nodes_follow_certificates_and_challenges_through_the_state(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from meshkit.acme.client import alpn_certificate
    from meshkit.cluster.node.webcerts import NodeCerts
    from meshkit.web.autotls import CertHub

    monkeypatch.setenv("MESHKIT_ACME_PROPAGATE", "1ms")
    monkeypatch.setenv("MESHKIT_ACME_LEASE", "300ms")
    st = _state()
    shared = _Node(st)

    async def submit(cmd: dict[str, Any]) -> dict[str, Any]:
        result = cs.apply(st, cmd)
        api.applied(cmd)  # as the agent's on_applied does
        return result

    shared.submit = submit  # type: ignore[method-assign]
    api = CertMethods(shared)  # type: ignore[arg-type]
    hub_a, hub_b = CertHub(), CertHub()
    a = NodeCerts(_Member(W1, st, api), hub_a)  # type: ignore[arg-type]
    b = NodeCerts(_Member(W2, st, api), hub_b)  # type: ignore[arg-type]
    ca = "https://ca.test/dir"
    chain, key = alpn_certificate(NAME, "not-a-real-order")

    async def soon(check: Any) -> None:
        for _ in range(200):
            if check():
                return
            await asyncio.sleep(0.01)
        raise AssertionError("the follower did not get there")

    async def run() -> None:
        tasks = [asyncio.create_task(a.follow()), asyncio.create_task(b.follow())]
        try:
            store_a = a.issuer().stores(ca)
            store_b = b.issuer().stores(ca)
            assert await asyncio.to_thread(store_a.load_site, NAME) is None
            assert await asyncio.to_thread(store_a.take_order, NAME)
            assert not await asyncio.to_thread(store_b.take_order, NAME)
            await asyncio.sleep(0.5)  # past the first lease: the holder has extended it
            assert not await asyncio.to_thread(store_b.take_order, NAME)
            hooks = store_a.hooks(hub_a)
            await asyncio.to_thread(hooks.set_token, "tok", "tok.thumb")
            await soon(lambda: hub_b.tokens.get("tok") == "tok.thumb")
            assert hub_a.tokens == {"tok": "tok.thumb"}  # its own: not dropped by following
            await asyncio.to_thread(hooks.drop_token, "tok")
            await soon(lambda: "tok" not in hub_b.tokens)
            # TLS-ALPN-01 the same way: the challenge certificate reaches every node
            await asyncio.to_thread(hooks.set_alpn, NAME, chain, key)
            await soon(lambda: NAME in hub_b.alpn)
            assert NAME in hub_a.alpn
            await asyncio.to_thread(hooks.drop_alpn, NAME)
            await soon(lambda: NAME not in hub_b.alpn)
            assert NAME not in hub_a.alpn
            meta = {"not_after": "2031-01-01T00:00:00+00:00"}
            await asyncio.to_thread(store_a.save_site, NAME, chain, key, meta)
            await soon(lambda: hub_b.certs.get(NAME) == (chain, key))
            got = await asyncio.to_thread(store_b.load_site, NAME)
            assert got is not None and got[:2] == (chain, key) and got[2]["holder"] == W1
            # an answer left behind goes when the order ends (its lease is given back)
            await asyncio.to_thread(hooks.set_token, "tok2", "tok2.thumb")
            await soon(lambda: "tok2" in hub_b.tokens)
            await asyncio.to_thread(store_a.end_order, NAME)
            await soon(lambda: "tok2" not in hub_b.tokens)
            assert await asyncio.to_thread(store_b.take_order, NAME)
            assert await asyncio.to_thread(store_b.load_site, "other.test") is None
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(run())

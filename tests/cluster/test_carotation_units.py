"""CA rotation without agents: the cross-signed root, bundles of two roots in TLS handshakes,
and the phases of the replicated state (trust -> sign -> drop -> done)."""

from __future__ import annotations

import ssl

import pytest

from meshkit.cluster.model import carotation
from meshkit.cluster.model.records import DOWN, READY, ClusterState, CommandError, NodeRecord
from meshkit.cluster.rpc import pki
from meshkit.cluster.rpc.tokens import ca_digest


def handshake(server: pki.NodeIdentity, client_ca: bytes) -> None:
    """A TLS handshake in memory: `server` presents its chain, the client trusts `client_ca`
    only; raises ssl.SSLError when the chain does not verify."""
    sctx = pki.server_ssl_context(server)
    cctx = pki.client_ssl_context(None, client_ca)
    s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
    srv = sctx.wrap_bio(s_in, s_out, server_side=True)
    cli = cctx.wrap_bio(c_in, c_out, server_side=False)
    done = {"s": False, "c": False}
    for _ in range(20):
        for name, end in (("c", cli), ("s", srv)):
            if not done[name]:
                try:
                    end.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            return
    raise AssertionError("handshake did not finish")


def leaf(ca: pki.ClusterCA, extra: bytes, bundle: bytes) -> pki.NodeIdentity:
    key, csr = pki.new_node_key_and_csr("n1")
    return pki.NodeIdentity.from_cert(ca.sign_csr(csr, "n1", "worker") + extra, key, bundle)


def test_cross_signed_root_chains_to_the_old_root() -> None:
    old = pki.ClusterCA.create("c1", path_length=1)  # a root made by an earlier rotation
    new = pki.ClusterCA.create("c1", path_length=1)
    cross = old.cross_sign(new.cert)
    cross_cert = pki.certs_in(cross, "cross")[0]
    assert cross_cert.subject == new.cert.subject
    assert pki.issued_by(cross_cert, old.cert) and not pki.issued_by(cross_cert, new.cert)
    assert pki.key_id(cross) == pki.key_id(new.cert_pem)
    ident = leaf(new, cross, new.cert_pem + old.cert_pem)
    assert pki.issuer_key_id(ident.cert_pem) == pki.key_id(new.cert_pem)
    handshake(ident, old.cert_pem)  # a node that trusts only the old root: via the cross
    handshake(ident, new.cert_pem)
    handshake(ident, old.cert_pem + new.cert_pem)
    with pytest.raises(ssl.SSLError):  # without the cross-signed root it cannot chain
        handshake(leaf(new, b"", new.cert_pem), old.cert_pem)
    other = pki.ClusterCA.create("c1", path_length=1)
    with pytest.raises(ssl.SSLError):
        handshake(ident, other.cert_pem)


def test_two_root_bundle_trusts_both_and_identity_checks_any_root() -> None:
    old = pki.ClusterCA.create("c1")  # a first root (path length 0)
    new = pki.ClusterCA.create("c1", path_length=1)
    both = old.cert_pem + new.cert_pem
    a, b = leaf(old, b"", both), leaf(new, old.cross_sign(new.cert), both)
    handshake(a, both)
    handshake(b, both)
    with pytest.raises(pki.PkiError, match="not issued by the cluster CA"):
        leaf(new, b"", old.cert_pem)


def state_with_nodes(ca: pki.ClusterCA) -> ClusterState:
    st = ClusterState(cluster_id="c1", ca_cert_pem=ca.cert_pem.decode(), ca_key_pem="k-old")
    st.worker_secret, st.manager_secret = "w-old", "m-old"
    for node_id, role in (("m1", "manager"), ("w1", "worker"), ("w2", "worker")):
        st.nodes[node_id] = NodeRecord(id=node_id, hostname=node_id, role=role, addr="127.0.0.1")
        st.nodes[node_id].status = READY
    return st


def start(st: ClusterState, old: pki.ClusterCA, new: pki.ClusterCA) -> None:
    rotation = {
        "id": "r1",
        "new_cert": new.cert_pem.decode(),
        "new_key": "k-new",
        "cross": old.cross_sign(new.cert).decode(),
        "new_worker_secret": "w-new",
        "new_manager_secret": "m-new",
        "old_digest": ca_digest(old.cert_pem),
    }
    carotation.op_ca_rotate_start(st, {"rotation": rotation, "now": 1.0})


def ack_all(st: ClusterState, phase: str, nodes: tuple[str, ...]) -> list[str]:
    return [
        carotation.op_ca_rotate_ack(st, {"id": "r1", "phase": phase, "node_id": n})["phase"]
        for n in nodes
    ]


def test_phases_move_when_every_live_node_acked() -> None:
    old, new = pki.ClusterCA.create("c1"), pki.ClusterCA.create("c1", path_length=1)
    st = state_with_nodes(old)
    start(st, old, new)
    with pytest.raises(CommandError, match="already in progress"):
        start(st, old, new)
    assert carotation.bundle(st) == (old.cert_pem + new.cert_pem).decode()
    assert carotation.chain_extra(st) == ""
    assert st.ca_key_pem == "k-old"  # the old root still signs while nodes learn the new
    st.nodes["w2"].status = DOWN  # a Down node is not waited for
    assert ack_all(st, "trust", ("m1",)) == ["trust"]
    assert carotation.progress(st)["done"] == 1 and carotation.progress(st)["total"] == 2
    # a stale or foreign ack changes nothing
    assert carotation.op_ca_rotate_ack(st, {"id": "zz", "phase": "trust", "node_id": "w1"})["stale"]
    assert ack_all(st, "trust", ("w1",)) == ["sign"]
    assert st.ca_cert_pem == new.cert_pem.decode() and st.ca_key_pem == "k-new"
    assert (st.worker_secret, st.manager_secret) == ("w-new", "m-new")
    assert carotation.bundle(st) == (new.cert_pem + old.cert_pem).decode()
    cross = pki.certs_in(carotation.chain_extra(st).encode(), "cross")[0]
    assert pki.issued_by(cross, old.cert) and cross.subject == new.cert.subject
    assert ca_digest(old.cert_pem) in carotation.retired_digests(st)
    assert ack_all(st, "sign", ("m1", "w1")) == ["sign", "drop"]
    assert carotation.bundle(st) == new.cert_pem.decode()
    assert carotation.chain_extra(st) == ""
    assert ack_all(st, "drop", ("w1", "m1")) == ["drop", ""]
    assert carotation.active(st) is None
    assert carotation.retired_digests(st) == [ca_digest(old.cert_pem)]
    assert "k-new" not in repr(st.ca_rotation) and "-----BEGIN" not in repr(st.ca_rotation)
    # a second rotation keeps the first's retired digest
    newer = pki.ClusterCA.create("c1", path_length=1)
    start(st, new, newer)
    assert carotation.retired_digests(st) == [ca_digest(old.cert_pem)]


def test_ack_of_an_unknown_node_is_refused() -> None:
    old, new = pki.ClusterCA.create("c1"), pki.ClusterCA.create("c1", path_length=1)
    st = state_with_nodes(old)
    start(st, old, new)
    with pytest.raises(CommandError, match="not in this cluster"):
        carotation.op_ca_rotate_ack(st, {"id": "r1", "phase": "trust", "node_id": "nope"})


def test_phase_moves_on_when_the_missing_node_went_down() -> None:
    old, new = pki.ClusterCA.create("c1"), pki.ClusterCA.create("c1", path_length=1)
    st = state_with_nodes(old)
    start(st, old, new)
    assert ack_all(st, "trust", ("m1", "w1")) == ["trust", "trust"]
    st.nodes["w2"].status = DOWN
    # what ca_status submits then: an ack of a node already done re-checks the phase
    assert ack_all(st, "trust", ("m1",)) == ["sign"]


def test_cli_detach_needs_rotate() -> None:
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-m", "meshkit", "cluster", "ca", "--detach"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode != 0 and "--detach" in r.stderr and "only with --rotate" in r.stderr
    assert "Traceback" not in r.stderr


def client_handshake(server_ctx: ssl.SSLContext, client: pki.NodeIdentity) -> None:
    """A handshake where `client` presents its certificate to a server using `server_ctx`."""
    cctx = pki.client_ssl_context(client, None)
    s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
    srv = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    cli = cctx.wrap_bio(c_in, c_out, server_side=False)
    done = {"s": False, "c": False}
    for _ in range(20):
        for name, end in (("c", cli), ("s", srv)):
            if not done[name]:
                try:
                    end.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            cli.write(b"x")  # TLS 1.3: the server's verdict on the client arrives after
            s_in.write(c_out.read())
            srv.read(1)
            return
    raise AssertionError("handshake did not finish")


def test_server_context_forgets_the_old_root_after_a_reload() -> None:
    old = pki.ClusterCA.create("c1")
    new = pki.ClusterCA.create("c1", path_length=1)
    server_ctx = pki.server_ssl_context(leaf(old, b"", old.cert_pem + new.cert_pem))
    old_client, new_client = leaf(old, b"", old.cert_pem), leaf(new, b"", new.cert_pem)
    client_handshake(server_ctx, old_client)
    # the drop phase: the server's identity now trusts the new root only
    pki.reload_identity(server_ctx, leaf(new, b"", new.cert_pem))
    client_handshake(server_ctx, new_client)
    with pytest.raises(ssl.SSLError):
        client_handshake(server_ctx, old_client)

"""Security issue 16, findings 3, 7 and 11 (part): limits on clients without a certificate,
checked RPC parameters, printable tables and logs, a private data dir with sealed secrets.

The cluster tests start real agents (`python -m meshkit node init|join`) on 127.0.0.0/8, as
test_node_cli does; the rest are unit tests of the pieces.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import stat
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshkit.cli.node import table
from meshkit.cluster.api import params as cparams
from meshkit.cluster.api.nodes import Api
from meshkit.cluster.model import opgate
from meshkit.cluster.model import state as cs
from meshkit.cluster.raft.sealing import PREFIX, Sealer, SealError, new_data_key
from meshkit.cluster.rpc.pki import NodeIdentity, client_ssl_context, new_node_key_and_csr
from meshkit.cluster.rpc.tokens import parse_token
from meshkit.cluster.rpc.transport import RpcClient, RpcError
from support.agents import Agent, Cluster, token
from support.polling import until

# --------------------------------------------------------------------------- units


def test_printable_escapes_control_characters() -> None:
    assert cparams.printable("ok name") == "ok name"
    assert (
        cparams.printable("a\x1b[31mb\nc\r\x00\x7f\x9b") == "a\\x1b[31mb\\x0ac\\x0d\\x00\\x7f\\x9b"
    )
    assert cparams.printable("x" * 100, 10) == "x" * 10 + "..."


def test_table_cells_cannot_forge_rows_or_colours() -> None:
    out = table(["ID", "HOSTNAME"], [["abc", "evil\x1b[31m\nforged   Ready"]])
    assert len(out.splitlines()) == 2
    assert "\x1b" not in out
    assert "evil\\x1b[31m\\x0aforged" in out


def test_every_api_method_has_a_parameter_schema() -> None:
    class FakeAgent:
        pass

    api = Api(FakeAgent())  # type: ignore[arg-type]
    missing = set(api._handlers) - set(cparams.TCP_PARAMS)
    assert not missing, f"methods without a parameter schema: {sorted(missing)}"
    assert {"info", "leave", "mesh_watch"} <= set(cparams.LOCAL_PARAMS)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"api_port": 1000000}, "invalid join parameter api_port: 1000000 is not a port (1-65535)"),
        ({"raft_port": -5}, "invalid join parameter raft_port: -5 is not a port (1-65535)"),
        ({"api_port": "abc"}, "invalid join parameter api_port: 'abc' is not a port"),
        ({"api_port": True}, "invalid join parameter api_port: True is not a port"),
        (
            {"advertise_addr": "not an ip;$(id)"},
            "invalid join parameter advertise_addr: 'not an ip;$(id)' is not an IP address",
        ),
        ({"advertise_addr": "0.0.0.0"}, "is not an address other nodes can reach"),
        ({"hostname": "a" * 254}, "254 characters is too long for a host name (at most 253)"),
        ({"hostname": "bad\x1b[31m\nname"}, "'bad\\x1b[31m\\nname' is not a host name (RFC 1123"),
        ({"hostname": "-lead.example"}, "is not a host name"),
        ({"hostname": "a" * 64}, "is not a host name"),
        ({"version": "1.0\nINFO forged"}, "invalid join parameter version:"),
        ({"token": 5}, "invalid join parameter token: expected a string, got a number"),
        ({"token": None}, "invalid join parameter token: missing"),
    ],
)
def test_join_parameter_errors_name_the_parameter(params: dict[str, Any], message: str) -> None:
    good = {"token": "t", "csr": "c", "hostname": "h1", "advertise_addr": "198.18.0.5"}
    with pytest.raises(cparams.ParamError) as info:
        cparams.check_params("join", {**good, **params})
    assert message in str(info.value)
    assert "\x1b" not in str(info.value) and "\n" not in str(info.value)


def test_good_join_parameters_pass() -> None:
    _, csr = new_node_key_and_csr("pending")
    cparams.check_params(
        "join",
        {
            "token": "MKTKN-1-x-y",
            "csr": csr.decode(),
            "hostname": "node-1.dc1.example",
            "advertise_addr": "2001:db8::5",
            "version": "0.1.0.dev3+g12ab",
            "api_port": 2377,
            "raft_port": 2378,
        },
    )
    cparams.check_params("join", {"token": "t", "csr": "c", "advertise_addr": ""})


@pytest.mark.parametrize(
    ("method", "params", "local", "message"),
    [
        ("heartbeat", {"node_id": 5}, False, "invalid heartbeat parameter node_id"),
        ("heartbeat", {"node_id": "n1", "status": []}, False, "parameter status"),
        ("node_update", {"node": "n1", "availability": "off"}, False, "'off' is not one of"),
        ("node_update", {"node": "n1", "label_add": {"k": 1}}, False, "parameter label_add"),
        ("service_scale", {"service": "s", "replicas": "x"}, False, "parameter replicas"),
        ("tasks_watch", {"node_id": "n1", "wait": "soon"}, False, "parameter wait"),
        ("task_logs", {"tasks": ["a"], "tail": -1}, False, "parameter tail"),
        ("join_token", {"role": "boss"}, False, "parameter role"),
        ("leave", {"force": "yes"}, True, "invalid leave parameter force"),
        ("mesh_watch", {"wait": "x"}, True, "invalid mesh_watch parameter wait"),
    ],
)
def test_other_methods_are_checked(
    method: str, params: dict[str, Any], local: bool, message: str
) -> None:
    with pytest.raises(cparams.ParamError) as info:
        cparams.check_params(method, params, local=local)
    assert message in str(info.value)


def test_sealer_round_trip_and_plain_values() -> None:
    key = new_data_key()
    sealer = Sealer(key)
    sealed = sealer.seal("the secret")
    assert sealed.startswith(PREFIX) and "the secret" not in sealed
    assert sealer.open(sealed) == "the secret"
    assert sealer.open("plain") == "plain"  # a state from before sealing
    with pytest.raises(SealError):
        Sealer("").open(sealed)
    with pytest.raises(SealError):
        Sealer(new_data_key()).open(sealed)
    cluster: dict[str, object] = {"ca_key_pem": "KEY", "worker_secret": "", "cluster_id": "c"}
    sealer.seal_fields(cluster)
    assert str(cluster["ca_key_pem"]).startswith(PREFIX)
    assert cluster["worker_secret"] == "" and cluster["cluster_id"] == "c"


# --------------------------------------------------------------------------- real agents


@pytest.fixture(scope="module")
def pair() -> Iterator[Cluster]:
    """A manager m1 and a manager m2 that joined it."""
    c = Cluster()
    try:
        m1 = c.init("m1", 1)
        c.join("m2", 2, token(m1, "manager"), m1)
        yield c
    finally:
        c.close()


def test_each_manager_records_the_raft_entry_kinds_it_applies(pair: Cluster) -> None:
    """A manager's agent says its build applies batch entries (RAFT_OPS) and every command
    (meshkit.cluster.model.opgate), so the leader may put a tick's joins in one and commit
    commands past the gate's baseline; both managers' records carry it."""
    m1 = pair.agents["m1"]
    wanted = opgate.announced_ops(cs.COMMANDS, ["batch"])

    def recorded() -> bool:
        ops = m1.info().get("raft_ops") or {}
        return len(ops) == 2 and all(v == wanted for v in ops.values())

    until(recorded, 20, "both managers' raft_ops")


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_unauthenticated_frames_are_small_on_a_real_agent(pair: Cluster) -> None:
    """Issue 16 #3: 40 clients without a certificate announcing 16 MiB frames no longer pin
    memory: each is closed from the header alone, and the agent's RSS stays put."""
    m1 = pair.agents["m1"]
    assert m1.proc is not None
    before = _rss_kib(m1.proc.pid)

    async def attack() -> None:
        ctx = client_ssl_context(None, None)
        conns = [
            await asyncio.open_connection(m1.ip, 2377, ssl=ctx, server_hostname="")
            for _ in range(40)
        ]
        for _, writer in conns:
            writer.write(struct.pack(">I", 16 * 1024 * 1024 - 1) + b"x" * 60000)
        started = time.monotonic()
        for reader, writer in conns:
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                assert await asyncio.wait_for(reader.read(), 10) == b""
            writer.close()
        assert time.monotonic() - started < 10

    asyncio.run(attack())
    assert _rss_kib(m1.proc.pid) - before < 64 * 1024
    assert len(m1.ls()) == 2  # still serving


def _join_params(tok: str, **extra: Any) -> dict[str, Any]:
    _, csr = new_node_key_and_csr("pending")
    return {
        "token": tok,
        "csr": csr.decode(),
        "hostname": "newnode",
        "advertise_addr": "127.0.0.9",
        "version": "0.1.0",
        "api_port": 2377,
        "raft_port": 2378,
        **extra,
    }


def test_join_with_bad_parameters_gets_clear_errors(pair: Cluster) -> None:
    """Issue 16 #7: every bad join field is refused naming the field; nothing is written,
    no traceback is logged, and ls/log lines cannot be forged."""
    m1 = pair.agents["m1"]
    wt = token(m1, "worker")
    cases = {
        "hostname": ("evil\x1b[31m\nw9   Ready", "invalid join parameter hostname:"),
        "advertise_addr": ("not an ip;$(id)", "invalid join parameter advertise_addr:"),
        "api_port": (1000000, "invalid join parameter api_port: 1000000 is not a port (1-65535)"),
        "raft_port": (-5, "invalid join parameter raft_port: -5 is not a port (1-65535)"),
        "version": (["x"], "invalid join parameter version: expected a string, got a list"),
    }

    async def calls() -> None:
        anon = await RpcClient.connect_tcp(m1.ip, 2377, client_ssl_context(None, None), 5.0)
        try:
            for name, (value, message) in cases.items():
                with pytest.raises(RpcError) as err:
                    await anon.call("join", _join_params(wt, **{name: value}))
                assert err.value.code == "bad_request", err.value
                assert message in err.value.message
                assert "\x1b" not in err.value.message and "\n" not in err.value.message
            with pytest.raises(RpcError) as err:
                await anon.call("join", _join_params(wt, api_port="abc"))
            assert err.value.code == "bad_request"
            assert err.value.message == "invalid join parameter api_port: 'abc' is not a port"
            with pytest.raises(RpcError) as err:
                await anon.call("join", _join_params(wt, hostname="h" * 300))
            assert "300 characters is too long for a host name" in err.value.message
        finally:
            await anon.close()
        # a 1 MB hostname does not even fit the frame cap of a client without a certificate
        anon = await RpcClient.connect_tcp(m1.ip, 2377, client_ssl_context(None, None), 5.0)
        try:
            with pytest.raises(RpcError) as err:
                await anon.call("join", _join_params(wt, hostname="h" * 1_000_000))
            assert err.value.code == "unreachable"
        finally:
            await anon.close()
        # a certificate holder's calls are checked the same way
        ident = NodeIdentity.load(m1.data / "certs")
        client = await RpcClient.connect_tcp(
            m1.ip, 2377, client_ssl_context(ident, ident.ca_pem), 5.0
        )
        try:
            with pytest.raises(RpcError) as err:
                await client.call("heartbeat", {"node_id": ident.node_id, "status": "up"})
            assert err.value.code == "bad_request"
            assert "invalid heartbeat parameter status: expected an object" in err.value.message
            with pytest.raises(RpcError) as err:
                await client.call("node_update", {"node": "m1", "availability": 3})
            assert "invalid node_update parameter availability" in err.value.message
        finally:
            await client.close()

    asyncio.run(calls())
    names = {n["Hostname"] for n in m1.ls()}
    assert names == {"m1", "m2"}
    log = m1.log.read_text()
    assert "Traceback" not in log
    assert "\x1b" not in log


def _modes(root: Path) -> list[str]:
    """Paths under root whose mode is not 0700 (dirs) / 0600 (files)."""
    bad = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames, "."]:
            p = Path(dirpath) / name
            st = p.lstat()
            if stat.S_ISSOCK(st.st_mode) or stat.S_ISLNK(st.st_mode):
                continue
            want = 0o700 if stat.S_ISDIR(st.st_mode) else 0o600
            if stat.S_IMODE(st.st_mode) != want:
                bad.append(f"{p}: {oct(stat.S_IMODE(st.st_mode))}")
    return bad


def _raft_bytes(a: Agent) -> bytes:
    return b"".join(p.read_bytes() for p in (a.data / "raft").iterdir() if p.name != "datakey")


def test_data_dir_is_private_and_secrets_are_sealed(pair: Cluster) -> None:
    """Issue 16 #11: every file in the data dirs of a first and a joined manager is 0600 and
    every dir 0700; the raft journal holds neither the CA key nor a join secret in clear,
    also after a token rotation; and joins still work with the rotated token."""
    m1, m2 = pair.agents["m1"], pair.agents["m2"]
    old_worker = parse_token(token(m1, "worker")).secret
    manager_secret = parse_token(token(m1, "manager")).secret
    new_worker = parse_token(m1.ok("join-token", "-q", "--rotate", "worker").strip()).secret
    until(lambda: parse_token(token(m2, "worker")).secret == new_worker, 15, "rotation on m2")
    for a in (m1, m2):
        assert (a.data / "raft" / "journal").exists()
        assert (a.data / "raft" / "datakey").exists()
        assert _modes(a.data) == []
        raw = _raft_bytes(a)
        assert b"BEGIN CERTIFICATE" in raw  # the journal is readable: the check below means it
        assert b"PRIVATE KEY" not in raw
        for secret in (old_worker, new_worker, manager_secret):
            assert secret.encode() not in raw
    assert (m1.data / "raft" / "datakey").read_bytes() == (
        m2.data / "raft" / "datakey"
    ).read_bytes()
    # m2 can open the sealed secrets: it signs a join with the rotated token
    w = pair.join("w3", 3, m2.ok("join-token", "-q", "worker").strip(), m2)
    assert _modes(w.data) == []
    assert not (w.data / "raft").exists()  # a worker has no raft dir, no data key
    until(lambda: "w3" in {n["Hostname"] for n in m1.ls()}, 15, "w3 in ls")

"""The gateway bridge's NAT: the nftables JSON documents (pure), and on a throwaway namespace
the whole gateway made twice (one copy of each rule), looked at, and removed; without nft, the
gateway says what is missing and gives tasks no interface."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import textwrap

import pytest

from meshkit.net import gateway as gw

SUBNET = "198.19.255.0/24"


def test_ruleset_masquerades_the_subnet_not_leaving_by_the_bridge() -> None:
    doc = gw.ruleset(SUBNET)["nftables"]
    assert {"add": {"table": {"family": "ip", "name": "meshkit"}}} in doc
    assert {"flush": {"table": {"family": "ip", "name": "meshkit"}}} in doc
    rules = [item["add"]["rule"] for item in doc if "rule" in item.get("add", {})]
    nat = next(r for r in rules if r["chain"] == "postrouting")
    assert {"masquerade": None} in nat["expr"]
    assert gw.nat_rule_present({"nftables": [{"rule": nat}]}, SUBNET)
    assert not gw.nat_rule_present({"nftables": [{"rule": nat}]}, "198.19.254.0/24")
    assert not gw.nat_rule_present({"nftables": []}, SUBNET)
    # the outside only gets replies into the bridge
    forward = [r for r in rules if r["chain"] == "forward"]
    assert forward[-1]["expr"][-1] == {"drop": None}
    assert gw.delete_document() == {
        "nftables": [{"delete": {"table": {"family": "ip", "name": "meshkit"}}}]
    }
    assert gw.bridge_address(SUBNET) == "198.19.255.1"
    assert len(gw.BRIDGE) <= 15


SCRIPT = """
import asyncio, json, sys
from meshkit.net import gateway as gw
from meshkit.net import links
if sys.argv[1] == "no-nft":
    gw.find_nft = lambda: None

def has_bridge():
    with links.NsLinks.here() as here:
        return here.index(gw.BRIDGE) is not None

async def main():
    g = gw.NodeGateway(None)
    await g.ensure(SUBNET)
    await g.ensure(SUBNET)
    await g.check()
    out = {"status": g.status(), "ready": g.ready}
    if g.ready:
        listing = json.loads(gw.run_nft(None, "list", "table", "ip", "meshkit"))
        out["rules"] = sum(1 for i in listing["nftables"] if "rule" in i)
    out["bridge"] = await asyncio.to_thread(has_bridge)
    await g.remove()
    try:
        gw.run_nft(None, "list", "table", "ip", "meshkit")
        out["table_after"] = True
    except gw.GatewayError:
        out["table_after"] = False
    out["bridge_after"] = await asyncio.to_thread(has_bridge)
    out["forward_after"] = gw.read_forwarding()
    print(json.dumps(out))

asyncio.run(main())
""".replace("SUBNET", repr(SUBNET))


def _in_fresh_netns(mode: str) -> dict:
    if os.geteuid() != 0:
        pytest.skip("needs root for a network namespace")
    if gw.find_nft() is None:
        pytest.skip("nft is not installed (Debian's nftables)")
    ns = f"mkgw{os.getpid()}{secrets.token_hex(2)}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        r = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-c", textwrap.dedent(SCRIPT), mode],
            capture_output=True, text=True, timeout=60, env=dict(os.environ),
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        return dict(json.loads(r.stdout.strip().splitlines()[-1]))
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


@pytest.mark.root
def test_gateway_is_made_idempotently_and_removed() -> None:
    out = _in_fresh_netns("nft")
    assert out["ready"] and out["status"]["ok"], out
    assert out["status"]["nat"] and out["status"]["forwarding"], out
    assert out["rules"] == 4, out  # applied twice, one copy each
    assert out["bridge"] and not out["bridge_after"] and not out["table_after"], out
    assert out["forward_after"] is False, out  # a new namespace had it off: put back


@pytest.mark.root
def test_without_nft_the_gateway_names_what_is_missing() -> None:
    out = _in_fresh_netns("no-nft")
    assert not out["ready"] and not out["status"]["ok"], out
    assert any("no nft binary" in m for m in out["status"]["missing"]), out
    assert shutil.which("ip")


def test_no_gateway_on_loopback_nodes_or_when_switched_off() -> None:
    assert gw.gateway_wanted("198.18.0.10", {})
    assert not gw.gateway_wanted("127.0.0.1", {})
    assert not gw.gateway_wanted("198.18.0.10", {"MESHKIT_GATEWAY": "off"})
    assert gw.gateway_wanted("198.18.0.10", {"MESHKIT_GATEWAY": "on"})

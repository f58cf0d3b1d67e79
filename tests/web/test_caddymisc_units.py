"""realip, request_id, expvar and websocket's sans-IO parts: parsing over hand-made tokens,
handlers called directly, the handshake checks and the command's environment."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from meshkit.web.caddyfile.tokens import CaddyfileError, Dispenser
from meshkit.web.directives import expvar as expvar_d
from meshkit.web.directives import realip as realip_d
from meshkit.web.directives import request_id as request_id_d
from meshkit.web.directives import websocket as websocket_d
from meshkit.web.message import Request, Response
from meshkit.web.wsbridge import cgi_env, handshake
from support.webfiles import call, make_site, req, tokens


def parse(module: object, text: str) -> object:
    toks = tokens(text)
    site = make_site("/tmp")
    return module.parse(Dispenser(toks, toks[0].text), site)  # type: ignore[attr-defined]


def parse_err(module: object, text: str) -> str:
    with pytest.raises(CaddyfileError) as info:
        parse(module, text)
    return str(info.value)


# --- realip ---------------------------------------------------------------------------------


def _seen(config: object, remote: str, xff: str | None) -> tuple[int, str]:
    seen: list[str] = []

    def inner(r: Request) -> Response:
        seen.append(r.remote_addr)
        return Response.text(200, "ok")

    handler = realip_d.build(config, inner, make_site("/tmp"))  # type: ignore[arg-type]
    r = req("/", headers=[("X-Forwarded-For", xff)] if xff is not None else [])
    r.remote_addr = remote
    resp = call(handler, r)
    return resp.status, seen[0] if seen else ""


def test_realip_walks_the_chain_from_the_right() -> None:
    cfg = parse(realip_d, "realip 198.51.100.0/24")
    assert _seen(cfg, "198.51.100.1", "203.0.113.5") == (200, "203.0.113.5")
    # trusted hops are skipped, the first untrusted from the right is the client
    assert _seen(cfg, "198.51.100.1", "192.0.2.9, 203.0.113.5, 198.51.100.2") == (
        200,
        "203.0.113.5",
    )
    # all trusted: the leftmost
    assert _seen(cfg, "198.51.100.1", "198.51.100.7,198.51.100.2") == (200, "198.51.100.7")
    # an untrusted peer's header is ignored
    assert _seen(cfg, "192.0.2.1", "203.0.113.5") == (200, "192.0.2.1")
    # an unreadable last address: left alone
    assert _seen(cfg, "198.51.100.1", "NOTANIP") == (200, "198.51.100.1")
    # more than maxhops (5): 403
    assert _seen(cfg, "198.51.100.1", ",".join(["192.0.2.1"] * 6))[0] == 403


def test_realip_strict_refuses_what_it_cannot_trust() -> None:
    cfg = parse(realip_d, "realip {\nfrom 198.51.100.0/24\nstrict\nheader X-Forwarded-For\n}")
    assert _seen(cfg, "192.0.2.1", "203.0.113.5")[0] == 403  # untrusted peer
    assert _seen(cfg, "198.51.100.1", "NOTANIP")[0] == 403
    assert _seen(cfg, "198.51.100.1", "192.0.2.9, 203.0.113.5")[0] == 403  # untrusted hop
    assert _seen(cfg, "198.51.100.1", "203.0.113.5") == (200, "203.0.113.5")


def test_realip_parse() -> None:
    cfg = parse(realip_d, "realip cloudflare")
    assert isinstance(cfg, realip_d.RealIPConfig) and "2606:4700::/32" in cfg.sources
    cfg = parse(realip_d, "realip {\nfrom 198.18.0.0/15\nmaxhops -1\nstrict false\n}")
    assert isinstance(cfg, realip_d.RealIPConfig)
    assert cfg.max_hops == -1 and cfg.strict is False and cfg.sources == ["198.18.0.0/15"]
    assert "more than once" in parse_err(realip_d, "realip 192.0.2.0/24\nrealip 192.0.2.0/24")
    assert "invalid CIDR" in parse_err(realip_d, "realip 192.0.2.300/24")
    assert "unknown realip option 'fromm'" in parse_err(realip_d, "realip {\nfromm x\n}")
    assert "unexpected bool value" in parse_err(realip_d, "realip 192.0.2.0/24 {\nstrict yes\n}")
    assert "Caddyfile:2" in parse_err(realip_d, "realip 192.0.2.0/24 {\nmaxhops -2\n}")


# --- request_id -----------------------------------------------------------------------------


def test_request_id_sets_the_placeholder_before_the_inner_handlers() -> None:
    cfg = parse(request_id_d, "request_id X-Req")
    seen: list[str] = []

    def inner(r: Request) -> Response:
        seen.append(r.vars["request_id"])
        return Response.text(200, "ok")

    handler = request_id_d.build(cfg, inner, make_site("/tmp"))  # type: ignore[arg-type]
    call(handler, req("/", headers=[("X-Req", "{6ba7b810-9dad-11d1-80b4-00c04fd430c8}")]))
    call(handler, req("/", headers=[("X-Req", "urn:UUID:6BA7B810-9DAD-11D1-80B4-00C04FD430C8")]))
    call(handler, req("/", headers=[("X-Req", "6ba7b810-9dad-11d1-80b4")]))
    assert seen[0] == seen[1] == "6ba7b810-9dad-11d1-80b4-00c04fd430c8"
    assert seen[2] != seen[0] and len(seen[2]) == 36
    assert "wrong argument count" in parse_err(request_id_d, "request_id A B")


# --- expvar ---------------------------------------------------------------------------------


def test_expvar_answers_under_its_path_only() -> None:
    cfg = parse(expvar_d, "expvar /stats")
    handler = expvar_d.build(cfg, lambda r: Response.text(200, "next"), make_site("/tmp"))  # type: ignore[arg-type]
    assert call(handler, req("/")).body == b"next"
    resp = call(handler, req("/stats"))
    assert isinstance(resp.body, bytes)
    data = json.loads(resp.body)
    assert data["meshkit"]["site_requests"] == 2
    assert set(data) == {"cmdline", "memstats", "tasks", "meshkit"}
    default = parse(expvar_d, "expvar")
    assert isinstance(default, expvar_d.ExpvarConfig) and default.path == "/debug/vars"


# --- websocket ------------------------------------------------------------------------------


def test_websocket_parse_follows_v1() -> None:
    cfg = parse(websocket_d, "websocket cat")
    assert isinstance(cfg, websocket_d.WebSocketConfig)
    assert [(s.path, s.command) for s in cfg.sockets] == [("/", "cat")]
    cfg = parse(websocket_d, "websocket /a cat\nwebsocket /b cat {\nrespawn\n}")
    assert isinstance(cfg, websocket_d.WebSocketConfig)
    assert [(s.path, s.respawn) for s in cfg.sockets] == [("/a", False), ("/b", True)]
    assert "Caddyfile:2" in parse_err(websocket_d, "websocket /a cat {\ninvalid\n}")
    assert "quote them" in parse_err(websocket_d, "websocket /a cat -n")
    assert "wrong argument count" in parse_err(websocket_d, "websocket")


KEY = ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
UPGRADE = [("Connection", "keep-alive, Upgrade"), ("Upgrade", "websocket"), KEY]


@pytest.mark.parametrize(
    ("method", "headers", "status"),
    [
        ("GET", [*UPGRADE, ("Sec-WebSocket-Version", "13")], None),
        ("POST", [*UPGRADE, ("Sec-WebSocket-Version", "13")], 400),
        ("GET", [("Upgrade", "websocket"), KEY, ("Sec-WebSocket-Version", "13")], 400),
        ("GET", [*UPGRADE, ("Sec-WebSocket-Version", "8")], 400),
        (
            "GET",
            [*UPGRADE[:2], ("Sec-WebSocket-Key", "short"), ("Sec-WebSocket-Version", "13")],
            400,
        ),
    ],
)
def test_handshake(method: str, headers: list[tuple[str, str]], status: int | None) -> None:
    error, accept = handshake(req("/", method=method, headers=headers))
    if status is None:
        assert error is None and accept == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # RFC 6455's example
    else:
        assert error is not None and error.status == status and accept == ""


def test_cgi_env_holds_v1s_variables_only(tmp_path: Path) -> None:
    r = req("/ws", headers=[("X-A", "1"), ("x-a", "2"), ("User-Agent", "t\nx")], query="q=1")
    r.host = "[2001:db8::1]:8443"
    r.remote_addr, r.remote_port = "192.0.2.7", 4000
    env = cgi_env(r, "/bin/cat")
    assert env["SERVER_NAME"] == "2001:db8::1" and env["SERVER_PORT"] == "8443"
    assert env["HTTP_X_A"] == "1, 2" and env["HTTP_USER_AGENT"] == "t x"
    assert env["REMOTE_ADDR"] == "192.0.2.7" and env["REMOTE_PORT"] == "4000"
    assert env["QUERY_STRING"] == "q=1" and env["SCRIPT_NAME"] == "/bin/cat"
    assert "PATH" not in env

"""Caddy v1's own setup tests, ported case by case: every Caddyfile input of the setup tests of
each core directive meshkit has (caddyhttp/*/setup_test.go, caddyhttp/proxy/upstream_test.go,
caddyhttp/index/index_test.go, caddyhttp/root/root_test.go, caddytls/setup_test.go; templates,
markdown, websocket, expvar, request_id and push in support/caddy_v1/content.py; bind, timeouts
and the plugin proxyprotocol in listener.py; on, startup and shutdown in hooks.py), with
whether Caddy v1 accepts it, and for accepted ones the values its test reads where meshkit has
the same concept. Each case names the Go test it comes from (`TestName#N`: the N-th input of
its table, from 0, as the Go tests count).

A case whose outcome meshkit changes on purpose is a documented difference: `diff=` says why,
and the test asserts meshkit's (opposite) outcome, so the difference cannot drift unnoticed.
A case that shows a bug in a parser another change owns is `xfail(strict=True)` with the
reason. The inputs are the directive's tokens, as Caddy's NewTestController takes them; here
they sit in a site block (`:2015 { ... }`) and go through meshkit's whole Caddyfile loader.
`@T@` stands for a folder of files the cases need (a template, an htpasswd file, a
certificate and its key, a CA).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshkit.web.caddyfile.load import Defaults, load_text
from support.caddy_v1 import Case
from support.caddy_v1.content import EXPVAR, MARKDOWN, PUSH, REQUEST_ID, TEMPLATES, WEBSOCKET
from support.caddy_v1.core import (
    BASICAUTH,
    BROWSE,
    ERRORS,
    EXT,
    FASTCGI,
    GZIP,
    HEADER,
    INDEX,
    INTERNAL,
    LIMITS,
)
from support.caddy_v1.hooks import ON, SHUTDOWN, STARTUP
from support.caddy_v1.listener import BIND, PROXYPROTOCOL, TIMEOUTS
from support.caddy_v1.proxy import PROXY
from support.caddy_v1.routing import DISPENSER, LOG, MIME, REDIR, REWRITE, ROOT, STATUS
from support.caddy_v1.tlscases import TLS
from support.tlscerts import issue, make_ca

ALL = (
    DISPENSER
    + GZIP
    + HEADER
    + BASICAUTH
    + BROWSE
    + ERRORS
    + EXT
    + FASTCGI
    + INTERNAL
    + INDEX
    + LIMITS
)
ALL += LOG + MIME + PROXY + REDIR + REWRITE + ROOT + STATUS + TLS
ALL += TEMPLATES + MARKDOWN + WEBSOCKET + EXPVAR + REQUEST_ID + PUSH
ALL += BIND + TIMEOUTS + PROXYPROTOCOL + ON + STARTUP + SHUTDOWN


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The files the cases name: a browse template, a markdown template, an htpasswd file
    (v1's test lines), a certificate with its key, and a CA."""
    t = tmp_path_factory.mktemp("v1cases")
    (t / "template.html").write_text("<html>{{.Name}}</html>\n")
    (t / "tpl_with_include.html").write_text(
        "<title>{{.Doc.title}}</title>\n<body>{{.Doc.body}}</body>\n"
    )
    (t / "404.html").write_text("not found\n")
    (t / "htpasswd").write_text(
        "sha1:{SHA}dcAUljwz99qFjYR0YLTXx0RqLww=\nmd5:$apr1$l42y8rex$pOA2VJ0x/0TwaFeAF9nX61\n"
    )
    ca = make_ca(t, "v1 cases CA")
    (t / "ca.crt").write_bytes(ca.path.read_bytes())
    cert, key = issue(ca, t, "site", ["localhost"])
    (t / "cert.pem").write_bytes(cert.read_bytes())
    (t / "key.pem").write_bytes(key.read_bytes())
    yield t


def _params() -> list[Any]:
    out = []
    for c in ALL:
        marks = []
        if c.xfail:
            marks.append(pytest.mark.xfail(strict=True, reason=c.xfail))
        out.append(pytest.param(c, id=c.go, marks=marks))
    return out


@pytest.mark.parametrize("case", _params())
def test_v1_setup_case(case: Case, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(folder)
    body = case.body.replace("@T@", str(folder))
    if case.acme:  # a tls block that names no certificate asks for automatic HTTPS
        config = load_text(
            f"example.test:2015 {{\n{body}\n}}\n", defaults=Defaults(auto_https=True)
        )
    else:
        config = load_text(f":2015 {{\n{body}\n}}\n")
    errors = [str(e) for e in config.errors]
    accepted = not errors
    want = case.ok if not case.diff else not case.ok
    if case.diff:
        why = f"a documented difference ({case.diff})"
    else:
        why = "Caddy v1 " + ("accepts" if case.ok else "rejects")
    assert accepted == want, f"{case.go}: {why} {body!r}; meshkit: {errors or 'accepted'}"
    if not accepted:
        # a rejection names the file and line, never a traceback
        assert all(e.startswith("Caddyfile:") for e in errors), errors
        return
    if case.check is not None and not case.diff:
        case.check(_scrub(config.sites[0].directives, str(folder)))


def _scrub(value: Any, real: str) -> Any:
    """The parsed configuration with the test folder written `@T@` again (for the checks)."""
    if isinstance(value, str):
        return value.replace(real, "@T@")
    if isinstance(value, list):
        return [_scrub(v, real) for v in value]
    if isinstance(value, dict):
        return {k: _scrub(v, real) for k, v in value.items()}
    if hasattr(value, "__dataclass_fields__"):
        import dataclasses

        return dataclasses.replace(
            value,
            **{
                f.name: _scrub(getattr(value, f.name), real)
                for f in dataclasses.fields(value)
                if f.init
            },
        )
    return value


def test_every_core_directive_meshkit_has_is_covered() -> None:
    """Each v1 core directive meshkit registers has ported cases here (new ones must come
    with theirs)."""
    from meshkit.web.directives import REGISTRY

    covered = {c.body.split()[0] for c in ALL if c.body.split()}
    # plugins in v1, not core: http.git (no setup tests in caddyserver/caddy) and
    # captncraig/caddy-realip (its only test, realip_test.go, runs the handler, not the
    # parser); tests/web/test_caddymisc_units.py and golden/realip.caddyfile parse realip.
    # (The plugin mastercactapus/caddy-proxyprotocol's setup tests are ported: listener.py.)
    not_v1 = {"git", "realip"}
    missing = set(REGISTRY) - covered - not_v1
    assert not missing, f"directives without ported v1 setup cases: {sorted(missing)}"


def test_no_registered_directive_is_listed_as_missing() -> None:
    """A directive meshkit has must not also be named "not available in this version"."""
    from meshkit.web.directives import NOT_IN_MESHKIT, REGISTRY, load_all

    load_all()
    assert not set(REGISTRY) & NOT_IN_MESHKIT, sorted(set(REGISTRY) & NOT_IN_MESHKIT)

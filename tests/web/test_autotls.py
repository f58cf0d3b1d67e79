"""The web server's side of automatic HTTPS, without a CA: which names are wanted, the
HTTP-01 front of the http port, and certificates swapped into an HTTPS port by name."""

from __future__ import annotations

import ssl
from pathlib import Path

from meshkit.web.app import plan
from meshkit.web.autotls import CertHub, ChallengeFront, Wanted, wanted
from meshkit.web.caddyfile.load import Defaults, load_text
from meshkit.web.message import Request, Response
from meshkit.web.tlsctx import self_signed_pair

ON = Defaults(auto_https=True, http_port=8080, https_port=8443)


def test_wanted_names_and_ports() -> None:
    c = load_text(
        "a.test www.a.test {\n root .\n}\nb.test {\n tls me@b.test {\n  ca https://ca.test/d\n"
        " }\n}\nlocalhost {\n root .\n}\n",
        defaults=ON,
    )
    assert not c.errors, c.errors
    assert wanted(c) == [
        Wanted("a.test"),
        Wanted("www.a.test"),
        Wanted("b.test", "me@b.test", "https://ca.test/d"),
    ]
    ports = plan(c, hub=CertHub())
    assert set(ports) == {8443, 8080, 2015}
    tls = ports[8443].tls
    assert tls is not None and tls.auto == {"a.test", "www.a.test", "b.test"}
    assert ports[8080].challenges is not None  # HTTP-01 before the redirect sites


def test_without_consent_nothing_is_wanted() -> None:
    c = load_text("a.test {\n root .\n}\n")
    assert wanted(c) == [] and "not on" in c.warnings[0]


def test_challenge_front_answers_tokens_first() -> None:
    hub = CertHub()

    def inner(request: Request) -> Response:
        return Response(status=418)

    front = ChallengeFront(inner, hub)
    path = "/.well-known/acme-challenge/tok"
    assert front(Request("GET", path, path, host="a.test")).status == 418  # type: ignore[union-attr]
    hub.set_token("tok", "tok.thumb")
    r = front(Request("GET", path, path, host="a.test"))
    assert isinstance(r, Response) and (r.status, r.body) == (200, b"tok.thumb")
    hub.drop_token("tok")
    assert front(Request("GET", path, path, host="a.test")).status == 418  # type: ignore[union-attr]


def test_hub_swaps_certificates_into_listeners(tmp_path: Path) -> None:
    hub = CertHub()
    c = load_text("a.test {\n root .\n}\n", defaults=ON)
    listener = plan(c, hub=hub)[8443].tls
    assert listener is not None
    assert listener.pick("a.test") is None  # nothing yet: the certificate-less default
    cert, key = self_signed_pair(["a.test"])
    hub.install(["a.test"], cert, key)
    first = listener.pick("a.test")
    assert isinstance(first, ssl.SSLContext)
    hub.install(["a.test"], *self_signed_pair(["a.test"], "p384"))
    assert listener.pick("a.test") is not first  # a renewal: a new context, in place
    # a listener built later (a reload) gets what the hub has at once
    again = plan(c, hub=hub)[8443].tls
    assert again is not None and isinstance(again.pick("a.test"), ssl.SSLContext)
    # a pending TLS-ALPN-01 answer comes first
    hub.set_alpn("a.test", cert, key)
    assert listener.pick("a.test") is hub.alpn["a.test"]
    hub.drop_alpn("a.test")
    assert listener.pick("a.test") is not hub.alpn.get("a.test")

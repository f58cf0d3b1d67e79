"""v1 setup cases: tls (caddytls/setup_test.go)."""

from __future__ import annotations

from support.caddy_v1 import (
    NO_UNVERIFIED_CLIENTS,
    Case,
    _eq,
)

# --- tls (caddytls/setup_test.go) --------------------------------------------------------------

TLS = [
    Case(
        "tls TestSetupParseBasic",
        "tls @T@/cert.pem @T@/key.pem",
        True,
        lambda d: _eq((d["tls"].cert, d["tls"].key), ("@T@/cert.pem", "@T@/key.pem")),
    ),
    Case("tls TestSetupParseIncompleteParams", "tls", False),
    Case(
        "tls TestSetupParseWithOptionalParams",
        "tls @T@/cert.pem @T@/key.pem {\n protocols tls1.0 tls1.2\n ciphers RSA-AES256-CBC-SHA"
        " ECDHE-RSA-AES128-GCM-SHA256 ECDHE-ECDSA-AES256-GCM-SHA384\n must_staple\n"
        " alpn http/1.1\n}",
        True,
        diff="meshkit refuses TLS 1.0 and 1.1 (OpenSSL 3 and RFC 8996 deprecate them) by name, and"
        " `must_staple` beside a certificate of one's own (it asks the ACME CA for the"
        " extension; Caddy v1 ignored it there)",
    ),
    Case(
        "tls TestSetupDefaultWithOptionalParams",
        "tls {\n ciphers RSA-3DES-EDE-CBC-SHA\n}",
        True,
        diff="meshkit refuses 3DES cipher suites (SWEET32; OpenSSL 3 has them off), by name",
    ),
    Case(
        "tls TestSetupParseWithWrongOptionalParams#0",
        "tls @T@/cert.pem @T@/key.pem {\n protocols ssl tls\n}",
        False,
    ),
    Case(
        "tls TestSetupParseWithWrongOptionalParams#1",
        "tls @T@/cert.pem @T@/key.pem {\n ciphers not-valid-cipher\n}",
        False,
    ),
    Case("tls TestSetupParseWithWrongOptionalParams#2", "tls {\n key_type ab123\n}", False),
    Case(
        "tls TestSetupParseWithWrongOptionalParams#3",
        "tls {\n curves ab123, cd456, ef789\n}",
        False,
    ),
    Case(
        "tls TestSetupParseWithClientAuth (no CA)",
        "tls @T@/cert.pem @T@/key.pem {\n clients\n}",
        False,
    ),
    Case(
        "tls TestSetupParseWithClientAuth#1",
        "tls @T@/cert.pem @T@/key.pem {\n clients @T@/ca.crt @T@/ca.crt\n}",
        True,
    ),
    Case(
        "tls TestSetupParseWithClientAuth#2",
        "tls @T@/cert.pem @T@/key.pem {\n clients request\n}",
        True,
        diff=NO_UNVERIFIED_CLIENTS,
    ),
    Case(
        "tls TestSetupParseWithClientAuth#2 (with a CA)",
        "tls @T@/cert.pem @T@/key.pem {\n clients request @T@/ca.crt\n}",
        True,
        lambda d: _eq(d["tls"].client_mode, "request"),
    ),
    Case(
        "tls TestSetupParseWithClientAuth#3",
        "tls @T@/cert.pem @T@/key.pem {\n clients require\n}",
        True,
        diff=NO_UNVERIFIED_CLIENTS,
    ),
    Case(
        "tls TestSetupParseWithClientAuth#4",
        "tls @T@/cert.pem @T@/key.pem {\n clients verify_if_given @T@/ca.crt\n}",
        True,
        lambda d: _eq(d["tls"].client_mode, "verify_if_given"),
    ),
    Case(
        "tls TestSetupParseWithClientAuth#5",
        "tls @T@/cert.pem @T@/key.pem {\n clients verify_if_given\n}",
        False,
    ),
    Case(
        "tls TestSetupParseWithCAUrl#0",
        "tls {\n ca https://acme-staging.api.letsencrypt.org/directory\n}",
        True,
        lambda d: _eq(d["tls"].ca, "https://acme-staging.api.letsencrypt.org/directory"),
        acme=True,
    ),
    Case("tls TestSetupParseWithCAUrl#1", "tls {\n ca\n}", False, acme=True),
    Case("tls TestSetupParseWithCAUrl#2", "tls {\n ca 1 2\n}", False, acme=True),
    Case(
        "tls TestSetupParseWithKeyType",
        "tls {\n key_type p384\n}",
        True,
        lambda d: _eq(d["tls"].key_type, "p384"),
        acme=True,
    ),
    Case(
        "tls TestSetupParseWithCurves",
        "tls {\n curves x25519 p256 p384 p521\n}",
        True,
        diff="Python's ssl module sets one ECDH curve, not a list: meshkit takes one curve and"
        " names the limit",
        acme=True,
    ),
    Case(
        "tls TestSetupParseWithCurves (one curve)",
        "tls {\n curves x25519\n}",
        True,
        acme=True,
    ),
    Case(
        "tls TestSetupParseWithOneTLSProtocol",
        "tls {\n protocols tls1.2\n}",
        True,
        lambda d: _eq((d["tls"].min_version, d["tls"].max_version), ("tls1.2", "tls1.2")),
        acme=True,
    ),
    Case("tls TestSetupParseCertificateTransparencyOff", "tls {\n ct off\n}", True, acme=True),
    Case("tls TestSetupParseCertificateTransparencyOff (ct on)", "tls {\n ct on\n}", False),
    Case(
        "tls protocols min above max (setup.go)",
        "tls @T@/cert.pem @T@/key.pem {\n protocols tls1.3 tls1.2\n}",
        False,
    ),
    Case(
        "tls protocols names ignore case (setup.go ToLower)",
        "tls @T@/cert.pem @T@/key.pem {\n protocols TLS1.3\n}",
        True,
        lambda d: _eq((d["tls"].min_version, d["tls"].max_version), ("tls1.3", "tls1.3")),
    ),
]

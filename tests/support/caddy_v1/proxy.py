"""v1 setup cases: proxy (caddyhttp/proxy/setup_test.go, upstream_test.go, and parseBlock's
own rules)."""

from __future__ import annotations

from support.caddy_v1 import (
    NEGATIVE,
    Case,
    Check,
    _eq,
)

# --- proxy (caddyhttp/proxy/setup_test.go, upstream_test.go) -----------------------------------


def _hosts(*names: str) -> Check:
    return lambda d: _eq(sorted(u.name for u in d["proxy"].rules[0].upstreams), sorted(names))


PROXY = [
    Case("proxy TestSetup#0", "proxy / localhost:80", True, _hosts("localhost:80")),
    Case(
        "proxy TestSetup#1",
        "proxy / localhost:8080-8082",
        True,
        _hosts("localhost:8080", "localhost:8081", "localhost:8082"),
    ),
    Case(
        "proxy TestSetup#2",
        "proxy / {\n upstream localhost:8080\n}",
        True,
        _hosts("localhost:8080"),
    ),
    Case(
        "proxy TestSetup#3",
        "proxy / {\n upstream localhost:8080-8081\n}",
        True,
        _hosts("localhost:8080", "localhost:8081"),
    ),
    Case(
        "proxy TestSetup#4",
        "proxy / localhost:8080 {\n upstream localhost:8081-8082\n}",
        True,
        _hosts("localhost:8080", "localhost:8081", "localhost:8082"),
    ),
    Case(
        "proxy TestSetup#5",
        "proxy / localhost:8080 {\n upstream unix:/var/foo\n}",
        True,
        _hosts("localhost:8080", "unix:/var/foo"),
    ),
    Case("proxy TestSetup#6", "proxy / localhost:8090-8080", False),
    Case("proxy TestSetup#7", "proxy / {\n upstream localhost:80-A\n}", False),
    Case(
        "proxy TestSetup#8",
        "proxy / http://localhost {\n upstream testendpoint\n}",
        True,
        _hosts("localhost:80", "testendpoint:80"),
    ),
    Case(
        "proxy TestSetup#9",
        "proxy / localhost:8080 {\n upstream localhost:8081-8082\n upstream localhost:8083-8085\n}",
        True,
        _hosts(*(f"localhost:{p}" for p in range(8080, 8086))),
    ),
    Case(
        "proxy TestSetup#10",
        "proxy / http://localhost:8001/a--b",
        True,
        _hosts("localhost:8001/a--b"),
    ),
    Case(
        "proxy TestSetup#11",
        "proxy / http://localhost:8001-8005/a--b",
        True,
        _hosts(*(f"localhost:{p}/a--b" for p in range(8001, 8006))),
    ),
    Case(
        "proxy TestSetup#12",
        "proxy / localhost:1984 {\n header_upstream -server \n}",
        True,
        lambda d: _eq(
            [(h.op, h.name) for h in d["proxy"].rules[0].header_upstream], [("del", "server")]
        ),
    ),
    Case(
        "proxy TestSetup#13",
        "proxy / localhost:1984 {\n header_downstream -server \n}",
        True,
        lambda d: _eq(
            [(h.op, h.name) for h in d["proxy"].rules[0].header_downstream], [("del", "server")]
        ),
    ),
    Case(
        "proxy TestSetup#14",
        "proxy / quic://localhost:443",
        True,
        diff="meshkit has no QUIC (HTTP/3) upstreams: a quic:// upstream is refused by name",
    ),
    Case(
        "proxy TestParseBlockHealthCheck#1",
        "proxy / localhost:8080 {\n health_check /health\n health_check_interval 10s\n"
        " health_check_timeout 20s\n}",
        True,
        lambda d: _eq(
            (d["proxy"].rules[0].health_check_interval, d["proxy"].rules[0].health_check_timeout),
            (10.0, 20.0),
        ),
    ),
    Case(
        "proxy TestParseBlockHealthCheck#2",
        "proxy / localhost:8080 {\n health_check_interval 10s\n health_check_timeout 20s\n"
        " health_check /health\n}",
        True,
        lambda d: _eq(
            (d["proxy"].rules[0].health_check_interval, d["proxy"].rules[0].health_check_timeout),
            (10.0, 20.0),
        ),
    ),
    Case(
        "proxy TestParseBlockHealthCheck#3",
        "proxy / localhost:8080 {\n health_check /health\n}",
        True,
        lambda d: _eq(
            (d["proxy"].rules[0].health_check_interval, d["proxy"].rules[0].health_check_timeout),
            (30.0, 60.0),
        ),
    ),
    Case(
        "proxy TestParseBlockHealthCheck#4",
        "proxy / localhost:8080 {\n health_check /health\n health_check_interval 15s\n}",
        True,
        lambda d: _eq(d["proxy"].rules[0].health_check_interval, 15.0),
    ),
    Case(
        "proxy TestParseBlockHealthCheck#5",
        "proxy / localhost:8080 {\n health_check /health\n health_check_timeout 15s\n}",
        True,
        lambda d: _eq(d["proxy"].rules[0].health_check_timeout, 15.0),
    ),
    Case(
        # parseBlock returns "unknown property" for the misspelt option (the Go test ignores
        # the error and checks the defaults): v1 refuses the Caddyfile
        "proxy TestParseBlockHealthCheck#6",
        "proxy / localhost:8080 {\n health_check /health health_check_time 15s\n}",
        False,
    ),
    Case(
        "proxy TestParseBlock#1",
        "proxy / localhost:8080 {\n transparent \n}",
        True,
        lambda d: _eq(d["proxy"].rules[0].transparent, True),
    ),
    Case(
        "proxy TestParseBlock#2",
        "proxy / localhost:8080 {\n transparent \nheader_upstream X-Test Tester \n}",
        True,
    ),
    Case(
        "proxy TestParseBlock#3",
        "proxy / localhost:8080 {\n transparent \n} \n"
        "proxy /api localhost:8081 { \ntransparent \n}",
        True,
        lambda d: _eq([r.transparent for r in d["proxy"].rules], [True, True]),
    ),
    Case("proxy TestHealthSetUp#1", "proxy / localhost:8080 {\n health_check / \n}", True),
    Case(
        "proxy TestHealthSetUp#2",
        "proxy / localhost:8080 {\n health_check / \n insecure_skip_verify \n}",
        True,
        lambda d: _eq(d["proxy"].rules[0].insecure_skip_verify, True),
    ),
    Case(
        "proxy TestHealthCheckHost#4",
        "proxy / localhost:8080 {\n health_check / \n header_upstream Host {host} \n}",
        True,
    ),
    Case(
        "proxy TestHealthCheckPort#1",
        "proxy / localhost:8080 {\n health_check / health_check_port 9002\n}",
        True,
        lambda d: _eq(
            (d["proxy"].rules[0].health_check, d["proxy"].rules[0].health_check_port), ("/", 9002)
        ),
    ),
    Case(
        "proxy TestHealthCheckPort#2",
        "proxy / localhost {\n health_check / health_check_port 9002\n}",
        True,
    ),
    Case(
        "proxy TestHealthCheckPort/valid_port#1",
        "proxy / localhost {\n health_check / health_check_port\n}",
        False,
    ),
    Case(
        "proxy TestHealthCheckPort/valid_port#2",
        "proxy / localhost {\n health_check / health_check_port abc\n}",
        False,
    ),
    Case(
        "proxy TestHealthCheckPort/valid_port#3",
        "proxy / localhost {\n health_check / health_check_port -1\n}",
        False,
    ),
    Case(
        "proxy TestHealthCheckContentString#1",
        "proxy / localhost:9002 { health_check /testhealth  health_check_contains good\n}",
        True,
        lambda d: _eq(
            (d["proxy"].rules[0].health_check, d["proxy"].rules[0].health_check_contains),
            ("/testhealth", "good"),
        ),
    ),
    Case(
        "proxy TestHealthCheckContentString#2",
        "proxy / localhost:9002 {\n health_check /testhealth health_check_port 9002 \n"
        " health_check_contains bad\n}",
        True,
    ),
    Case(
        "proxy TestQuicHost#1",
        "proxy / quic://localhost:8080",
        True,
        diff="meshkit has no QUIC (HTTP/3) upstreams",
    ),
    Case(
        "proxy TestParseSRVBlock#0",
        "proxy / srv://bogus.service",
        True,
        lambda d: _eq(d["proxy"].rules[0].upstreams[0].name, "srv://bogus.service"),
    ),
    Case("proxy TestParseSRVBlock#1", "proxy / srv://bogus.service:80", False),
    Case(
        "proxy TestParseSRVBlock#2",
        "proxy / srv://bogus.service srv://bogus.service.fallback",
        False,
    ),
    Case(
        "proxy TestParseSRVBlock#3",
        "proxy / srv://bogus.service http://bogus.service.fallback",
        False,
    ),
    Case(
        "proxy TestParseSRVBlock#4",
        "proxy / http://bogus.service srv://bogus.service.fallback",
        False,
    ),
    Case("proxy TestParseSRVBlock#5", "proxy / srv://bogus.service bogus.service.fallback", False),
    Case(
        "proxy TestParseSRVBlock#6",
        "proxy / srv://bogus.service {\n upstream srv://bogus.service\n}",
        False,
    ),
    Case(
        "proxy TestParseSRVBlock#7",
        "proxy / srv+https://bogus.service",
        True,
        lambda d: _eq(d["proxy"].rules[0].upstreams[0].name, "srv+https://bogus.service"),
    ),
    Case("proxy TestParseSRVBlock#8", "proxy / srv+https://bogus.service:80", False),
    Case(
        "proxy TestParseSRVBlock#9",
        "proxy / srv+https://bogus.service srv://bogus.service.fallback",
        False,
    ),
    Case(
        "proxy TestParseSRVBlock#10",
        "proxy / srv+https://bogus.service http://bogus.service.fallback",
        False,
    ),
    Case(
        "proxy TestParseSRVBlock#11",
        "proxy / http://bogus.service srv+https://bogus.service.fallback",
        False,
    ),
    Case(
        "proxy TestParseSRVBlock#12",
        "proxy / srv+https://bogus.service bogus.service.fallback",
        False,
    ),
    Case(
        "proxy TestParseSRVBlock#13",
        "proxy / srv+https://bogus.service {\n upstream srv://bogus.service\n}",
        False,
    ),
    Case(
        "proxy TestParseSRVBlock#14",
        "proxy / srv+https://bogus.service {\n health_check_port 96\n}",
        False,
    ),
    # parseBlock itself (caddyhttp/proxy/upstream.go), for the options no table covers
    Case(
        "proxy parseBlock policy header (no name)",
        "proxy / localhost:8080 {\n policy header\n}",
        True,
        diff="v1 took `policy header` without a field name and then picked no upstream for any"
        " request (502 always); meshkit refuses it",
    ),
    Case("proxy parseBlock policy cookie", "proxy / localhost:8080 {\n policy cookie\n}", False),
    Case(
        "proxy parseBlock policy uri_hash",
        "proxy / localhost:8080 {\n policy uri_hash\n}",
        True,
        lambda d: _eq(d["proxy"].rules[0].policy, "uri_hash"),
    ),
    Case(
        "proxy parseBlock fail_timeout -1s (ParseDuration)",
        "proxy / localhost:8080 {\n fail_timeout -1s\n}",
        True,
        diff=NEGATIVE,
    ),
    Case(
        "proxy parseBlock max_conns -1 (ParseInt)",
        "proxy / localhost:8080 {\n max_conns -1\n}",
        True,
        diff=NEGATIVE,
    ),
    Case(
        "proxy parseBlock health_check_port 0 (n < 0 only)",
        "proxy / localhost:8080 {\n health_check / \n health_check_port 0\n}",
        True,
        diff="port 0 can never be probed (v1 then marked every upstream down); meshkit refuses it",
    ),
    Case(
        "proxy parseBlock policy random extra (one optional argument)",
        "proxy / localhost:8080 {\n policy random extra\n}",
        True,
        lambda d: _eq(d["proxy"].rules[0].policy, "random"),
    ),
    Case("proxy parseBlock keepalive -1", "proxy / localhost:8080 {\n keepalive -1\n}", False),
    Case(
        "proxy parseBlock keepalive 0",
        "proxy / localhost:8080 {\n keepalive 0\n}",
        True,
        lambda d: _eq(d["proxy"].rules[0].keepalive, 0),
    ),
    Case("proxy parseBlock timeout", "proxy / localhost:8080 {\n timeout 5x\n}", False),
    Case(
        "proxy parseBlock timeout 5s",
        "proxy / localhost:8080 {\n timeout 5s\n}",
        True,
        lambda d: _eq(d["proxy"].rules[0].timeout, 5.0),
    ),
    Case(
        "proxy parseBlock fallback_delay",
        "proxy / localhost:8080 {\n fallback_delay 150ms\n}",
        True,
        lambda d: _eq(d["proxy"].rules[0].fallback_delay, 0.15),
    ),
    Case(
        "proxy parseBlock fallback_delay (none)",
        "proxy / localhost:8080 {\n fallback_delay\n}",
        False,
    ),
    Case(
        "proxy parseBlock header_upstream replace",
        'proxy / localhost:8080 {\n header_upstream X-A "^(.*)$" "v=$1"\n}',
        True,
        lambda d: _eq(
            [(h.op, h.name, h.regex, h.value) for h in d["proxy"].rules[0].header_upstream],
            [("replace", "X-A", "^(.*)$", "v=$1")],
        ),
    ),
    Case(
        "proxy parseBlock header_upstream replace +",
        "proxy / localhost:8080 {\n header_upstream +X a b\n}",
        False,
    ),
    Case(
        "proxy parseBlock header_downstream bad regexp",
        "proxy / localhost:8080 {\n header_downstream X ( b\n}",
        False,
    ),
    Case(
        "proxy parseBlock header_upstream -NAME VALUE",
        "proxy / localhost:8080 {\n header_upstream -X ignored\n}",
        True,
        lambda d: _eq(
            [(h.op, h.name) for h in d["proxy"].rules[0].header_upstream], [("del", "X")]
        ),
    ),
    Case(
        "proxy parseBlock ca_certificates",
        "proxy / https://localhost {\n ca_certificates @T@/ca.crt\n}",
        True,
        lambda d: _eq(d["proxy"].rules[0].ca_certificates, ["@T@/ca.crt"]),
    ),
    Case(
        "proxy parseBlock ca_certificates (none)",
        "proxy / https://localhost {\n ca_certificates\n}",
        False,
    ),
    Case(
        "proxy parseBlock ca_certificates (not PEM)",
        "proxy / https://localhost {\n ca_certificates @T@/404.html\n}",
        False,
    ),
    Case(
        "proxy parseBlock ca_certificates + insecure_skip_verify",
        "proxy / https://localhost {\n insecure_skip_verify\n ca_certificates @T@/ca.crt\n}",
        False,
    ),
    Case("proxy parseBlock upstream (two on a line)", "proxy / {\n upstream a:1 b:2\n}", False),
    Case(
        "proxy parseUpstream range 8080-8080",
        "proxy / localhost:8080-8080",
        False,
        diff="a range of one port is that port: meshkit takes it (v1's `pEnd <= pIni` refused"
        " it); a backwards range is refused by both",
    ),
    Case("proxy parseUpstream range 1-2-3", "proxy / localhost:1-2-3", False),
    Case(
        "proxy TestStop (config)",
        "proxy / http://127.0.0.1:9 {\n health_check /healthcheck \nhealth_check_interval 5ms \n}",
        True,
        lambda d: _eq(d["proxy"].rules[0].health_check_interval, 0.005),
    ),
]

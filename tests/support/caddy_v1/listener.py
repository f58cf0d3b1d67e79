"""v1 setup cases of the listener's directives: bind (caddyhttp/bind/bind_test.go), timeouts
(caddyhttp/timeouts/timeouts_test.go) and proxyprotocol (the plugin
mastercactapus/caddy-proxyprotocol, setup_test.go's TestParseConfig: `#name` is its check's
name); a case named `setup.go` is an input v1's parser decides that its tests do not list."""

from __future__ import annotations

from typing import Any

from support.caddy_v1 import Case, Check, _eq

# --- bind --------------------------------------------------------------------------------------

BIND = [
    # v1 also set the TLS config's ListenHost to it: meshkit has one listener per port for both
    Case("bind TestSetupBind", "bind 1.2.3.4", True, lambda d: _eq(d["bind"].host, "1.2.3.4")),
    Case("bind setup.go (a host is needed)", "bind", False),
    Case("bind setup.go (one host)", "bind 1.2.3.4 5.6.7.8", False),
]

# --- timeouts ----------------------------------------------------------------------------------

S = 1.0


def _timeouts(
    header: float | None = None,
    read: float | None = None,
    write: float | None = None,
    idle: float | None = None,
) -> Check:
    """v1's ReadHeaderTimeout, ReadTimeout, WriteTimeout, IdleTimeout; v1's `...Set` false is
    meshkit's None (not set by this site), 0 is no timeout in both."""
    return lambda d: _eq(
        (d["timeouts"].header, d["timeouts"].read, d["timeouts"].write, d["timeouts"].idle),
        (header, read, write, idle),
    )


_SETUP = [
    ("timeouts none", True),
    ("timeouts 5s", True),
    ("timeouts 0", True),
    ("timeouts { \n read 15s \n }", True),
    ("timeouts { \n read 15s \n idle 10s \n }", True),
    ("timeouts", False),
    ("timeouts 5s 10s", False),
    ("timeouts 12", False),
    ("timeouts -2s", False),
    ("timeouts { \n foo 1s \n }", False),
    ("timeouts { \n read \n }", False),
    ("timeouts { \n read 1s 2s \n }", False),
    ("timeouts { \n foo \n }", False),
]
TIMEOUTS = [Case(f"timeouts TestSetupTimeouts#{i}", b, ok) for i, (b, ok) in enumerate(_SETUP)]
TIMEOUTS += [
    Case("timeouts TestTimeoutsSetProperly#0", "timeouts none", True, _timeouts(0, 0, 0, 0)),
    Case(
        "timeouts TestTimeoutsSetProperly#1", "timeouts {\n read 15s \n}", True, _timeouts(read=15)
    ),
    Case(
        "timeouts TestTimeoutsSetProperly#2",
        "timeouts {\n header 15s \n}",
        True,
        _timeouts(header=15),
    ),
    Case(
        "timeouts TestTimeoutsSetProperly#3",
        "timeouts {\n write 15s \n}",
        True,
        _timeouts(write=15),
    ),
    Case(
        "timeouts TestTimeoutsSetProperly#4", "timeouts {\n idle 15s \n}", True, _timeouts(idle=15)
    ),
    Case(
        "timeouts TestTimeoutsSetProperly#5",
        "timeouts {\n idle 15s \n read 1m \n }",
        True,
        _timeouts(idle=15, read=60),
    ),
    Case(
        "timeouts TestTimeoutsSetProperly#6", "timeouts {\n read none \n }", True, _timeouts(read=0)
    ),
    Case(
        "timeouts TestTimeoutsSetProperly#7", "timeouts {\n write 0 \n }", True, _timeouts(write=0)
    ),
    Case(
        "timeouts TestTimeoutsSetProperly#8",
        "timeouts {\n write 1s \n write 2s \n }",
        True,
        _timeouts(write=2),
    ),
    Case(
        "timeouts TestTimeoutsSetProperly#9",
        "timeouts 1s\ntimeouts 2s",
        True,
        _timeouts(2 * S, 2 * S, 2 * S, 2 * S),
    ),
]

# --- proxyprotocol (a plugin, not core; meshkit has it) ----------------------------------------

EVERYONE = ["0.0.0.0/0", "::/0"]


def _pp(sources: list[str], timeout: float) -> Check:
    return lambda d: _eq(
        (d["proxyprotocol"].sources, d["proxyprotocol"].timeout), (sources, timeout)
    )


def _absent(d: dict[str, Any]) -> None:
    assert "proxyprotocol" not in d, d


PROXYPROTOCOL = [
    Case("proxyprotocol TestParseConfig#empty", "", True, _absent),
    Case("proxyprotocol TestParseConfig#default", "proxyprotocol", True, _pp(EVERYONE, 5)),
    Case(
        "proxyprotocol TestParseConfig#default-options",
        "proxyprotocol {\n\t\t\ttimeout 1s\n\t\t}",
        True,
        _pp(EVERYONE, 1),
    ),
    Case(
        "proxyprotocol TestParseConfig#single-subnet",
        "proxyprotocol 127.0.0.1/32",
        True,
        _pp(["127.0.0.1/32"], 5),
    ),
    Case(
        "proxyprotocol TestParseConfig#multi-subnet",
        "proxyprotocol 0.0.0.0/0 ::/0",
        True,
        _pp(EVERYONE, 5),
    ),
    Case(
        "proxyprotocol TestParseConfig#duplicate",
        "proxyprotocol 0.0.0.0/0\n\t\tproxyprotocol ::/0",
        True,
        _pp(EVERYONE, 5),
    ),
    Case(
        "proxyprotocol TestParseConfig#block-single",
        "proxyprotocol 0.0.0.0/0 {\n\t\t\ttimeout 2s\n\t\t}",
        True,
        _pp(["0.0.0.0/0"], 2),
    ),
    Case(
        "proxyprotocol TestParseConfig#block-multi",
        "proxyprotocol 0.0.0.0/0 1234:321::1/24 {\n\t\t\ttimeout 25m\n\t\t}",
        True,
        _pp(["0.0.0.0/0", "1234:300::/24"], 25 * 60),  # the range normalized, as the plugin
    ),
    Case(
        "proxyprotocol TestParseConfig#block-duplicate",
        "proxyprotocol 0.0.0.0/0 {\n\t\t\ttimeout 25m\n\t\t}\n"
        "\t\tproxyprotocol 1234:321::1/24 {\n\t\t\ttimeout 30m\n\t\t}",
        True,
        # the plugin kept 25m for one range and 30m for the other; a meshkit listener has one
        # timeout, the shortest (as across the sites of a port)
        _pp(["0.0.0.0/0", "1234:300::/24"], 25 * 60),
    ),
    # TestParseConfig#multi-site parses two sites; tests/web/test_listener_options.py's
    # test_plan_merges_per_port merges the ranges of two sites of one port
    Case(
        "proxyprotocol setup.go (an address, not a range)",
        "proxyprotocol 1.2.3.4",
        False,
        diff="Go's ParseCIDR wants the prefix length; meshkit takes a lone address as its /32"
        " (/128 for IPv6), the one source it names",
    ),
    Case("proxyprotocol setup.go (not an address)", "proxyprotocol 1.2.3.400/8", False),
    Case("proxyprotocol setup.go (unknown option)", "proxyprotocol {\n wait 1s\n}", False),
    Case("proxyprotocol setup.go (negative)", "proxyprotocol {\n timeout -1s\n}", False),
]

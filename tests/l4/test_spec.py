"""Tests for meshkit.l4.spec: --publish, --backend, backends files, durations, listen addresses."""

from __future__ import annotations

import pathlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshkit.base.errors import FlagError, InvalidValue, MeshkitError
from meshkit.l4.spec import (
    BackendSpec,
    Publish,
    parse_backend,
    parse_backends_file,
    parse_backends_text,
    parse_duration,
    parse_hostport,
    parse_publish,
)

ports = st.integers(1, 65535)

# --- --publish ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8080:80", Publish("0.0.0.0", 8080, 80, "tcp")),
        ("8080:80/tcp", Publish("0.0.0.0", 8080, 80, "tcp")),
        ("53:5353/udp", Publish("0.0.0.0", 53, 5353, "udp")),
        ("53:5353/UDP", Publish("0.0.0.0", 53, 5353, "udp")),
        ("1:65535/Tcp", Publish("0.0.0.0", 1, 65535, "tcp")),
        ("127.0.0.1:8080:80", Publish("127.0.0.1", 8080, 80, "tcp")),
        ("198.51.100.3:9000:9000/udp", Publish("198.51.100.3", 9000, 9000, "udp")),
        ("[::1]:8080:80", Publish("::1", 8080, 80, "tcp")),
        ("[::]:443:8443/tcp", Publish("::", 443, 8443, "tcp")),
        ("[2001:DB8::0001]:80:80", Publish("2001:db8::1", 80, 80, "tcp")),
        ("0.0.0.0:080:0080", Publish("0.0.0.0", 80, 80, "tcp")),
    ],
)
def test_publish_valid(text: str, expected: Publish) -> None:
    assert parse_publish(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "expected [IP:]PUBLISHED:TARGET[/tcp|/udp]"),
        ("8080", "expected [IP:]PUBLISHED:TARGET[/tcp|/udp]"),
        ("8080:", "target port '' is not a number"),
        (":80", "published port '' is not a number"),
        ("0:80", "published port 0 is out of range 1-65535"),
        ("8080:70000", "target port 70000 is out of range 1-65535"),
        ("8080:99999999999999999999", "target port 99999999999999999999 is out of range"),
        ("80:80/sctp", "protocol 'sctp' is not tcp or udp"),
        ("80:80/", "protocol '' is not tcp or udp"),
        ("80:80/tcp/udp", "is not tcp or udp"),
        ("a:80", "published port 'a' is not a number"),
        ("+80:80", "is not a number"),
        (" 80:80", "is not a number"),
        ("8_0:80", "is not a number"),
        ("\u0661\u0662:80", "is not a number"),  # Arabic-Indic digits: int() accepts them
        ("localhost:80:80", "'localhost' is not an IP address"),
        ("1.2.3.256:80:80", "is not an IP address"),
        ("::1:8080:80", "write IPv6 addresses in brackets"),
        ("[::1:8080:80", "missing ']'"),
        ("[::1]8080:80", "expected [IP:]PUBLISHED:TARGET"),
        ("[::1]:8080", "expected [IP:]PUBLISHED:TARGET"),
        ("[1.2.3.4]:80:80", "brackets are only for IPv6"),
        ("[fe80::1%eth0]:80:80", "zone ids are not supported"),
        ("1:2:3:4", "write IPv6 addresses in brackets"),
    ],
)
def test_publish_invalid(text: str, reason: str) -> None:
    with pytest.raises(InvalidValue) as info:
        parse_publish(text)
    assert info.value.flag == "--publish"
    assert info.value.value == text
    assert reason in info.value.reason
    assert str(info.value).startswith(f"invalid value {text!r} for --publish: ")


def test_publish_error_names_given_flag() -> None:
    with pytest.raises(InvalidValue, match="for -p: "):
        parse_publish("nope", flag="-p")


@given(
    host=st.one_of(st.none(), st.ip_addresses()),
    published=ports,
    target=ports,
    proto=st.sampled_from([None, "tcp", "udp", "TCP", "Udp"]),
)
def test_publish_roundtrip(host: object, published: int, target: int, proto: str | None) -> None:
    text = f"{published}:{target}"
    if host is not None:
        text = (f"[{host}]" if ":" in str(host) else str(host)) + ":" + text
    if proto is not None:
        text += "/" + proto
    got = parse_publish(text)
    assert got == Publish(
        "0.0.0.0" if host is None else str(host),
        published,
        target,
        (proto or "tcp").lower(),
    )


@given(st.text())
def test_publish_never_crashes(text: str) -> None:
    try:
        got = parse_publish(text)
    except InvalidValue as exc:
        assert exc.reason
        return
    assert 1 <= got.published <= 65535 and 1 <= got.target <= 65535
    assert got.proto in ("tcp", "udp")


# --- --backend -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("web", BackendSpec("web", None)),
        ("web:8080", BackendSpec("web", 8080)),
        ("Web.Example.COM", BackendSpec("web.example.com", None)),
        ("web.example.com.:80", BackendSpec("web.example.com.", 80)),
        ("my_svc-1", BackendSpec("my_svc-1", None)),
        ("198.51.100.5", BackendSpec("198.51.100.5", None)),
        ("198.51.100.5:81", BackendSpec("198.51.100.5", 81)),
        ("[::1]:80", BackendSpec("::1", 80)),
        ("[2001:db8::1]", BackendSpec("2001:db8::1", None)),
        ("fe80::1", BackendSpec("fe80::1", None)),
        ("localhost:65535", BackendSpec("localhost", 65535)),
    ],
)
def test_backend_valid(text: str, expected: BackendSpec) -> None:
    got = parse_backend(text)
    assert got == expected
    assert got.weight == 1


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "backend is empty"),
        (":80", "host is empty"),
        ("web:", "port '' is not a number"),
        ("web:0", "port 0 is out of range 1-65535"),
        ("web:65536", "port 65536 is out of range 1-65535"),
        ("web:http", "port 'http' is not a number"),
        ("198.51.100.256", "not a valid host name or IP address"),
        ("1.2.3", "not a valid host name or IP address"),
        ("-web", "not a valid host name"),
        ("we b", "not a valid host name"),
        ("a..b", "not a valid host name"),
        ("x" * 64, "not a valid host name"),
        ("[::1", "missing ']'"),
        ("[::1]80", "expected HOST[:PORT]"),
        ("[web]:80", "is not an IP address"),
        ("[198.51.100.1]:80", "brackets are only for IPv6"),
        ("::1:80:x", "is not an IP address"),
        ("web weight=2", "not a valid host name"),
    ],
)
def test_backend_invalid(text: str, reason: str) -> None:
    with pytest.raises(InvalidValue) as info:
        parse_backend(text)
    assert info.value.flag == "--backend"
    assert reason in info.value.reason


@given(st.text())
def test_backend_never_crashes(text: str) -> None:
    try:
        got = parse_backend(text)
    except InvalidValue:
        return
    assert got.port is None or 1 <= got.port <= 65535
    assert got.host


@given(host=st.ip_addresses(), port=st.one_of(st.none(), ports))
def test_backend_roundtrip_ip(host: object, port: int | None) -> None:
    shown = f"[{host}]" if ":" in str(host) else str(host)
    text = shown if port is None else f"{shown}:{port}"
    assert parse_backend(text) == BackendSpec(str(host), port)


# --- backends files --------------------------------------------------------------------


def test_backends_text() -> None:
    text = (
        "# backends for web\n"
        "\n"
        "web1:8080\n"
        "  web2   weight=3   # bigger box\n"
        "[::1]:81 weight=65535\n"
        "198.51.100.9\tweight=1\r\n"
        "   \t  \n"
    )
    assert parse_backends_text(text, "b.txt") == [
        BackendSpec("web1", 8080, 1),
        BackendSpec("web2", None, 3),
        BackendSpec("::1", 81, 65535),
        BackendSpec("198.51.100.9", None, 1),
    ]


def test_backends_text_empty() -> None:
    assert parse_backends_text("", "b") == []
    assert parse_backends_text("# nothing\n\n", "b") == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("web:0\n", "b.txt:1: invalid backend 'web:0': port 0 is out of range 1-65535"),
        ("ok\n\nbad host\n", "b.txt:3: unexpected 'host' after backend"),
        ("ok\nweb weight=0\n", "b.txt:2: invalid weight 'weight=0': expected weight=N"),
        ("web weight=65536", "b.txt:1: invalid weight 'weight=65536'"),
        ("web weight=", "b.txt:1: invalid weight 'weight='"),
        ("web weight=x", "b.txt:1: invalid weight 'weight=x'"),
        ("web weight=1 weight=2", "b.txt:1: weight given twice ('weight=2')"),
        ("web weight = 2", "b.txt:1: unexpected 'weight' after backend"),
        ("a:80\nb\na:80\n", "b.txt:3: duplicate backend 'a:80' (first listed on line 1)"),
        ("A:80\na:80\n", "b.txt:2: duplicate backend 'a:80'"),
        ("[::1]:80\n[0::1]:80\n", "b.txt:2: duplicate backend '[::1]:80'"),
        ("web\nweb\n", "b.txt:2: duplicate backend 'web'"),
    ],
)
def test_backends_text_errors(text: str, message: str) -> None:
    with pytest.raises(MeshkitError) as info:
        parse_backends_text(text, "b.txt")
    assert not isinstance(info.value, FlagError)
    assert str(info.value).startswith(message)


def test_backends_same_host_different_ports_allowed() -> None:
    got = parse_backends_text("web:80\nweb:81\nweb\n", "b")
    assert [b.port for b in got] == [80, 81, None]


@given(
    st.lists(
        st.tuples(
            st.one_of(
                st.ip_addresses(), st.from_regex(r"[a-z]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
            ),
            st.one_of(st.none(), ports),
            st.integers(1, 65535),
        ),
        unique_by=lambda t: (str(t[0]), t[1]),
    )
)
def test_backends_text_roundtrip(entries: list[tuple[object, int | None, int]]) -> None:
    lines = []
    for host, port, weight in entries:
        shown = f"[{host}]" if ":" in str(host) else str(host)
        lines.append((shown if port is None else f"{shown}:{port}") + f" weight={weight}")
    got = parse_backends_text("\n".join(lines), "gen")
    assert got == [BackendSpec(str(h), p, w) for h, p, w in entries]


@given(st.text())
def test_backends_text_never_crashes(text: str) -> None:
    try:
        got = parse_backends_text(text, "junk")
    except MeshkitError as exc:
        assert str(exc).startswith("junk:")
        return
    assert all(1 <= b.weight <= 65535 for b in got)


def test_backends_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "backends"
    path.write_text("a:1\nb weight=2\n", encoding="utf-8")
    assert parse_backends_file(str(path)) == [BackendSpec("a", 1), BackendSpec("b", None, 2)]


def test_backends_file_error_names_path_and_line(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "backends"
    path.write_text("a:1\nb:x\n", encoding="utf-8")
    with pytest.raises(MeshkitError, match=rf"^{path}:2: invalid backend 'b:x'"):
        parse_backends_file(str(path))


def test_backends_file_missing(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "nope"
    with pytest.raises(MeshkitError) as info:
        parse_backends_file(str(path))
    assert str(info.value) == f"{path}: No such file or directory"


def test_backends_file_is_directory(tmp_path: pathlib.Path) -> None:
    with pytest.raises(MeshkitError, match="Is a directory"):
        parse_backends_file(str(tmp_path))


def test_backends_file_not_utf8(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "bin"
    path.write_bytes(b"web\n\xff\xfe\n")
    with pytest.raises(MeshkitError, match=r"not UTF-8 text"):
        parse_backends_file(str(path))


# --- durations -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("2s", 2.0),
        ("300ms", 0.3),
        ("1m30s", 90.0),
        ("1h", 3600.0),
        ("1.5s", 1.5),
        ("0s", 0.0),
        ("0", 0.0),
        ("250us", 0.00025),
        ("250\u00b5s", 0.00025),
        ("250\u03bcs", 0.00025),
        ("100ns", 1e-7),
        ("1h2m3s4ms", 3723.004),
        ("1s1m", 61.0),
        (".5s", 0.5),
        ("1.s", 1.0),
        ("+3s", 3.0),
        (" 2s ", 2.0),
        ("2562047h", 2562047 * 3600.0),
    ],
)
def test_duration_valid(text: str, seconds: float) -> None:
    assert parse_duration(text, "--idle-timeout") == pytest.approx(seconds, rel=1e-12)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "expected a duration"),
        ("5", "a number needs a unit (ns, us, ms, s, m, h), e.g. 5s"),
        ("1.5", "a number needs a unit"),
        ("1s5", "a number needs a unit"),
        ("-1s", "must not be negative"),
        ("-0", "must not be negative"),
        ("1d", "unknown unit 'd'"),
        ("1S", "expected a duration"),
        ("1sec", "unknown unit 'sec'"),
        ("s", "expected a duration"),
        (".s", "expected a duration"),
        ("1 s", "expected a duration"),
        ("1.2.3s", "expected a duration"),
        ("1e3s", "unknown unit 'e'"),
        ("inf", "expected a duration"),
        ("9999999999999h", "too long"),
    ],
)
def test_duration_invalid(text: str, reason: str) -> None:
    with pytest.raises(InvalidValue) as info:
        parse_duration(text, "--health-interval")
    assert info.value.flag == "--health-interval"
    assert reason in info.value.reason


@given(
    h=st.integers(0, 1000),
    m=st.integers(0, 59),
    s=st.integers(0, 59),
    ms=st.integers(0, 999),
)
def test_duration_roundtrip(h: int, m: int, s: int, ms: int) -> None:
    text = f"{h}h{m}m{s}s{ms}ms"
    expected = h * 3600 + m * 60 + s + ms / 1000
    assert parse_duration(text, "--x") == pytest.approx(expected, rel=1e-12, abs=1e-12)


@given(st.text())
def test_duration_never_crashes(text: str) -> None:
    try:
        got = parse_duration(text, "--x")
    except InvalidValue:
        return
    assert got >= 0


# --- listen addresses ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:9100", ("127.0.0.1", 9100)),
        ("0.0.0.0:1", ("0.0.0.0", 1)),
        ("[::1]:9100", ("::1", 9100)),
        ("[::]:9100", ("::", 9100)),
        ("localhost:9100", ("localhost", 9100)),
        (":9100", ("0.0.0.0", 9100)),
    ],
)
def test_hostport_valid(text: str, expected: tuple[str, int]) -> None:
    assert parse_hostport(text, "--metrics") == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "expected IP:PORT"),
        ("9100", "expected IP:PORT"),
        ("127.0.0.1", "expected IP:PORT"),
        ("127.0.0.1:", "port '' is not a number"),
        ("127.0.0.1:0", "out of range 1-65535"),
        ("127.0.0.1:65536", "out of range 1-65535"),
        ("::1:9100", "write IPv6 addresses in brackets"),
        ("[::1]", "expected IP:PORT"),
        ("[::1]:", "port '' is not a number"),
        ("[1.2.3.4]:80", "brackets are only for IPv6"),
        ("bad host:80", "not a valid host name"),
    ],
)
def test_hostport_invalid(text: str, reason: str) -> None:
    with pytest.raises(InvalidValue) as info:
        parse_hostport(text, "--metrics")
    assert info.value.flag == "--metrics"
    assert reason in info.value.reason


@given(host=st.ip_addresses(), port=ports)
def test_hostport_roundtrip(host: object, port: int) -> None:
    shown = f"[{host}]" if ":" in str(host) else str(host)
    assert parse_hostport(f"{shown}:{port}", "--metrics") == (str(host), port)


@given(st.text())
def test_hostport_never_crashes(text: str) -> None:
    try:
        host, port = parse_hostport(text, "--metrics")
    except InvalidValue:
        return
    assert host and 1 <= port <= 65535

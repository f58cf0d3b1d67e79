"""Tests for meshkit.l4.metrics: Prometheus text format and the /metrics responder."""

from __future__ import annotations

import math
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshkit.l4.metrics import CONTENT_TYPE, MetricFamily, metrics_response, render

# --- render ----------------------------------------------------------------------------


def test_render_basic() -> None:
    families = [
        MetricFamily(
            "meshkit_ingress_flows_total",
            "Flows sent to a backend.",
            "counter",
            [({"backend": "198.51.100.1:80", "publish": "8080/tcp"}, 12), ({"backend": "b"}, 0.0)],
        ),
        MetricFamily("meshkit_ingress_backend_up", "1 when healthy.", "gauge", [({}, 1.0)]),
    ]
    assert render(families) == (
        "# HELP meshkit_ingress_flows_total Flows sent to a backend.\n"
        "# TYPE meshkit_ingress_flows_total counter\n"
        'meshkit_ingress_flows_total{backend="198.51.100.1:80",publish="8080/tcp"} 12\n'
        'meshkit_ingress_flows_total{backend="b"} 0\n'
        "# HELP meshkit_ingress_backend_up 1 when healthy.\n"
        "# TYPE meshkit_ingress_backend_up gauge\n"
        "meshkit_ingress_backend_up 1\n"
    )


def test_render_empty() -> None:
    assert render([]) == ""


def test_render_family_without_samples() -> None:
    assert render([MetricFamily("x", "h", "gauge")]) == "# HELP x h\n# TYPE x gauge\n"


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0, "0"),
        (3, "3"),
        (-2.0, "-2"),
        (1.5, "1.5"),
        (0.1, "0.1"),
        (1e18, "1000000000000000000"),
        (1e20, "1e+20"),
        (1e300, "1e+300"),
        (2.5e-7, "2.5e-07"),
        (math.inf, "+Inf"),
        (-math.inf, "-Inf"),
        (math.nan, "NaN"),
        (True, "1"),
    ],
)
def test_render_values(value: float, text: str) -> None:
    out = render([MetricFamily("m", "h", "gauge", [({}, value)])])
    assert out.splitlines()[-1] == f"m {text}"


def test_render_escapes() -> None:
    fam = MetricFamily(
        "m",
        'help with \\ backslash,\nnewline and "quotes"',
        "counter",
        [({"path": 'C:\\dir\n"x"'}, 1)],
    )
    assert render([fam]) == (
        '# HELP m help with \\\\ backslash,\\nnewline and "quotes"\n'
        "# TYPE m counter\n"
        'm{path="C:\\\\dir\\n\\"x\\""} 1\n'
    )


@pytest.mark.parametrize(
    ("fam", "match"),
    [
        (MetricFamily("1bad", "h", "gauge"), "invalid metric name"),
        (MetricFamily("bad-name", "h", "gauge"), "invalid metric name"),
        (MetricFamily("", "h", "gauge"), "invalid metric name"),
        (MetricFamily("m", "h", "histogram"), "type must be counter or gauge"),
        (MetricFamily("m", "h", "gauge", [({"a-b": "x"}, 1)]), "invalid label name 'a-b'"),
        (MetricFamily("m", "h", "gauge", [({"__name__": "x"}, 1)]), "invalid label name"),
        (MetricFamily("m", "h", "gauge", [({"": "x"}, 1)]), "invalid label name"),
    ],
)
def test_render_rejects_invalid(fam: MetricFamily, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        render([fam])


def test_render_rejects_duplicate_family() -> None:
    with pytest.raises(ValueError, match="rendered twice"):
        render([MetricFamily("m", "h", "gauge"), MetricFamily("m", "h", "gauge")])


def test_metric_name_with_colon_allowed() -> None:
    assert "job:rate:5m 1\n" in render([MetricFamily("job:rate:5m", "h", "gauge", [({}, 1)])])


# A small reader for the exposition format: enough to check that escaping round-trips.
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)",?')


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), text)


def _read(text: str) -> list[tuple[str, dict[str, str], float]]:
    out = []
    # Prometheus splits on "\n" only; str.splitlines() would also split on \x0c, \u2028...
    for line in text.split("\n")[:-1]:
        if line.startswith("#"):
            assert re.match(r"^# (HELP|TYPE) [a-zA-Z_:][a-zA-Z0-9_:]* ", line)
            continue
        m = _SAMPLE.match(line)
        assert m, line
        labels = {k: _unescape(v) for k, v in _LABEL.findall(m.group(2) or "")}
        out.append((m.group(1), labels, float(m.group(3).replace("Inf", "inf"))))
    return out


label_names = st.from_regex(r"[a-zA-Z][a-zA-Z0-9_]{0,10}", fullmatch=True)
values = st.one_of(st.integers(-(2**53), 2**53), st.floats(allow_nan=False))


@given(
    help_text=st.text(),
    samples=st.lists(st.tuples(st.dictionaries(label_names, st.text(), max_size=4), values)),
)
def test_render_roundtrip(help_text: str, samples: list[tuple[dict[str, str], float]]) -> None:
    text = render([MetricFamily("m_total", help_text, "counter", samples)])
    assert text.endswith("\n")
    # One HELP, one TYPE and one line per sample: escaping never lets a newline through.
    assert len(text.split("\n")) == 2 + len(samples) + 1
    assert _read(text) == [("m_total", labels, float(v)) for labels, v in samples]


# --- metrics_response ------------------------------------------------------------------


def _split(resp: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = resp.partition(b"\r\n\r\n")
    lines = head.decode("ascii").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return lines[0], headers, body


def test_get_metrics() -> None:
    body = "# HELP m h\n# TYPE m gauge\nm 1\n\u00e9\n"
    resp = metrics_response(b"GET /metrics HTTP/1.1\r\nHost: x:9100\r\nAccept: */*\r\n\r\n", body)
    status, headers, payload = _split(resp)
    assert status == "HTTP/1.1 200 OK"
    assert headers["Content-Type"] == CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"
    assert headers["Connection"] == "close"
    assert int(headers["Content-Length"]) == len(payload) == len(body.encode("utf-8"))
    assert payload.decode("utf-8") == body


@pytest.mark.parametrize(
    "head",
    [
        b"GET /metrics HTTP/1.0\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\n",
        b"GET /metrics HTTP/1.1",
        b"GET /metrics?name[]=up HTTP/1.1\r\n\r\n",
        b"GET /metrics HTTP/1.1\nHost: a\n\n",
        b"\r\nGET /metrics HTTP/1.1\r\n\r\n",
    ],
)
def test_get_metrics_variants(head: bytes) -> None:
    assert _split(metrics_response(head, "m 1\n"))[0] == "HTTP/1.1 200 OK"


def test_head_metrics_has_no_body() -> None:
    status, headers, payload = _split(metrics_response(b"HEAD /metrics HTTP/1.1\r\n\r\n", "m 1\n"))
    assert status == "HTTP/1.1 200 OK"
    assert headers["Content-Length"] == "4"
    assert payload == b""


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", "HTTP/1.1 404 Not Found"),
        (b"GET /metrics/ HTTP/1.1\r\n\r\n", "HTTP/1.1 404 Not Found"),
        (b"GET /Metrics HTTP/1.1\r\n\r\n", "HTTP/1.1 404 Not Found"),
        (b"POST /other HTTP/1.1\r\n\r\n", "HTTP/1.1 404 Not Found"),
        (b"POST /metrics HTTP/1.1\r\n\r\n", "HTTP/1.1 405 Method Not Allowed"),
        (b"DELETE /metrics HTTP/1.1\r\n\r\n", "HTTP/1.1 405 Method Not Allowed"),
        (b"get /metrics HTTP/1.1\r\n\r\n", "HTTP/1.1 405 Method Not Allowed"),
        (b"GET /metrics HTTP/2.0\r\n\r\n", "HTTP/1.1 505 HTTP Version Not Supported"),
        (b"", "HTTP/1.1 400 Bad Request"),
        (b"\r\n\r\n", "HTTP/1.1 400 Bad Request"),
        (b"GET /metrics\r\n\r\n", "HTTP/1.1 400 Bad Request"),
        (b"GET  /metrics HTTP/1.1\r\n\r\n", "HTTP/1.1 400 Bad Request"),
        (b"GET /metrics HTTP/1.1 extra\r\n\r\n", "HTTP/1.1 400 Bad Request"),
        (b"GET /metrics HTTP/11\r\n\r\n", "HTTP/1.1 400 Bad Request"),
        (b"GET /metrics FTP/1.1\r\n\r\n", "HTTP/1.1 400 Bad Request"),
        (b"G(T /metrics HTTP/1.1\r\n\r\n", "HTTP/1.1 400 Bad Request"),
        (b"GET /m\x7fetrics HTTP/1.1\r\n\r\n", "HTTP/1.1 400 Bad Request"),
        (b"GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n", "HTTP/1.1 400 Bad Request"),
        (b"GET /metrics HTTP/1.1\r\n folded: x\r\n\r\n", "HTTP/1.1 400 Bad Request"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", "HTTP/1.1 400 Bad Request"),
        (b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n", "HTTP/1.1 400 Bad Request"),
    ],
)
def test_error_statuses(head: bytes, status: str) -> None:
    line, headers, payload = _split(metrics_response(head, "SECRET 1\n"))
    assert line == status
    assert headers["Connection"] == "close"
    assert headers["Content-Type"] == "text/plain; charset=utf-8"
    assert int(headers["Content-Length"]) == len(payload)
    assert b"SECRET" not in payload
    if "405" in status:
        assert headers["Allow"] == "GET, HEAD"


def test_head_on_unknown_path_has_no_body() -> None:
    line, headers, payload = _split(metrics_response(b"HEAD /x HTTP/1.1\r\n\r\n", "m 1\n"))
    assert line == "HTTP/1.1 404 Not Found"
    assert int(headers["Content-Length"]) > 0
    assert payload == b""


@given(st.binary(max_size=300))
def test_response_never_crashes(head: bytes) -> None:
    resp = metrics_response(head, "m 1\n")
    line, headers, _ = _split(resp)
    assert re.fullmatch(r"HTTP/1\.1 (200|400|404|405|505) [A-Za-z ]+", line)
    assert headers["Connection"] == "close"


@given(st.from_regex(rb"[A-Z]{1,7} /[a-z/?=]{0,12} HTTP/1\.[01]\r\n\r\n", fullmatch=True))
def test_response_statuses_for_wellformed(head: bytes) -> None:
    line = _split(metrics_response(head, "m 1\n"))[0]
    method, target = head.split(b" ")[:2]
    path = target.split(b"?")[0]
    if path != b"/metrics":
        assert "404" in line
    elif method in (b"GET", b"HEAD"):
        assert "200" in line
    else:
        assert "405" in line

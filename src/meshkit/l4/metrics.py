"""Prometheus text exposition format 0.0.4 and a minimal /metrics HTTP responder (sans-IO).

The ingress collects its counters into MetricFamily objects and the I/O shell writes whatever
metrics_response() returns; no HTTP library is needed for one read-only endpoint.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

__all__ = ["CONTENT_TYPE", "MAX_REQUEST_HEAD", "MetricFamily", "metrics_response", "render"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# The shell should stop reading (and send 400 via metrics_response) past this many bytes.
MAX_REQUEST_HEAD = 8192

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_TYPES = ("counter", "gauge")


@dataclass
class MetricFamily:
    """One metric name with its HELP text, TYPE and samples (labels, value)."""

    name: str
    help: str
    type: str
    samples: list[tuple[dict[str, str], float]] = field(default_factory=list)


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _value(value: float) -> str:
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    # Integral values print without ".0" (counters read naturally); huge ones stay in float
    # notation rather than expanding to hundreds of digits.
    if value.is_integer() and abs(value) < 2**63:
        return str(int(value))
    return repr(value)


def render(families: list[MetricFamily]) -> str:
    """Render families in order; raises ValueError on names Prometheus would reject."""
    lines: list[str] = []
    seen: set[str] = set()
    for fam in families:
        if not _METRIC_NAME.fullmatch(fam.name):
            raise ValueError(f"invalid metric name {fam.name!r}")
        if fam.type not in _TYPES:
            raise ValueError(f"metric {fam.name}: type must be counter or gauge, not {fam.type!r}")
        # A repeated family is rejected by the Prometheus parser, so fail where the bug is.
        if fam.name in seen:
            raise ValueError(f"metric family {fam.name!r} rendered twice")
        seen.add(fam.name)
        lines.append(f"# HELP {fam.name} {_escape_help(fam.help)}")
        lines.append(f"# TYPE {fam.name} {fam.type}")
        for labels, value in fam.samples:
            lines.append(f"{fam.name}{_labels(fam.name, labels)} {_value(value)}")
    return "".join(line + "\n" for line in lines)


def _labels(metric: str, labels: dict[str, str]) -> str:
    if not labels:
        return ""
    parts = []
    for key, val in labels.items():
        if not _LABEL_NAME.fullmatch(key) or key.startswith("__"):
            raise ValueError(f"metric {metric}: invalid label name {key!r}")
        parts.append(f'{key}="{_escape_label(str(val))}"')
    return "{" + ",".join(parts) + "}"


# --- HTTP --------------------------------------------------------------------------------

_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_VERSION = re.compile(rb"HTTP/([0-9])\.([0-9])")
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    505: "HTTP Version Not Supported",
}


def _response(status: int, body: str, content_type: str, head_only: bool = False) -> bytes:
    payload = body.encode("utf-8")
    headers = [
        f"HTTP/1.1 {status} {_REASONS[status]}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(payload)}",
        "Connection: close",
    ]
    if status == 405:
        headers.append("Allow: GET, HEAD")
    head = ("\r\n".join(headers) + "\r\n\r\n").encode("ascii")
    return head if head_only else head + payload


def _error(status: int, head_only: bool = False) -> bytes:
    body = f"{status} {_REASONS[status].lower()}\n"
    return _response(status, body, "text/plain; charset=utf-8", head_only)


def _classify(request_head: bytes) -> tuple[int, bool]:
    """(status, is_head) for a request head: the bytes before the blank line."""
    if len(request_head) > MAX_REQUEST_HEAD:
        return 400, False
    lines = request_head.replace(b"\r\n", b"\n").split(b"\n")
    # Tolerate the terminating blank line being included, and leading blank lines (RFC 9112).
    while lines and lines[-1] == b"":
        lines.pop()
    while lines and lines[0] == b"":
        lines.pop(0)
    if not lines:
        return 400, False
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or not parts[1]:
        return 400, False
    method, target, version = parts
    match = _VERSION.fullmatch(version)
    if match is None or any(b <= 0x20 or b >= 0x7F for b in target):
        return 400, False
    if match.group(1) != b"1":
        return 505, False
    for line in lines[1:]:
        name, colon, _ = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            return 400, False
    path = target.split(b"?", 1)[0]
    if path != b"/metrics":
        return 404, method == b"HEAD"
    if method not in (b"GET", b"HEAD"):
        return 405, False
    return 200, method == b"HEAD"


def metrics_response(request_head: bytes, body: str) -> bytes:
    """A complete HTTP/1.1 response (Connection: close) for one request head.

    200 with the exposition body for GET /metrics (HEAD too, without the body, because HTTP
    requires HEAD wherever GET works), 404 for other paths, 405 for other methods on /metrics,
    400 for anything that is not an HTTP/1.x request, 505 for other HTTP versions.
    """
    status, head_only = _classify(bytes(request_head))
    if status == 200:
        return _response(200, body, CONTENT_TYPE, head_only)
    return _error(status, head_only)

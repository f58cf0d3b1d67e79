"""log: access logging (Caddy v1).

    log                             # everything, to access.log, common format
    log FILE
    log PATH FILE [FORMAT]          # FORMAT with placeholders, {common} or {combined}
    log ... {
        rotate_size MB              # 100
        rotate_age DAYS             # 14
        rotate_keep N               # 10
        rotate_compress
        ipmask V4MASK [V6MASK]      # e.g. 255.255.255.0 ffff:ffff:ffff:: ("" V6MASK: v6 only)
        except PATH...              # base paths not logged
    }

FILE may be `stdout`, `stderr` or `syslog`. Empty values are written as `-`; control
characters, `"` and `\\` in a value are written as `\\xHH` (nginx's escape=default). The
line is written once the response has been sent (from request.on_complete), so {status},
{size} and {latency} are what the client got. A request is logged by the rules of the
longest matching PATH (each rule may have several outputs).
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass, field

from meshkit.web.caddyfile.tokens import CaddyfileError, Dispenser
from meshkit.web.directives import register
from meshkit.web.logfile import (
    ROLLER_OPTIONS,
    LogSink,
    Roller,
    check_writable,
    open_sink,
    roller_option_error,
)
from meshkit.web.message import Handler, HandlerResult, Request, Response
from meshkit.web.paths import clamp_path
from meshkit.web.placeholders import Template, compile_template
from meshkit.web.site import Site

DEFAULT_FILE = "access.log"
EMPTY = "-"
COMMON = '{remote} - {user} [{when}] "{method} {uri} {proto}" {status} {size}'
COMBINED = COMMON + ' "{>Referer}" "{>User-Agent}"'
DEFAULT_FORMAT = COMMON


def expand_format(fmt: str) -> str:
    return fmt.replace("{common}", COMMON).replace("{combined}", COMBINED)


@dataclass
class LogEntry:
    path: str
    output: str
    format: str
    roller: Roller = field(default_factory=Roller)
    exceptions: list[str] = field(default_factory=list)
    ipmask_v4: str | None = None
    ipmask_v6: str | None = None


@dataclass
class LogConfig:
    entries: list[LogEntry] = field(default_factory=list)


def _mask_error(text: str, version: int) -> str | None:
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return f"invalid IPv{version} mask {text!r}"
    if addr.version != version:
        return f"{text!r} is not an IPv{version} mask"
    bits = int(addr)
    width = addr.max_prefixlen
    ones = bin(bits).count("1")
    if bits != ((1 << width) - 1) ^ ((1 << (width - ones)) - 1):
        return f"{text!r} is not a contiguous mask"
    return None


def parse(d: Dispenser, site: Site) -> LogConfig:
    config = LogConfig()
    while d.next():
        args = d.remaining_args()
        where = d.token()
        roller = Roller()
        exceptions: list[str] = []
        v4: str | None = None
        v6: str | None = None
        for _ in d.block():
            what = d.val()
            more = d.remaining_args()
            if what in ROLLER_OPTIONS:
                problem = roller_option_error(roller, what, more)
                if problem:
                    raise d.err(problem)
            elif what == "except":
                if not more:
                    raise d.arg_err()
                exceptions.extend(more)
            elif what == "ipmask":
                if not 1 <= len(more) <= 2:
                    raise d.arg_err()
                for text in more:
                    if not text:
                        continue  # `ipmask "" V6MASK`: no IPv4 mask (as v1)
                    try:
                        version = ipaddress.ip_address(text).version
                    except ValueError:
                        raise d.err(f"invalid IP mask {text!r}") from None
                    problem = _mask_error(text, version)
                    if problem:
                        raise d.err(problem)
                    if version == 4:
                        v4 = text
                    else:
                        v6 = text
            else:
                raise d.err(
                    f"unknown log option {what!r} (expecting rotate_size, rotate_age, "
                    "rotate_keep, rotate_compress, ipmask or except)"
                )
        path, output, fmt = "/", DEFAULT_FILE, DEFAULT_FORMAT
        if len(args) == 1:
            output = args[0]
        elif len(args) in (2, 3):
            path, output = args[0], args[1]
            if len(args) == 3:
                fmt = expand_format(args[2])
        elif len(args) > 3:
            raise d.arg_err()
        problem = check_writable(output)
        if problem:
            raise CaddyfileError(where.file, where.line, f"cannot open log file: {problem}")
        entry = LogEntry(path, output, fmt, roller, exceptions, v4, v6)
        entry.__dict__["_where"] = (where.file, where.line)  # not a field: not in the JSON
        config.entries.append(entry)
    return config


class _Writer:
    """One log entry ready to write: template, sink, exceptions and masks."""

    __slots__ = ("exceptions", "masking", "sink", "template", "v4", "v6")

    def __init__(self, entry: LogEntry, sink: LogSink) -> None:
        # escape=True: a value (a decoded `%0a` in {path}, a `"` in {>User-Agent}) must not
        # forge a line or a field
        self.template: Template = compile_template(entry.format, EMPTY, escape=True)
        self.sink = sink
        self.exceptions = tuple(clamp_path(p) for p in entry.exceptions)
        self.v4 = ipaddress.IPv4Address(entry.ipmask_v4) if entry.ipmask_v4 else None
        self.v6 = ipaddress.IPv6Address(entry.ipmask_v6) if entry.ipmask_v6 else None
        self.masking = self.v4 is not None or self.v6 is not None

    def mask(self, remote: str) -> str | None:
        if self.v4 is None and self.v6 is None:
            return None
        try:
            addr = ipaddress.ip_address(remote)
        except ValueError:
            return None
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        if isinstance(addr, ipaddress.IPv4Address):
            if self.v4 is None:
                return None
            return str(ipaddress.IPv4Address(int(addr) & int(self.v4)))
        if self.v6 is None:
            return None
        return str(ipaddress.IPv6Address(int(addr) & int(self.v6)))


# Placeholders whose value changes from one request to the next even for the same request
# head, client and second: a line using one cannot be replayed (see _Complete.lines).
_PER_REQUEST = frozenset({"latency", "latency_ms", "request_id"})


class _Group:
    """The writers of one log rule's path, and what their templates read (worked out once
    at build, not per request)."""

    __slots__ = ("replayable", "uses_port", "writers")

    def __init__(self, writers: list[_Writer]) -> None:
        self.writers = writers
        self.replayable = all(
            not w.masking and _PER_REQUEST.isdisjoint(w.template.names) for w in writers
        )
        # whether a line shows the client's port (else every connection from one address
        # shares the lines of a second)
        self.uses_port = any("port" in w.template.names for w in writers)


class _Complete:
    """The on_complete callback that writes a request's access-log lines. For a response
    answered again from the response cache (meshkit.web.respcache), `lines` renders the
    same lines without writing them, so that the cache can reuse them for every answer of
    the same entry to the same client address and port within the same second (then
    nothing in them differs: `replayable` says the templates read nothing else)."""

    __slots__ = ("path", "replayable", "uses_port", "writers")

    def __init__(self, group: _Group, path: str) -> None:
        self.writers = group.writers
        self.path = path
        self.replayable = group.replayable
        self.uses_port = group.uses_port

    def lines(
        self, req: Request, response: Response, sent: int, now: float
    ) -> list[tuple[LogSink, str]]:
        out = []
        path = self.path
        for w in self.writers:
            if w.exceptions and path.startswith(w.exceptions):
                continue
            extra = None
            if w.masking:
                masked = w.mask(req.remote_addr)
                extra = {"remote": masked} if masked is not None else None
            out.append((w.sink, w.template.render(req, response, size=sent, now=now, extra=extra)))
        return out

    def __call__(self, req: Request, response: Response, sent: int) -> None:
        for sink, line in self.lines(req, response, sent, time.time()):
            sink.write(line)


def _open(entry: LogEntry) -> LogSink:
    try:
        return open_sink(entry.output, entry.roller)
    except OSError as e:
        file, line = entry.__dict__.get("_where", ("Caddyfile", 0))
        raise CaddyfileError(file, line, f"cannot open log file {entry.output}: {e}") from None


def build(config: LogConfig, next: Handler, site: Site) -> Handler:
    groups: dict[str, list[_Writer]] = {}
    for entry in config.entries:
        groups.setdefault(clamp_path(entry.path), []).append(_Writer(entry, _open(entry)))
    rules = sorted(
        ((base, _Group(ws)) for base, ws in groups.items()),
        key=lambda item: len(item[0]),
        reverse=True,
    )

    def watch(request: Request) -> None:
        """Have the request logged once it completes (if a rule covers its path)."""
        path = request.path
        found: _Group | None = None
        for base, group in rules:
            if path.startswith(base):
                found = group
                break
        if found is None:
            return
        if not request.start_time:
            request.start_time = time.time()
        request.on_complete.append(_Complete(found, path))

    def log_handler(request: Request) -> HandlerResult:
        watch(request)
        return next(request)

    return log_handler


register("log", parse, build)

"""Where a FastCGI responder listens (`host:port`, `[v6]:port`, `unix:/path`) and the
timeouts of an exchange with it: the configuration side of the FastCGI client."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a FastCGI responder listens: `host:port` / `[v6]:port` or `unix:/path`."""

    text: str  # as written, for messages and logs
    host: str = ""
    port: int = 0
    path: str = ""  # unix socket

    @property
    def is_unix(self) -> bool:
        return bool(self.path)


def parse_endpoint(text: str) -> Endpoint:
    """An Endpoint from `host:port`, `[v6]:port`, `unix:/path` (or `fastcgi://host:port`);
    ValueError with the reason otherwise."""
    raw = text
    if raw.startswith("fastcgi://"):
        raw = raw[len("fastcgi://") :]
    if raw.startswith("unix:"):
        path = raw[5:]
        if not path:
            raise ValueError(f"endpoint {text!r}: unix: needs a socket path")
        return Endpoint(text, path=path)
    if raw.startswith("/"):
        return Endpoint(text, path=raw)
    if raw.startswith("["):
        host, sep, rest = raw[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"endpoint {text!r}: expected [IPv6]:PORT")
        port_text = rest[1:]
    else:
        host, sep, port_text = raw.rpartition(":")
        if not sep or not host or ":" in host:
            raise ValueError(f"endpoint {text!r}: expected HOST:PORT or unix:/path")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"endpoint {text!r}: invalid port {port_text!r}")
    return Endpoint(text, host=host, port=int(port_text))


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float = 60.0
    read: float = 60.0
    send: float = 60.0

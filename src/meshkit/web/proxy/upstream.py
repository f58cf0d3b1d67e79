"""Upstream addresses of the `proxy` directive and the balancer state they share.

Addresses: `host:port`, `host` (port 80), `http://host[:port]`, `https://host[:port]` (443),
`unix:/path/to.sock`, port ranges `host:8080-8085` (one upstream per port), a base path and
query after the address (`http://host:8001/base?k=v`: as in Caddy v1 the path is put before
the request's, and the query before its query), SRV locators `srv://NAME` and
`srv+https://NAME` (scheme "srv" or "srv+https", host NAME: looked up when a connection is
dialled, see meshkit.web.proxy.srv), and
`service://NAME:PORT`: a template standing for the up tasks of a swarm service (scheme
"service", host NAME), which meshkit.web.proxy.services expands into one plain upstream per
task IP (with `service` set: the Host sent upstream is the service's name). Parsing is
pure; a bad address raises ValueError with a message naming it (the directive turns that into
a Caddyfile error at file:line).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

__all__ = ["MAX_RANGE", "SERVICE_NAME", "Upstream", "parse_upstreams"]

MAX_RANGE = 1024  # ports in one `host:a-b` range: more is surely a typo
# what `meshkit service create --name` accepts (a DNS label, as swarm's service names)
SERVICE_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


@dataclass(frozen=True, slots=True)
class Upstream:
    """One place requests can go."""

    scheme: str  # "http", "https", "unix", "srv", "srv+https", or "service" (a template)
    host: str  # hostname or IP (no brackets); "" for unix; the SRV name for srv
    port: int  # 0 for unix and srv
    path: str = ""  # the socket path for unix
    # the base path and query put before the request's (`http://h:8001/base?k=v`); "" none
    base: str = ""
    query: str = ""
    # the service a task's upstream stands for ("" for plain ones): dialled on the
    # directory's sockets, and named in the Host header. Runtime detail, not config.
    service: str = field(default="", metadata={"json": False})

    @property
    def name(self) -> str:
        """How logs and {upstream} name it."""
        if self.scheme == "unix":
            return f"unix:{self.path}"
        if self.scheme == "service":
            return f"service://{self.host}:{self.port}"
        if self.is_srv:
            return f"{self.scheme}://{self.host}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        prefix = "https://" if self.scheme == "https" else ""
        tail = self.base + ("?" + self.query if self.query else "")
        return f"{prefix}{host}:{self.port}{tail}"

    @property
    def is_srv(self) -> bool:
        return self.scheme in ("srv", "srv+https")

    @property
    def tls(self) -> bool:
        """Whether the connection to it is TLS."""
        return self.scheme in ("https", "srv+https")

    @property
    def host_header(self) -> str:
        """The Host sent upstream when `transparent` is off (Caddy v1: the upstream's)."""
        if self.scheme == "unix":
            return "localhost"
        if self.is_srv:
            # Caddy v1 sends the locator's host: the SRV name itself
            return self.host
        if self.service:
            # as a client inside the cluster would write it: http://NAME[:PORT]/
            return self.service if self.port == 80 else f"{self.service}:{self.port}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


def _port(text: str, what: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(f"invalid port {text!r} in upstream {what!r} (expecting 1-65535)")
    return int(text)


def parse_upstreams(text: str) -> list[Upstream]:
    """One upstream address as written in the Caddyfile (a port range gives several)."""
    original = text
    if text.startswith("unix:"):
        path = text[5:]
        if path.startswith("//"):
            path = path[2:]
        if not path.startswith("/"):
            raise ValueError(f"unix upstream {original!r} needs an absolute socket path")
        return [Upstream("unix", "", 0, path)]
    if text[:10].lower() == "service://":
        return [_service(text[10:], original)]
    scheme = "http"
    if "://" in text:
        scheme, _, text = text.partition("://")
        scheme = scheme.lower()
        if scheme not in ("http", "https", "srv", "srv+https"):
            raise ValueError(
                f"unsupported scheme {scheme!r} in upstream {original!r}"
                " (expecting http, https, srv, srv+https or service)"
            )
    text, base, query = _split_base(text, original)
    if scheme in ("srv", "srv+https"):
        return [_srv(scheme, text, base, query, original)]
    if not text:
        raise ValueError(f"upstream {original!r} has no host")
    default = 443 if scheme == "https" else 80
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"missing ']' in upstream {original!r}")
        host, rest = text[1:end], text[end + 1 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"invalid IPv6 address in upstream {original!r}") from None
        if rest and not rest.startswith(":"):
            raise ValueError(f"unexpected {rest!r} after the address in upstream {original!r}")
        ports = rest[1:]
    else:
        host, _, ports = text.partition(":")
        if ":" in ports:
            raise ValueError(f"write IPv6 upstreams in brackets, not {original!r}")
        if not host:
            raise ValueError(f"upstream {original!r} has no host")
    if not ports:
        return [Upstream(scheme, host, default, base=base, query=query)]
    if "-" in ports:
        lo_text, _, hi_text = ports.partition("-")
        lo, hi = _port(lo_text, original), _port(hi_text, original)
        if hi < lo:
            raise ValueError(f"port range {ports!r} of upstream {original!r} runs backwards")
        if hi - lo + 1 > MAX_RANGE:
            raise ValueError(f"port range {ports!r} of upstream {original!r} is over {MAX_RANGE}")
        return [Upstream(scheme, host, p, base=base, query=query) for p in range(lo, hi + 1)]
    return [Upstream(scheme, host, _port(ports, original), base=base, query=query)]


def _split_base(text: str, original: str) -> tuple[str, str, str]:
    """(address, base path, query) of what follows the scheme. A lone trailing `/` is no
    base (`http://h:80/` proxies `/x` to `/x`, as v1's single-slash join does)."""
    text, mark, query = text.partition("?")
    if "#" in text or "#" in query:
        raise ValueError(f"upstream {original!r} must not have a fragment ('#')")
    slash = text.find("/")
    address, base = (text, "") if slash < 0 else (text[:slash], text[slash:])
    if base == "/":
        base = ""
    if any(c in base + query for c in " \t\r\n") or any(ord(c) < 0x20 for c in base + query):
        raise ValueError(f"upstream {original!r} has white space or a control character")
    return address, base, query if mark else ""


def _srv(scheme: str, name: str, base: str, query: str, original: str) -> Upstream:
    """`srv://NAME` or `srv+https://NAME`: a service locator, looked up when dialling."""
    if not name:
        raise ValueError(f"upstream {original!r} names no SRV record (expecting {scheme}://NAME)")
    if ":" in name:
        # Caddy v1's words: the port comes from the SRV records
        raise ValueError(f"service locator {original} can not have port specified")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or ".." in name or name.startswith("."):
        raise ValueError(f"invalid SRV name {name!r} in upstream {original!r}")
    return Upstream(scheme, name.rstrip(".").lower(), 0, base=base, query=query)


def _service(text: str, original: str) -> Upstream:
    """The template of `service://NAME:PORT` (`text` is what follows the scheme)."""
    name, sep, port = text.rstrip("/").partition(":")
    if "/" in name or "/" in port or "?" in text:
        raise ValueError(f"upstream {original!r} must not have a path (use `without` instead)")
    if not name:
        raise ValueError(f"upstream {original!r} names no service (expecting service://NAME:PORT)")
    if not SERVICE_NAME.fullmatch(name):
        raise ValueError(
            f"invalid service name {name!r} in upstream {original!r} (expecting letters,"
            " digits and inner dashes, at most 63: a service's --name)"
        )
    if not sep or not port:
        raise ValueError(
            f"upstream {original!r} needs the port the service's tasks listen on"
            f" (service://{name}:PORT)"
        )
    if "-" in port:
        raise ValueError(f"port ranges are not supported for service upstreams ({original!r})")
    return Upstream("service", name, _port(port, original))

"""Site addresses: `[scheme://]host[:port][/path]` -> Address (Caddy v1's rules).

- No port: the scheme's (http 80, https 443), else the default port (2015, or `-port`).
- `http://` with port 443, or `https://` with port 80, is an error; so is a scheme given
  twice (`http://host:https`). A port named `http`/`https` means 80/443.
- The host is lower-cased; "" (or none) matches every host; `*.example.com` is a wildcard
  label. IPv6 hosts are written in brackets and kept without them.
- The path (default `/`) is a plain prefix the site answers under.

- https (by scheme, or by the https port without a scheme) gives an Address with scheme
  "https"; the caddyfile loader decides where its certificate comes from (the `tls`
  directive, or automatic HTTPS from an ACME CA with -agree). `-http-port` and
  `-https-port` change the ports the schemes stand for (80 and 443).
"""

from __future__ import annotations

import re

from meshkit.web.site import DEFAULT_PORT, Address

HTTP_PORT = 80
HTTPS_PORT = 443

_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_LABEL = r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?"
_HOST_RE = re.compile(rf"^(\*\.)*{_LABEL}(\.{_LABEL})*\.?$")


class AddressError(ValueError):
    """A malformed site address; the message names it."""


def parse_address(
    text: str,
    default_port: int = DEFAULT_PORT,
    http_port: int = HTTP_PORT,
    https_port: int = HTTPS_PORT,
) -> Address:
    """One site address. Raises AddressError with a message naming the address."""
    original = text
    scheme = ""
    rest = text
    m = _SCHEME_RE.match(text)
    if m:
        scheme = m.group(1).lower()
        rest = text[m.end() :]
    elif "://" in text:
        raise AddressError(f"site address {original!r}: malformed scheme")
    elif text.startswith("//"):
        rest = text[2:]  # scheme-relative, as v1 read it (`//host` is the host `host`)
    if any(c in rest for c in "?#"):
        raise AddressError(f"site address {original!r}: a query or fragment has no place here")
    if any(c.isspace() for c in rest):
        raise AddressError(f"site address {original!r}: white space in an address")
    slash = rest.find("/")
    hostport, path = (rest, "/") if slash < 0 else (rest[:slash], rest[slash:])

    host, port_text = _split_host_port(hostport, original)

    if scheme and port_text in ("http", "https"):
        raise AddressError(f"site address {original!r}: scheme specified twice")
    if port_text == "http":
        scheme, port_text = "http", ""
        port: int | None = http_port
    elif port_text == "https":
        scheme, port_text = "https", ""
        port = https_port
    elif port_text == "":
        port = None
    else:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise AddressError(
                f"site address {original!r}: port {port_text!r} is not a number from 1 to 65535"
            )
        port = int(port_text)

    if scheme not in ("", "http", "https"):
        raise AddressError(
            f"site address {original!r}: unsupported scheme {scheme!r} (expected http)"
        )
    implicit = port is None and not scheme
    if port is None:
        port = {"http": http_port, "https": https_port}.get(scheme, default_port)
    if (scheme == "http" and port == https_port) or (scheme == "https" and port == http_port):
        raise AddressError(
            f"site address {original!r}: scheme {scheme}:// and port {port} do not go together"
        )
    if scheme == "" and port == https_port:
        scheme = "https"
    return Address(
        original=original,
        scheme=scheme or "http",
        host=host,
        port=port,
        path=path,
        scheme_given=bool(scheme) and "://" in original,
        implicit_port=implicit,
    )


def _split_host_port(hostport: str, original: str) -> tuple[str, str]:
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            raise AddressError(f"site address {original!r}: missing ']' after an IPv6 host")
        host = hostport[1:end].lower()
        after = hostport[end + 1 :]
        if after and not after.startswith(":"):
            raise AddressError(f"site address {original!r}: unexpected {after!r} after ']'")
        if not host or not all(c in "0123456789abcdef:." for c in host):
            raise AddressError(f"site address {original!r}: {host!r} is not an IPv6 address")
        return host, after[1:]
    if hostport.count(":") > 1:
        raise AddressError(
            f"site address {original!r}: an IPv6 host must be written in brackets ([::1]:80)"
        )
    host, _, port = hostport.partition(":")
    host = host.lower()
    if "*" in host.lstrip("*.") or "**" in host:
        raise AddressError(
            f"site address {original!r}: a wildcard must be a whole label on the left "
            "(*.example.com)"
        )
    if host and host != "*" and not _HOST_RE.match(host):
        raise AddressError(f"site address {original!r}: {host!r} is not a valid host name")
    return host.rstrip("."), port

"""The one `--publish` grammar, for `meshkit ingress` and `meshkit service create/update`.

Short form: `[IP:][PUBLISHED:]TARGET[/tcp|/udp]`; an IPv6 address goes in brackets. Each user
says which parts it takes: the ingress needs PUBLISHED and takes an IP, a service takes no IP
and may leave PUBLISHED out. Long form (services): comma-separated `KEY=VALUE` fields
`published=`, `target=`, `protocol=`, `mode=ingress|host`, `proxy-protocol=v2|true|false`, and
at most one short form among them (`mode=host,8081:81/udp`). As Docker does, the protocol,
the mode and the field names are matched case-insensitively. Errors are PublishError (an
InvalidValue) naming the flag, with one reason text per mistake on both sides.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshkit.base.errors import FlagError
from meshkit.base.hostport import Reason, bracketed_ip, ip, port, split_bracketed

__all__ = [
    "INGRESS_FORM",
    "MODES",
    "PROTOCOLS",
    "SERVICE_FORM",
    "PortConfig",
    "Publish",
    "PublishError",
    "parse_port_config",
    "parse_publish",
]

PROTOCOLS = ("tcp", "udp")
MODES = ("ingress", "host")
INGRESS_FORM = "expected [IP:]PUBLISHED:TARGET[/tcp|/udp]"
SERVICE_FORM = "expected [PUBLISHED:]TARGET[/tcp|/udp]"


class PublishError(FlagError):
    """A `--publish` value that does not fit the grammar."""


@dataclass(frozen=True)
class Publish:
    """One ingress `--publish`: listen on host:published, forward to backends' target port."""

    host: str
    published: int
    target: int
    proto: str


@dataclass(frozen=True)
class PortConfig:
    """One service port: `published` None means the tasks serve `target` on the VIP only."""

    target: int
    published: int | None = None
    proto: str = "tcp"
    mode: str = "ingress"
    proxy_protocol: bool = False


def _protocol(text: str) -> str:
    proto = text.lower()
    if proto not in PROTOCOLS:
        raise Reason(f"protocol {proto!r} is not tcp or udp")
    return proto


def _short(
    text: str, form: str, *, with_ip: bool
) -> tuple[str | None, str | None, str, str | None]:
    """Split a short form into (ip, published text, target text, protocol if given)."""
    body, slash, proto_text = text.partition("/")
    proto = _protocol(proto_text) if slash else None
    host: str | None = None
    inner, rest = split_bracketed(body)
    if rest is not None:
        if not with_ip or not rest.startswith(":"):
            raise Reason(form)
        host = bracketed_ip(inner)
        parts = rest[1:].split(":")
        if len(parts) != 2:
            raise Reason(form)
    else:
        parts = body.split(":")
        if len(parts) == 3 and with_ip:
            host = ip(parts.pop(0))
        elif len(parts) > 3 and with_ip:
            raise Reason(f"{form} (write IPv6 addresses in brackets: [::1]:8080:80)")
        elif len(parts) > 2:
            raise Reason(form)
    if len(parts) == 1:
        return host, None, parts[0], proto
    return host, parts[0], parts[1], proto


def parse_publish(text: str, flag: str = "--publish") -> Publish:
    """The ingress form `[IP:]PUBLISHED:TARGET[/tcp|/udp]` (IP 0.0.0.0 when left out)."""
    try:
        host, published, target, proto = _short(text, INGRESS_FORM, with_ip=True)
        if published is None:
            raise Reason(INGRESS_FORM)
        return Publish(
            host=host or "0.0.0.0",
            published=port(published, "published port"),
            target=port(target, "target port"),
            proto=proto or "tcp",
        )
    except Reason as exc:
        raise PublishError(flag, text, str(exc)) from None


def _proxy_protocol(value: str) -> bool:
    if value == "v1":
        raise Reason(
            "the routing mesh sends PROXY protocol v2 (it carries UDP too); use proxy-protocol=v2"
        )
    if value not in ("v2", "true", "false", "1", "0"):
        raise Reason(f"proxy-protocol is v2, true or false, not {value!r}")
    return value in ("v2", "true", "1")


def _port_config(text: str) -> PortConfig:
    target: int | None = None
    published: int | None = None
    proto, mode, proxy_protocol = "tcp", "ingress", False
    for part in (p.strip() for p in text.split(",")):
        if not part:
            raise Reason("empty field")
        key, eq, value = part.partition("=")
        if not eq:
            _, published_text, target_text, given = _short(part, SERVICE_FORM, with_ip=False)
            proto = given or proto
            # `:80` leaves PUBLISHED out, as Docker reads it.
            published = port(published_text, "published port") if published_text else None
            target = port(target_text, "target port")
            continue
        key = key.strip().lower().replace("-", "_")
        value = value.strip().lower()
        if key == "published":
            published = port(value, "published port")
        elif key == "target":
            target = port(value, "target port")
        elif key == "protocol":
            proto = _protocol(value)
        elif key == "mode":
            if value not in MODES:
                raise Reason(f"mode {value!r} is not ingress or host")
            mode = value
        elif key == "proxy_protocol":
            proxy_protocol = _proxy_protocol(value)
        else:
            raise Reason(f"unknown field {key!r}")
    if target is None:
        raise Reason("no target port")
    return PortConfig(target, published, proto, mode, proxy_protocol)


def parse_port_config(text: str, flag: str = "--publish") -> PortConfig:
    """A service's `--publish`: the short form without IP, or the long form (see above)."""
    try:
        return _port_config(text)
    except Reason as exc:
        raise PublishError(flag, text, str(exc)) from None

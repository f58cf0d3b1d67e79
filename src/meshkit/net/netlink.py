"""What every netlink step shares: ``LinkError`` and its wording (the step, the device, the
namespace and the kernel's own text), name/MAC/IP checks, and the pyroute2 handle.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
from collections.abc import Iterator
from typing import Any

from pyroute2 import IPRoute  # type: ignore[import-untyped]
from pyroute2.netlink.exceptions import NetlinkError  # type: ignore[import-untyped]

MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
IFNAME_MAX = 15


class LinkError(Exception):
    """A netlink or namespace step failed; the message names the step, the device, the
    namespace and the kernel's error text."""


def kernel_text(exc: BaseException) -> str:
    """The kernel's words for a failure: strerror, plus the extended ack text if any."""
    if isinstance(exc, NetlinkError):
        code = abs(int(exc.code)) if isinstance(exc.code, int) else 0
        base = os.strerror(code) if code else ""
        extra = str(exc.args[1]) if len(exc.args) > 1 and exc.args[1] else ""
        if base and extra and extra != base:
            return f"{base} ({extra})"
        return base or extra or repr(exc)
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc) or type(exc).__name__


def errno_of(exc: BaseException) -> int:
    if isinstance(exc, NetlinkError):
        return abs(int(exc.code)) if isinstance(exc.code, int) else 0
    if isinstance(exc, OSError):
        return exc.errno or 0
    return 0


@contextlib.contextmanager
def step(what: str, ns: str) -> Iterator[None]:
    """Turn netlink/OS failures inside the block into LinkError('<what> in <ns>: <text>')."""
    try:
        yield
    except LinkError:
        raise
    except (NetlinkError, OSError) as exc:
        raise LinkError(f"{what} in {ns}: {kernel_text(exc)}") from exc


def check_ifname(name: str) -> None:
    if not name or len(name) > IFNAME_MAX or "/" in name or any(c.isspace() for c in name):
        raise LinkError(
            f"invalid interface name {name!r} (1-{IFNAME_MAX} characters, no / or spaces)"
        )


def norm_mac(mac: str, where: str) -> str:
    text = mac.strip().lower().replace("-", ":")
    if not MAC_RE.match(text):
        raise LinkError(f"{where}: {mac!r} is not a MAC address (xx:xx:xx:xx:xx:xx)")
    return text


def norm_ip(ip: str, where: str) -> str:
    try:
        return str(ipaddress.ip_address(ip.strip()))
    except ValueError:
        raise LinkError(f"{where}: {ip!r} is not an IP address") from None


def norm_cidr(cidr: str, where: str) -> tuple[str, int]:
    try:
        iface = ipaddress.ip_interface(cidr.strip())
    except ValueError:
        raise LinkError(f"{where}: {cidr!r} is not an address with a prefix (a.b.c.d/n)") from None
    if "/" not in cidr:
        raise LinkError(f"{where}: {cidr!r} has no prefix length (a.b.c.d/n)")
    return str(iface.ip), iface.network.prefixlen


def iproute(fileno: int | None = None) -> Any:
    """A pyroute2 IPRoute on ``fileno`` (or a new socket in the caller's namespace), not
    subscribed to events so replies are all it reads."""
    return IPRoute(fileno=fileno, groups=0, ext_ack=True)

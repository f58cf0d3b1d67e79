"""What this kernel can do for overlay networks, for ``meshkit doctor`` and the ``auto``
data plane choice.

``check_kernel`` tries each thing for real in scratch network namespaces it makes and
removes (unique names), never in the caller's namespace: a namespace, a bridge, a veth
pair, a VXLAN link inside a namespace and one moved into it from another namespace, a TAP
device, and the UDP GSO/GRO socket options. ``choose_dataplane`` and ``missing_words`` are
pure functions over the resulting ``Check`` list.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import socket
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from pyroute2.netlink.exceptions import NetlinkError  # type: ignore[import-untyped]

from meshkit.net import links

# check names, in the order they are run and reported
NETNS = "netns"
BRIDGE = "bridge"
VETH = "veth"
VXLAN = "vxlan"
VXLAN_MOVE = "vxlan_move"
TAP = "tap"
UDP_GSO = "udp_gso"
UDP_GRO = "udp_gro"

LABELS = {
    NETNS: "network namespaces",
    BRIDGE: "bridge links",
    VETH: "veth pairs",
    VXLAN: "VXLAN links inside a namespace",
    VXLAN_MOVE: "VXLAN links moved into a namespace",
    TAP: "TAP devices (/dev/net/tun)",
    UDP_GSO: "UDP segmentation offload (UDP_SEGMENT)",
    UDP_GRO: "UDP receive offload (UDP_GRO)",
}

KERNEL_NEEDS = (NETNS, BRIDGE, VETH, VXLAN, VXLAN_MOVE)
USERSPACE_NEEDS = (NETNS, BRIDGE, VETH, TAP)
DATAPLANES = ("auto", "kernel", "userspace")

_MODULE_HINT = {
    BRIDGE: "bridge",
    VETH: "veth",
    VXLAN: "vxlan",
    VXLAN_MOVE: "vxlan",
    TAP: "tun",
}

_SOL_UDP = 17
_UDP_SEGMENT = 103
_UDP_GRO = 104
_TUNSETIFF = 0x400454CA
_IFF_TAP = 0x0002
_IFF_NO_PI = 0x1000
_VNI = 4242  # any VNI: the scratch namespaces are private
_PORT = 4789


class DataplaneUnavailable(Exception):
    """The asked data plane cannot work on this kernel; the message says what is missing."""


@dataclass(frozen=True)
class Check:
    """One capability: whether it works, and the kernel's error text or what was made."""

    name: str
    ok: bool
    detail: str


def _try(name: str, fn: Callable[[], str]) -> Check:
    """Run one probe; any failure becomes a failed Check holding the error text."""
    try:
        return Check(name, True, fn())
    except links.LinkError as exc:
        return Check(name, False, _last_words(str(exc)))
    except (OSError, NetlinkError) as exc:
        return Check(name, False, links.kernel_text(exc))


def _last_words(message: str) -> str:
    """The kernel's text at the end of a LinkError message ('...: Operation not supported')."""
    return message.rsplit(": ", 1)[-1] if ": " in message else message


def _skipped(name: str, needs: str) -> Check:
    return Check(name, False, f"not tried: {LABELS[needs]} failed")


def _tap_in(ns: str) -> str:
    """Open a TAP device inside ``ns`` (it vanishes when its fd closes)."""

    def make() -> str:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
        try:
            req = struct.pack("16sH22x", b"mkchk%d", _IFF_TAP | _IFF_NO_PI)
            got = fcntl.ioctl(fd, _TUNSETIFF, req)
            return got[:16].rstrip(b"\0").decode()
        finally:
            os.close(fd)

    return f"made TAP device {links.in_netns(ns, make)}"


def _sockopt_in(ns: str, opt: int, value: int, what: str) -> str:
    def probe() -> str:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.setsockopt(_SOL_UDP, opt, value)
        return f"{what} accepted"

    return links.in_netns(ns, probe)


def check_kernel() -> list[Check]:
    """Try every capability in scratch namespaces (removed afterwards); one Check each,
    in the order of ``LABELS``."""
    tag = f"mkchk{os.getpid()}{secrets.token_hex(3)}"
    ns, outside = f"{tag}a", f"{tag}b"
    made: list[str] = []
    results: dict[str, Check] = {}
    try:

        def make_ns() -> str:
            made.append(ns)
            links.ensure_netns(ns)
            return f"made namespace {ns}"

        results[NETNS] = _try(NETNS, make_ns)
        if not results[NETNS].ok:
            return [results[NETNS], *(_skipped(n, NETNS) for n in LABELS if n != NETNS)]
        try:
            scratch = links.NsLinks(ns)
        except links.LinkError as exc:
            failed = Check(NETNS, False, _last_words(str(exc)))
            return [failed, *(_skipped(n, NETNS) for n in LABELS if n != NETNS)]
        with scratch:
            results.update(_try_links(scratch))
        if results[BRIDGE].ok and results[VETH].ok:
            results[VXLAN_MOVE] = _try(VXLAN_MOVE, lambda: _vxlan_moved(outside, ns, made))
        else:
            results[VXLAN_MOVE] = _skipped(VXLAN_MOVE, BRIDGE if not results[BRIDGE].ok else VETH)
        results[TAP] = _try(TAP, lambda: _tap_in(ns))
        results[UDP_GSO] = _try(UDP_GSO, lambda: _sockopt_in(ns, _UDP_SEGMENT, 1400, "UDP_SEGMENT"))
        results[UDP_GRO] = _try(UDP_GRO, lambda: _sockopt_in(ns, _UDP_GRO, 1, "UDP_GRO"))
    finally:
        for name in made:
            with contextlib.suppress(links.LinkError):
                links.delete_netns(name)
    return [results[name] for name in LABELS]


def _try_links(scratch: links.NsLinks) -> dict[str, Check]:
    """Bridge, veth and in-namespace VXLAN probes on an open scratch namespace."""

    def bridge() -> str:
        scratch.ensure_bridge("br0", mtu=1450, mac="02:4d:c6:12:00:01", addrs=["198.18.0.1/24"])
        return "made bridge br0"

    def veth() -> str:
        with _step_errors():
            scratch.ipr.link("add", ifname="ve0", kind="veth", peer="ve1")
        return "made veth pair ve0/ve1"

    def vxlan() -> str:
        with _step_errors():
            scratch.ipr.link("add", ifname="vx0", kind="vxlan", vxlan_id=_VNI,
                              vxlan_port=_PORT, vxlan_learning=0, vxlan_proxy=1)  # fmt: skip
        return f"made vxlan link vx0 (vni {_VNI})"

    return {BRIDGE: _try(BRIDGE, bridge), VETH: _try(VETH, veth), VXLAN: _try(VXLAN, vxlan)}


@contextlib.contextmanager
def _step_errors() -> Iterator[None]:
    """Netlink errors as OSError with the kernel's words."""
    try:
        yield
    except NetlinkError as exc:
        code = abs(int(exc.code)) if isinstance(exc.code, int) else errno.EIO
        raise OSError(code, links.kernel_text(exc)) from exc


def _vxlan_moved(outside: str, ns: str, made: list[str]) -> str:
    """Make a VXLAN link in a second scratch namespace (on a veth underlay, the one link
    kind besides the bridge that is surely there when this runs) and move it into ``ns``
    onto its bridge, the way overlay networks are built."""
    made.append(outside)
    links.ensure_netns(outside)

    def build() -> str:
        with links.NsLinks.here() as here, _step_errors():
            here.ipr.link("add", ifname="under0", kind="veth", peer="under1", mtu=1500)
            idx = here.index("under0")
            here.ipr.addr("add", index=idx, address="198.18.0.2", prefixlen=24)
            here.ipr.link("set", index=idx, state="up")
        links.create_vxlan(ns, "vx1", vni=_VNI + 1, port=_PORT, local="198.18.0.2",
                           underlay_ifname="under0", mtu=1450, bridge="br0")  # fmt: skip
        return f"made vxlan link vx1 (vni {_VNI + 1}) outside and moved it onto br0"

    return links.in_netns(outside, build)


def _can(checks: Sequence[Check], needs: Sequence[str]) -> list[Check]:
    """The checks among ``needs`` that failed or are absent (absent counts as failed)."""
    by_name = {c.name: c for c in checks}
    return [by_name.get(n, Check(n, False, "not checked")) for n in needs
            if not by_name.get(n, Check(n, False, "")).ok]  # fmt: skip


def _list(failed: Sequence[Check]) -> str:
    return "; ".join(f"{LABELS.get(c.name, c.name)}: {c.detail}" for c in failed)


def choose_dataplane(checks: Sequence[Check], asked: str = "auto") -> tuple[str, str]:
    """("kernel" or "userspace", the reason in words) for data plane ``asked`` ("auto",
    "kernel" or "userspace"); DataplaneUnavailable saying what is missing when the asked
    one (or, for auto, either) cannot work, ValueError for an unknown name."""
    if asked not in DATAPLANES:
        raise ValueError(f"unknown data plane {asked!r} (choose one of {', '.join(DATAPLANES)})")
    kernel_missing = _can(checks, KERNEL_NEEDS)
    user_missing = _can(checks, USERSPACE_NEEDS)
    if asked == "kernel":
        if kernel_missing:
            raise DataplaneUnavailable(
                f"the kernel data plane was asked for but this kernel lacks {_list(kernel_missing)}"
            )
        return "kernel", "asked for, and the kernel has VXLAN links in namespaces"
    if asked == "userspace":
        if user_missing:
            raise DataplaneUnavailable(
                f"the userspace data plane was asked for but this kernel lacks "
                f"{_list(user_missing)}"
            )
        return "userspace", "asked for, and TAP devices work"
    if not kernel_missing:
        return "kernel", "auto: the kernel has VXLAN links in namespaces"
    if not user_missing:
        return "userspace", f"auto: the kernel data plane cannot work ({_list(kernel_missing)})"
    raise DataplaneUnavailable(
        f"no overlay data plane can work here: kernel needs {_list(kernel_missing)}; "
        f"userspace needs {_list(user_missing)}"
    )


def _hint(check: Check) -> str:
    """A guess at the cause from the error text."""
    text = check.detail.lower()
    if "operation not permitted" in text or "permission denied" in text:
        return "not root, or no CAP_NET_ADMIN?"
    module = _MODULE_HINT.get(check.name)
    if module and ("not supported" in text or "unknown device type" in text
                   or "no such file" in text or "no such device" in text):  # fmt: skip
        return f"{module} module missing?"
    if check.name in (UDP_GSO, UDP_GRO) and "protocol not available" in text:
        return "kernel older than 4.18 / 5.0?"
    return ""


def _consequence(check: Check, checks: Sequence[Check]) -> str:
    user_ok = not _can(checks, USERSPACE_NEEDS)
    kernel_ok = not _can(checks, KERNEL_NEEDS)
    if check.name in (VXLAN, VXLAN_MOVE):
        return ("the userspace data plane will be used" if user_ok
                else "no overlay data plane can work")  # fmt: skip
    if check.name == TAP:
        return ("the userspace data plane is not available (the kernel one is used)"
                if kernel_ok else "no overlay data plane can work")  # fmt: skip
    if check.name == UDP_GSO:
        return "the userspace data plane sends one datagram per packet (slower)"
    if check.name == UDP_GRO:
        return "the userspace data plane receives one datagram per packet (slower)"
    return "overlay networks and task networking cannot work"


def missing_words(checks: Sequence[Check]) -> list[str]:
    """One line per failed check: what is missing, the kernel's words, a likely cause and
    what meshkit does about it."""
    out = []
    for check in checks:
        if check.ok:
            continue
        hint = _hint(check)
        cause = f" ({hint})" if hint else ""
        label = LABELS.get(check.name, check.name)
        out.append(f"{label}: {check.detail}{cause} -> {_consequence(check, checks)}")
    return out

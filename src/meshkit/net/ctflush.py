"""Forget conntrack entries by mark, over ctnetlink (what ``conntrack -D --mark M/MASK`` does,
without the conntrack-tools binary): one IPCTNL_MSG_CT_DELETE without a tuple is a flush,
which the kernel filters by CTA_MARK/CTA_MARK_MASK.

meshkit.net.vipnat marks every flow it DNATs to a declared VIP port with its task's address
(meshkit.net.vipnat.flow_mark); when a task leaves the map, its flows are forgotten here, so
that a client's next packet (a retransmitted SYN above all) is a new flow and is DNATed to a
live task instead of staying pinned to the one that left.
"""

from __future__ import annotations

import errno
import os
import socket
import struct

NETLINK_NETFILTER = 12
_CT_DELETE = (1 << 8) | 2  # NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_DELETE
_REQUEST_ACK = 0x1 | 0x4  # NLM_F_REQUEST | NLM_F_ACK
_CTA_MARK, _CTA_MARK_MASK = 8, 21
_NLMSG_ERROR = 2


def _attr(kind: int, value: int) -> bytes:
    return struct.pack("=HH", 8, kind) + struct.pack("!I", value)


def flush_request(mark: int, mask: int, seq: int = 1) -> bytes:
    """The netlink message: delete every IPv4 entry whose mark & mask == mark."""
    body = struct.pack("=BBH", socket.AF_INET, 0, 0) + _attr(_CTA_MARK, mark)
    body += _attr(_CTA_MARK_MASK, mask)
    return struct.pack("=IHHII", 16 + len(body), _CT_DELETE, _REQUEST_ACK, seq, 0) + body


def flush_marks(marks: list[int], mask: int) -> None:
    """Flush the entries of each mark, in the calling thread's network namespace. OSError
    when ctnetlink refuses (ENOENT, nothing matched, is not an error)."""
    if not marks:
        return
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                       NETLINK_NETFILTER) as s:  # fmt: skip
        s.settimeout(2.0)
        s.bind((0, 0))
        for seq, mark in enumerate(marks, 1):
            s.send(flush_request(mark, mask, seq))
            while True:
                reply = s.recv(65536)
                _, kind, _, rseq, _ = struct.unpack_from("=IHHII", reply)
                if kind == _NLMSG_ERROR and rseq == seq:
                    (code,) = struct.unpack_from("=i", reply, 16)
                    if code not in (0, -errno.ENOENT):
                        raise OSError(-code, f"conntrack flush of mark {mark:#x}: "
                                      f"{os.strerror(-code)}")  # fmt: skip
                    break

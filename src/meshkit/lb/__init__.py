"""Load balancing shared by the web proxy, the ingress routing mesh and VIPs.

`ConnTable` is the compiled connection table when the fast path is built and enabled, else its
pure-Python twin `PyConnTable`; both behave identically (see meshkit.lb.conntable).
"""

from __future__ import annotations

from meshkit._ext import load_fastpath
from meshkit.lb.conntable import POLICIES, FlowKey, PyConnTable

_fastpath = load_fastpath()
ConnTable: type[PyConnTable] = PyConnTable if _fastpath is None else _fastpath.ConnTable

__all__ = ["POLICIES", "ConnTable", "FlowKey", "PyConnTable"]

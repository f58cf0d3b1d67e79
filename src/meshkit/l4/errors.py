"""Errors of the L4 proxy: addresses it was given but cannot use.

They are base InvalidValue errors (exit code 2 in the CLI) named by the `meshkit ingress` flag
the address came from, which is how that command reports them; the routing mesh, which has no
such flags, reports `reason` alone.
"""

from __future__ import annotations

from meshkit.base.errors import InvalidValue

__all__ = ["IngressError"]


class IngressError(InvalidValue):
    """A publish the proxy cannot bind, a backend that does not resolve, a metrics address."""

"""Errors a user can cause, and how the CLI reports them.

A MeshkitError is printed as one line on stderr with exit code 1; a FlagError names the flag
that was wrong and exits 2, like any other usage error. Anything else is a bug and shows a
traceback only with MESHKIT_DEBUG=1.
"""

from __future__ import annotations


class MeshkitError(Exception):
    """A failure the user can act on; the message says what and where."""

    exit_code = 1


class FlagError(MeshkitError):
    """A command-line argument that cannot be used."""

    exit_code = 2

    def __init__(self, flag: str, value: str, reason: str) -> None:
        self.flag = flag
        self.value = value
        self.reason = reason
        super().__init__(f"invalid value {value!r} for {flag}: {reason}")

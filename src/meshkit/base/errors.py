"""Errors a user can cause, and how the CLI reports them.

A MeshkitError is printed as one line on stderr with exit code 1; an InvalidValue (a value that
does not fit its grammar) and its CLI form FlagError name the flag or directive that was wrong
and exit 2, like any other usage error. Anything else is a bug and shows a
traceback only with MESHKIT_DEBUG=1.
"""

from __future__ import annotations

import json


def quote(text: str) -> str:
    """Go's %q for the texts users type: double quotes, control characters escaped."""
    return json.dumps(text, ensure_ascii=False)


class MeshkitError(Exception):
    """A failure the user can act on; the message says what and where."""

    exit_code = 1


class InvalidValue(MeshkitError, ValueError):
    """A value that does not fit its grammar, named by the flag, directive or field it came from.

    The grammars of the base layer (durations, host:port, --publish) raise it; a caller that
    knows better where the value came from re-raises it with its own name (see `named`).
    """

    exit_code = 2

    def __init__(self, name: str, value: str, reason: str, *, what: str = "") -> None:
        self.name = name
        self.value = value
        self.reason = reason
        self.what = what
        # A value with a grammar of its own is named by it, in Go's quoting: the form Docker
        # prints (`invalid duration "5" for --grace-period: ...`).
        shown = f"{what} {quote(value)}" if what else f"value {value!r}"
        where = f" for {name}" if name else ""
        super().__init__(f"invalid {shown}{where}: {reason}")

    @property
    def flag(self) -> str:
        return self.name

    def named(self, name: str) -> InvalidValue:
        """The same error, said of `name` (a flag or directive) instead."""
        return type(self)(name, self.value, self.reason, what=self.what)


class FlagError(InvalidValue):
    """A command-line argument that cannot be used."""

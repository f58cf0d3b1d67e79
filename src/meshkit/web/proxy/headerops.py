"""The header_upstream / header_downstream rules of a proxy block, compiled, applied as Caddy
v1 applies them (its mutateHeadersByRules): first the plain rules in the order written
(`NAME VALUE` sets, `+NAME VALUE` adds, `-NAME` removes; a value whose placeholders render to
nothing is not set or added), then the replacements (`NAME REGEX REPLACEMENT`): the field's
value gets every match of REGEX replaced, with Go's `$1`, `${1}`, `$name`, `${name}` and `$$`
expanding in REPLACEMENT (after its placeholders are rendered); a field that is absent, or a
replacement that renders to nothing, is left alone.

Placeholders in header_downstream may name the upstream's response fields: `{<Name}`.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from meshkit.web.message import Headers, Request, Response
from meshkit.web.placeholders import Template, compile_template
from meshkit.web.proxy.rules import HeaderOp

__all__ = ["HeaderOps", "compile_regex", "go_expand"]

_GO_REF = re.compile(r"\$(?:\{(\w+)\}|(\w+)|(\$))")


def compile_regex(text: str) -> re.Pattern[str]:
    """A Go (RE2) regular expression as Python's re: the syntax the two share (RE2's `\\z`
    is re's `\\Z`). Raises re.error."""
    return re.compile(text.replace(r"\z", r"\Z"))


def go_expand(template: str, match: re.Match[str]) -> str:
    """Go's Regexp.Expand: `$1`/`${1}` a group by number, `$name`/`${name}` by name (the
    longest run of letters, digits and `_`, so `$1x` is the group named `1x`), `$$` a `$`;
    a group that does not exist or did not match gives nothing."""

    def one(m: re.Match[str]) -> str:
        if m.group(3):
            return "$"
        name = m.group(1) or m.group(2)
        try:
            value = match.group(int(name)) if name.isdigit() else match.group(name)
        except IndexError:  # no such group
            return ""
        return value or ""

    return _GO_REF.sub(one, template)


class HeaderOps:
    """Compiled header_upstream or header_downstream rules."""

    __slots__ = ("plain", "replacements")

    def __init__(self, ops: list[HeaderOp]) -> None:
        self.plain: list[tuple[str, str, Template]] = []
        self.replacements: list[tuple[str, re.Pattern[str], Template]] = []
        for o in ops:
            if o.op == "replace":
                self.replacements.append(
                    (o.name, compile_regex(o.regex), compile_template(o.value))
                )
            else:
                self.plain.append((o.op, o.name, compile_template(o.value)))

    def apply(self, headers: Headers, request: Request, response: Response | None = None) -> None:
        """Change `headers` (the request's going upstream, or the response's going back, in
        which case `response` is the upstream's answer that `{<Name}` reads)."""
        for op, name, value in self.plain:
            if op == "del":
                headers.remove(name)
                continue
            text = value.render(request, response)
            if not text:
                continue
            if op == "add":
                headers.add(name, text)
            else:
                headers.set(name, text)
        for name, regex, to in self.replacements:
            original = headers.get(name)
            replacement = to.render(request, response)
            if original and replacement:
                headers.set(name, regex.sub(_expander(replacement), original))


def _expander(template: str) -> Callable[[re.Match[str]], str]:
    return lambda m: go_expand(template, m)

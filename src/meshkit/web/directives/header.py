"""header: set, add or remove response header fields (Caddy v1).

    header PATH NAME VALUE          # set NAME (replacing what the response had)
    header PATH NAME                # set NAME to an empty value (as v1)
    header PATH +NAME VALUE         # add a field, keeping the others
    header PATH -NAME               # remove NAME
    header PATH {
        NAME VALUE
        +NAME VALUE
        -NAME
    }

PATH is a base path (plain prefix); every matching rule applies, in file order. Values may
hold placeholders, request ({host}, {>Origin}...) and response ({<Content-Type}). The changes
are made to the response on its way out, so they win over what the inner handlers set
(Caddy v1 set fields before the inner handlers ran and let them be overwritten).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from meshkit.web.caddyfile.tokens import Dispenser
from meshkit.web.directives import register
from meshkit.web.message import Handler, HandlerResult, Request, Response, then
from meshkit.web.paths import clamp_path
from meshkit.web.placeholders import Template, compile_template
from meshkit.web.site import Site


@dataclass
class HeaderOp:
    name: str  # with its + or - prefix, as written
    value: str = ""


@dataclass
class HeaderRule:
    path: str
    headers: list[HeaderOp] = field(default_factory=list)


@dataclass
class HeaderConfig:
    rules: list[HeaderRule] = field(default_factory=list)

    @property
    def keeps_static(self) -> bool:
        """Values rendered from the request head alone (or literal) leave a response a
        function of the head: the site may still answer from remembered responses
        (meshkit.web.router.site_is_static)."""
        return all(
            compile_template(op.value).head_only for rule in self.rules for op in rule.headers
        )


def _op(d: Dispenser, name: str, values: list[str]) -> HeaderOp:
    if name.startswith("-"):
        if len(name) < 2:
            raise d.err("header -NAME needs a field name")
        if values:
            raise d.err(f"header {name} removes a field and takes no value")
        return HeaderOp(name)
    bare = name[1:] if name.startswith("+") else name
    if not bare:
        raise d.err("header +NAME needs a field name")
    if len(values) > 1:
        raise d.err(f"header {name} takes one value (quote a value with spaces)")
    if any(ch in bare for ch in " \t:\r\n"):
        raise d.err(f"invalid header field name {bare!r}")
    # no value: the field is sent with an empty value, as v1 did
    return HeaderOp(name, values[0] if values else "")


def parse(d: Dispenser, site: Site) -> HeaderConfig:
    config = HeaderConfig()
    by_path: dict[str, HeaderRule] = {}
    while d.next():
        args = d.remaining_args()
        if not args:
            raise d.arg_err()
        path = args[0]
        rule = by_path.get(path)
        if rule is None:
            rule = by_path[path] = HeaderRule(path)
            config.rules.append(rule)
        had_block = False
        for _ in d.block():
            had_block = True
            name = d.val()
            rule.headers.append(_op(d, name, d.remaining_args()))
        if len(args) > 1:
            if had_block:
                raise d.err("header takes either NAME VALUE or a block, not both")
            rule.headers.append(_op(d, args[1], args[2:]))
        elif not had_block:
            raise d.arg_err()
    return config


class _Op:
    """One operation compiled at load time (as nginx compiles add_header): its kind, the
    field name, and the value as a literal (`static`) or a template to render."""

    __slots__ = ("kind", "name", "static", "value")

    def __init__(self, op: HeaderOp) -> None:
        if op.name[0] in "+-":
            self.kind, self.name = op.name[0], op.name[1:]
        else:
            self.kind, self.name = "=", op.name
        if self.kind == "-" and self.name.lower() == "server":
            # the server adds Server: meshkit to responses without one; an empty value is
            # its sign to send none
            self.kind, self.name = "=", "Server"
            op = HeaderOp(op.name, "")
        self.value: Template = compile_template(op.value)
        self.static: str | None = self.value.static


def _apply(ops: list[_Op], request: Request, response: Response) -> Response:
    headers = response.headers
    for op in ops:
        kind = op.kind
        if kind == "-":
            headers.remove(op.name)
            continue
        value = op.static
        if value is None:
            value = op.value.render(request, response)
        if kind == "+":
            headers.add(op.name, value)
        else:
            headers.set(op.name, value)
    return response


def build(config: HeaderConfig, next: Handler, site: Site) -> Handler:
    rules = [(clamp_path(r.path), [_Op(op) for op in r.headers]) for r in config.rules]
    # the rules every path matches ("/"), in file order, when they are all there is: no
    # per-request selection at all
    everywhere = [op for _, ops in rules for op in ops] if all(b == "/" for b, _ in rules) else None

    def header_handler(request: Request) -> HandlerResult:
        ops = everywhere
        if ops is None:
            path = request.path
            ops = [op for base, rule_ops in rules if path.startswith(base) for op in rule_ops]
            if not ops:
                return next(request)
        result = next(request)
        if type(result) is Response:
            return _apply(ops, request, result)
        return then(result, lambda response: _apply(ops, request, response))

    return header_handler


register("header", parse, build)

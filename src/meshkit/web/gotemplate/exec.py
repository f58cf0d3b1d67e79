"""Executing parsed Go templates: walk the tree with dot, variables and the functions.

Sans-IO: data goes in, text comes out. Every node walked and every range iteration is a
step; a template that needs more than `max_steps`, nests `{{template}}` calls deeper than
`max_depth` or writes more than `max_output` characters fails with a TemplateError instead
of running on (a template that loops or recurses forever must not hang a server).

Values: see meshkit.web.gotemplate.gofmt. Fields `.Name` look up map keys in dicts and, on
other objects, attributes whose name starts with an upper-case letter (Go's exported names;
nothing else of a Python object is reachable); a callable attribute is a method, called
with the command's arguments.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from meshkit.web.gotemplate import nodes as n
from meshkit.web.gotemplate.funcs import BUILTINS, FuncError, truth
from meshkit.web.gotemplate.gofmt import NO_VALUE, go_str, go_type, sort_keys
from meshkit.web.gotemplate.lexer import line_col
from meshkit.web.gotemplate.parser import TemplateError, parse


@dataclass(frozen=True)
class Limits:
    max_steps: int = 1_000_000
    max_depth: int = 64  # nested {{template}} calls
    max_output: int = 32 * 1024 * 1024  # characters


class _Break(Exception):
    pass


class _Continue(Exception):
    pass


class _Fail(Exception):
    """An execution error still to be given its location."""

    def __init__(self, message: str, node: n.Node | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.node = node


_SIGS: dict[int, inspect.Signature | None] = {}
_MISSING = object()


def _check_arity(name: str, fn: Callable[..., Any], args: list[Any]) -> None:
    key = id(getattr(fn, "__func__", fn))
    if key not in _SIGS:
        try:
            _SIGS[key] = inspect.signature(fn)
        except (TypeError, ValueError):
            _SIGS[key] = None
    sig = _SIGS[key]
    if sig is None:
        return
    try:
        sig.bind(*args)
    except TypeError:
        params = [p for p in sig.parameters.values() if p.kind is not p.VAR_POSITIONAL]
        variadic = len(params) != len(sig.parameters)
        want = f"at least {len(params)}" if variadic else str(len(params))
        raise _Fail(f"wrong number of args for {name}: want {want} got {len(args)}") from None


class Template:
    """A set of named templates sharing functions and delimiters (Go's *template.Template
    with its associated templates)."""

    def __init__(
        self,
        name: str,
        funcs: Mapping[str, Callable[..., Any]] | None = None,
        left: str = "{{",
        right: str = "}}",
        limits: Limits | None = None,
    ) -> None:
        self.name = name
        self.funcs: dict[str, Callable[..., Any]] = dict(BUILTINS)
        if funcs:
            self.funcs.update(funcs)
        self.left = left or "{{"
        self.right = right or "}}"
        self.limits = limits or Limits()
        self.trees: dict[str, n.Tree] = {}

    def parse(self, text: str, name: str | None = None, parse_name: str | None = None) -> Template:
        """Add the templates `text` defines (itself under `name`, default this set's name).
        Raises TemplateError."""
        trees = parse(name or self.name, text, self.funcs, self.left, self.right, parse_name)
        for tname, tree in trees.items():
            old = self.trees.get(tname)
            if old is not None and _empty(tree.root) and not _empty(old.root):
                continue
            self.trees[tname] = tree
        return self

    def lookup(self, name: str) -> n.Tree | None:
        return self.trees.get(name)

    def execute(self, data: Any, name: str | None = None) -> str:
        """Run template `name` (default: this set's own) with dot = data. Raises
        TemplateError."""
        tname = name or self.name
        tree = self.trees.get(tname)
        if tree is None:
            raise TemplateError(
                f'template: no template "{tname}" associated with template "{self.name}"', tname
            )
        state = _State(self, tree)
        state.run(tree, data)
        return "".join(state.out)


def _empty(node: n.ListNode) -> bool:
    return all(isinstance(x, n.Text) and not x.text.strip() for x in node.nodes)


class _State:
    def __init__(self, tmpl: Template, tree: n.Tree) -> None:
        self.tmpl = tmpl
        self.tree = tree
        self.out: list[str] = []
        self.size = 0
        self.steps = 0
        self.depth = 0
        self.vars: list[list[Any]] = []  # [name, value]
        self.node: n.Node | None = None

    # --- errors ---------------------------------------------------------------------------
    def _error(self, message: str, node: n.Node | None) -> TemplateError:
        tree = self.tree
        node = node or self.node
        if node is None:
            return TemplateError(f"template: {tree.name}: {message}", tree.parse_name)
        line, col = line_col(tree.text, node.pos)
        ctx = str(node) if not isinstance(node, (n.ListNode, n.Text, n.Branch)) else ""
        at = f" at <{ctx}>" if ctx else ""
        return TemplateError(
            f'template: {tree.parse_name}:{line}:{col}: executing "{tree.name}"{at}: {message}',
            tree.parse_name,
            line,
        )

    def run(self, tree: n.Tree, data: Any) -> None:
        self.vars = [["$", data]]
        try:
            self.walk(data, tree.root)
        except _Located as exc:
            raise exc.error from None
        except _Fail as exc:
            raise self._error(exc.message, exc.node) from None
        except RecursionError:
            raise self._error("exceeded maximum template depth", None) from None

    def step(self) -> None:
        self.steps += 1
        if self.steps > self.tmpl.limits.max_steps:
            raise _Fail(f"exceeded the limit of {self.tmpl.limits.max_steps} steps")

    def write(self, s: str) -> None:
        self.size += len(s)
        if self.size > self.tmpl.limits.max_output:
            raise _Fail(f"output larger than {self.tmpl.limits.max_output} characters")
        self.out.append(s)

    # --- statements -----------------------------------------------------------------------
    def walk(self, dot: Any, node: n.Node) -> None:
        self.step()
        self.node = node
        if isinstance(node, n.Text):
            self.write(node.text)
        elif isinstance(node, n.Action):
            val = self.eval_pipeline(dot, node.pipe)
            if not node.pipe.decl:
                self.write(self.printable(val, node))
        elif isinstance(node, n.ListNode):
            for x in node.nodes:
                self.walk(dot, x)
        elif isinstance(node, n.Branch):
            if node.kind == "range":
                self.walk_range(dot, node)
            else:
                self.walk_if_with(dot, node)
        elif isinstance(node, n.TemplateCall):
            self.walk_template(dot, node)
        elif isinstance(node, n.Break):
            raise _Break
        elif isinstance(node, n.Continue):
            raise _Continue
        else:  # pragma: no cover - the parser makes nothing else
            raise _Fail(f"unknown node: {node!r}", node)

    def printable(self, val: Any, node: n.Node) -> str:
        if callable(val) and not isinstance(val, type) and not hasattr(val, "String"):
            raise _Fail(f"can't print {node} of type func", node)
        return go_str(val)

    def walk_if_with(self, dot: Any, node: n.Branch) -> None:
        mark = len(self.vars)
        val = self.eval_pipeline(dot, node.pipe)
        if truth(val):
            self.walk(val if node.kind == "with" else dot, node.body)
        elif node.else_ is not None:
            self.walk(dot, node.else_)
        del self.vars[mark:]

    def walk_range(self, dot: Any, node: n.Branch) -> None:
        mark = len(self.vars)
        pipe = node.pipe
        val = self.eval_pipeline(dot, pipe)
        del self.vars[mark:]  # the range variables are set per item below
        items: Iterable[tuple[Any, Any]]
        if val is None or val is NO_VALUE:
            items = ()
        elif isinstance(val, dict):
            items = [(k, val[k]) for k in sort_keys(val)]
        elif isinstance(val, (list, tuple)):
            items = list(enumerate(val))
        elif isinstance(val, int) and not isinstance(val, bool):
            if len(pipe.decl) > 1:
                raise _Fail(f"can't use {val} to iterate over more than one variable", node)
            items = ((i, i) for i in range(val))  # lazily: the step limit may stop it
        else:
            raise _Fail(f"range can't iterate over {go_str(val)}", node)
        empty = (isinstance(val, int) and val <= 0) or (not isinstance(val, int) and not items)
        if empty:
            if node.else_ is not None:
                self.walk(dot, node.else_)
            return
        for key, elem in items:
            self.step()
            if pipe.decl:
                if len(pipe.decl) == 1:
                    self._set_range_var(pipe, 0, elem)
                else:
                    self._set_range_var(pipe, 0, key)
                    self._set_range_var(pipe, 1, elem)
            try:
                self.walk(elem, node.body)
            except _Continue:
                pass
            except _Break:
                break
            finally:
                del self.vars[mark + (0 if pipe.is_assign else len(pipe.decl)) :]
        del self.vars[mark:]

    def _set_range_var(self, pipe: n.Pipe, i: int, value: Any) -> None:
        if pipe.is_assign:
            self.assign(pipe.decl[i], value)
        else:
            self.vars.append([pipe.decl[i], value])

    def walk_template(self, dot: Any, node: n.TemplateCall) -> None:
        tree = self.tmpl.trees.get(node.name)
        if tree is None:
            raise _Fail(f'no such template "{node.name}"', node)
        new_dot = self.eval_pipeline(dot, node.pipe) if node.pipe is not None else None
        if self.depth >= self.tmpl.limits.max_depth:
            raise _Fail(f"exceeded maximum template depth ({self.tmpl.limits.max_depth})", node)
        saved = (self.tree, self.vars)
        self.tree = tree
        self.vars = [["$", new_dot]]
        self.depth += 1
        try:
            self.walk(new_dot, tree.root)
        except _Located:
            raise
        except _Fail as exc:
            # located in the called template, whose text the position refers to
            raise _Located(self._error(exc.message, exc.node)) from None
        finally:
            self.depth -= 1
            self.tree, self.vars = saved

    # --- pipelines and commands -----------------------------------------------------------
    def assign(self, name: str, value: Any) -> None:
        for v in reversed(self.vars):
            if v[0] == name:
                v[1] = value
                return
        raise _Fail(f"undefined variable: {name}")

    def var(self, name: str) -> Any:
        for v in reversed(self.vars):
            if v[0] == name:
                return v[1]
        raise _Fail(f"undefined variable: {name}")

    def eval_pipeline(self, dot: Any, pipe: n.Pipe | None) -> Any:
        if pipe is None:
            return None
        self.node = pipe
        val: Any = NO_VALUE
        final = False
        for cmd in pipe.cmds:
            val = self.eval_command(dot, cmd, val, final)
            final = True
        for name in pipe.decl:
            if pipe.is_assign:
                self.assign(name, val)
            else:
                self.vars.append([name, val])
        return val

    def eval_command(self, dot: Any, cmd: n.Command, final: Any, has_final: bool) -> Any:
        self.step()
        first = cmd.args[0]
        if isinstance(first, n.Field):
            return self.eval_field_chain(dot, dot, first, first.names, cmd.args, final, has_final)
        if isinstance(first, n.Chain):
            recv = self.eval_arg(dot, first.node)
            return self.eval_field_chain(dot, recv, first, first.names, cmd.args, final, has_final)
        if isinstance(first, n.Identifier):
            return self.eval_function(dot, first, cmd.args, final, has_final, cmd)
        if isinstance(first, n.Variable):
            value = self.var(first.names[0])
            if len(first.names) == 1:
                self._no_args(first, cmd.args, has_final)
                return value
            return self.eval_field_chain(
                dot, value, first, first.names[1:], cmd.args, final, has_final
            )
        self._no_args(first, cmd.args, has_final)
        if isinstance(first, n.Pipe):
            return self.eval_pipeline(dot, first)
        if isinstance(first, n.Nil):
            raise _Fail("nil is not a command", first)
        return self.eval_arg(dot, first)

    def _no_args(self, first: n.Node, args: list[n.Node], has_final: bool) -> None:
        if len(args) > 1 or has_final:
            raise _Fail(f"can't give argument to non-function {first}", first)

    def eval_arg(self, dot: Any, node: n.Node) -> Any:
        self.node = node
        if isinstance(node, n.Dot):
            return dot
        if isinstance(node, n.Nil):
            return None
        if isinstance(node, n.Const):
            return node.value
        if isinstance(node, n.Field):
            return self.eval_field_chain(dot, dot, node, node.names, [node], NO_VALUE, False)
        if isinstance(node, n.Variable):
            value = self.var(node.names[0])
            if len(node.names) == 1:
                return value
            return self.eval_field_chain(dot, value, node, node.names[1:], [node], NO_VALUE, False)
        if isinstance(node, n.Pipe):
            return self.eval_pipeline(dot, node)
        if isinstance(node, n.Chain):
            recv = self.eval_arg(dot, node.node)
            return self.eval_field_chain(dot, recv, node, node.names, [node], NO_VALUE, False)
        if isinstance(node, n.Identifier):
            return self.eval_function(dot, node, [node], NO_VALUE, False, node)
        raise _Fail(f"can't handle {node} as argument", node)

    def eval_field_chain(
        self,
        dot: Any,
        recv: Any,
        node: n.Node,
        names: list[str],
        args: list[n.Node],
        final: Any,
        has_final: bool,
    ) -> Any:
        for name in names[:-1]:
            recv = self.eval_field(dot, name, node, [], NO_VALUE, False, recv)
        return self.eval_field(dot, names[-1], node, args, final, has_final, recv)

    def eval_field(
        self,
        dot: Any,
        name: str,
        node: n.Node,
        args: list[n.Node],
        final: Any,
        has_final: bool,
        recv: Any,
    ) -> Any:
        has_args = len(args) > 1 or has_final
        if recv is NO_VALUE:
            return NO_VALUE
        if recv is None:
            raise _Fail(f"nil pointer evaluating interface {{}}.{name}", node)
        if isinstance(recv, dict):
            if has_args:
                raise _Fail(f"{name} is not a method but has arguments", node)
            return recv.get(name, NO_VALUE)
        attr: Any = _MISSING
        if name[:1].isupper() and not isinstance(recv, (str, int, float, list, tuple, bytes)):
            attr = getattr(recv, name, _MISSING)
        if attr is _MISSING:
            raise _Fail(f"can't evaluate field {name} in type {go_type(recv)}", node)
        # a method is called; a field holding a function is a value (for `call`), as in Go
        if inspect.ismethod(attr) or inspect.isbuiltin(attr):
            values = [self.eval_arg(dot, a) for a in args[1:]]
            if has_final:
                values.append(final)
            return self.call(name, attr, values, node)
        if has_args:
            raise _Fail(f"{name} is not a method but has arguments", node)
        return attr

    def eval_function(
        self,
        dot: Any,
        ident: n.Identifier,
        args: list[n.Node],
        final: Any,
        has_final: bool,
        where: n.Node,
    ) -> Any:
        name = ident.name
        fn = self.tmpl.funcs.get(name)
        if fn is None:
            raise _Fail(f'"{name}" is not a defined function', ident)
        if name in ("and", "or"):
            # evaluated lazily, left to right (Go 1.18+)
            operands = args[1:]
            if not operands and not has_final:
                raise _Fail(f"wrong number of args for {name}: want at least 1 got 0", ident)
            val: Any = None
            for a in operands:
                val = self.eval_arg(dot, a)
                if truth(val) == (name == "or"):
                    return val
            if has_final:
                val = final
            return val
        values = [self.eval_arg(dot, a) for a in args[1:]]
        if has_final:
            values.append(final)
        # Go names the whole command in the error (`at <index .SI 10>`)
        return self.call(name, fn, values, where)

    def call(self, name: str, fn: Callable[..., Any], values: list[Any], node: n.Node) -> Any:
        values = [None if v is NO_VALUE else v for v in values]
        _check_arity(name, fn, values)
        self.node = node
        try:
            result = fn(*values)
        except (_Fail, _Break, _Continue):
            raise
        except RecursionError:
            raise
        except FuncError as exc:
            raise _Fail(f"error calling {name}: {exc}", node) from None
        except Exception as exc:
            raise _Fail(f"error calling {name}: {exc}", node) from None
        # a value built up step by step (print $s $s in a loop) could outgrow memory long
        # before the step limit: nothing a function returns may exceed the output limit
        if isinstance(result, (str, bytes, list, tuple, dict)):
            limit = self.tmpl.limits.max_output
            if len(result) > limit:
                raise _Fail(f"error calling {name}: result larger than {limit}", node)
        return result


class _Located(_Fail):
    """An error already located in a called template: passes outer handlers unchanged."""

    def __init__(self, error: TemplateError) -> None:
        super().__init__(str(error))
        self.error = error

"""The parser of the Go `text/template` interpreter: tokens -> named Trees.

Grammar and checks as Go's text/template/parse: `define` only at the top level, `block` is a
define plus a call, `else if` / `else with` chains share one `end`, `break`/`continue` only
inside `range`, variables must be declared before use (scoped to their control structure),
and function names must be known when parsing. Errors read like Go's:
`template: NAME:LINE: message`.
"""

from __future__ import annotations

from collections.abc import Collection

from meshkit.web.gotemplate import nodes as n
from meshkit.web.gotemplate.lexer import LexError, T, Token, lex


class TemplateError(Exception):
    """A template that cannot be parsed or executed; str() is Go's `template: ...` message."""

    def __init__(self, message: str, name: str = "", line: int = 0) -> None:
        super().__init__(message)
        self.name = name  # the file / template name the error is in
        self.line = line


def parse_number(text: str) -> int | float:
    t = text.replace("_", "")
    sign = 1
    if t[:1] in "+-":
        sign = -1 if t[0] == "-" else 1
        t = t[1:]
    low = t.lower()
    try:
        if low.startswith("0x"):
            if "p" in low:
                return sign * float.fromhex(t)
            return sign * int(t[2:], 16)
        if low.startswith("0o"):
            return sign * int(t[2:], 8)
        if low.startswith("0b"):
            return sign * int(t[2:], 2)
        if any(c in low for c in ".e") or low in ("inf", "nan"):
            return sign * float(t)
        if len(t) > 1 and t.startswith("0"):
            return sign * int(t[1:], 8)
        return sign * int(t, 10)
    except ValueError:
        raise ValueError(f"illegal number syntax: {text!r}") from None


class Parser:
    def __init__(
        self,
        name: str,
        text: str,
        funcs: Collection[str],
        left: str = "{{",
        right: str = "}}",
        parse_name: str | None = None,
    ) -> None:
        self.name = name
        self.parse_name = parse_name or name
        self.text = text
        self.funcs = funcs
        try:
            self.tokens = lex(text, left, right)
        except LexError as exc:
            raise self._error_at_line(exc.line, exc.message) from None
        self.i = 0
        self.vars: list[str] = ["$"]
        self.range_depth = 0
        self.trees: dict[str, n.Tree] = {}

    # --- errors ---------------------------------------------------------------------------
    def _error_at_line(self, line: int, message: str) -> TemplateError:
        return TemplateError(
            f"template: {self.parse_name}:{line}: {message}", self.parse_name, line
        )

    def error(self, message: str, tok: Token | None = None) -> TemplateError:
        tok = tok or self.tokens[min(self.i, len(self.tokens) - 1)]
        return self._error_at_line(tok.line, message)

    # --- token stream ---------------------------------------------------------------------
    def peek(self) -> Token:
        return self.tokens[self.i]

    def next(self) -> Token:
        tok = self.tokens[self.i]
        if tok.kind is not T.EOF:
            self.i += 1
        return tok

    def peek_non_space(self) -> Token:
        while self.tokens[self.i].kind is T.SPACE:
            self.i += 1
        return self.tokens[self.i]

    def next_non_space(self) -> Token:
        self.peek_non_space()
        return self.next()

    def expect(self, kind: T, context: str) -> Token:
        tok = self.next_non_space()
        if tok.kind is not kind:
            raise self.unexpected(tok, context)
        return tok

    def unexpected(self, tok: Token, context: str) -> TemplateError:
        if tok.kind is T.EOF:
            return self.error("unexpected EOF", tok)
        shown = tok.text if tok.kind is not T.STRING else '"' + tok.text + '"'
        return self.error(f"unexpected {shown!r} in {context}".replace("'", '"', 2), tok)

    # --- top level ------------------------------------------------------------------------
    def parse(self) -> dict[str, n.Tree]:
        root = n.ListNode(0)
        while self.peek().kind is not T.EOF:
            tok = self.peek()
            if tok.kind is T.LEFT:
                save = self.i
                self.next()
                nxt = self.peek_non_space()
                if nxt.kind is T.KEYWORD and nxt.text == "define":
                    self.next()
                    self._define(tok)
                    continue
                self.i = save
            node = self._text_or_action()
            if isinstance(node, str):
                raise self.error(f"unexpected {{{{{node}}}}}", tok)
            root.nodes.append(node)
        self._add(self.name, root)
        return self.trees

    def _add(self, name: str, root: n.ListNode) -> None:
        # Go: a later empty definition does not replace a non-empty one
        old = self.trees.get(name)
        if old is not None and _is_empty(root) and not _is_empty(old.root):
            return
        self.trees[name] = n.Tree(name, self.parse_name, root, self.text)

    def _define(self, left: Token) -> None:
        name_tok = self.next_non_space()
        if name_tok.kind is not T.STRING:
            raise self.unexpected(name_tok, "define clause")
        self.expect(T.RIGHT, "define clause")
        saved_vars = self.vars
        self.vars = ["$"]
        body, end = self._list()
        if end != "end":
            raise self.error("unexpected {{else}}")
        self.vars = saved_vars
        self._add(name_tok.text, body)

    def _list(self) -> tuple[n.ListNode, str]:
        """Nodes until {{end}} or {{else}} (returned as the second value, the closing
        action consumed except for the rest of an else)."""
        start = self.peek().pos
        out = n.ListNode(start)
        while True:
            tok = self.peek()
            if tok.kind is T.EOF:
                raise self.error("unexpected EOF", tok)
            node = self._text_or_action()
            if isinstance(node, str):
                return out, node
            out.nodes.append(node)

    def _text_or_action(self) -> n.Node | str:
        tok = self.next()
        if tok.kind is T.TEXT:
            return n.Text(tok.pos, tok.text)
        if tok.kind is not T.LEFT:
            raise self.unexpected(tok, "input")
        return self._action(tok)

    # --- actions --------------------------------------------------------------------------
    def _action(self, left: Token) -> n.Node | str:
        tok = self.peek_non_space()
        if tok.kind is T.KEYWORD:
            self.next()
            kw = tok.text
            if kw == "end":
                self.expect(T.RIGHT, "end")
                return "end"
            if kw == "else":
                nxt = self.peek_non_space()
                if nxt.kind is T.KEYWORD and nxt.text in ("if", "with"):
                    return "else " + nxt.text  # the chained branch starts here
                self.expect(T.RIGHT, "else")
                return "else"
            if kw in ("if", "range", "with"):
                return self._branch(kw, tok)
            if kw == "template":
                return self._template(tok)
            if kw == "block":
                return self._block(tok)
            if kw in ("break", "continue"):
                if not self.range_depth:
                    raise self.error(f"{{{{{kw}}}}} outside {{{{range}}}}", tok)
                self.expect(T.RIGHT, kw)
                return n.Break(tok.pos) if kw == "break" else n.Continue(tok.pos)
            if kw == "define":
                raise self.error("unexpected <define> in command", tok)
        pipe = self._pipeline("command", T.RIGHT)
        return n.Action(left.pos, pipe)

    def _branch(self, kind: str, tok: Token) -> n.Branch:
        mark = len(self.vars)
        pipe = self._pipeline(kind, T.RIGHT, allow_two=kind == "range")
        if kind == "range":
            self.range_depth += 1
        body, end = self._list()
        if kind == "range":
            self.range_depth -= 1
        else_: n.ListNode | None = None
        if end.startswith("else"):
            if end in ("else if", "else with"):
                # {{else if X}} is {{else}}{{if X}}...{{end}}: one end closes both
                chained_tok = self.next_non_space()
                chained = self._branch(chained_tok.text, chained_tok)
                else_ = n.ListNode(chained.pos, [chained])
                del self.vars[mark:]
                return n.Branch(tok.pos, kind, pipe, body, else_)
            else_, end = self._list()
            if end != "end":
                raise self.error("expected end; found {{else}}")
        del self.vars[mark:]
        return n.Branch(tok.pos, kind, pipe, body, else_)

    def _template(self, tok: Token) -> n.TemplateCall:
        name_tok = self.next_non_space()
        if name_tok.kind is not T.STRING:
            raise self.unexpected(name_tok, "template clause")
        pipe: n.Pipe | None = None
        if self.peek_non_space().kind is not T.RIGHT:
            pipe = self._pipeline("template clause", T.RIGHT)
        else:
            self.next()
        return n.TemplateCall(tok.pos, name_tok.text, pipe)

    def _block(self, tok: Token) -> n.TemplateCall:
        name_tok = self.next_non_space()
        if name_tok.kind is not T.STRING:
            raise self.unexpected(name_tok, "block clause")
        pipe = self._pipeline("block clause", T.RIGHT)
        saved_vars, saved_range = self.vars, self.range_depth
        self.vars, self.range_depth = ["$"], 0
        body, end = self._list()
        if end != "end":
            raise self.error("unexpected {{else}}")
        self.vars, self.range_depth = saved_vars, saved_range
        self._add(name_tok.text, body)
        return n.TemplateCall(tok.pos, name_tok.text, pipe)

    # --- pipelines ------------------------------------------------------------------------
    def _pipeline(self, context: str, end: T, allow_two: bool = False) -> n.Pipe:
        start = self.peek_non_space()
        pipe = n.Pipe(start.pos)
        # declarations: $x := / $x = / $i, $e :=
        if start.kind is T.VARIABLE:
            save = self.i
            self.next()
            after = self.peek_non_space()
            if after.kind in (T.DECLARE, T.ASSIGN):
                self.next()
                pipe.decl = [start.text]
                pipe.is_assign = after.kind is T.ASSIGN
            elif after.kind is T.COMMA and allow_two:
                self.next()
                second = self.next_non_space()
                op = self.next_non_space()
                if second.kind is not T.VARIABLE or op.kind not in (T.DECLARE, T.ASSIGN):
                    raise self.error(f"range can only initialize variables ({context})", after)
                pipe.decl = [start.text, second.text]
                pipe.is_assign = op.kind is T.ASSIGN
            else:
                self.i = save
        for name in pipe.decl:
            if pipe.is_assign:
                if name not in self.vars:
                    raise self.error(f"undefined variable {name!r}".replace("'", '"'), start)
            else:
                self.vars.append(name)
        while True:
            tok = self.peek_non_space()
            if tok.kind is end:
                self.next()
                if not pipe.cmds:
                    raise self.error(f"missing value for {context}", tok)
                return pipe
            if tok.kind in (T.RIGHT, T.RPAREN, T.EOF) and tok.kind is not end:
                raise self.unexpected(tok, context)
            pipe.cmds.append(self._command(end))
            nxt = self.peek_non_space()
            if nxt.kind is T.PIPE:
                self.next()
                if self.peek_non_space().kind in (end, T.PIPE):
                    raise self.error("missing command after |", nxt)

    def _command(self, end: T) -> n.Command:
        cmd = n.Command(self.peek_non_space().pos)
        while True:
            self.peek_non_space()
            operand = self._operand()
            if operand is None:
                break
            cmd.args.append(operand)
            tok = self.peek()
            if tok.kind is T.SPACE:
                self.next()
                continue
            if tok.kind in (T.RIGHT, T.RPAREN, T.PIPE):
                break
            raise self.error(f"missing space? unexpected {tok.text!r} in operand", tok)
        if not cmd.args:
            raise self.error("empty command", self.peek())
        return cmd

    def _operand(self) -> n.Node | None:
        node = self._term()
        if node is None:
            return None
        if self.peek().kind is T.FIELD:
            names: list[str] = []
            while self.peek().kind is T.FIELD:
                names.append(self.next().text)
            if isinstance(node, (n.Field, n.Variable)):
                node.names.extend(names)
            elif isinstance(node, (n.Const, n.Nil)):
                raise self.error(f"unexpected . after term {str(node)!r}")
            else:
                node = n.Chain(node.pos, node, names)
        return node

    def _term(self) -> n.Node | None:
        tok = self.peek()
        k = tok.kind
        if k is T.IDENT:
            self.next()
            if tok.text not in self.funcs:
                raise self.error(f'function "{tok.text}" not defined', tok)
            return n.Identifier(tok.pos, tok.text)
        if k is T.DOT:
            self.next()
            return n.Dot(tok.pos)
        if k is T.NIL:
            self.next()
            return n.Nil(tok.pos)
        if k is T.VARIABLE:
            self.next()
            if tok.text not in self.vars:
                raise self.error(f'undefined variable "{tok.text}"', tok)
            return n.Variable(tok.pos, [tok.text])
        if k is T.FIELD:
            self.next()
            return n.Field(tok.pos, [tok.text])
        if k is T.BOOL:
            self.next()
            return n.Const(tok.pos, tok.text == "true", tok.text)
        if k is T.CHAR:
            self.next()
            return n.Const(tok.pos, int(tok.text), repr(chr(int(tok.text))))
        if k is T.NUMBER:
            self.next()
            try:
                return n.Const(tok.pos, parse_number(tok.text), tok.text)
            except ValueError as exc:
                raise self.error(str(exc), tok) from None
        if k is T.STRING:
            self.next()
            return n.Const(tok.pos, tok.text, '"' + tok.text + '"')
        if k is T.LPAREN:
            self.next()
            return self._pipeline("parenthesized pipeline", T.RPAREN)
        return None


def _is_empty(node: n.Node) -> bool:
    if isinstance(node, n.ListNode):
        return all(_is_empty(x) for x in node.nodes)
    if isinstance(node, n.Text):
        return not node.text.strip()
    return False


def parse(
    name: str,
    text: str,
    funcs: Collection[str],
    left: str = "{{",
    right: str = "}}",
    parse_name: str | None = None,
) -> dict[str, n.Tree]:
    """The trees defined by `text`: `name` itself and every {{define}}/{{block}}."""
    return Parser(name, text, funcs, left, right, parse_name).parse()

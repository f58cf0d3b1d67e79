"""Caddyfile tokens, the Dispenser directives read their arguments through, and parse errors.

The lexer (meshkit.web.caddyfile.lexer) turns text into Tokens; the parser groups them into
site blocks and, per site, into the tokens of each directive. A directive's `parse` function
gets a Dispenser over every occurrence of that directive in one site and walks it Caddy-style:

    def parse(d: Dispenser, site: Site) -> RedirConfig:
        rules = []
        while d.next():              # on the directive's name, once per occurrence
            args = d.remaining_args()  # the rest of that line
            for _ in d.block():       # each line of a { ... } block after it, if any
                name = d.val()        # first token of the block line
                more = d.remaining_args()
        ...
        raise d.arg_err()  /  raise d.err("message")   # errors carry file:line and the token
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from meshkit.base.errors import MeshkitError


@dataclass(frozen=True, slots=True)
class Token:
    file: str  # the file it came from ("Caddyfile", a path, "stdin" or "<command line>")
    line: int  # 1-based
    text: str  # quotes removed, escapes applied
    quoted: bool = False  # was written in double quotes (so `{` inside is not a brace)
    # Which import placed the token here (0: none). Tokens spliced in from a snippet keep the
    # file and lines of the snippet's definition, so file and line alone cannot tell where a
    # line ends (`import s` twice in a row gives two copies of the same lines): a change of
    # splice is a new line too. Not part of equality.
    splice: int = field(default=0, compare=False)

    def where(self) -> str:
        return f"{self.file}:{self.line}"


def same_line(cur: Token, nxt: Token) -> bool:
    """Whether `nxt` continues the line `cur` is on (a quoted token may span lines)."""
    return (
        nxt.file == cur.file
        and nxt.splice == cur.splice
        and nxt.line == cur.line + (cur.text.count("\n") if cur.quoted else 0)
    )


def _brace(tok: Token, which: str = "{}") -> bool:
    return not tok.quoted and tok.text in which and len(tok.text) == 1


class CaddyfileError(MeshkitError):
    """A Caddyfile mistake: the message names the file, the line and the token."""

    def __init__(self, file: str, line: int, message: str) -> None:
        self.file = file
        self.line = line
        self.message = message
        super().__init__(f"{file}:{line} - {message}")


class Dispenser:
    """A cursor over a directive's tokens (all occurrences of it in one site)."""

    def __init__(self, tokens: list[Token], name: str = "") -> None:
        self.tokens = tokens
        self.name = name or (tokens[0].text if tokens else "")
        self.cursor = -1
        self._option = -1  # where block() last stopped on an option name

    # --- moving -------------------------------------------------------------------------
    def next(self) -> bool:
        """Move to the next token, whatever line it is on."""
        if self.cursor < len(self.tokens) - 1:
            self.cursor += 1
            return True
        return False

    def next_arg(self) -> bool:
        """Move to the next token only if it is on the same line and is an argument (not an
        unquoted brace); False at the end of the line. Caddy v1's NextArg also stepped onto
        braces, which made `level }` read `}` as the level: here a brace is never an argument."""
        if self.cursor < 0:
            return self.next()
        if self.cursor >= len(self.tokens) - 1:
            return False
        cur, nxt = self.tokens[self.cursor], self.tokens[self.cursor + 1]
        if not same_line(cur, nxt) or _brace(nxt):
            return False
        self.cursor += 1
        return True

    def next_line(self) -> bool:
        """Move to the next token only if it is on a later line."""
        if self.cursor < 0:
            return self.next()
        if self.cursor >= len(self.tokens) - 1:
            return False
        cur, nxt = self.tokens[self.cursor], self.tokens[self.cursor + 1]
        if not same_line(cur, nxt):
            self.cursor += 1
            return True
        return False

    def block(self) -> Iterator[None]:
        """Caddy v1's NextBlock as an iterator: when a `{` follows on the current line, enter
        the block and stop on each option name until the matching `}`. A block is a stream
        of tokens, not of lines: `gzip { level 9 }` is one block, a `}` may end an option's
        line, and whatever an option leaves unread on its line is read as the next option
        (`health_check / health_check_port 9002` is two options; `max_fails 2 3` reads `3`
        as an option, which is then unknown). No block, or `{ }`: no iterations."""
        if not self._open_block():
            return
        while self.next():
            tok = self.tokens[self.cursor]
            if tok.text == "}" and not tok.quoted:
                return
            if tok.text == "{" and not tok.quoted:
                raise self.err("unexpected '{': blocks cannot be nested here")
            self._option = self.cursor
            yield
        raise self.eof_err()

    def _open_block(self) -> bool:
        if self.cursor >= len(self.tokens) - 1:
            return False
        cur, nxt = self.tokens[self.cursor], self.tokens[self.cursor + 1]
        if not _brace(nxt, "{") or not same_line(cur, nxt):
            return False
        self.cursor += 1
        return True

    # --- reading ------------------------------------------------------------------------
    def val(self) -> str:
        if 0 <= self.cursor < len(self.tokens):
            return self.tokens[self.cursor].text
        return ""

    def token(self) -> Token:
        if 0 <= self.cursor < len(self.tokens):
            return self.tokens[self.cursor]
        return self.tokens[-1] if self.tokens else Token("Caddyfile", 0, "")

    def line(self) -> int:
        return self.token().line

    def args(self, count: int) -> list[str] | None:
        """Exactly `count` more arguments on this line, or None (cursor left where it was)."""
        start = self.cursor
        out: list[str] = []
        for _ in range(count):
            if not self.next_arg():
                self.cursor = start
                return None
            out.append(self.val())
        return out

    def arg(self) -> str:
        """The next argument on this line (Caddy's `if !NextArg() { return ArgErr() }`)."""
        if not self.next_arg():
            raise self.arg_err()
        return self.val()

    def remaining_args(self) -> list[str]:
        """Every argument left on this line, up to a brace or the end of the line."""
        out: list[str] = []
        while self.next_arg():
            out.append(self.val())
        return out

    # --- errors -------------------------------------------------------------------------
    def err(self, message: str) -> CaddyfileError:
        tok = self.token()
        return CaddyfileError(tok.file, tok.line, message + self._leftover_hint())

    def _leftover_hint(self) -> str:
        """When the current token is an option name that an earlier option left unread on
        its line, say so: `max_fails 2 3` fails on `3`, and the reason is `max_fails`."""
        i = self.cursor
        if i != self._option or i <= 0:
            return ""
        prev = self.tokens[i - 1]
        if _brace(prev) or not same_line(prev, self.tokens[i]):
            return ""
        j = i - 1
        while (
            j > 0
            and same_line(self.tokens[j - 1], self.tokens[j])
            and not _brace(self.tokens[j - 1])
        ):
            j -= 1
        before = " ".join(t.text for t in self.tokens[j:i])
        return f" (read as an option: it follows {before!r} on the same line)"

    def arg_err(self) -> CaddyfileError:
        """Wrong number or shape of arguments at the current token."""
        tok = self.token()
        if tok.text == "{" and not tok.quoted:
            return CaddyfileError(tok.file, tok.line, "unexpected '{'")
        return CaddyfileError(
            tok.file,
            tok.line,
            f"wrong argument count or unexpected line ending after {tok.text!r}"
            + self._leftover_hint(),
        )

    def syntax_err(self, expected: str) -> CaddyfileError:
        tok = self.token()
        return CaddyfileError(
            tok.file,
            tok.line,
            f"syntax error: unexpected token {tok.text!r}, expecting {expected!r}",
        )

    def eof_err(self) -> CaddyfileError:
        tok = self.token()
        return CaddyfileError(tok.file, tok.line, "unexpected end of file (missing '}'?)")

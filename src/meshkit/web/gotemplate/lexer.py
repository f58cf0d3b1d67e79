"""The lexer of the Go `text/template` interpreter: template text -> tokens.

Outside actions everything is one TEXT token; an action `{{ ... }}` gives LEFT, its tokens,
RIGHT. Trim markers (`{{- ` and ` -}}`) strip the white space of the neighbouring text as Go
does, and comments (`{{/* ... */}}`) vanish. Positions are (offset, line, col) with Go's
conventions: line 1-based, col the 0-based character offset within the line.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, auto


class T(Enum):
    TEXT = auto()
    LEFT = auto()
    RIGHT = auto()
    SPACE = auto()
    IDENT = auto()  # a function name
    KEYWORD = auto()  # if, else, end, range, with, define, template, block, break, continue
    FIELD = auto()  # .Name (text without the dot)
    VARIABLE = auto()  # $ or $name (text with the dollar)
    DOT = auto()
    STRING = auto()  # value already unquoted
    CHAR = auto()  # value: the rune's code point as text
    NUMBER = auto()
    BOOL = auto()
    NIL = auto()
    PIPE = auto()
    LPAREN = auto()
    RPAREN = auto()
    DECLARE = auto()  # :=
    ASSIGN = auto()  # =
    COMMA = auto()
    EOF = auto()


KEYWORDS = frozenset(
    {"if", "else", "end", "range", "with", "define", "template", "block", "break", "continue"}
)
_SPACE = " \t\r\n"
_TRIM = " \t\r\n"


@dataclass(frozen=True, slots=True)
class Token:
    kind: T
    text: str
    pos: int  # offset in the template text
    line: int


class LexError(Exception):
    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


def _is_alnum(c: str) -> bool:
    return c == "_" or c.isalnum()


_ESCAPES = {
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "v": "\v",
    "\\": "\\",
    "'": "'",
    '"': '"',
}


def unquote(body: str, quote: str) -> str:
    """Go's interpreted string / rune literal body (without quotes) -> its value."""
    out: list[str] = []
    i = 0
    n = len(body)
    while i < n:
        c = body[i]
        if c != "\\":
            out.append(c)
            i += 1
            continue
        if i + 1 >= n:
            raise ValueError("escape sequence not terminated")
        e = body[i + 1]
        if e in _ESCAPES:
            if (e == "'" and quote == '"') or (e == '"' and quote == "'"):
                raise ValueError("unknown escape sequence")
            out.append(_ESCAPES[e])
            i += 2
        elif e in "xuU":
            width = {"x": 2, "u": 4, "U": 8}[e]
            digits = body[i + 2 : i + 2 + width]
            if len(digits) != width or any(d not in "0123456789abcdefABCDEF" for d in digits):
                raise ValueError("invalid escape sequence")
            out.append(chr(int(digits, 16)))
            i += 2 + width
        elif e in "01234567":
            digits = body[i + 1 : i + 4]
            if len(digits) != 3 or any(d not in "01234567" for d in digits):
                raise ValueError("invalid octal escape")
            out.append(chr(int(digits, 8)))
            i += 4
        else:
            raise ValueError("unknown escape sequence")
    return "".join(out)


class Lexer:
    def __init__(self, text: str, left: str = "{{", right: str = "}}") -> None:
        self.text = text
        self.left = left or "{{"
        self.right = right or "}}"
        self.tokens: list[Token] = []
        self.line = 1
        self.paren = 0

    def _emit(self, kind: T, text: str, pos: int) -> None:
        self.tokens.append(Token(kind, text, pos, self.line))

    def _lines(self, s: str) -> None:
        self.line += s.count("\n")

    def run(self) -> list[Token]:
        text, left, _right = self.text, self.left, self.right
        i = 0
        n = len(text)
        trim_next = False
        while i < n:
            j = text.find(left, i)
            end = n if j < 0 else j
            chunk = text[i:end]
            start = i
            if trim_next:
                stripped = chunk.lstrip(_TRIM)
                self._lines(chunk[: len(chunk) - len(stripped)])
                start += len(chunk) - len(stripped)
                chunk = stripped
                trim_next = False
            if j < 0:
                if chunk:
                    self._emit(T.TEXT, chunk, start)
                    self._lines(chunk)
                break
            after = j + len(left)
            trim_left = text.startswith("-", after) and after + 1 < n and text[after + 1] in _SPACE
            if trim_left:
                chunk = chunk.rstrip(_TRIM)
            if chunk:
                self._emit(T.TEXT, chunk, start)
            self._lines(text[start:j])
            i = after + (2 if trim_left else 0)
            i, trim_next = self._action(j, i)
        self._emit(T.EOF, "", n)
        return self.tokens

    def _at_right(self, i: int) -> tuple[bool, bool, int]:
        """Is `i` at the right delimiter (optionally ` -}}`)? (found, trim, index after)."""
        text, right = self.text, self.right
        if text.startswith(right, i):
            return True, False, i + len(right)
        if (
            text.startswith("-", i)
            and text.startswith(right, i + 1)
            and i > 0
            and text[i - 1] in _SPACE
        ):
            return True, True, i + 1 + len(right)
        return False, False, i

    def _action(self, left_pos: int, i: int) -> tuple[int, bool]:
        text = self.text
        n = len(text)
        # a comment: {{/* ... */}} right after the delimiter (and trim marker), closed by
        # `*/` right before the closing delimiter (or ` -}}`)
        if text.startswith("/*", i):
            end = text.find("*/", i + 2)
            if end < 0:
                raise LexError(self.line, "unclosed comment")
            self._lines(text[i:end])
            j = end + 2
            if text.startswith(self.right, j):
                return j + len(self.right), False
            if text[j : j + 1] in (" ", "\t", "\r", "\n") and text.startswith(
                "-" + self.right, j + 1
            ):
                return j + 2 + len(self.right), True
            raise LexError(self.line, "comment ends before closing delimiter")
        self._emit(T.LEFT, self.left, left_pos)
        self.paren = 0
        while True:
            if i >= n:
                raise LexError(self.line, "unclosed action")
            found, trim, after = self._at_right(i)
            if found:
                if self.paren:
                    raise LexError(self.line, "unclosed left paren")
                self._emit(T.RIGHT, self.right, i)
                return after, trim
            c = text[i]
            if c in _SPACE:
                j = i
                while j < n and text[j] in _SPACE:
                    j += 1
                # a space before ` -}}` belongs to the trim marker
                self._emit(T.SPACE, text[i:j], i)
                self._lines(text[i:j])
                i = j
            elif c == "=":
                self._emit(T.ASSIGN, "=", i)
                i += 1
            elif c == ":":
                if not text.startswith(":=", i):
                    raise LexError(self.line, "expected :=")
                self._emit(T.DECLARE, ":=", i)
                i += 2
            elif c == "|":
                self._emit(T.PIPE, "|", i)
                i += 1
            elif c == ",":
                self._emit(T.COMMA, ",", i)
                i += 1
            elif c == "(":
                self.paren += 1
                self._emit(T.LPAREN, "(", i)
                i += 1
            elif c == ")":
                self.paren -= 1
                if self.paren < 0:
                    raise LexError(self.line, "unexpected right paren")
                self._emit(T.RPAREN, ")", i)
                i += 1
            elif c == '"':
                i = self._quote(i)
            elif c == "`":
                end = text.find("`", i + 1)
                if end < 0:
                    raise LexError(self.line, "unterminated raw quoted string")
                self._emit(T.STRING, text[i + 1 : end], i)
                self._lines(text[i:end])
                i = end + 1
            elif c == "'":
                i = self._char(i)
            elif c == "$":
                j = i + 1
                while j < n and _is_alnum(text[j]):
                    j += 1
                self._emit(T.VARIABLE, text[i:j], i)
                i = j
            elif c == ".":
                if i + 1 < n and text[i + 1].isdigit():
                    i = self._number(i)
                    continue
                j = i + 1
                while j < n and _is_alnum(text[j]):
                    j += 1
                if j == i + 1:
                    self._emit(T.DOT, ".", i)
                else:
                    self._emit(T.FIELD, text[i + 1 : j], i)
                i = j
            elif c.isdigit() or (
                c in "+-" and i + 1 < n and (text[i + 1].isdigit() or text[i + 1] == ".")
            ):
                i = self._number(i)
            elif _is_alnum(c):
                j = i
                while j < n and _is_alnum(text[j]):
                    j += 1
                word = text[i:j]
                if word in KEYWORDS:
                    self._emit(T.KEYWORD, word, i)
                elif word in ("true", "false"):
                    self._emit(T.BOOL, word, i)
                elif word == "nil":
                    self._emit(T.NIL, word, i)
                else:
                    self._emit(T.IDENT, word, i)
                i = j
            else:
                raise LexError(self.line, f"unrecognized character in action: {c!r}")

    def _quote(self, i: int) -> int:
        text = self.text
        j = i + 1
        while True:
            if j >= len(text) or text[j] == "\n":
                raise LexError(self.line, "unterminated quoted string")
            if text[j] == "\\":
                j += 2
                continue
            if text[j] == '"':
                break
            j += 1
        try:
            value = unquote(text[i + 1 : j], '"')
        except ValueError as exc:
            raise LexError(self.line, f"{exc}: {text[i : j + 1]}") from None
        self._emit(T.STRING, value, i)
        return j + 1

    def _char(self, i: int) -> int:
        text = self.text
        j = i + 1
        while j < len(text) and text[j] != "'":
            if text[j] == "\n":
                break
            j += 2 if text[j] == "\\" else 1
        if j >= len(text) or text[j] != "'":
            raise LexError(self.line, "unterminated character constant")
        try:
            value = unquote(text[i + 1 : j], "'")
        except ValueError as exc:
            raise LexError(self.line, f"{exc}: {text[i : j + 1]}") from None
        if len(value) != 1:
            raise LexError(self.line, f"malformed character constant: {text[i : j + 1]}")
        self._emit(T.CHAR, str(ord(value)), i)
        return j + 1

    def _number(self, i: int) -> int:
        text = self.text
        j = i
        if text[j] in "+-":
            j += 1
        while j < len(text) and (
            _is_alnum(text[j]) or text[j] == "." or (text[j] in "+-" and text[j - 1] in "eEpP")
        ):
            j += 1
        self._emit(T.NUMBER, text[i:j], i)
        return j


def lex(text: str, left: str = "{{", right: str = "}}") -> list[Token]:
    return Lexer(text, left, right).run()


def line_col(text: str, pos: int) -> tuple[int, int]:
    """Go's (line, col) of an offset: col counts from 0 after the last newline."""
    before = text[:pos]
    nl = before.rfind("\n")
    return before.count("\n") + 1, pos if nl < 0 else pos - nl - 1

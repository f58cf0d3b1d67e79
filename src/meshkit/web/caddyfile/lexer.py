"""Caddyfile lexer: text -> Tokens (Caddy v1's rules).

- Tokens are separated by white space; `\\r` is ignored everywhere (CRLF files read like LF).
- A token that starts with `"` runs to the closing `"` and may hold white space and newlines;
  inside it only `\\"` is an escape (a backslash before anything else stays a backslash). A
  `"` inside an unquoted token is an ordinary character.
- An unquoted `#` starts a comment to the end of the line (also in the middle of a token:
  `foo#bar` is the token `foo`).
- An unterminated quoted token is an error naming the line it starts on (Caddy v1 silently
  took the rest of the file as one token).

`quote()` and `format_lines()` write tokens back so that lexing gives the same texts again.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from meshkit.web.caddyfile.tokens import CaddyfileError, Token


def lex(text: str, file: str = "Caddyfile", *, splice: int = 0) -> list[Token]:
    tokens: list[Token] = []
    line = 1
    val: list[str] = []
    start_line = 1
    comment = False
    quoted = False
    escaped = False
    append = val.append
    for ch in text:
        if ch == "\r":
            continue
        if quoted:
            if not escaped:
                if ch == "\\":
                    escaped = True
                    continue
                if ch == '"':
                    quoted = False
                    tokens.append(Token(file, start_line, "".join(val), True, splice))
                    val.clear()
                    continue
            if ch == "\n":
                line += 1
            if escaped and ch != '"':
                append("\\")
            append(ch)
            escaped = False
            continue
        if ch.isspace():
            if val:
                tokens.append(Token(file, start_line, "".join(val), False, splice))
                val.clear()
            if ch == "\n":
                line += 1
                comment = False
            continue
        if comment:
            continue
        if ch == "#":
            comment = True
            continue
        if not val:
            start_line = line
            if ch == '"':
                quoted = True
                continue
        append(ch)
    if quoted:
        raise CaddyfileError(file, start_line, "unterminated quoted string (missing '\"')")
    if val:
        tokens.append(Token(file, start_line, "".join(val), False, splice))
    return tokens


# --- environment variables -------------------------------------------------------------

# `{$NAME}` runs to the next `}` as in v1 (so `{$PORT$}` names the unset `PORT$`)
_ENV_RE = re.compile(r"\{\$([^{}]+)\}|\{%([^{}%]+)%\}")


def expand_env(text: str, environ: Mapping[str, str]) -> str:
    """Replace `{$VAR}` and `{%VAR%}` with the variable's value ("" when unset). One pass: a
    value that itself looks like a reference is kept as it is (Caddy v1 rescanned it, and a
    variable referring to itself hung)."""
    if "{" not in text:
        return text
    return _ENV_RE.sub(lambda m: environ.get(m.group(1) or m.group(2), ""), text)


def expand_env_token(tok: Token, environ: Mapping[str, str]) -> Token:
    new = expand_env(tok.text, environ)
    if new == tok.text:
        return tok
    # a value is never syntax: a variable holding "{" is not a brace
    quoted = tok.quoted or new in ("{", "}")
    return Token(tok.file, tok.line, new, quoted, tok.splice)


# --- writing tokens back ---------------------------------------------------------------


def needs_quotes(text: str) -> bool:
    return (
        text == ""
        or text[0] == '"'
        or "#" in text
        or any(c.isspace() for c in text)
        or text in ("{", "}")
    )


def representable(text: str) -> bool:
    """Whether some spelling lexes back to exactly `text` as one token. Quoted text cannot
    hold a backslash right before a quote, nor end in a backslash."""
    if "\r" in text:
        return False
    if not needs_quotes(text):
        return True
    return '\\"' not in text and not text.endswith("\\")


def quote(text: str, force: bool = False) -> str:
    """The spelling of one token: bare when it can be, else in double quotes."""
    if not force and not needs_quotes(text):
        return text
    if "\r" in text or '\\"' in text or text.endswith("\\"):
        raise ValueError(f"a Caddyfile token cannot hold {text!r}")
    return '"' + text.replace('"', '\\"') + '"'


def format_lines(lines: Iterable[Iterable[str]]) -> str:
    """Lines of token texts -> Caddyfile text that lexes back to the same tokens."""
    return "\n".join(" ".join(quote(t) for t in line) for line in lines) + "\n"

"""Caddyfile parser: tokens -> server blocks (addresses + the tokens of each directive).

Caddy v1's grammar:

    ADDRESS[,] [ADDRESS...] [{]        several addresses: spaces or commas; a trailing comma
        DIRECTIVE ARGS... [{            continues on the next line
            SUBDIRECTIVE ARGS...         a block opens at the end of its directive's line
        }]                               (nested braces are counted)
    [}]

One site may leave out the braces; with several, each needs them. `(name) { ... }` defines a
snippet. `import FILE|GLOB|SNIPPET` may start any line (between sites, among directives, in
a directive's block): its tokens are spliced in where it stands. A relative file is found
beside the importing file; a glob holds at most one `*` and matching nothing only warns; a
missing literal file is an error; an import cycle is an error, not a hang. `{$VAR}` and
`{%VAR%}` are replaced in every token as files are read.

Files are read with meshkit.base.safefile: only regular files (a FIFO or /dev/zero is refused, not
read), at most MAX_FILE_BYTES each and MAX_TOTAL_BYTES for the Caddyfile and all its imports
together. An imported file must be UTF-8 text without control characters; the texts of
imported files are kept in ParseResult.imported so that messages can avoid repeating them
(see redact.py).

Mistakes are collected, not only the first: an unknown directive or a bad import is recorded
and parsing goes on; only broken structure (an unmatched brace) stops the file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from meshkit.base.safefile import MIB, FileReadError, describe_size, read_text_file
from meshkit.web.caddyfile.lexer import expand_env_token, lex
from meshkit.web.caddyfile.tokens import CaddyfileError, Token, same_line

MAX_IMPORT_DEPTH = 64
MAX_TOKENS = 1_000_000
# A Caddyfile is a few KiB; 1 MiB per file is generous, and caps what `import /dev/zero`-like
# mistakes (or a glob over a folder of big files) can make the parser hold.
MAX_FILE_BYTES = MIB
MAX_TOTAL_BYTES = 16 * MIB

# Control characters (other than the white space \t \n \v \f \r) mean binary data, not a
# Caddyfile (NUL-separated /proc/self/environ, key material, images).
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f]")


def binary_line(text: str) -> int | None:
    """The line of the first control character in `text`, or None for plain text."""
    m = _CONTROL.search(text)
    return None if m is None else text.count("\n", 0, m.start()) + 1


def read_caddyfile(path: str, what: str = "Caddyfile") -> str:
    """A Caddyfile's (or an imported file's) text: a regular UTF-8 text file of at most
    MAX_FILE_BYTES. Raises FileReadError."""
    text = read_text_file(path, MAX_FILE_BYTES, what)
    line = binary_line(text)
    if line is not None:
        raise FileReadError(
            path, what, f"not a Caddyfile (binary data: a control character on line {line})"
        )
    return text


# name -> None when the directive is known, else the error message for it
DirectiveCheck = Callable[[str], "str | None"]


@dataclass
class ServerBlock:
    keys: list[Token]  # the addresses, commas removed
    tokens: dict[str, list[Token]] = field(default_factory=dict)  # directive -> its tokens
    start: Token | None = None  # first token of the block, for messages


@dataclass
class ParseResult:
    blocks: list[ServerBlock] = field(default_factory=list)
    errors: list[CaddyfileError] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)  # real paths of every file read, root first
    # display name -> text of each imported file (not the root): what messages must not repeat
    imported: dict[str, str] = field(default_factory=dict)


class _Stop(Exception):
    """Structure is broken beyond recovery: stop parsing this configuration."""


def _is(tok: Token, text: str) -> bool:
    return tok.text == text and not tok.quoted


def parse_text(
    text: str,
    file: str = "Caddyfile",
    *,
    path: str | None = None,
    check_directive: DirectiveCheck | None = None,
    environ: Mapping[str, str] | None = None,
) -> ParseResult:
    """Parse a whole Caddyfile. `file` is the name used in messages; `path` is where it lives
    on disk (relative imports resolve beside it; None: the working directory)."""
    env = os.environ if environ is None else environ
    result = ParseResult()
    try:
        tokens = [expand_env_token(t, env) for t in lex(text, file)]
    except CaddyfileError as exc:
        result.errors.append(exc)
        return result
    return Parser(tokens, file, path=path, check_directive=check_directive, environ=env).run(result)


def parse_tokens(
    tokens: list[Token],
    file: str,
    *,
    path: str | None = None,
    check_directive: DirectiveCheck | None = None,
    environ: Mapping[str, str] | None = None,
) -> ParseResult:
    """Parse tokens already lexed (and env-expanded) as a Caddyfile."""
    env = os.environ if environ is None else environ
    return Parser(tokens, file, path=path, check_directive=check_directive, environ=env).run(
        ParseResult()
    )


class Parser:
    def __init__(
        self,
        tokens: list[Token],
        file: str,
        *,
        path: str | None,
        check_directive: DirectiveCheck | None,
        environ: Mapping[str, str],
    ) -> None:
        root = os.path.realpath(path) if path else None
        self.tokens = list(tokens)
        # the import chain that led to each token (real paths and "(snippet)" names)
        origin = root if root else file
        self.chains: list[tuple[str, ...]] = [(origin,)] * len(self.tokens)
        self.i = 0
        self.check = check_directive
        self.environ = environ
        # display file name -> the real folder its relative imports resolve in
        self.dirs: dict[str, str] = {file: os.path.dirname(root) if root else os.getcwd()}
        self.snippets: dict[str, list[Token]] = {}
        self.snippet_chains: dict[str, tuple[str, ...]] = {}
        self.splices = 0
        self.bytes_read = 0  # of imported files, against MAX_TOTAL_BYTES
        self.result = ParseResult()
        if root:
            self.result.files.append(root)

    # --- driver ---------------------------------------------------------------------------
    def run(self, result: ParseResult) -> ParseResult:
        result.files.extend(f for f in self.result.files if f not in result.files)
        result.imported.update(self.result.imported)
        self.result = result
        try:
            while self.i < len(self.tokens):
                self.server_block()
        except _Stop:
            pass
        return result

    def error(self, tok: Token, message: str) -> None:
        self.result.errors.append(CaddyfileError(tok.file, tok.line, message))

    def fatal(self, tok: Token, message: str) -> _Stop:
        self.error(tok, message)
        return _Stop()

    def starts_line(self, i: int) -> bool:
        return i == 0 or not same_line(self.tokens[i - 1], self.tokens[i])

    def is_import(self, i: int) -> bool:
        return _is(self.tokens[i], "import") and self.starts_line(i)

    # --- blocks ---------------------------------------------------------------------------
    def server_block(self) -> None:
        start = self.tokens[self.i]
        keys = self.addresses()
        if self.i >= len(self.tokens):
            if keys:  # a file of nothing but addresses
                self.result.blocks.append(ServerBlock(keys, {}, start))
            return
        if len(keys) == 1 and keys[0].text.startswith("(") and keys[0].text.endswith(")"):
            self.snippet(keys[0])
            return
        block = ServerBlock(keys, {}, start)
        braced = _is(self.tokens[self.i], "{")
        if braced:
            self.i += 1
        self.directives(block, braced, start)
        if keys:
            self.result.blocks.append(block)
        else:
            self.error(start, "a site block needs at least one address before '{'")

    def addresses(self) -> list[Token]:
        keys: list[Token] = []
        expecting = False
        while self.i < len(self.tokens):
            if self.is_import(self.i):
                self.do_import(self.i)
                continue
            tok = self.tokens[self.i]
            if _is(tok, "{"):
                if expecting:
                    self.error(tok, "expected another address after ',' but found '{'")
                break
            if _is(tok, "}"):
                raise self.fatal(tok, "unexpected '}': no block is open here")
            text = tok.text
            expecting = text.endswith(",")
            if text == "" and tok.quoted:
                keys.append(tok)
            for part in text.split(","):
                part = part.strip()
                if part:
                    keys.append(Token(tok.file, tok.line, part, tok.quoted, tok.splice))
            self.i += 1
            if self.i >= len(self.tokens):
                if expecting:
                    raise self.fatal(tok, f"expected another address after {text!r}")
                break
            if not expecting and not same_line(tok, self.tokens[self.i]):
                break
        return keys

    def snippet(self, key: Token) -> None:
        name = key.text[1:-1]
        if not _is(self.tokens[self.i], "{"):
            raise self.fatal(self.tokens[self.i], f"snippet {key.text} needs a {{ }} block")
        open_tok = self.tokens[self.i]
        self.i += 1
        body: list[Token] = []
        chains: list[tuple[str, ...]] = []
        nesting = 0
        while self.i < len(self.tokens):
            tok = self.tokens[self.i]
            if _is(tok, "{"):
                nesting += 1
            elif _is(tok, "}"):
                if nesting == 0:
                    self.i += 1
                    break
                nesting -= 1
            body.append(tok)
            chains.append(self.chains[self.i])
            self.i += 1
        else:
            raise self.fatal(open_tok, f"unexpected end of file: snippet {key.text} has no '}}'")
        if not name:
            self.error(key, "a snippet needs a name: (name) { ... }")
        elif name in self.snippets:
            self.error(key, f"snippet {key.text} is defined twice")
        else:
            self.snippets[name] = body
            self.snippet_chains[name] = self.chains[self.i - 1]

    def directives(self, block: ServerBlock, braced: bool, start: Token) -> None:
        while self.i < len(self.tokens):
            tok = self.tokens[self.i]
            if _is(tok, "}"):
                if braced:
                    self.i += 1
                    return
                raise self.fatal(tok, "unexpected '}': no block is open here")
            if _is(tok, "{"):
                self.error(tok, "unexpected '{': a block opens at the end of its directive's line")
                self.skip_block()
                continue
            if self.is_import(self.i):
                self.do_import(self.i)
                continue
            self.directive(block)
        if braced:
            raise self.fatal(
                self.tokens[-1] if self.tokens else start,
                f"unexpected end of file: the site block at {start.where()} has no closing '}}'",
            )

    def skip_block(self) -> None:
        nesting = 0
        while self.i < len(self.tokens):
            tok = self.tokens[self.i]
            self.i += 1
            if _is(tok, "{"):
                nesting += 1
            elif _is(tok, "}"):
                nesting -= 1
                if nesting <= 0:
                    return

    def directive(self, block: ServerBlock) -> None:
        name_tok = self.tokens[self.i]
        name = name_tok.text
        problem = self.check(name) if self.check else None
        toks = [name_tok]
        self.i += 1
        nesting = 0
        open_tok = name_tok
        while self.i < len(self.tokens):
            tok = self.tokens[self.i]
            if nesting == 0 and not same_line(self.tokens[self.i - 1], tok):
                break
            if _is(tok, "{"):
                if nesting == 0:
                    open_tok = tok
                nesting += 1
            elif _is(tok, "}"):
                if nesting == 0:  # `site { dir arg }` on one line: the site's brace
                    break
                nesting -= 1
            elif nesting > 0 and self.is_import(self.i):
                self.do_import(self.i)
                continue
            toks.append(tok)
            self.i += 1
        if nesting > 0:
            raise self.fatal(
                open_tok, f"unexpected end of file: the block of {name!r} has no closing '}}'"
            )
        if problem:
            self.error(name_tok, problem)
        else:
            block.tokens.setdefault(name, []).extend(toks)

    # --- imports --------------------------------------------------------------------------
    def do_import(self, i: int) -> None:
        """Replace `import ARG` at tokens[i] with what it names (nothing on error)."""
        imp = self.tokens[i]
        j = i + 1
        while j < len(self.tokens) and same_line(self.tokens[j - 1], self.tokens[j]):
            j += 1
        args = self.tokens[i + 1 : j]
        chain = self.chains[i]
        new: list[Token] = []
        new_chains: list[tuple[str, ...]] = []
        if len(args) != 1:
            self.error(
                imp,
                "import takes exactly one argument (a file, a glob or a snippet name), "
                f"got {len(args)}",
            )
        elif not args[0].text:
            self.error(imp, "import needs a non-empty file name or snippet name")
        elif len(chain) > MAX_IMPORT_DEPTH:
            self.error(imp, f"imports nested more than {MAX_IMPORT_DEPTH} deep")
        elif args[0].text in self.snippets:
            new, new_chains = self.import_snippet(imp, args[0].text, chain)
        else:
            new, new_chains = self.import_files(imp, args[0], chain)
        if len(self.tokens) + len(new) > MAX_TOKENS:
            self.error(imp, f"imports make the configuration longer than {MAX_TOKENS} tokens")
            new, new_chains = [], []
        self.tokens[i:j] = new
        self.chains[i:j] = new_chains

    def _splice(self, tokens: list[Token]) -> list[Token]:
        self.splices += 1
        s = self.splices
        return [Token(t.file, t.line, t.text, t.quoted, s) for t in tokens]

    def import_snippet(
        self, imp: Token, name: str, chain: tuple[str, ...]
    ) -> tuple[list[Token], list[tuple[str, ...]]]:
        key = f"({name})"
        if key in chain:
            self.error(imp, f"import cycle: snippet {key} imports itself ({_cycle(chain, key)})")
            return [], []
        body = self._splice(self.snippets[name])
        return body, [(*chain, key)] * len(body)

    def import_files(
        self, imp: Token, arg: Token, chain: tuple[str, ...]
    ) -> tuple[list[Token], list[tuple[str, ...]]]:
        pattern = arg.text
        base = self.dirs.get(imp.file) or os.getcwd()
        full = pattern if os.path.isabs(pattern) else os.path.join(base, pattern)
        if full.count("*") > 1:
            self.error(arg, f"import pattern {pattern!r} may hold at most one '*'")
            return [], []
        if "*" in full:
            matches = _glob_one_star(full)
            if not matches:
                self.result.warnings.append(
                    f"{imp.where()} - no files match the import pattern {pattern!r}"
                )
                return [], []
        elif not os.path.exists(full):
            hint = ""
            if "/" not in pattern and "." not in pattern:
                hint = " (a snippet must be defined before it is imported)"
            self.error(arg, f"file to import not found: {pattern!r}{hint}")
            return [], []
        else:
            matches = [full]
        out: list[Token] = []
        out_chains: list[tuple[str, ...]] = []
        for match in matches:
            real = os.path.realpath(match)
            if real in chain:
                self.error(arg, f"import cycle: {_cycle(chain, real)}")
                continue
            if os.path.isdir(match):
                self.error(arg, f"cannot import {match!r}: it is a folder")
                continue
            display = match
            if not os.path.isabs(pattern):
                rel = os.path.relpath(match, base)
                display = os.path.normpath(os.path.join(os.path.dirname(imp.file), rel))
            if self.bytes_read >= MAX_TOTAL_BYTES:
                self.error(
                    arg,
                    f"cannot import {pattern!r}: the imports already add up to the "
                    f"{describe_size(MAX_TOTAL_BYTES)} limit",
                )
                break
            try:
                text = read_caddyfile(match, "Caddyfile import")
            except FileReadError as exc:
                # exc.reason names no content: a non-Caddyfile is refused by kind, not quoted
                shown = pattern if "*" not in pattern else match
                self.error(arg, f"cannot import {shown!r}: {exc.reason}")
                continue
            self.bytes_read += len(text)
            # recorded before lexing, so that even lexer errors cannot quote it later
            self.result.imported[display] = text
            try:
                toks = lex(text, display)
            except CaddyfileError as exc:
                self.result.errors.append(exc)
                continue
            toks = self._splice([expand_env_token(t, self.environ) for t in toks])
            self.dirs.setdefault(display, os.path.dirname(real))
            if real not in self.result.files:
                self.result.files.append(real)
            out.extend(toks)
            out_chains.extend([(*chain, real)] * len(toks))
        return out, out_chains


def _cycle(chain: tuple[str, ...], again: str) -> str:
    start = chain.index(again) if again in chain else 0
    return " imports ".join([*chain[start:], again])


def _glob_one_star(pattern: str) -> list[str]:
    """Paths matching a pattern with exactly one `*` (which stays within one path component;
    every other character is literal, dot files included)."""
    parts = pattern.split(os.sep)
    k = next(n for n, p in enumerate(parts) if "*" in p)
    parent = os.sep.join(parts[:k]) or (os.sep if pattern.startswith(os.sep) else ".")
    before, after = parts[k].split("*")
    rest = parts[k + 1 :]
    try:
        names = sorted(os.listdir(parent))
    except OSError:
        return []
    out = []
    for name in names:
        if (
            len(name) >= len(before) + len(after)
            and name.startswith(before)
            and name.endswith(after)
        ):
            path = os.path.join(parent, name, *rest)
            if os.path.exists(path):
                out.append(path)
    return out

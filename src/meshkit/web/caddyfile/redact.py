"""Keep error messages from repeating what an imported file holds.

`import FILE` reads any file the server can read. When FILE is not a Caddyfile at all
(`import /etc/shadow`, a key file, /proc/self/environ), its first words become "addresses" or
"directives" and the errors about them would quote them: whoever can run `-validate` on a
Caddyfile of their own could read secrets through the messages. So, in every error and warning
of a configuration:

- a quoted text ('...' or "...") in an error located in an imported file is shown as '…';
- any other quoted text or bare word that is a token (or a whitespace- or comma-separated
  part of one) of an imported file is shown as '…' too.

Nothing is hidden that the main Caddyfile (or the command line) holds itself, nor directive
names and braces: the writer of the configuration knows those already, and they keep messages
such as "unknown directive 'gzipp'" readable. The file and line are always kept, so the
mistake can still be found.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Collection, Iterable

from meshkit.web.caddyfile.tokens import CaddyfileError

HIDDEN = "…"
NOTE = " (text of the imported file is not repeated here)"

# A Python repr of a str: how messages quote tokens ({tok!r}).
_QUOTED = re.compile(r"""'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*\"""")
_EDGE = "'\"()[],.:;!?"


def words_of(texts: Iterable[str]) -> set[str]:
    """Every token-like piece of some texts: whitespace-separated words, the same without
    quotes and punctuation at their ends, and their comma-separated parts (site addresses)."""
    out: set[str] = set()
    for text in texts:
        for word in text.split():
            for w in (word, word.strip(_EDGE)):
                if w:
                    out.add(w)
                    if "," in w:
                        out.update(p for p in w.split(",") if p)
    return out


class Redactor:
    def __init__(
        self,
        imported_files: Collection[str],
        imported_words: set[str],
        known_words: set[str],
    ) -> None:
        self.files = set(imported_files)  # display names of imported files
        self.secret = imported_words - known_words
        self.known = known_words

    def _hide(self, text: str, located_in_import: bool) -> bool:
        if not text or text in self.known:
            return False
        if located_in_import:
            return True  # conservative: the token an error is about comes from the import
        if text in self.secret:
            return True
        return any(w in self.secret for w in words_of([text]))

    def message(self, message: str, located_in_import: bool) -> str:
        if not self.secret and not located_in_import:
            return message
        changed = False

        def quoted(m: re.Match[str]) -> str:
            nonlocal changed
            lit = m.group(0)
            try:
                inner = ast.literal_eval(lit)
            except (ValueError, SyntaxError):
                inner = lit[1:-1]
            if isinstance(inner, str) and self._hide(inner, located_in_import):
                changed = True
                return f"'{HIDDEN}'"
            return lit

        out = _QUOTED.sub(quoted, message)
        pieces = re.split(r"(\s+)", out)
        for i, piece in enumerate(pieces):
            if not piece or piece.isspace() or HIDDEN in piece:
                continue
            bare = piece.strip(_EDGE)
            if piece in self.secret or (bare and bare in self.secret):
                pieces[i] = HIDDEN
                changed = True
        if not changed:
            return message
        return "".join(pieces) + NOTE

    def error(self, err: CaddyfileError) -> CaddyfileError:
        new = self.message(err.message, err.file in self.files)
        if new == err.message:
            return err
        return CaddyfileError(err.file, err.line, new)

"""Front matter of Markdown pages (Caddy v1's markdown/metadata), sans-IO.

    ---            +++            {
    title: x       title = "x"      "title": "x"
    ---            +++            }
    body...        body...        body...

YAML between `---` lines, TOML between `+++` lines, or a JSON object at the very start.
A page whose front matter cannot be read raises FrontMatterError naming the line of the file
where the trouble is (Caddy v1 quietly rendered such a page as plain Markdown, front matter
and all).
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from typing import Any

import yaml


class FrontMatterError(Exception):
    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"{line}: {message}")
        self.line = line
        self.message = message


@dataclass
class Page:
    meta: dict[str, Any] = field(default_factory=dict)
    body: str = ""  # the Markdown after the front matter
    kind: str = "none"  # yaml, toml, json or none


def _fenced(text: str, delim: str) -> tuple[str, str, int] | None:
    """(front matter, rest, first line of the front matter) when `text` opens with `delim`
    on a line of its own; FrontMatterError when the fence is never closed."""
    lines = text.split("\n")
    if lines[0].strip() != delim:
        return None
    for i in range(1, len(lines)):
        if lines[i].strip() == delim:
            return "\n".join(lines[1:i]) + "\n", "\n".join(lines[i + 1 :]), 2
    raise FrontMatterError(1, f"front matter opened with {delim!r} is never closed")


def _toml(text: str, first: int) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib

        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            m = re.search(r"\(at line (\d+), column (\d+)\)", str(exc))
            line = first + int(m.group(1)) - 1 if m else first
            msg = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(exc))
            raise FrontMatterError(line, f"bad TOML front matter: {msg}") from None
    raise FrontMatterError(first, "TOML front matter needs Python 3.11 or later")


def _yaml(text: str, first: int) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = first + mark.line if mark is not None else first
        problem = getattr(exc, "problem", None) or str(exc)
        raise FrontMatterError(line, f"bad YAML front matter: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise FrontMatterError(first, "YAML front matter is not a mapping of names to values")
    return {str(k): v for k, v in data.items()}


def parse_page(text: str) -> Page:
    """Split `text` into its front matter (parsed) and its Markdown body."""
    if text.startswith("\ufeff"):
        text = text[1:]
    head = text.lstrip(" \t\r\n")
    if head.startswith("{"):
        skipped = text[: len(text) - len(head)].count("\n")
        try:
            obj, end = json.JSONDecoder().raw_decode(head)
        except json.JSONDecodeError as exc:
            raise FrontMatterError(
                skipped + exc.lineno, f"bad JSON front matter: {exc.msg}"
            ) from None
        if not isinstance(obj, dict):  # pragma: no cover - raw_decode of "{" gives a dict
            raise FrontMatterError(skipped + 1, "JSON front matter is not an object")
        return Page(obj, head[end:].lstrip("\r\n"), "json")
    for delim, kind in (("+++", "toml"), ("---", "yaml")):
        fenced = _fenced(text, delim)
        if fenced is None:
            continue
        front, rest, first = fenced
        meta = _toml(front, first) if kind == "toml" else _yaml(front, first)
        return Page(meta, rest, kind)
    return Page({}, text, "none")

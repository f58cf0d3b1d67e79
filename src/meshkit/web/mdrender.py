"""Markdown to HTML for `markdown` and the templates' `.Markdown`: markdown-it-py's
CommonMark with GFM tables and strikethrough (Caddy v1 used blackfriday with tables, fenced
code and strikethrough), raw HTML passed through as blackfriday did."""

from __future__ import annotations

from markdown_it import MarkdownIt

_MD: MarkdownIt | None = None


def render_markdown(text: str) -> str:
    global _MD
    if _MD is None:
        _MD = MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"])
    html: str = _MD.render(text)
    return html

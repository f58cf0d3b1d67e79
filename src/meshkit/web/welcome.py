"""The welcome page: what `meshkit web` answers at `/` when the site has no index file and no
`browse`, instead of a bare 404 (the first thing a new user sees after typing `meshkit web`)."""

from __future__ import annotations

from html import escape

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>meshkit web is running</title>
<style>
body {{ font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 46em;
  margin: 3em auto; padding: 0 1em; line-height: 1.5; color: #222; }}
h1 {{ font-size: 1.6em; margin-bottom: .2em; }}
code, pre {{ font-family: ui-monospace, "SFMono-Regular", Menlo, monospace; font-size: .92em; }}
pre {{ background: #f4f4f4; padding: .8em 1em; border-radius: 4px; overflow-x: auto; }}
.lead {{ color: #555; margin-top: 0; }}
</style>
</head>
<body>
<h1>It works: meshkit web is running</h1>
<p class="lead">This page is shown because the folder being served has no index file yet.</p>

<h2>What is served</h2>
<p>The folder <code>{root}</code> at <code>{address}</code>.
Files in it are served as they are: <code>{address}/notes.txt</code> is
<code>{root_slash}notes.txt</code>.</p>
<p>Put an <code>index.html</code> (or one of {index_list})
in that folder and it replaces this page.</p>

<h2>Next: a Caddyfile</h2>
<p>Write a file named <code>Caddyfile</code> next to where you start <code>meshkit web</code>
(or name one with <code>-conf FILE</code>). A site address first, then one directive per line:</p>
<pre>localhost:2015

root   ./public
browse
gzip
log    ./access.log
proxy  /api 127.0.0.1:9001</pre>
<p>Several sites on one port need a block each:</p>
<pre>site-a.example:2015 {{
    root ./a
}}
site-b.example:2015 {{
    root ./b
    fastcgi / 127.0.0.1:9000 php
}}</pre>
<p>Check a Caddyfile without starting the server: <code>meshkit web -validate</code>.
The file is never served, and errors in it name the file, line and token.</p>
</body>
</html>
"""


def render_welcome(root: str, address: str, index_files: list[str] | None = None) -> bytes:
    """The welcome page for a site serving `root`, reached at `address` (e.g.
    `http://127.0.0.1:2015`)."""
    names = index_files or ["index.html"]
    index_list = ", ".join(f"<code>{escape(n)}</code>" for n in names)
    return _PAGE.format(
        root=escape(root),
        root_slash=escape(root if root.endswith("/") else root + "/"),
        address=escape(address),
        index_list=index_list,
    ).encode("utf-8")

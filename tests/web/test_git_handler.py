"""The git directive's place in the handler chain, in process: the webhook path is answered
(405/413/403/200), everything else goes on to the next handler, and each git block adds one
puller to the site's background work."""

from __future__ import annotations

import asyncio
from pathlib import Path

from meshkit.web.caddyfile.load import load_text
from meshkit.web.directives import build_chain
from meshkit.web.gitdeploy import GitPuller, github_signature
from meshkit.web.message import EmptyBody, Headers, Request, Response, resolve

SECRET = "k"


def last(request: Request) -> Response:
    return Response.text(200, "file server\n")


def chain(text: str, root: Path) -> tuple[object, list[object]]:
    config = load_text(f":80 {{\n    root {root}\n{text}\n}}\n")
    config.raise_errors()
    site = config.sites[0]
    return build_chain(site, last), list(site.background)


def call(handler: object, request: Request) -> Response:
    return asyncio.run(resolve(handler(request)))  # type: ignore[operator]


def test_without_hooks_the_chain_is_unchanged_and_pullers_are_background(tmp_path: Path) -> None:
    handler, background = chain("    git /srv/a.git a\n    git /srv/b.git b", tmp_path)
    assert handler is last
    assert [type(b) for b in background] == [GitPuller, GitPuller]
    assert [b.config.path for b in background] == [str(tmp_path / "a"), str(tmp_path / "b")]  # type: ignore[attr-defined]


def test_hook_path_answered_other_paths_passed_on(tmp_path: Path) -> None:
    handler, (puller,) = chain(
        f"    git /srv/a.git {{\n        hook /_hook {SECRET}\n    }}", tmp_path
    )
    assert isinstance(puller, GitPuller)
    assert call(handler, Request("GET", "/", "/")).body == b"file server\n"
    assert call(handler, Request("POST", "/_hook/x", "/_hook/x")).body == b"file server\n"

    r = call(handler, Request("GET", "/_hook", "/_hook"))
    assert r.status == 405 and r.headers.get("Allow") == "POST"

    body = b'{"ref": "refs/heads/main"}'
    bad = Headers([("X-GitHub-Event", "push"), ("X-Hub-Signature-256", "sha256=00")])
    r = call(handler, Request("POST", "/_hook", "/_hook", headers=bad, body=EmptyBody(body)))
    assert r.status == 403 and r.default_error
    assert puller.schedule.due is None  # nothing asked for

    good = Headers(
        [("X-GitHub-Event", "push"), ("X-Hub-Signature-256", github_signature(SECRET, body))]
    )
    r = call(handler, Request("POST", "/_hook", "/_hook", headers=good, body=EmptyBody(body)))
    assert (r.status, r.body) == (200, b"push to refs/heads/main: pulling\n")
    assert puller.schedule.due is not None  # a pull is due


def test_oversized_hook_body_is_413(tmp_path: Path) -> None:
    handler, _ = chain(f"    git /srv/a.git {{\n        hook /_hook {SECRET}\n    }}", tmp_path)
    body = EmptyBody(b"x" * 100)
    body.limit = 10  # what a `limits` directive would set
    r = call(handler, Request("POST", "/_hook", "/_hook", body=body))
    assert r.status == 413

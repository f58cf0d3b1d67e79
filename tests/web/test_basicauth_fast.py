"""basicauth's usual request (the exact `Basic <token>` of a rule with a plain password,
matched by one digest) answers as the full credential check does, for every shape."""

from __future__ import annotations

import base64

import pytest

from meshkit.web.caddyfile.load import load_text
from meshkit.web.directives import build_chain
from meshkit.web.message import Headers, Request, Response


def _chain(rules: str) -> object:
    config = load_text(f":2015\n{rules}")
    config.raise_errors()

    def last(request: Request) -> Response:
        return Response.text(200, "user=" + request.vars.get("user", "-"))

    return build_chain(config.sites[0], last)


def _basic(text: str, scheme: str = "Basic") -> str:
    return f"{scheme} " + base64.b64encode(text.encode()).decode()


@pytest.mark.parametrize(
    ("value", "status", "body"),
    [
        (_basic("alice:pw"), 200, b"user=alice"),
        (_basic("alice:pw", "basic"), 200, b"user=alice"),  # the full check's path
        ("  " + _basic("alice:pw") + " ", 200, b"user=alice"),
        (_basic("bob:other"), 200, b"user=bob"),
        (_basic("alice:other"), 401, None),
        (_basic("a:b:c"), 401, None),  # user "a" in credentials(): no such rule
        (_basic("bob:pw"), 401, None),
        ("Basic !!!", 401, None),
        (None, 401, None),
    ],
)
def test_fast_and_full_checks_agree(value: str | None, status: int, body: bytes | None) -> None:
    chain = _chain(" basicauth alice pw\n basicauth bob other\n basicauth a:b c\n")
    headers = Headers([("Authorization", value)] if value is not None else [])
    response = chain(Request("GET", "/", "/", headers=headers))  # type: ignore[operator]
    assert isinstance(response, Response)
    assert response.status == status
    if body is not None:
        assert response.body == body
    else:
        assert response.headers.get("WWW-Authenticate") == 'Basic realm="Restricted"'

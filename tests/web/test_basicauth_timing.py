"""basicauth must not tell by its timing whether a user exists (pentest finding).

No wall-clock assertions: the tests check the mechanism. An unknown user's password is checked
against a dummy entry of the same kind (and bcrypt cost) as the configured one, and every slow
check (bcrypt, APR1/MD5-crypt) runs in the executor, off the event loop.
"""

from __future__ import annotations

import asyncio
import base64
import threading
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest

from meshkit.web import htpasswd
from meshkit.web.caddyfile.load import load_text
from meshkit.web.directives import build_chain
from meshkit.web.message import EmptyBody, Handler, Headers, Request, Response, resolve


class Spy:
    """Records every htpasswd.verify: the entry's kind and whether it ran on the loop's
    thread."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, bool]] = []  # (kind, entry, on the main thread)
        self.real = htpasswd.verify

    def __call__(self, hashed: str, password: str) -> bool:
        on_main = threading.current_thread() is threading.main_thread()
        self.calls.append((htpasswd.kind(hashed), hashed, on_main))
        return self.real(hashed, password)


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> Iterator[Spy]:
    s = Spy()
    monkeypatch.setattr(htpasswd, "verify", s)
    yield s


def handler_for(tmp_path: Path, entries: str, user: str = "alice") -> Handler:
    (tmp_path / "users").write_text(entries)
    config = load_text(
        f":2015 {{\n    root {tmp_path}\n    basicauth / {user} htpasswd=users\n}}\n"
    )
    config.raise_errors()
    return build_chain(config.sites[0], lambda r: Response.text(200, "ok"))


def req(user: str, password: str) -> Request:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return Request(
        method="GET",
        uri="/",
        path="/",
        query="",
        headers=Headers([("Host", "t"), ("Authorization", f"Basic {token}")]),
        body=EmptyBody(),
        host="t",
        remote_addr="192.0.2.1",
        remote_port=1,
        server_port=2015,
    )


def answer(handler: Handler, request: Request) -> tuple[int, bool]:
    """(status, whether the handler answered later, i.e. through an awaitable)."""
    result = handler(request)
    if isinstance(result, Response):
        return result.status, False
    return asyncio.run(resolve(result)).status, True


def test_unknown_user_checks_a_dummy_apr1_entry_off_the_loop(tmp_path: Path, spy: Spy) -> None:
    handler = handler_for(tmp_path, f"alice:{htpasswd.apr1('apple')}\n")
    assert answer(handler, req("alice", "wrong")) == (401, True)
    assert [(k, main) for k, _, main in spy.calls] == [("apr1", False)]
    spy.calls.clear()
    assert answer(handler, req("mallory", "wrong")) == (401, True)
    # the same kind of work, in the same place, as for a wrong password of a real user
    assert [(k, main) for k, _, main in spy.calls] == [("apr1", False)]
    assert not spy.calls[0][1].startswith(htpasswd.apr1("apple")[:14])  # a dummy, not alice's


def test_unknown_user_checks_a_dummy_bcrypt_entry_of_the_same_cost(
    tmp_path: Path, spy: Spy
) -> None:
    hashed = bcrypt.hashpw(b"cherry", bcrypt.gensalt(5)).decode()
    handler = handler_for(tmp_path, f"alice:{hashed}\n")
    assert answer(handler, req("mallory", "cherry")) == (401, True)
    [(k, entry, main)] = spy.calls
    assert (k, main) == ("bcrypt", False)
    assert entry != hashed and entry.split("$")[2] == "05"  # cost 5, like the real one


def test_user_gone_from_the_file_is_checked_like_an_unknown_one(tmp_path: Path, spy: Spy) -> None:
    handler = handler_for(tmp_path, f"alice:{htpasswd.apr1('apple')}\n")
    (tmp_path / "users").write_text(f"bob:{htpasswd.apr1('banana')}\n")  # alice removed
    htfile = next(iter(handler.rules)).file  # type: ignore[attr-defined]
    htfile.load()
    assert answer(handler, req("alice", "apple")) == (401, True)
    assert [(k, main) for k, _, main in spy.calls] == [("apr1", False)]


def test_sha_entries_stay_inline_but_are_still_checked_for_unknown_users(
    tmp_path: Path, spy: Spy
) -> None:
    handler = handler_for(tmp_path, f"alice:{htpasswd.sha1_entry('apple')}\n")
    assert answer(handler, req("alice", "apple")) == (200, False)
    spy.calls.clear()
    assert answer(handler, req("mallory", "apple")) == (401, False)
    assert [k for k, _, _ in spy.calls] == ["sha"]


def test_good_password_still_passes(tmp_path: Path) -> None:
    handler = handler_for(tmp_path, f"alice:{htpasswd.apr1('apple')}\n")
    assert answer(handler, req("alice", "apple")) == (200, True)
    assert answer(handler, req("alice", "apple")) == (200, False)  # remembered


def test_dummy_entries_match_kind_and_never_verify() -> None:
    for entry in (
        htpasswd.apr1("x"),
        htpasswd.md5_crypt(b"x", b"saltsalt", b"$1$"),
        htpasswd.sha1_entry("x"),
        bcrypt.hashpw(b"x", bcrypt.gensalt(4)).decode().replace("$2b$", "$2y$", 1),
        "plain",
    ):
        dummy = htpasswd.dummy_for(entry)
        assert htpasswd.kind(dummy) == htpasswd.kind(entry)
        assert htpasswd.verify_dummy(entry, "x") is False
    assert htpasswd.is_slow(htpasswd.apr1("x")) and not htpasswd.is_slow("{SHA}x")

"""The sans-IO parts of the git directive: webhook verdicts (GitHub signatures, generic
secrets), the pull schedule, and the clone-or-update plan."""

from __future__ import annotations

import hashlib
import hmac
import json
from urllib.parse import urlencode

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshkit.web.gitdeploy.config import HookConfig
from meshkit.web.gitdeploy.hooks import decide, github_signature, github_signature_ok
from meshkit.web.gitdeploy.plan import (
    CheckoutFacts,
    CheckoutProblem,
    checkout_argv,
    clone_argv,
    fetch_argv,
    git_env,
    sync_kind,
)
from meshkit.web.gitdeploy.schedule import PullSchedule, RunThen, Sleep, State, Sync
from meshkit.web.message import Headers

SECRET = "It's a Secret to Everybody"
GITHUB = HookConfig("/hook", SECRET, "github")
GENERIC = HookConfig("/hook", SECRET, "generic")


def push(ref: str = "refs/heads/main") -> bytes:
    return json.dumps({"ref": ref, "after": "0" * 40}).encode()


def signed(body: bytes, event: str = "push", secret: str = SECRET, **extra: str) -> Headers:
    h = Headers(
        [
            ("Content-Type", "application/json"),
            ("X-GitHub-Event", event),
            ("X-Hub-Signature-256", github_signature(secret, body)),
        ]
    )
    for k, v in extra.items():
        h.set(k.replace("_", "-"), v)
    return h


# --- signatures ----------------------------------------------------------------------------


def test_signature_matches_githubs_documented_example() -> None:
    # the example from GitHub's "Validating webhook deliveries" page
    assert github_signature(SECRET, b"Hello, World!") == (
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    )


@given(body=st.binary(max_size=512), secret=st.text(min_size=1, max_size=40))
def test_signature_is_hmac_sha256_of_the_body(body: bytes, secret: str) -> None:
    want = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    assert github_signature(secret, body) == "sha256=" + want
    h = Headers([("X-Hub-Signature-256", "sha256=" + want)])
    assert github_signature_ok(h, body, secret)
    assert not github_signature_ok(h, body + b"x", secret)
    assert not github_signature_ok(h, body, secret + "x")


def test_legacy_sha1_signature_only_when_alone() -> None:
    body = push()
    sha1 = Headers([("X-Hub-Signature", github_signature(SECRET, body, "sha1"))])
    assert github_signature_ok(sha1, body, SECRET)
    both = Headers(
        [("X-Hub-Signature", github_signature(SECRET, body, "sha1")), ("X-Hub-Signature-256", "x")]
    )
    assert not github_signature_ok(both, body, SECRET)  # a wrong sha256 is not excused


# --- github verdicts -----------------------------------------------------------------------


def test_github_push_to_the_branch_pulls() -> None:
    body = push("refs/heads/main")
    v = decide(GITHUB, "POST", signed(body), "", body, "main")
    assert (v.status, v.pull) == (200, True)
    # the branch is not known before the first clone: any push pulls (and finds it)
    assert decide(GITHUB, "POST", signed(body), "", body, None).pull


def test_github_push_to_another_branch_or_tag_does_not_pull() -> None:
    for ref in ("refs/heads/dev", "refs/tags/v1", "refs/heads/main2"):
        body = push(ref)
        v = decide(GITHUB, "POST", signed(body), "", body, "main")
        assert (v.status, v.pull) == (200, False), ref
        assert "ignored" in v.message


def test_github_ping_and_other_events() -> None:
    body = b'{"zen": "Keep it logically awesome."}'
    v = decide(GITHUB, "POST", signed(body, "ping"), "", body, "main")
    assert (v.status, v.pull, v.message) == (200, False, "pong")
    v = decide(GITHUB, "POST", signed(body, "issues"), "", body, "main")
    assert (v.status, v.pull) == (200, False)


def test_github_bad_signature_is_403_whatever_the_event() -> None:
    body = push()
    for headers in (
        signed(body, secret="wrong"),
        Headers([("X-GitHub-Event", "push")]),  # none at all
        signed(body + b" "),  # signed another body
        signed(body, X_Hub_Signature_256="sha256=" + "0" * 64),
    ):
        v = decide(GITHUB, "POST", headers, "", body, "main")
        assert (v.status, v.pull) == (403, False)
    v = decide(GITHUB, "POST", signed(b"x", "ping", "wrong"), "", b"x", "main")
    assert v.status == 403


def test_github_form_encoded_payload() -> None:
    body = urlencode({"payload": push().decode()}).encode()
    h = signed(body)
    h.set("Content-Type", "application/x-www-form-urlencoded")
    assert decide(GITHUB, "POST", h, "", body, "main").pull


def test_github_bad_payloads_are_400() -> None:
    for body in (b"not json", b"[1, 2]", b'{"no_ref": 1}', b"\xff\xfe"):
        v = decide(GITHUB, "POST", signed(body), "", body, "main")
        assert (v.status, v.pull) == (400, False), body


@pytest.mark.parametrize("hook", [GITHUB, GENERIC])
def test_only_post(hook: HookConfig) -> None:
    for method in ("GET", "HEAD", "PUT", "DELETE"):
        v = decide(hook, method, Headers(), "", b"", "main")
        assert (v.status, v.pull) == (405, False)


# --- generic verdicts ----------------------------------------------------------------------


def test_generic_secret_in_header_or_query() -> None:
    ok = decide(GENERIC, "POST", Headers([("X-Hook-Secret", SECRET)]), "", b"", "main")
    assert (ok.status, ok.pull) == (200, True)
    query = urlencode({"secret": SECRET, "x": "1"})
    assert decide(GENERIC, "POST", Headers(), query, b"", "main").pull
    for headers, q in (
        (Headers(), ""),
        (Headers([("X-Hook-Secret", "nope")]), ""),
        (Headers(), "secret=nope"),
        (Headers(), "secret="),
        (Headers([("X-Hook-Secret", "nope")]), urlencode({"secret": SECRET})),  # header wins
    ):
        v = decide(GENERIC, "POST", headers, q, b"", "main")
        assert (v.status, v.pull) == (403, False)


# --- the schedule --------------------------------------------------------------------------


def test_schedule_first_sync_runs_then_even_without_change() -> None:
    s = PullSchedule(60, then=[["make"]], then_long=[["index"]])
    assert s.next_step(0) == Sleep(None)  # not started
    s.start(10)
    assert s.next_step(10) == Sync(first=True)
    s.sync_done(11, ok=True, changed=False)
    assert s.next_step(11) == RunThen(("make",), False)
    assert s.next_step(12) == RunThen(("index",), True)
    assert s.next_step(13) == Sleep(73)  # the interval counts from the end of the job
    assert s.next_step(72.9) == Sleep(73)
    assert s.next_step(73) == Sync(first=False)
    s.sync_done(74, ok=True, changed=False)
    assert s.next_step(74) == Sleep(134)  # nothing moved: no then
    assert s.next_step(134) == Sync(first=False)
    s.sync_done(135, ok=True, changed=True)
    assert s.next_step(135) == RunThen(("make",), False)


def test_schedule_failure_retries_at_next_interval_and_runs_nothing() -> None:
    s = PullSchedule(30, then=[["make"]])
    s.start(0)
    assert s.next_step(0) == Sync(first=True)
    s.sync_done(1, ok=False, changed=False)
    assert s.failed_in_a_row == 1
    assert s.next_step(1) == Sleep(31)
    assert s.next_step(31) == Sync(first=True)  # still no good sync
    s.sync_done(32, ok=True, changed=True)
    assert s.failed_in_a_row == 0
    assert s.next_step(32) == RunThen(("make",), False)


def test_schedule_hooks_while_idle_and_while_busy() -> None:
    s = PullSchedule(3600, then=[["make"]])
    s.start(0)
    assert s.next_step(0) == Sync(first=True)
    # hooks during a sync queue exactly one more
    assert s.request_pull(0.5) == "queued"
    assert s.request_pull(0.6) == "already queued"
    s.sync_done(1, ok=True, changed=True)
    assert s.request_pull(1.5) == "already queued"  # during `then`
    assert s.next_step(2) == RunThen(("make",), False)
    assert s.next_step(3) == Sync(first=False)  # the queued one, at once
    s.sync_done(4, ok=True, changed=False)
    assert s.next_step(4) == Sleep(3604)
    assert s.state is State.IDLE
    assert s.request_pull(100) == "now"
    assert s.request_pull(100) == "now"  # still idle until the shell asks: one sync
    assert s.next_step(100) == Sync(first=False)
    s.sync_done(101, ok=True, changed=False)
    assert s.next_step(101) == Sleep(3701)


def test_schedule_misuse_is_refused() -> None:
    s = PullSchedule(10)
    s.start(0)
    assert isinstance(s.next_step(0), Sync)
    with pytest.raises(RuntimeError):
        s.next_step(0)
    s.sync_done(0, ok=True, changed=True)
    with pytest.raises(RuntimeError):
        s.sync_done(0, ok=True, changed=True)


@given(st.lists(st.sampled_from(["hook", "tick", "ok", "fail", "change"]), max_size=60))
def test_schedule_never_runs_two_syncs_at_once(events: list[str]) -> None:
    s = PullSchedule(10, then=[["a"]], then_long=[["b"]])
    now = 0.0
    s.start(now)
    syncing = False
    for e in events:
        now += 1
        if e == "hook":
            s.request_pull(now)
        elif e == "tick" and not syncing:
            step = s.next_step(now)
            if isinstance(step, Sync):
                syncing = True
            elif isinstance(step, Sleep):
                assert step.until is not None and step.until > now
        elif e in ("ok", "fail", "change") and syncing:
            s.sync_done(now, ok=e != "fail", changed=e == "change")
            syncing = False
        assert (s.state is State.SYNCING) == syncing


# --- the plan ------------------------------------------------------------------------------


def test_sync_kind() -> None:
    repo, path = "https://h.test/site.git", "/srv/site"
    assert sync_kind(CheckoutFacts(exists=False), repo, path) == "clone"
    assert sync_kind(CheckoutFacts(exists=True, empty=True), repo, path) == "clone"
    clone = CheckoutFacts(exists=True, empty=False, is_clone=True, origin="https://h.test/site")
    assert sync_kind(clone, repo, path) == "update"
    with pytest.raises(CheckoutProblem, match=r"is a clone of https://h\.test/other\.git, not of"):
        other = CheckoutFacts(True, True, False, True, "https://h.test/other.git")
        sync_kind(other, repo, path)
    with pytest.raises(CheckoutProblem, match="without an 'origin' remote"):
        sync_kind(CheckoutFacts(True, True, False, True, None), repo, path)
    with pytest.raises(CheckoutProblem, match=r"/srv/site is not empty and is not a git clone"):
        sync_kind(CheckoutFacts(exists=True, empty=False), repo, path)
    with pytest.raises(CheckoutProblem, match="not a folder"):
        sync_kind(CheckoutFacts(exists=True, is_dir=False, empty=False), repo, path)


def test_git_command_lines() -> None:
    assert clone_argv("/r.git", "/srv/s", None) == [
        "git", "clone", "--recurse-submodules", "--", "/r.git", "/srv/s"
    ]  # fmt: skip
    assert clone_argv("/r.git", "/srv/s", "dev")[3:5] == ["--branch", "dev"]
    assert fetch_argv("main")[-1] == "+refs/heads/main:refs/remotes/origin/main"
    assert checkout_argv("main") == [
        "git",
        "checkout",
        "-f",
        "-B",
        "main",
        "refs/remotes/origin/main",
    ]


def test_git_env() -> None:
    env = git_env({"PATH": "/bin"}, None)
    assert env == {"PATH": "/bin", "GIT_TERMINAL_PROMPT": "0"}
    env = git_env({}, "/keys/deploy key")
    assert env["GIT_SSH_COMMAND"].startswith("ssh -i '/keys/deploy key' -o IdentitiesOnly=yes")

"""Webhook checks as pure functions: request facts in, a verdict (status, pull or not) out.

`github` hooks (the default):
- only POST (405 otherwise, with `Allow: POST`);
- the body must carry GitHub's signature: `X-Hub-Signature-256: sha256=<HMAC-SHA256 of the
  body keyed with the secret, hex>` (the older `X-Hub-Signature: sha1=...` is accepted when it
  is the only one sent); missing or wrong -> 403. Compared in constant time;
- `X-GitHub-Event: ping` -> 200 and no pull; `push` -> a pull when its `ref` is
  `refs/heads/<branch>` (or the branch is not known yet: the pull finds it), else 200 and no
  pull; any other event -> 200 and no pull;
- the payload may be JSON or a form with a `payload` field (GitHub's two content types).

`generic` hooks (any other sender: CI jobs, scripts, `curl`):
- only POST (405 otherwise);
- the secret in an `X-Hook-Secret` header (preferred: query strings end up in access logs) or
  in a `?secret=` query argument; missing or wrong -> 403; right -> a pull. Nothing else of
  the request is looked at.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from urllib.parse import parse_qs

from meshkit.web.gitdeploy.config import HookConfig
from meshkit.web.message import Headers

GENERIC_SECRET_HEADER = "X-Hook-Secret"
GENERIC_SECRET_QUERY = "secret"
MAX_HOOK_BODY = 25 * 1024 * 1024  # GitHub caps payloads at 25 MB


@dataclass(frozen=True)
class HookVerdict:
    status: int
    pull: bool
    message: str  # the response text, also what gets logged


def github_signature(secret: str, body: bytes, algorithm: str = "sha256") -> str:
    """The header value GitHub sends for `body`: `sha256=<hex>` (or `sha1=<hex>`)."""
    digest = hmac.new(secret.encode(), body, getattr(hashlib, algorithm)).hexdigest()
    return f"{algorithm}={digest}"


def github_signature_ok(headers: Headers, body: bytes, secret: str) -> bool:
    sent = headers.get("X-Hub-Signature-256")
    algorithm = "sha256"
    if sent is None:
        sent = headers.get("X-Hub-Signature")
        algorithm = "sha1"
    if sent is None:
        return False
    want = github_signature(secret, body, algorithm)
    return hmac.compare_digest(sent.strip().encode(), want.encode())


def push_ref(headers: Headers, body: bytes) -> str | None:
    """The `ref` of a push payload (JSON or form-encoded); None when there is none.
    Raises ValueError for a payload that is not JSON."""
    ctype = (headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
    raw = body
    if ctype == "application/x-www-form-urlencoded":
        fields = parse_qs(body.decode("utf-8", "replace"))
        raw = fields.get("payload", [""])[0].encode()
    data = json.loads(raw.decode("utf-8"))
    if not isinstance(data, dict):
        raise ValueError("the payload is not a JSON object")
    ref = data.get("ref")
    return ref if isinstance(ref, str) else None


def check_github(headers: Headers, body: bytes, secret: str, branch: str | None) -> HookVerdict:
    if not github_signature_ok(headers, body, secret):
        return HookVerdict(403, False, "missing or wrong X-Hub-Signature-256")
    event = (headers.get("X-GitHub-Event") or "").strip()
    if event == "ping":
        return HookVerdict(200, False, "pong")
    if event != "push":
        return HookVerdict(200, False, f"event {event or '(none)'!r} ignored: only push pulls")
    try:
        ref = push_ref(headers, body)
    except (ValueError, UnicodeDecodeError) as exc:
        return HookVerdict(400, False, f"push payload is not valid JSON: {exc}")
    if ref is None:
        return HookVerdict(400, False, "push payload has no 'ref'")
    if branch is not None and ref != f"refs/heads/{branch}":
        return HookVerdict(200, False, f"push to {ref} ignored: this site follows {branch}")
    return HookVerdict(200, True, f"push to {ref}: pulling")


def check_generic(headers: Headers, query: str, secret: str) -> HookVerdict:
    sent = headers.get(GENERIC_SECRET_HEADER)
    if sent is None:
        values = parse_qs(query, keep_blank_values=True).get(GENERIC_SECRET_QUERY)
        sent = values[0] if values else None
    if sent is None or not hmac.compare_digest(sent.encode(), secret.encode()):
        return HookVerdict(403, False, f"missing or wrong secret ({GENERIC_SECRET_HEADER})")
    return HookVerdict(200, True, "pulling")


def check_method(method: str) -> HookVerdict | None:
    """405 for anything but POST (decided before the body is read); None when it is POST."""
    if method != "POST":
        return HookVerdict(405, False, f"{method} not allowed: webhooks are POSTed")
    return None


def decide(
    hook: HookConfig,
    method: str,
    headers: Headers,
    query: str,
    body: bytes,
    branch: str | None,
) -> HookVerdict:
    """The whole verdict for one webhook request (`branch`: the one followed, if known)."""
    refused = check_method(method)
    if refused is not None:
        return refused
    if hook.kind == "generic":
        return check_generic(headers, query, hook.secret)
    return check_github(headers, body, hook.secret, branch)

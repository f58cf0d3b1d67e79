"""basicauth: HTTP Basic authentication (Caddy v1).

    basicauth USER PASSWORD                 # protects the whole site
    basicauth PATH USER PASSWORD
    basicauth USER PASSWORD {
        PATH                                # or `path PATH`; one per line
        realm REALM                         # default "Restricted"
    }

PASSWORD is the password itself, or `htpasswd=FILE` to take USER's entry from an Apache
htpasswd file (bcrypt, {SHA}, $apr1$ or plain; relative to the site root, never served, read
again when it changes). Paths are base paths (plain prefixes). OPTIONS requests pass (CORS
preflights carry no credentials). A protected request without matching credentials gets 401
with `WWW-Authenticate: Basic realm="REALM"`; an authenticated one sets {user}.

Secrets are compared in constant time. bcrypt and APR1 are slow (on purpose, or by their
1000 rounds), so their checks run in a thread and the handler answers later; a successful
check is remembered (by a SHA-256 of the credentials) so the next requests with them answer
at once. A user that no rule knows (or that left the htpasswd file) gets a password check all
the same, against a dummy entry of the kind (and bcrypt cost) the first matching rule uses
(htpasswd.dummy_for, as Caddy 2 does), in the same thread pool: a 401 takes as long for an
unknown user as for a wrong password, so its timing does not tell which users exist.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import os
from collections import OrderedDict
from dataclasses import dataclass, field

from meshkit.web import fileserver, htpasswd
from meshkit.web.caddyfile.tokens import Dispenser
from meshkit.web.directives import register
from meshkit.web.message import Handler, HandlerResult, Headers, Request, Response
from meshkit.web.paths import clamp_path
from meshkit.web.site import Site

DEFAULT_REALM = "Restricted"
HTPASSWD_PREFIX = "htpasswd="
CACHE_SIZE = 1024


@dataclass
class BasicAuthRule:
    username: str
    password: str  # the password, or htpasswd=FILE
    resources: list[str] = field(default_factory=list)
    realm: str = ""


@dataclass
class BasicAuthConfig:
    rules: list[BasicAuthRule] = field(default_factory=list)

    @property
    def keeps_static(self) -> bool:
        """Passwords given in the Caddyfile make the decision a function of the request
        head (its Authorization field) alone, and only answers that pass carry file
        validators: the site may still answer from remembered responses, which a later
        request gets only with the very same head bytes. An htpasswd file may change under
        a remembered answer: not then."""
        return not any(r.password.startswith(HTPASSWD_PREFIX) for r in self.rules)


def htpasswd_path(site: Site, password: str) -> str:
    return os.path.abspath(os.path.join(site.root, password[len(HTPASSWD_PREFIX) :]))


def parse(d: Dispenser, site: Site) -> BasicAuthConfig:
    config = BasicAuthConfig()
    while d.next():
        args = d.remaining_args()
        if len(args) == 2:
            rule = BasicAuthRule(args[0], args[1])
        elif len(args) == 3:
            rule = BasicAuthRule(args[1], args[2], [args[0]])
        else:
            raise d.arg_err()
        if rule.password.startswith(HTPASSWD_PREFIX):
            path = htpasswd_path(site, rule.password)
            try:
                users = htpasswd.HtpasswdFile(path).users()
            except (OSError, htpasswd.HtpasswdError) as e:
                raise d.err(f"cannot read htpasswd file: {e}") from None
            if rule.username not in users:
                raise d.err(f"user {rule.username!r} not found in {path}")
            if path not in site.hidden:
                site.hidden.append(path)
        for _ in d.block():
            name = d.val()
            more = d.remaining_args()
            if not more:
                rule.resources.append(name)
            elif len(more) == 1 and name == "path":
                rule.resources.append(more[0])
            elif len(more) == 1 and name == "realm":
                if rule.realm:
                    raise d.err("realm can only be given once")
                rule.realm = more[0]
            elif len(more) == 1:
                raise d.err(f'expecting "path" or "realm", got {name!r}')
            else:
                raise d.arg_err()
        if not rule.resources:
            rule.resources.append("/")
        config.rules.append(rule)
    return config


def credentials(request: Request) -> tuple[str, str] | None:
    """(user, password) from an `Authorization: Basic ...` header, or None."""
    value = request.headers.get("Authorization")
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        raw = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    text = raw.decode("utf-8", "surrogateescape")
    user, sep, password = text.partition(":")
    if not sep:
        return None
    return user, password


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).digest()


class _Rule:
    __slots__ = (
        "file",
        "header_digest",
        "password",
        "password_digest",
        "realm",
        "resources",
        "user_digest",
        "username",
    )

    def __init__(self, rule: BasicAuthRule, site: Site) -> None:
        self.username = rule.username
        self.user_digest = _digest(rule.username)
        self.resources = tuple(clamp_path(r) for r in rule.resources)
        self.realm = (rule.realm or DEFAULT_REALM).replace('"', '\\"')
        self.file: htpasswd.HtpasswdFile | None = None
        self.password = rule.password
        self.password_digest = _digest(rule.password)
        # the Authorization value a client sends for these credentials, as a digest: the
        # usual request is then one digest and one constant-time compare (None: htpasswd)
        token = base64.b64encode(f"{rule.username}:{rule.password}".encode()).decode()
        self.header_digest: bytes | None = _digest("Basic " + token)
        if ":" in rule.username:
            self.header_digest = None  # never matches in credentials(): not here either
        if rule.password.startswith(HTPASSWD_PREFIX):
            self.file = htpasswd.HtpasswdFile(htpasswd_path(site, rule.password))
            self.header_digest = None

    def entry(self) -> str | None:
        """The stored secret: the password itself, or the htpasswd entry."""
        if self.file is None:
            return None
        return self.file.entry(self.username)

    def model_entry(self) -> str | None:
        """An entry whose kind a dummy check for an unknown user copies: this rule's user's
        entry, else any entry of the file; None for a plain password."""
        if self.file is None:
            return None
        entry = self.entry()
        if entry is None:
            entry = next(iter(self.file.users().values()), None)
        return entry


class BasicAuth:
    def __init__(self, config: BasicAuthConfig, next: Handler, site: Site) -> None:
        self.next = next
        self.rules = [_Rule(r, site) for r in config.rules]
        self._verified: OrderedDict[bytes, None] = OrderedDict()

    def __call__(self, request: Request) -> HandlerResult:
        if request.method == "OPTIONS":
            return self.next(request)
        path = request.path
        matching = [r for r in self.rules if path.startswith(r.resources)]
        if not matching:
            return self.next(request)
        raw = request.headers.get("Authorization")
        if raw:
            # the exact value the credentials of a rule with a plain password encode to
            seen = _digest(raw)
            for rule in matching:
                if rule.header_digest is not None and hmac.compare_digest(seen, rule.header_digest):
                    return self._pass(request, rule.username, rule)
        given = credentials(request)
        if given is None:
            return self._deny(matching)
        user, password = given
        user_digest = _digest(user)
        slow: list[tuple[_Rule, str]] = []
        checked = False  # was the password checked against anything of this user's?
        for rule in matching:
            if not hmac.compare_digest(user_digest, rule.user_digest):
                continue
            if rule.file is None:
                checked = True
                if hmac.compare_digest(_digest(password), rule.password_digest):
                    return self._pass(request, user, rule)
                continue
            entry = rule.entry()
            if entry is None:
                continue  # the user left the htpasswd file: as if unknown
            checked = True
            if htpasswd.is_slow(entry):
                if self._remembered(rule, entry, password):
                    return self._pass(request, user, rule)
                slow.append((rule, entry))
            elif htpasswd.verify(entry, password):
                return self._pass(request, user, rule)
        if slow:
            return self._check_later(request, matching, user, password, slow)
        if not checked:
            return self._check_unknown(matching, password)
        return self._deny(matching)

    def _check_unknown(self, matching: list[_Rule], password: str) -> HandlerResult:
        """No rule has this user: spend what checking a known user's password would cost
        (a dummy entry of the same kind), then refuse."""
        rule = matching[0]
        model = rule.model_entry()
        if model is None:  # a plain password: the constant-time compare is the check
            hmac.compare_digest(_digest(password), rule.password_digest)
            return self._deny(matching)
        if not htpasswd.is_slow(model):
            htpasswd.verify_dummy(model, password)
            return self._deny(matching)
        return self._dummy_later(matching, model, password)

    async def _dummy_later(self, matching: list[_Rule], model: str, password: str) -> Response:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, htpasswd.verify_dummy, model, password)
        return self._deny(matching)

    def _key(self, rule: _Rule, entry: str, password: str) -> bytes:
        return hashlib.sha256(
            b"\0".join(
                s.encode("utf-8", "surrogateescape") for s in (rule.username, entry, password)
            )
        ).digest()

    def _remembered(self, rule: _Rule, entry: str, password: str) -> bool:
        key = self._key(rule, entry, password)
        if key in self._verified:
            self._verified.move_to_end(key)
            return True
        return False

    def _remember(self, rule: _Rule, entry: str, password: str) -> None:
        self._verified[self._key(rule, entry, password)] = None
        while len(self._verified) > CACHE_SIZE:
            self._verified.popitem(last=False)

    async def _check_later(
        self,
        request: Request,
        matching: list[_Rule],
        user: str,
        password: str,
        slow: list[tuple[_Rule, str]],
    ) -> Response:
        loop = asyncio.get_running_loop()
        for rule, entry in slow:
            ok = await loop.run_in_executor(None, htpasswd.verify, entry, password)
            if ok:
                self._remember(rule, entry, password)
                result = self._pass(request, user, rule)
                if isinstance(result, Response):
                    return result
                return await result
        return self._deny(matching)

    def _pass(self, request: Request, user: str, rule: _Rule) -> HandlerResult:
        request.vars["user"] = user
        result = self.next(request)
        if rule.file is not None and isinstance(result, Response) and result.validators:
            # passed by the file's entry as last read: the answer holds while the file
            # stats the same (the lane's rule table keeps it per Authorization value)
            sig = rule.file.validator(fileserver._RACY_NS)
            result.validators = None if sig is None else (*result.validators, sig)
        return result

    def _deny(self, matching: list[_Rule]) -> Response:
        realm = matching[-1].realm
        return Response.error(401, Headers([("WWW-Authenticate", f'Basic realm="{realm}"')]))


def build(config: BasicAuthConfig, next: Handler, site: Site) -> Handler:
    return BasicAuth(config, next, site)


register("basicauth", parse, build)

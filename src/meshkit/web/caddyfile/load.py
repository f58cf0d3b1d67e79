"""Caddyfile text or file -> Sites, every directive parsed; every mistake collected.

    config = load_file("Caddyfile", Defaults(port=8080))     # or load_text / load_lines /
    if config.errors: ...                                      # default_config / load_stdin
    sites = config.sites

Each site block becomes one Site: its addresses (default port from Defaults), then each
directive's `parse` in the fixed ORDER (so `root` is set before the others look at it), then
the root made absolute (relative to the working directory, as in Caddy). The Caddyfile and the
files it imports are hidden from the file server. Errors are CaddyfileErrors naming file:line;
`-validate` prints them all. Messages never repeat the text of an imported file (redact.py):
`import /etc/shadow` is an error naming the file and line, not the hashes.

Files are read with meshkit.base.safefile (parser.read_caddyfile): a regular file of at most 1 MiB
(MAX_FILE_BYTES), UTF-8 without control characters. A FIFO, /dev/zero or a folder given as the
Caddyfile is an error at once, never a hang or an endless read.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import TYPE_CHECKING, Any

from meshkit.base.errors import MeshkitError
from meshkit.base.safefile import FileReadError
from meshkit.web import directives
from meshkit.web.caddyfile.address import HTTP_PORT, HTTPS_PORT, AddressError, parse_address
from meshkit.web.caddyfile.lexer import expand_env_token, lex
from meshkit.web.caddyfile.parser import (
    ParseResult,
    ServerBlock,
    parse_text,
    parse_tokens,
    read_caddyfile,
)
from meshkit.web.caddyfile.redact import Redactor, words_of
from meshkit.web.caddyfile.tokens import CaddyfileError, Dispenser, Token
from meshkit.web.directives.tls import NO_ACME, TLSConfig
from meshkit.web.site import DEFAULT_PORT, Address, Site

if TYPE_CHECKING:
    from meshkit.web.proxy.services import ServiceDirectory

COMMAND_LINE = "<command line>"


@dataclass(frozen=True)
class Defaults:
    """What `-host`, `-port` and `-root` set: the default site's host, the port of every
    address that names none, and the root of every site without a `root`."""

    host: str = ""
    port: int = DEFAULT_PORT
    root: str = "."
    http_port: int = HTTP_PORT  # -http-port: the port of http:// (and of HTTPS redirects)
    https_port: int = HTTPS_PORT  # -https-port: the port of https://
    # automatic HTTPS (ACME) for sites with host names: on when -agree or -email was given
    # (Caddy v1 asked on a terminal; meshkit never prompts)
    auto_https: bool = False


@dataclass
class Config:
    sites: list[Site] = field(default_factory=list)
    errors: list[CaddyfileError] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)  # real paths of the Caddyfile and imports
    source: str = ""  # "Caddyfile", a path, "stdin", "<command line>" or "<default>"
    http_port: int = HTTP_PORT  # where HTTP->HTTPS redirect sites go (Defaults.http_port)
    https_port: int = HTTPS_PORT

    def raise_errors(self) -> None:
        if self.errors:
            raise CaddyfileErrors(self.errors)


class CaddyfileErrors(MeshkitError):
    """Every mistake found in a configuration, one per line."""

    def __init__(self, errors: list[CaddyfileError]) -> None:
        self.errors = list(errors)
        if len(self.errors) == 1:
            message = str(self.errors[0])
        else:
            message = f"{len(self.errors)} errors in the configuration:" + "".join(
                f"\n  {e}" for e in self.errors
            )
        super().__init__(message)


# --- entry points ---------------------------------------------------------------------------


def load_text(
    text: str,
    file: str = "Caddyfile",
    *,
    path: str | None = None,
    defaults: Defaults | None = None,
    environ: Mapping[str, str] | None = None,
    directory: ServiceDirectory | None = None,
) -> Config:
    """A Caddyfile's text. `file` names it in messages; `path` is where it lives (imports
    resolve beside it; None: the working directory). `directory`: the node agent's services,
    when the server runs inside one (without it a service:// upstream is an error)."""
    directives.load_all()
    parsed = parse_text(
        text, file, path=path, check_directive=directives.check_directive, environ=environ
    )
    return _build(parsed, defaults or Defaults(), file, directory, text)


def load_file(
    path: str,
    *,
    defaults: Defaults | None = None,
    environ: Mapping[str, str] | None = None,
    directory: ServiceDirectory | None = None,
) -> Config:
    try:
        text = read_caddyfile(path)
    except FileReadError as exc:
        raise MeshkitError(f"cannot read the Caddyfile {path!r}: {exc.reason}") from None
    return load_text(text, path, path=path, defaults=defaults, environ=environ, directory=directory)


def load_lines(
    lines: list[str],
    *,
    defaults: Defaults | None = None,
    environ: Mapping[str, str] | None = None,
    directory: ServiceDirectory | None = None,
) -> Config:
    """Command-line arguments as the directive lines of the default site
    (`meshkit web browse "log access.log"`): argument N is line N of "<command line>"."""
    d = defaults or Defaults()
    env = os.environ if environ is None else environ
    directives.load_all()
    # lex each argument alone so that argument N starts on line N
    body: list[Token] = []
    line = 1
    for arg in lines:
        try:
            toks = lex(arg, COMMAND_LINE)
        except CaddyfileError as exc:
            err = CaddyfileError(COMMAND_LINE, exc.line + line - 1, exc.message)
            return Config(errors=[err], source=COMMAND_LINE)
        for t in toks:
            tok = Token(COMMAND_LINE, t.line + line - 1, t.text, t.quoted)
            body.append(expand_env_token(tok, env))
        line += arg.count("\n") + 1
    address = _default_address(d)
    tokens = [
        Token(COMMAND_LINE, 0, address, True),
        Token(COMMAND_LINE, 0, "{"),
        *body,
        Token(COMMAND_LINE, line, "}"),
    ]
    parsed = parse_tokens(
        tokens, COMMAND_LINE, check_directive=directives.check_directive, environ=env
    )
    return _build(parsed, d, COMMAND_LINE, directory, "\n".join(lines))


def default_config(defaults: Defaults | None = None) -> Config:
    """No Caddyfile: one site at the default address serving the root folder."""
    d = defaults or Defaults()
    directives.load_all()
    try:
        address = parse_address(_default_address(d), d.port, d.http_port, d.https_port)
    except AddressError as exc:
        raise MeshkitError(str(exc)) from None
    site = Site(addresses=[address], root=os.path.abspath(d.root))
    return Config(sites=[site], source="<default>", http_port=d.http_port, https_port=d.https_port)


def _default_address(d: Defaults) -> str:
    host = f"[{d.host}]" if ":" in d.host and not d.host.startswith("[") else d.host
    return f"{host}:{d.port}"


# --- blocks -> sites --------------------------------------------------------------------------


def _build(
    parsed: ParseResult,
    defaults: Defaults,
    source: str,
    directory: ServiceDirectory | None = None,
    main_text: str = "",
) -> Config:
    config = _build_sites(parsed, defaults, source, directory)
    if parsed.imported:
        _redact(config, parsed, main_text)
    return config


def _redact(config: Config, parsed: ParseResult, main_text: str) -> None:
    """Take the text of imported files out of every message (see redact.py)."""
    suspect = {f: t for f, t in parsed.imported.items() if not _looks_like_caddyfile(t)}
    if not suspect:
        return
    known = words_of([main_text])
    known.update(directives.REGISTRY)
    known.update(("{", "}", "import"))
    redactor = Redactor(suspect, words_of(suspect.values()), known)
    config.errors = [redactor.error(e) for e in config.errors]
    config.warnings = [redactor.message(w, False) for w in config.warnings]


def _looks_like_caddyfile(text: str) -> bool:
    """Whether an imported file starts the way a Caddyfile (or a piece of one) does: with a
    directive, an import, a snippet definition, or a line that opens a block. Such a file's
    errors are quoted as usual; any other file (/etc/shadow, a key, an env file) could be a
    secret, and its text is kept out of messages."""
    head = text[:4096]
    if len(text) > len(head):
        head = head[: head.rfind("\n") + 1]
    try:
        toks = lex(head, "imported")
    except CaddyfileError:
        return False
    if not toks:
        return not text[len(head) :].strip()  # an empty file has nothing to leak
    first = toks[0]
    if first.quoted:
        return False
    if first.text in directives.REGISTRY or first.text == "import":
        return True
    if len(first.text) > 2 and first.text.startswith("(") and first.text.endswith(")"):
        return True
    last = [t for t in toks if t.line == first.line][-1]
    return last is not first and last.text == "{" and not last.quoted


def _build_sites(
    parsed: ParseResult,
    defaults: Defaults,
    source: str,
    directory: ServiceDirectory | None = None,
) -> Config:
    config = Config(
        errors=list(parsed.errors),
        warnings=list(parsed.warnings),
        files=list(parsed.files),
        source=source,
        http_port=defaults.http_port,
        https_port=defaults.https_port,
    )
    seen: dict[tuple[str, int, str], Token] = {}
    ports: dict[int, tuple[TLSConfig | None, Token]] = {}
    acme: list[str] = []  # addresses Caddy v1 would serve with automatic HTTPS
    for block in parsed.blocks:
        site = _site(block, defaults, config, directory, acme)
        if site is None:
            continue
        _check_port_tls(site, _address_keys(block, site), ports, config)
        for addr, key in zip(site.addresses, _address_keys(block, site), strict=True):
            k = (addr.host, addr.port, addr.path)
            if k in seen:
                config.errors.append(
                    CaddyfileError(
                        key.file,
                        key.line,
                        f"duplicate site address {addr.original!r} (already at {seen[k].where()})",
                    )
                )
            else:
                seen[k] = key
        config.sites.append(site)
    if acme:
        more = f" and {len(acme) - 3} more" if len(acme) > 3 else ""
        config.warnings.append(
            f"{NO_ACME} (it needs -agree or an email: -email or `tls EMAIL`): {len(acme)} "
            f"site address(es) with a host name and no port are served over plain HTTP on "
            f"port {defaults.port}: {', '.join(acme[:3])}{more} (give -agree for "
            "certificates from the ACME CA, or `tls CERT_FILE KEY_FILE`; write http:// to say "
            "plain HTTP is meant)"
        )
    if not parsed.blocks and not config.errors:
        config.errors.append(
            CaddyfileError(source, 1, "no site is defined (a site block starts with its address)")
        )
    # in reading order: the Caddyfile's lines first, then each imported file's
    config.errors.sort(key=lambda e: (e.file != source, e.file, e.line))
    return config


def _address_keys(block: ServerBlock, site: Site) -> list[Token]:
    by_text = {k.text: k for k in block.keys}
    return [by_text.get(a.original, block.keys[0]) for a in site.addresses]


def _site(
    block: ServerBlock,
    defaults: Defaults,
    config: Config,
    directory: ServiceDirectory | None = None,
    acme: list[str] | None = None,
) -> Site | None:
    addresses: list[Address] = []
    for key in block.keys:
        try:
            addresses.append(
                parse_address(key.text, defaults.port, defaults.http_port, defaults.https_port)
            )
        except AddressError as exc:
            config.errors.append(CaddyfileError(key.file, key.line, str(exc)))
    site = Site(
        addresses=addresses,
        root=defaults.root,
        config_path=config.files[0] if config.files else None,
        hidden=list(config.files),
        services=directory,
    )
    for name in directives.ORDER:
        toks = block.tokens.get(name)
        directive = directives.REGISTRY.get(name)
        if not toks or directive is None:
            continue
        try:
            site.directives[name] = directive.parse(Dispenser(toks, name), site)
        except CaddyfileError as exc:
            config.errors.append(exc)
    site.root = os.path.abspath(site.root)
    if addresses:
        acme = [] if acme is None else acme
        _apply_tls(site, _address_keys(block, site), config, acme, defaults)
    return site if addresses else None


def _apply_tls(
    site: Site,
    keys: list[Token],
    config: Config,
    acme_seen: list[str],
    defaults: Defaults | None = None,
) -> None:
    """Each address of a site with `tls` (not off) becomes https. Automatic HTTPS (Caddy
    v1's rules): an address with a real host name (not localhost, an IP or a wildcard), not
    http://, with no port or the https port, of a site without `tls` or with a `tls` that
    names no certificate, is served over https on the https port with a certificate from the
    ACME CA, when -agree or an email (-email, `tls EMAIL`) says the CA's terms are accepted.
    Without that, such addresses stay plain HTTP (an entry in `acme_seen`, which becomes one
    warning), and an https address without a certificate is an error."""
    d = defaults or Defaults(http_port=config.http_port, https_port=config.https_port)
    tls = site.directives.get("tls")
    cfg = tls if isinstance(tls, TLSConfig) else None
    on = cfg is not None and not cfg.off
    consent = d.auto_https or (cfg is not None and bool(cfg.email))
    if cfg is not None and cfg.acme and not consent:
        config.errors.append(
            CaddyfileError(
                keys[0].file,
                keys[0].line,
                f"tls ({cfg.where}) names no certificate, so it asks for automatic HTTPS, "
                f"which is not on: give -agree (the ACME CA's terms) or an email (-email or "
                "`tls EMAIL`), or `tls CERT_FILE KEY_FILE` / `tls self_signed`",
            )
        )
        on = False
    acme: list[Address] = []
    out: list[Address] = []
    for addr, key in zip(site.addresses, keys, strict=True):
        qualifies = (
            _real_name(addr.host)
            and not (addr.scheme == "http" and addr.scheme_given)
            and (addr.implicit_port or addr.port == d.https_port or addr.scheme == "https")
        )
        if on:
            assert cfg is not None
            if addr.scheme == "http" and addr.scheme_given:
                config.errors.append(
                    CaddyfileError(
                        key.file,
                        key.line,
                        f"site address {addr.original!r} is http:// but the site has a tls "
                        "directive (write https:// or drop the scheme)",
                    )
                )
            elif cfg.acme and not cfg.on_demand and not _real_name(addr.host):
                config.errors.append(
                    CaddyfileError(
                        key.file,
                        key.line,
                        f"site address {addr.original!r}: automatic HTTPS gets certificates "
                        "for host names only (not localhost, an IP address, a wildcard or no "
                        "host); give `tls CERT_FILE KEY_FILE` or `tls self_signed`",
                    )
                )
            port = d.https_port if cfg.acme and addr.implicit_port else addr.port
            addr = dataclasses.replace(addr, scheme="https", port=port)
        elif cfg is None and qualifies and d.auto_https:
            if "tls" not in site.directives:
                site.directives["tls"] = TLSConfig(acme=True, where=key.where())
            port = d.https_port if addr.implicit_port else addr.port
            addr = dataclasses.replace(addr, scheme="https", port=port)
        elif addr.scheme == "https":
            why = (
                "`tls off` turns HTTPS off"
                if cfg is not None and cfg.off
                else "it needs a certificate: add `tls CERT_FILE KEY_FILE`, "
                "`tls self_signed` or `tls { load DIR }`"
                + (
                    f", or -agree for one from the ACME CA ({NO_ACME})"
                    if _real_name(addr.host)
                    else ""
                )
            )
            if not (cfg is not None and cfg.acme):
                config.errors.append(
                    CaddyfileError(key.file, key.line, f"site address {addr.original!r}: {why}")
                )
        elif tls is None and addr.implicit_port and _real_name(addr.host):
            acme.append(addr)
        out.append(addr)
    site.addresses = out
    for addr in acme:
        key = keys[site.addresses.index(addr)]
        acme_seen.append(f"{addr.host} ({key.where()})")


def _real_name(host: str) -> bool:
    """A host Caddy v1 would get a certificate for: not empty, localhost, a wildcard or an
    IP address."""
    if not host or host == "localhost" or host.endswith(".localhost") or "*" in host:
        return False
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return True
    return False


def _check_port_tls(
    site: Site,
    keys: list[Token],
    ports: dict[int, tuple[TLSConfig | None, Token]],
    config: Config,
) -> None:
    """One port is either HTTPS or plain, and its HTTPS sites agree on the handshake's
    options (one handshake comes before the Host header that picks the site)."""
    tls = site.directives.get("tls")
    mine = tls if isinstance(tls, TLSConfig) and not tls.off else None
    for addr, key in zip(site.addresses, keys, strict=True):
        mine_here = None if addr.scheme != "https" else mine
        first = ports.setdefault(addr.port, (mine_here, key))
        other, where = first
        if where is key:
            continue
        if (other is None) != (mine_here is None):
            config.errors.append(
                CaddyfileError(
                    key.file,
                    key.line,
                    f"site address {addr.original!r}: port {addr.port} is "
                    f"{'plain HTTP' if mine_here is None else 'HTTPS'} here but "
                    f"{'HTTPS' if mine_here is None else 'plain HTTP'} at {where.where()}",
                )
            )
        elif other is not None and mine_here is not None and other.options() != mine_here.options():
            config.errors.append(
                CaddyfileError(
                    key.file,
                    key.line,
                    f"site address {addr.original!r}: its tls options (protocols, ciphers, "
                    f"curves, clients, alpn) differ from those of the site at {where.where()}, "
                    f"which shares port {addr.port}",
                )
            )


# --- configuration as JSON (golden tests, `-validate --json`) --------------------------------


def to_jsonable(value: Any) -> Any:
    """Plain JSON data for a parsed configuration: dataclasses (and other objects) as dicts
    of their fields, tuples and sets as lists, patterns as their source, functions by name."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: to_jsonable(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if f.metadata.get("json", True)  # runtime state (Site.background) is not config
        }
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, set | frozenset):
        return sorted((to_jsonable(v) for v in value), key=repr)
    if isinstance(value, re.Pattern):
        return value.pattern
    if isinstance(value, enum.Enum):
        return to_jsonable(value.value)
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if callable(value):
        return f"<{getattr(value, '__qualname__', type(value).__qualname__)}>"
    if hasattr(value, "__dict__"):
        return {"__type__": type(value).__qualname__, **to_jsonable(vars(value))}
    slots = getattr(type(value), "__slots__", None)
    if isinstance(slots, tuple | list) and slots:
        fields = {s: getattr(value, s) for s in slots if hasattr(value, s)}
        return {"__type__": type(value).__qualname__, **to_jsonable(fields)}
    return repr(value)


def site_to_dict(site: Site) -> dict[str, Any]:
    out = to_jsonable(site)
    assert isinstance(out, dict)
    return out

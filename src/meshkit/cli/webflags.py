"""The Caddy v1 one-time flags of `meshkit web`: -envfile, -cpu, -version, -plugins, -revoke.

Each error names its flag (FlagError); none of these needs the web server's modules except
-plugins, which lists the directives this meshkit has.
"""

from __future__ import annotations

import os

from meshkit import __version__
from meshkit.base.errors import FlagError, MeshkitError


def parse_envfile(path: str) -> dict[str, str]:
    """KEY=VALUE lines (Caddy v1's ParseEnvFile): blank lines and lines starting with # are
    skipped, the value is everything after the first `=` (kept as written, no quotes
    removed); a line without `=`, or a key that is empty or has white space, is an error
    naming its line."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise FlagError("-envfile", path, reason) from None
    out: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, eq, value = line.partition("=")
        if not eq:
            raise FlagError("-envfile", path, f"line {number}: expected KEY=VALUE")
        if not key:
            raise FlagError("-envfile", path, f"line {number}: the KEY is empty")
        if any(ch.isspace() for ch in key):
            raise FlagError("-envfile", path, f"line {number}: the KEY {key!r} has white space")
        if "\0" in key or "\0" in value:
            raise FlagError("-envfile", path, f"line {number}: NUL byte")
        out[key] = value
    return out


def load_envfiles(paths: list[str]) -> None:
    """Set the variables of each file, in order, before the Caddyfile's {$VAR} are read."""
    for path in paths:
        os.environ.update(parse_envfile(path))


def cpu_count(value: str, available: int) -> int:
    """How many CPUs `-cpu N|N%` allows (v1's setCPU): at least 1, at most `available`."""
    if value.endswith("%"):
        digits = value[:-1]
        if not digits.isdigit() or not 1 <= int(digits) <= 100:
            raise FlagError("-cpu", value, "a percentage must be from 1% to 100%")
        return max(1, min(available, int(available * int(digits) / 100)))
    if not value.isdigit() or int(value) < 1:
        raise FlagError("-cpu", value, "expected a number or a percentage greater than 0")
    return min(available, int(value))


def set_cpu(value: str) -> int:
    """Pin the process to that many of the CPUs it may use now (sched_setaffinity: the
    server, its threads and the commands it starts); the number kept. meshkit serves from
    one event loop, so this caps CPU use rather than sizing a thread pool as GOMAXPROCS did."""
    allowed = sorted(os.sched_getaffinity(0))
    n = cpu_count(value, len(allowed))
    if n < len(allowed):
        try:
            os.sched_setaffinity(0, allowed[:n])
        except OSError as exc:
            raise FlagError("-cpu", value, exc.strerror or str(exc)) from None
    return n


def version_text() -> str:
    return f"meshkit v{__version__}"


def plugins_text() -> str:
    """Caddy v1's `-plugins` listing: server types, Caddyfile loaders, then every directive
    this meshkit has as `http.NAME` (tls as `tls`, as v1 listed it), sorted."""
    from meshkit.web.directives import REGISTRY, load_all

    load_all()
    names = sorted("tls" if n == "tls" else f"http.{n}" for n in REGISTRY)
    lines = ["Server types:", "  http", "", "Caddyfile loaders:"]
    lines += ["  short", "  flag", "  default", "", "Other plugins:"]
    lines += [f"  {n}" for n in names]
    return "\n".join(lines) + "\n"


def revoke_cert(host: str, *, ca: str, email: str, catimeout: str) -> str:
    """-revoke HOST (v1's caddytls.Revoke): revoke the certificate stored for HOST under the
    -ca's storage folder, signed by the -email account (or the certificate's key), delete it;
    the line to print. -agree is not needed: no new account is registered."""
    import os

    from meshkit.acme.client import DEFAULT_CA, Problem, Settings
    from meshkit.acme.revoke import revoke
    from meshkit.acme.storage import Storage
    from meshkit.base.durations import parse_duration

    if not host or "/" in host or host.startswith("."):
        raise FlagError("-revoke", host, "expected a host name")
    if ca and not ca.startswith(("https://", "http://")):
        raise FlagError("-ca", ca, "expected the ACME directory's URL")
    if email and "@" not in email:
        raise FlagError("-email", email, "expected an email address")
    timeout = parse_duration(catimeout, "-catimeout")
    settings = Settings(
        ca=ca or DEFAULT_CA,
        email=email,
        timeout=timeout if timeout > 0 else 30.0,
        ca_roots=os.environ.get("MESHKIT_ACME_CA_ROOTS", ""),
    )
    try:
        what = revoke(settings, Storage(settings.ca), host.lower())
    except Problem as exc:  # not a usage error: one line, exit 1 (v1 logged it fatally)
        raise MeshkitError(f"-revoke {host}: {exc}") from None
    return f"Revoked certificate for {host} ({what})"

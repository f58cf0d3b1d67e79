"""`meshkit web`: Caddy v1's command line (single-dash long flags; `--conf` works too).

    meshkit web                          # ./Caddyfile, or serve . at 0.0.0.0:2015
    meshkit web -conf /etc/Caddyfile     # or -conf stdin (a pipe)
    meshkit web -port 8080 browse "log access.log"   # directive lines for the default site
    meshkit web -validate                # "Caddyfile is valid", or every error (exit 1)
    meshkit web -envfile prod.env -cpu 50% -log web.log -pidfile web.pid
    meshkit web -version | -plugins      # print and exit
    meshkit web -revoke a.example [-ca URL] [-email E]   # revoke its stored certificate, exit

click accepts single-dash long options once they are declared by that name, so each flag is
declared as both `-name` and `--name`; no argv rewriting is needed.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Annotated

import typer

from meshkit.base.errors import FlagError

if TYPE_CHECKING:
    from meshkit.web.staple import Stapler

web_app = typer.Typer()


_BOOLS = {"true": True, "1": True, "t": True, "false": False, "0": False, "f": False}


def _port(value: str, flag: str = "-port") -> int:
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise FlagError(flag, value, "expected a port number from 1 to 65535")
    return int(value)


def _host(value: str) -> str:
    from meshkit.web.caddyfile.address import AddressError, parse_address

    if not value:
        return ""
    inner = value[1:-1] if value.startswith("[") and value.endswith("]") else value
    probe = f"[{inner}]" if ":" in inner else inner
    try:
        parse_address(probe)
    except AddressError as exc:
        raise FlagError("-host", value, str(exc)) from None
    return inner


@web_app.command(
    "web",
    help="Caddyfile web server (Caddy v1 grammar): static files, vhosts, the directive chain.",
)
def web(
    lines: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="DIRECTIVE_LINES",
            help='Caddyfile lines for the default site, e.g. browse "log access.log".',
            show_default=False,
        ),
    ] = None,
    conf: Annotated[
        str | None,
        typer.Option(
            "-conf", "--conf", metavar="FILE", help="Caddyfile to load, or 'stdin' for a pipe."
        ),
    ] = None,
    port: Annotated[
        str, typer.Option("-port", "--port", metavar="PORT", help="Default port of the sites.")
    ] = "2015",
    http_port: Annotated[
        str,
        typer.Option(
            "-http-port",
            "--http-port",
            metavar="PORT",
            help="Port of http:// sites and of the HTTP->HTTPS redirects.",
        ),
    ] = "80",
    https_port: Annotated[
        str,
        typer.Option("-https-port", "--https-port", metavar="PORT", help="Port of https:// sites."),
    ] = "443",
    host: Annotated[
        str, typer.Option("-host", "--host", metavar="HOST", help="Host name of the default site.")
    ] = "",
    root: Annotated[
        str,
        typer.Option("-root", "--root", metavar="DIR", help="Root folder of sites without `root`."),
    ] = ".",
    validate: Annotated[
        bool,
        typer.Option("-validate", "--validate", help="Check the configuration and exit."),
    ] = False,
    as_json: Annotated[
        bool,
        typer.Option("-json", "--json", help="With -validate: print the configuration as JSON."),
    ] = False,
    log: Annotated[
        str,
        typer.Option(
            "-log", "--log", metavar="DEST", help="Process log: stdout, stderr or a file."
        ),
    ] = "stderr",
    pidfile: Annotated[
        str | None,
        typer.Option("-pidfile", "--pidfile", metavar="FILE", help="Write the process id here."),
    ] = None,
    grace: Annotated[
        str,
        typer.Option(
            "-grace",
            "--grace",
            metavar="DURATION",
            help="On SIGTERM/SIGINT, time responses may finish.",
        ),
    ] = "5s",
    quiet: Annotated[
        bool, typer.Option("-quiet", "--quiet", help="Do not print the sites at start.")
    ] = False,
    agree: Annotated[
        bool,
        typer.Option(
            "-agree",
            "--agree",
            help="Agree to the ACME CA's terms: turns automatic HTTPS on for sites with host "
            "names (so does -email).",
        ),
    ] = False,
    email: Annotated[
        str,
        typer.Option(
            "-email", "--email", metavar="EMAIL", help="ACME account email (default CA account)."
        ),
    ] = "",
    ca: Annotated[
        str,
        typer.Option("-ca", "--ca", metavar="URL", help="ACME CA directory URL."),
    ] = "",
    catimeout: Annotated[
        str,
        typer.Option(
            "-catimeout", "--catimeout", metavar="DURATION", help="Timeout of requests to the CA."
        ),
    ] = "30s",
    disable_http_challenge: Annotated[
        bool,
        typer.Option(
            "-disable-http-challenge", "--disable-http-challenge", help="No ACME HTTP-01."
        ),
    ] = False,
    disable_tls_alpn_challenge: Annotated[
        bool,
        typer.Option(
            "-disable-tls-alpn-challenge",
            "--disable-tls-alpn-challenge",
            help="No ACME TLS-ALPN-01.",
        ),
    ] = False,
    http2: Annotated[
        str,
        typer.Option(
            "-http2",
            "--http2",
            metavar="BOOL",
            help="Offer HTTP/2 (h2 by ALPN) on HTTPS ports: true or false, as in -http2=false.",
        ),
    ] = "true",
    envfile: Annotated[
        list[str] | None,
        typer.Option(
            "-envfile",
            "--envfile",
            metavar="FILE",
            help="KEY=VALUE lines set as environment variables before the Caddyfile is read "
            "(repeatable).",
        ),
    ] = None,
    cpu: Annotated[
        str,
        typer.Option(
            "-cpu",
            "--cpu",
            metavar="N|N%",
            help="CPUs the process may run on: a number or a percentage of those it has.",
        ),
    ] = "100%",
    version: Annotated[
        bool, typer.Option("-version", "--version", help="Print the version and exit.")
    ] = False,
    plugins: Annotated[
        bool,
        typer.Option("-plugins", "--plugins", help="List the directives available and exit."),
    ] = False,
    revoke: Annotated[
        str,
        typer.Option(
            "-revoke",
            "--revoke",
            metavar="HOST",
            help="Revoke HOST's stored ACME certificate at the CA (-ca), delete it, and exit.",
        ),
    ] = "",
) -> None:
    """Serve sites from a Caddyfile."""
    from meshkit.base.durations import parse_duration
    from meshkit.cli import webflags
    from meshkit.web.caddyfile.load import Defaults, site_to_dict

    # Caddy v1's order: the environment files first (even -version fails on a bad one),
    # then the one-time actions, then the CPU cap, then everything else
    webflags.load_envfiles(list(envfile or []))
    if version:
        print(webflags.version_text())
        return
    if plugins:
        print(webflags.plugins_text(), end="")
        return
    webflags.set_cpu(cpu)
    if revoke:
        print(webflags.revoke_cert(revoke, ca=ca, email=email, catimeout=catimeout))
        return

    if root == "":
        raise FlagError("-root", root, "must not be empty")
    if as_json and not validate:
        raise FlagError("-json", "true", "only goes with -validate")
    if ca and not ca.startswith(("https://", "http://")):
        raise FlagError("-ca", ca, "expected the ACME directory's URL")
    if email and "@" not in email:
        raise FlagError("-email", email, "expected an email address")
    ca_timeout = parse_duration(catimeout, "-catimeout")
    if ca_timeout <= 0:
        raise FlagError("-catimeout", catimeout, "must be more than 0")
    if http2.lower() not in _BOOLS:
        raise FlagError("-http2", http2, "expected true or false")
    from meshkit.web import app

    options = app.WebOptions(
        conf=conf,
        lines=list(lines or []),
        defaults=Defaults(
            host=_host(host),
            port=_port(port),
            root=root,
            http_port=_port(http_port, "-http-port"),
            https_port=_port(https_port, "-https-port"),
            auto_https=agree or bool(email),
        ),
        pidfile=pidfile,
        grace=parse_duration(grace, "-grace"),
        http2=_BOOLS[http2.lower()],
    )
    if not validate:
        app.configure_logging(log)
    config = app.load_config(options)
    if validate:
        for w in config.warnings:
            print(f"Warning: {w}", file=sys.stderr)
        if config.errors:
            for e in config.errors:
                print(f"Error: {e}", file=sys.stderr)
            raise typer.Exit(1)
        if as_json:
            print(json.dumps([site_to_dict(s) for s in config.sites], indent=2))
        else:
            print("Caddyfile is valid")
        return
    for w in config.warnings:
        app.log.warning("%s", w)
    config.raise_errors()
    from meshkit.web.autotls import wanted

    if wanted(config) or agree or email:  # with -agree, a reload may add the first name
        _with_acme(
            options,
            email=email,
            ca=ca,
            timeout=ca_timeout,
            http01=not disable_http_challenge,
            alpn01=not disable_tls_alpn_challenge,
        )
    from meshkit.cli import run_loop
    from meshkit.web import staple

    staple.use(_ocsp_stapler)  # OCSP stapling of every served certificate with a responder

    async def main() -> None:
        code = await app.serve(options, config, quiet=quiet)
        if code:
            raise typer.Exit(code)

    run_loop(main())


def _ocsp_stapler() -> Stapler:
    """meshkit.acme's OcspStapler, made (and `cryptography` loaded) at the first certificate."""
    from meshkit.acme.stapler import OcspStapler

    return OcspStapler()


def _with_acme(
    options: object, *, email: str, ca: str, timeout: float, http01: bool, alpn01: bool
) -> None:
    """Give the web server an ACME client (meshkit.acme) and the hub it fills."""
    import os

    from meshkit.acme.client import DEFAULT_CA, Settings
    from meshkit.acme.manager import AcmeManager
    from meshkit.web.app import WebOptions
    from meshkit.web.autotls import CertHub

    assert isinstance(options, WebOptions)
    if not (http01 or alpn01):
        raise FlagError(
            "-disable-tls-alpn-challenge",
            "true",
            "with -disable-http-challenge too, automatic HTTPS has no challenge left to answer",
        )
    settings = Settings(
        ca=ca or DEFAULT_CA,
        email=email,
        timeout=timeout,
        http01=http01,
        alpn01=alpn01,
        ca_roots=os.environ.get("MESHKIT_ACME_CA_ROOTS", ""),
    )
    options.hub = CertHub(http_challenge=http01, alpn_challenge=alpn01)
    options.issuer = AcmeManager(settings)

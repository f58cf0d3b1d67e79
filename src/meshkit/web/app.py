"""`meshkit web` as a process: configuration -> listeners -> signals.

    options = WebOptions(conf="Caddyfile", defaults=Defaults(port=8080))
    config = load_config(options)      # CaddyfileErrors when anything is wrong
    uvloop.run(serve(options, config))

The sites are grouped by port (meshkit listens on every address of a port, as Caddy v1 did
without `bind`): one HttpServer per port with a Router in front of the sites' handler chains.
The head limits of a port (bytes, default 64 KiB; fields, default 100; bytes of one field line,
default 8 KiB) are the smallest `limits header|header_fields|header_line` of its sites (the
Host header that picks a site comes after the limits apply).

Signals: SIGUSR1 re-reads the configuration and swaps it in without dropping connections
(ports that stay get the new router; new ports are bound first; ports that go away drain);
a configuration with errors, or one whose new ports cannot be bound, keeps the old one running
and logs why. SIGTERM/SIGINT stop accepting and let responses in flight finish for the grace
period (a second signal stops at once). SIGQUIT exits at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

from meshkit.base.errors import FlagError, MeshkitError
from meshkit.base.runtime import Signals, setup_logging
from meshkit.web import counters
from meshkit.web.autotls import CertHub, ChallengeFront, Issuer, wanted
from meshkit.web.caddyfile.load import (
    CaddyfileErrors,
    Config,
    Defaults,
    default_config,
    load_file,
    load_lines,
    load_text,
)
from meshkit.web.directives import build_chain
from meshkit.web.directives.bind import BindConfig
from meshkit.web.directives.limits import LimitsConfig
from meshkit.web.directives.on import HooksConfig
from meshkit.web.directives.proxyprotocol import ProxyProtocolConfig
from meshkit.web.directives.timeouts import TimeoutsConfig
from meshkit.web.directives.timeouts import merge as merge_timeouts
from meshkit.web.directives.tls import TLSConfig
from meshkit.web.hooks import Command, Hooks
from meshkit.web.message import Handler, Headers, Request, Response
from meshkit.web.proxy.services import ServiceDirectory
from meshkit.web.proxyhdr import ProxyPolicy
from meshkit.web.router import Route, Router, site_is_static
from meshkit.web.server import (
    DEFAULT_MAX_FIELD_LINE,
    DEFAULT_MAX_FIELDS,
    HttpServer,
    host_has_ipv6,
)
from meshkit.web.site import Address, Background, Site
from meshkit.web.tlsctx import TlsListener, build_listener

log = logging.getLogger("meshkit.web")

# a request head's bytes unless `limits header` says otherwise: nginx allows 32 KiB (4 x 8k
# large_client_header_buffers), Go's 1 MiB was more than any client sends and let one head
# of 100 fields of 8 KiB hold the loop (issue 16)
DEFAULT_HEADER_LIMIT = 64 << 10
DEFAULT_CADDYFILE = "Caddyfile"


@dataclass
class WebOptions:
    conf: str | None = None  # a path, "stdin", or None (./Caddyfile if there is one)
    lines: list[str] = field(default_factory=list)  # directive lines for the default site
    defaults: Defaults = field(default_factory=Defaults)
    pidfile: str | None = None
    grace: float = 5.0  # seconds responses in flight get on SIGTERM/SIGINT
    listen_host: str = "0.0.0.0"  # every IPv4 address
    stdin_text: str | None = None  # what `-conf stdin` read (kept for reloads)
    # the node agent's services when it runs the server (service:// upstreams)
    directory: ServiceDirectory | None = None
    # automatic HTTPS: what gets the certificates (meshkit.acme.AcmeManager) and where they
    # and the challenge answers go; None: ACME sites are an error at plan()
    issuer: Issuer | None = None
    hub: CertHub | None = None
    http2: bool = True  # `-http2`: offer h2 by ALPN on HTTPS ports


# --- configuration ------------------------------------------------------------------------


def load_config(options: WebOptions, stdin: TextIO | None = None) -> Config:
    """Where the configuration comes from: command-line lines, -conf FILE|stdin, ./Caddyfile,
    or the default site. The Config may hold errors; the caller decides what to do."""
    if options.lines and options.conf:
        raise FlagError(
            "-conf", options.conf, "give either -conf or directive lines on the command line"
        )
    directory = options.directory
    if options.lines:
        return load_lines(options.lines, defaults=options.defaults, directory=directory)
    if options.conf == "stdin":
        if options.stdin_text is None:
            src = stdin if stdin is not None else sys.stdin
            if src.isatty():
                raise FlagError("-conf", "stdin", "standard input is a terminal, not a pipe")
            options.stdin_text = src.read()
        return load_text(
            options.stdin_text, "stdin", defaults=options.defaults, directory=directory
        )
    if options.conf:
        if not os.path.exists(options.conf):
            raise FlagError("-conf", options.conf, "no such file")
        return load_file(options.conf, defaults=options.defaults, directory=directory)
    if os.path.isfile(DEFAULT_CADDYFILE):
        # reloads read this same file (and fail if it is gone, keeping what runs)
        options.conf = DEFAULT_CADDYFILE
        return load_file(DEFAULT_CADDYFILE, defaults=options.defaults, directory=directory)
    return default_config(options.defaults)


@dataclass
class PortPlan:
    port: int
    routes: list[Route]
    header_limit: int
    # header fields per request head and bytes per field line: the smallest `limits
    # header_fields` / `header_line` of the port's sites, else the server's defaults
    max_fields: int = DEFAULT_MAX_FIELDS
    max_field_line: int = DEFAULT_MAX_FIELD_LINE
    # what the sites on this port run beside the server (git pulls, health checks)
    background: list[Background] = field(default_factory=list)
    # HTTPS: the port's certificates (meshkit.web.tlsctx); None: plain HTTP
    tls: TlsListener | None = None
    # the http port under automatic HTTPS: ACME HTTP-01 answers come before the sites
    challenges: CertHub | None = None
    # `bind`: the addresses to listen on ([] : every address, as without `bind`)
    binds: list[str] = field(default_factory=list)
    # `timeouts`: seconds per kind (header, read, write, idle; math.inf: none)
    timeouts: dict[str, float] = field(default_factory=dict)
    # `proxyprotocol`: who may send PROXY headers on this port (None: nobody)
    proxy: ProxyPolicy | None = None
    # `tls off h2c` on a plain port (with -http2): HTTP/2 by prior knowledge
    h2c: bool = False

    def router(self) -> Handler:
        router = Router(self.routes)
        return router if self.challenges is None else ChallengeFront(router, self.challenges)


def plan(
    config: Config,
    build: Callable[[Site], Handler] = build_chain,
    hub: CertHub | None = None,
    http2: bool = True,
) -> dict[int, PortPlan]:
    """port -> the routes (each site's chain, built now) and the header limit of that port.
    Raises MeshkitError when a site's handlers cannot be built. `hub`: where automatic-HTTPS
    sites get their certificates and the CA's challenges their answers."""
    config.raise_errors()
    ports: dict[int, PortPlan] = {}
    fields: dict[int, int] = {}
    lines: dict[int, int] = {}
    secure: dict[int, list[tuple[list[str], TLSConfig]]] = {}
    binds: dict[int, list[str | None]] = {}  # None: a site without `bind`
    timeouts: dict[int, list[TimeoutsConfig]] = {}
    proxies: dict[int, list[ProxyProtocolConfig]] = {}
    h2c_ports: set[int] = set()
    for site in config.sites:
        bind = site.directives.get("bind")
        tmo = site.directives.get("timeouts")
        pp = site.directives.get("proxyprotocol")
        for a in site.addresses:
            if isinstance(pp, ProxyProtocolConfig):
                proxies.setdefault(a.port, []).append(pp)
            binds.setdefault(a.port, []).append(bind.host if isinstance(bind, BindConfig) else None)
            if isinstance(tmo, TimeoutsConfig):
                timeouts.setdefault(a.port, []).append(tmo)
        tls = site.directives.get("tls")
        if isinstance(tls, TLSConfig) and tls.h2c:
            if http2:
                h2c_ports.update(a.port for a in site.addresses)
            else:
                log.warning("%s: h2c is off with -http2=false", tls.where)
        if isinstance(tls, TLSConfig) and not tls.off:
            by_port: dict[int, list[str]] = {}
            for a in site.addresses:
                if a.scheme == "https":
                    by_port.setdefault(a.port, []).append(a.host)
            for port, hosts in by_port.items():
                secure.setdefault(port, []).append((hosts, tls))
        limits = site.directives.get("limits")
        site.background.clear()  # build() adds them again
        handler = build(site)
        static = site_is_static(site.directives)
        for i, address in enumerate(site.addresses):
            p = ports.setdefault(address.port, PortPlan(address.port, [], 0))
            p.routes.append(Route(address, handler, static, site))
            if i == 0:  # a site with several addresses runs its work once
                p.background.extend(site.background)
            if site.header_limit:
                p.header_limit = (
                    min(p.header_limit, site.header_limit) if p.header_limit else site.header_limit
                )
            if isinstance(limits, LimitsConfig):
                if limits.header_fields:
                    fields[address.port] = min(
                        fields.get(address.port, limits.header_fields), limits.header_fields
                    )
                if limits.header_line:
                    lines[address.port] = min(
                        lines.get(address.port, limits.header_line), limits.header_line
                    )
    for port, sites in secure.items():
        ports[port].tls = build_listener(sites, hub, http2=http2)
    _add_https_redirects(config, ports)
    if (
        hub is not None
        and hub.http_challenge
        and any(p.tls and (p.tls.auto or p.tls.on_demand) for p in ports.values())
    ):
        http = ports.setdefault(config.http_port, PortPlan(config.http_port, [], 0))
        if http.tls is None:
            http.challenges = hub
    for port, p in ports.items():
        p.header_limit = p.header_limit or DEFAULT_HEADER_LIMIT
        p.max_fields = fields.get(port, DEFAULT_MAX_FIELDS)
        p.max_field_line = lines.get(port, DEFAULT_MAX_FIELD_LINE)
        bound = binds.get(port, [None])
        p.binds = [] if None in bound else list(dict.fromkeys(h for h in bound if h))
        p.timeouts = merge_timeouts(timeouts.get(port, []))
        p.proxy = _proxy_policy(proxies.get(port, []))
        p.h2c = port in h2c_ports and p.tls is None
    return ports


def _proxy_policy(configs: list[ProxyProtocolConfig]) -> ProxyPolicy | None:
    """One port's PROXY protocol sources: every site's; the shortest timeout (0: none)."""
    if not configs:
        return None
    nets = list(dict.fromkeys(n for c in configs for n in c.networks()))
    timeout = min(c.timeout for c in configs)
    return ProxyPolicy(nets, timeout if timeout > 0 else float("inf"))


class HttpsRedirect:
    """Caddy's HTTP->HTTPS redirect site: 301 to the same host, path and query over https
    (on `port`, written only when it is not 443)."""

    def __init__(self, port: int) -> None:
        self.suffix = "" if port == 443 else f":{port}"

    def __call__(self, request: Request) -> Response:
        host = request.host or ""
        host = host[: host.find("]") + 1] if host.startswith("[") else host.partition(":")[0]
        headers = Headers()
        headers.set("Location", f"https://{host}{self.suffix}{request.uri}")
        headers.set("Connection", "close")
        return Response(status=301, headers=headers, close=True)


def _add_https_redirects(config: Config, ports: dict[int, PortPlan]) -> None:
    """For each HTTPS site on the https port with a host name, a site on the http port that
    redirects to it, unless a site on the http port already answers for that host."""
    http_port, https_port = config.http_port, config.https_port
    p = ports.get(https_port)
    if p is None or p.tls is None:
        return
    taken = {r.address.host for r in ports[http_port].routes} if http_port in ports else set()
    if "" in taken:
        return  # a catch-all plain site on the http port answers every host already
    hosts: list[str] = []
    for route in p.routes:
        host = route.address.host
        if host and host not in taken and host not in hosts:
            hosts.append(host)
    if not hosts:
        return
    plain = ports.setdefault(http_port, PortPlan(http_port, [], 0))
    handler = HttpsRedirect(https_port)
    for host in hosts:
        address = Address(original=f"http://{host}", scheme="http", host=host, port=http_port)
        plain.routes.append(Route(address, handler, False))


def hook_commands(config: Config) -> list[Command]:
    """The configuration's startup/shutdown/on commands, in the Caddyfile's order."""
    out: list[Command] = []
    for site in config.sites:
        for name in ("startup", "shutdown", "on"):
            hooks = site.directives.get(name)
            if isinstance(hooks, HooksConfig):
                out.extend(hooks.commands)
    return out


def site_urls(config: Config) -> list[str]:
    out = []
    for site in config.sites:
        for a in site.addresses:
            host = f"[{a.host}]" if ":" in a.host else a.host
            default = 443 if a.scheme == "https" else 80
            port = "" if a.port == default else f":{a.port}"
            out.append(f"{a.scheme}://{host}{port}{'' if a.path == '/' else a.path}")
    return out


def configure_logging(dest: str | None, level: int = logging.INFO) -> None:
    """The process log (-log): stderr (default), stdout, or a file appended to."""
    setup_logging(level, dest, flag="-log")


# --- the running process ------------------------------------------------------------------


class _Listener:
    """One port and the server accepting on it."""

    def __init__(self, port: int, server: HttpServer, limit: int, binds: list[str]) -> None:
        self.port = port
        self.server = server
        self.header_limit = limit
        self.binds = binds


def _where(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _on_demand(p: PortPlan, hub: CertHub | None) -> Callable[[str], object] | None:
    """The port's on-demand TLS hook (None when no site of it asks for on-demand)."""
    if p.tls is None or not p.tls.on_demand or hub is None:
        return None
    return functools.partial(hub.on_demand, p.tls)


def _set_timeouts(server: HttpServer, p: PortPlan) -> None:
    t = p.timeouts
    if t:
        server.set_timeouts(header=t["header"], read=t["read"], write=t["write"], idle=t["idle"])


def set_header_limit(server: HttpServer, limit: int) -> None:
    """Change a running server's header limit (connections read new heads against it).

    The listening socket cannot be handed to a second server: a dup()ed listening socket
    that one server stops watching keeps firing in uvloop's epoll and spins the loop."""
    setter = getattr(server, "set_header_limit", None)
    if callable(setter):
        setter(limit)
    else:
        server._header_limit = limit  # the server reads it for every request head


class WebApp:
    def __init__(self, options: WebOptions, load: Callable[[], Config] | None = None) -> None:
        self.options = options
        # what a reload reads (run in an executor): the options' configuration by default
        self.load: Callable[[], Config] = load or (lambda: load_config(options))
        self.listeners: dict[int, _Listener] = {}
        self.servers: set[HttpServer] = set()  # every server not closed yet (draining too)
        self.draining: set[asyncio.Task[None]] = set()
        self.stopping = False
        self.reloading = False
        self.background: list[Background] = []  # started, of the configuration in use
        self.ipv6: bool | None = None  # whether the host has IPv6 (asked once)
        self.hooks = Hooks()  # startup/shutdown/on commands of the configuration in use

    async def _start_background(self, ports: dict[int, PortPlan]) -> None:
        started = [b for p in sorted(ports.values(), key=lambda p: p.port) for b in p.background]
        for b in started:
            try:
                await b.start()
            except Exception:  # a bug in the work, not in serving: say so and serve on
                log.exception("starting %r failed", b)
        self.background = started

    async def _stop_background(self, items: list[Background]) -> None:
        for b in items:
            try:
                await b.stop()
            except Exception:
                log.exception("stopping %r failed", b)

    async def start(self, ports: dict[int, PortPlan]) -> None:
        opened: list[_Listener] = []
        try:
            for p in sorted(ports.values(), key=lambda p: p.port):
                opened.append(await self._open(p))
        except BaseException:
            for lst in opened:
                lst.server.close_now()
            raise
        for lst in opened:
            self.listeners[lst.port] = lst
            scheme = "https" if lst.server.tls else "http"
            for host, port in lst.server.addresses():
                log.info("listening on %s (%s)", _where(host, port), scheme)
        await self._start_background(ports)

    async def _open(self, p: PortPlan) -> _Listener:
        server = HttpServer(
            p.router(),
            header_limit=p.header_limit,
            max_fields=p.max_fields,
            max_field_line=p.max_field_line,
            tls=p.tls.context if p.tls is not None else None,
        )
        _set_timeouts(server, p)
        server.set_proxy_protocol(p.proxy)
        server.set_h2c(p.h2c)
        server.set_on_demand(_on_demand(p, self.options.hub))
        try:
            for host in self.listen_hosts(p):
                try:
                    await server.listen(host, p.port)
                except MeshkitError as exc:
                    if p.binds or host != "::":
                        raise
                    # IPv6 beside IPv4 by default: best effort (IPv4 clients are served)
                    log.warning("%s; serving port %d over IPv4 only", exc, p.port)
        except BaseException:
            server.close_now()
            raise
        self.servers.add(server)
        counters.track(server)  # for expvar's figures
        return _Listener(p.port, server, p.header_limit, p.binds)

    def listen_hosts(self, p: PortPlan) -> list[str]:
        """Where port p listens: its `bind` addresses (`::` is dual stack: both wildcards),
        else every IPv4 address and, where the host has IPv6, every IPv6 address."""
        hosts = p.binds or [self.options.listen_host]
        out: list[str] = []
        for host in hosts:
            if host in ("::", "0.0.0.0") and not p.binds and self.ipv6 is None:
                self.ipv6 = host_has_ipv6()
            if host == "::" or (host == "0.0.0.0" and not p.binds and self.ipv6):
                out += ["0.0.0.0", "::"]
            else:
                out.append(host)
        return list(dict.fromkeys(out))

    async def reload(self) -> bool:
        """Swap in the configuration as it is now; False (old one kept) when it is broken."""
        if self.stopping:
            return False
        if self.reloading:
            log.warning("reload: a reload is already running; ignoring this one")
            return False
        self.reloading = True
        try:
            return await self._reload()
        except Exception:  # a bug, not a bad configuration: say so, keep serving
            log.exception("reload failed (internal error), keeping the running configuration")
            return False
        finally:
            self.reloading = False

    async def _reload(self) -> bool:
        log.info("reload: reading the configuration again")
        loop = asyncio.get_running_loop()
        try:
            config = await loop.run_in_executor(None, self.load)
            for w in config.warnings:
                log.warning("%s", w)
            ports = plan(config, hub=self.options.hub, http2=self.options.http2)
        except CaddyfileErrors as exc:
            for e in exc.errors:
                log.error("reload failed, keeping the running configuration: %s", e)
            return False
        except MeshkitError as exc:
            log.error("reload failed, keeping the running configuration: %s", exc)
            return False
        # bind the new ports first: if one fails, nothing changes
        new: dict[int, _Listener] = {}
        try:
            for port, p in sorted(ports.items()):
                if port not in self.listeners:
                    new[port] = await self._open(p)
        except MeshkitError as exc:
            for lst in new.values():
                lst.server.close_now()
                self.servers.discard(lst.server)
            log.error("reload failed, keeping the running configuration: %s", exc)
            return False
        for port, lst in list(self.listeners.items()):
            p2 = ports.get(port)
            if p2 is None:  # the port is gone: stop accepting, let its connections finish
                log.info("reload: no site on port %d any more; closing it", port)
                del self.listeners[port]
                self._drain(lst)
            else:
                if p2.header_limit != lst.header_limit:
                    set_header_limit(lst.server, p2.header_limit)
                    lst.header_limit = p2.header_limit
                lst.server.set_limits(max_fields=p2.max_fields, max_field_line=p2.max_field_line)
                _set_timeouts(lst.server, p2)
                lst.server.set_proxy_protocol(p2.proxy)
                lst.server.set_h2c(p2.h2c)
                lst.server.set_on_demand(_on_demand(p2, self.options.hub))
                if p2.binds != lst.binds:
                    log.warning(
                        "reload: port %d keeps listening where it did; a changed `bind` "
                        "applies after a restart",
                        port,
                    )
                lst.server.set_tls(p2.tls.context if p2.tls is not None else None)
                lst.server.set_handler(p2.router())
        for port, lst in new.items():
            self.listeners[port] = lst
            for host, bound in lst.server.addresses():
                log.info("listening on %s", _where(host, bound))
        old = self.background
        await self._start_background(ports)
        await self._stop_background(old)
        if self.options.issuer is not None:
            self.options.issuer.update(wanted(config))
        self.hooks.commands = hook_commands(config)  # startup does not run again
        log.info("reload: done (%d site(s) on %d port(s))", len(config.sites), len(ports))
        return True

    def _drain(self, lst: _Listener) -> None:
        async def drain() -> None:
            await lst.server.shutdown(self.options.grace)
            self.servers.discard(lst.server)

        task = asyncio.get_running_loop().create_task(drain())
        self.draining.add(task)
        task.add_done_callback(self.draining.discard)

    async def shutdown(self, grace: float) -> None:
        self.stopping = True
        lsts = list(self.listeners.values())
        self.listeners.clear()
        old, self.background = self.background, []
        await self._stop_background(old)
        await asyncio.gather(
            *(lst.server.shutdown(grace) for lst in lsts), *self.draining, return_exceptions=True
        )

    def close_now(self) -> None:
        self.stopping = True
        for server in list(self.servers):
            server.close_now()
        self.servers.clear()
        self.listeners.clear()
        for task in self.draining:
            task.cancel()

    def open_connections(self) -> int:
        return sum(server.open_connections for server in self.servers)


def write_pidfile(path: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(f"{os.getpid()}\n")
    except OSError as exc:
        raise FlagError("-pidfile", path, exc.strerror or str(exc)) from None


def remove_pidfile(path: str) -> None:
    with contextlib.suppress(OSError):
        with open(path) as f:
            if f.read().strip() != str(os.getpid()):
                return  # another process wrote it since
        os.unlink(path)


async def serve(options: WebOptions, config: Config, *, quiet: bool = False) -> int:
    """Run until a signal ends the process; returns the exit code."""
    ports = plan(config, hub=options.hub, http2=options.http2)
    app = WebApp(options)
    loop = asyncio.get_running_loop()
    reloads: set[asyncio.Task[bool]] = set()

    def on_again(sig: signal.Signals) -> None:  # a second SIGTERM/SIGINT: do not wait
        log.info("%s again: closing every connection now", sig.name)
        app.close_now()

    def on_reload() -> None:
        if not app.listeners:
            log.warning("SIGUSR1 before the ports were open: ignored")
            return
        log.info("SIGUSR1: reloading")
        task = loop.create_task(app.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    def on_quit() -> None:
        log.info("SIGQUIT: exiting at once")
        app.close_now()
        if options.pidfile:
            remove_pidfile(options.pidfile)
        with contextlib.suppress(Exception):  # access log lines already written stay
            from meshkit.web.logfile import flush_all

            flush_all()
        logging.shutdown()
        os._exit(0)

    signals = Signals(
        loop,
        on_again=on_again,
        on_reload=on_reload,
        reload_signal=signal.SIGUSR1,
        extra={signal.SIGQUIT: on_quit},
    )
    signals.install()
    # The handlers are in place before the ports open: a signal sent as soon as a port
    # answers must not find Python's default SIGINT/SIGTERM behaviour.
    app.hooks.commands = hook_commands(config)
    if options.hub is not None:
        options.hub.issuer = options.issuer
        options.hub.on_renewed = lambda name: app.hooks.fire_soon(
            "certrenew", {"MESHKIT_CERT_NAME": name}
        )
    try:
        await app.start(ports)
        await app.hooks.fire("startup")
        if options.issuer is not None and options.hub is not None:
            options.issuer.start(options.hub, wanted(config))
        if not quiet:
            for url in site_urls(config):
                print(url, flush=True)
        if options.pidfile:
            write_pidfile(options.pidfile)
        # what is loaded by now (modules, sites, certificates) lives as long as the process:
        # out of the cyclic GC's way, its full passes do not walk it (bench/web_tls.py)
        gc.freeze()
        sig = await signals.stopped()
        n = app.open_connections()
        log.info(
            "%s: shutting down (%d open connection(s), up to %gs to finish)",
            sig.name,
            n,
            options.grace,
        )
        for task in list(reloads):
            task.cancel()
        if options.issuer is not None:
            await options.issuer.stop()
        await app.shutdown(options.grace)
        await app.hooks.fire("shutdown")
        await app.hooks.stop()
        log.info("stopped")
        return 0
    finally:
        signals.remove()
        app.close_now()
        if options.pidfile:
            remove_pidfile(options.pidfile)

"""The web server run by a node agent (`meshkit node init|join --web Caddyfile`), on its loop.

    web = await start_embedded("/etc/meshkit/Caddyfile", directory)   # errors before listening
    web.ports                     # [80, 443...]: what it listens on
    await web.reload()            # re-read the Caddyfile; False (old one kept) when broken
    await web.stop(grace=5.0)     # stop accepting; responses in flight get `grace` seconds

The same server as `meshkit web` (meshkit.web.app.WebApp) without what belongs to a process:
no signal handlers, no pidfile, no logging setup (it logs through the `meshkit.web`
loggers, which the agent's configuration covers). `directory` gives the Caddyfile's
`service://NAME:PORT` upstreams the cluster's services to follow.
"""

from __future__ import annotations

import asyncio

from meshkit.web.app import WebApp, WebOptions, log, plan
from meshkit.web.autotls import CertHub, Issuer, wanted
from meshkit.web.caddyfile.load import Config, Defaults, load_file
from meshkit.web.proxy.services import ServiceDirectory

__all__ = ["EmbeddedWeb", "start_embedded"]


class EmbeddedWeb:
    """A running embedded web server (see start_embedded)."""

    def __init__(self, app: WebApp, conf: str, issuer: Issuer | None = None) -> None:
        self._app = app
        self._issuer = issuer
        self.conf = conf
        self._stopped = False

    @property
    def ports(self) -> list[int]:
        """The ports listened on now (they change with a reload)."""
        return sorted(self._app.listeners)

    async def reload(self) -> bool:
        """Re-read the Caddyfile and swap it in without dropping connections; False (the
        running configuration kept, the reasons logged) when it is broken or a new port
        cannot be opened."""
        if self._stopped:
            return False
        return await self._app.reload()

    async def stop(self, grace: float) -> None:
        """Stop accepting; let responses in flight finish for up to `grace` seconds, then
        close what is left. Stopping twice does nothing."""
        if self._stopped:
            return
        self._stopped = True
        try:
            if self._issuer is not None:
                await self._issuer.stop()
            await self._app.shutdown(grace)
        finally:
            self._app.close_now()
        log.info("web server stopped")


async def start_embedded(
    conf: str,
    directory: ServiceDirectory,
    defaults: Defaults | None = None,
    *,
    hub: CertHub | None = None,
    issuer: Issuer | None = None,
) -> EmbeddedWeb:
    """Load the Caddyfile at `conf` and serve it on the running loop. `hub` and `issuer`:
    automatic HTTPS (the node's, meshkit.cluster.node.webcerts); without them an ACME site is
    an error.

    Raises a MeshkitError before anything listens when the Caddyfile cannot be read or has
    mistakes (CaddyfileErrors: each names file:line), or a port cannot be opened."""
    options = WebOptions(
        conf=conf, defaults=defaults or Defaults(), directory=directory, hub=hub, issuer=issuer
    )

    def load() -> Config:
        return load_file(conf, defaults=options.defaults, directory=directory)

    loop = asyncio.get_running_loop()
    config = await loop.run_in_executor(None, load)
    for warning in config.warnings:
        log.warning("%s", warning)
    ports = plan(config, hub=hub)  # raises CaddyfileErrors naming file:line
    app = WebApp(options, load)
    try:
        await app.start(ports)
    except BaseException:
        app.close_now()
        raise
    if issuer is not None and hub is not None:
        issuer.start(hub, wanted(config))
    return EmbeddedWeb(app, conf, issuer)

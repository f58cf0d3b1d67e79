"""Automatic HTTPS on a node with `--web`: certificates and ACME accounts in the cluster's state.

    certs = NodeCerts(node, hub)          # hub: the web server's CertHub
    spawn(certs.follow())                 # every committed certificate is served at once
    issuer = certs.issuer()               # meshkit.acme.AcmeManager over ClusterStore

- Following: a long poll (`webcert_watch`, meshkit.cluster.api.certs) to a manager, or to this
  node's own API on a manager, brings every certificate of the state (keys opened by the
  manager, kept in this process's memory only: nothing is written to this node's disk), the
  ACME account keys, and the pending challenge answers of every node. A new certificate is
  installed into the hub at once, so each node serves what any node obtained.
- Ordering: `ClusterStore` is the ACME manager's store (meshkit.acme.storage.CertStore). Before
  it orders a name, a node takes the name's lease (`webcert_lease`, a compare-and-set in raft);
  the other nodes wait for the holder's certificate. The holder extends its lease every third of
  MESHKIT_ACME_LEASE (default 2 minutes) while its order runs; a holder that dies loses it when
  it runs out, and another node takes over. Renewals (30 days before expiry) go through the
  same lease.
- Challenges: the CA may reach any node behind the name, so the holder publishes its HTTP-01
  key authorizations and TLS-ALPN-01 certificates (`webcert_challenge`: not secrets) and waits
  MESHKIT_ACME_PROPAGATE (default 1 s) for the other nodes to follow them before it tells the CA
  to validate.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import datetime
import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any

from meshkit.acme.client import DEFAULT_CA, Hooks, Problem, Settings, check_pair
from meshkit.base.durations import parse_duration
from meshkit.base.errors import MeshkitError
from meshkit.cluster.model.certs import account_key
from meshkit.cluster.rpc.transport import RpcError

if TYPE_CHECKING:
    from meshkit.acme.manager import AcmeManager
    from meshkit.cluster.api.context import NodeContext
    from meshkit.web.autotls import CertHub

log = logging.getLogger("meshkit.acme")

LEASE = 120.0
PROPAGATE = 1.0
SYNC_WAIT = 30.0
CALL_TIMEOUT = 15.0
WATCH_WAIT = 20.0


def _env(name: str, default: float) -> float:
    value = os.environ.get(name)
    return parse_duration(value, name) if value else default


class CallError(MeshkitError):
    """A call to the managers about certificates failed."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class NodeCerts:
    """This node's copy of the cluster's certificates, and its calls about them."""

    def __init__(self, node: NodeContext, hub: CertHub) -> None:
        self.node = node
        self.hub = hub
        self.loop: asyncio.AbstractEventLoop | None = None
        self.lease = _env("MESHKIT_ACME_LEASE", LEASE)
        self.propagate = _env("MESHKIT_ACME_PROPAGATE", PROPAGATE)
        # what the state holds (keys in clear, in memory only)
        self.sites: dict[str, dict[str, Any]] = {}
        self.accounts: dict[str, tuple[bytes, str]] = {}
        self.synced = threading.Event()
        self._served: dict[str, bytes] = {}  # name -> the chain installed from the state
        self._tokens: dict[str, str] = {}  # other nodes' HTTP-01 answers given to the hub
        self._alpn: dict[str, str] = {}  # other nodes' TLS-ALPN-01 answers (name -> cert)
        self.own_tokens: set[str] = set()  # this node's own, set on the hub by its order
        self.own_alpn: set[str] = set()

    def issuer(self) -> AcmeManager:
        from meshkit.acme.manager import AcmeManager

        settings = Settings(
            ca=DEFAULT_CA,
            ca_roots=os.environ.get("MESHKIT_ACME_CA_ROOTS", ""),
            http01=self.hub.http_challenge,
            alpn01=self.hub.alpn_challenge,
        )
        return AcmeManager(settings, stores=lambda ca: ClusterStore(self, ca))

    # -- calls to the managers -----------------------------------------------------------------

    async def ask(self, method: str, params: dict[str, Any], timeout: float) -> Any:
        node = self.node
        params = {"node_id": node.node_id, **params}
        st = node.state
        if node.is_manager and st is not None and st.initialized:
            return await node.call_self(method, params)
        return await node.ask_managers(method, params, timeout=timeout)

    def call(self, method: str, params: dict[str, Any], timeout: float = CALL_TIMEOUT) -> Any:
        """`ask` from a worker thread (the ACME client's, an executor's); CallError says why
        it failed (no manager, no quorum, a refused command, ...)."""
        if self.loop is None:
            raise CallError("the node does not follow the cluster's certificates yet")
        fut = asyncio.run_coroutine_threadsafe(self.ask(method, params, timeout), self.loop)
        try:
            return fut.result(timeout + 5.0)
        except Exception as exc:
            fut.cancel()
            raise CallError(
                getattr(exc, "message", None) or str(exc) or type(exc).__name__
            ) from None

    def keep_lease(self, name: str) -> concurrent.futures.Future[None] | None:
        """Extend `name`'s lease every third of its length until the future is cancelled (the
        order ended) or the lease is lost."""
        if self.loop is None:
            return None
        return asyncio.run_coroutine_threadsafe(self._keep_lease(name), self.loop)

    async def _keep_lease(self, name: str) -> None:
        while not self.node.stopping:
            await asyncio.sleep(self.lease / 3)
            try:
                reply = await self.ask("webcert_lease", {"name": name, "ttl": self.lease}, 10.0)
            except Exception as exc:  # the next try may reach a manager
                log.warning("ACME: cannot extend the order lease of %s: %s", name, exc)
                continue
            if not reply.get("taken"):
                log.warning(
                    "ACME: the order lease of %s went to node %s", name, reply.get("holder")
                )
                return

    # -- following the state -------------------------------------------------------------------

    async def follow(self) -> None:
        self.loop = asyncio.get_running_loop()
        epoch: Any = None
        version: Any = None
        said = ""
        while not self.node.stopping:
            try:
                reply = await self.ask(
                    "webcert_watch",
                    {"epoch": epoch, "version": version, "wait": WATCH_WAIT},
                    WATCH_WAIT + 10.0,
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                why = exc.message if isinstance(exc, RpcError) else str(exc)
                if why != said:
                    log.warning("ACME: cannot follow the cluster's certificates: %s", why)
                    said = why
                epoch = version = None
                await asyncio.sleep(1.0)
                continue
            said = ""
            epoch, version = reply.get("epoch"), reply.get("version")
            self.take(reply)

    def take(self, reply: dict[str, Any]) -> None:
        """One answer of webcert_watch: the whole feed."""
        self.sites = {}
        for name, site in (reply.get("sites") or {}).items():
            chain = str(site.get("chain") or "").encode()
            key = base64.b64decode(str(site.get("key") or ""))
            self.sites[name] = {**site, "chain": chain, "key": key}
            if self._served.get(name) != chain:
                self._serve(name, chain, key, str(site.get("holder") or "?"))
        self.accounts = {
            ref: (base64.b64decode(str(a.get("key") or "")), str(a.get("regr") or ""))
            for ref, a in (reply.get("accounts") or {}).items()
        }
        self._follow_challenges(reply)
        self.synced.set()

    def _serve(self, name: str, chain: bytes, key: bytes, holder: str) -> None:
        try:
            end = check_pair(chain, key)
        except ValueError as exc:
            log.warning("ACME: the cluster's certificate of %s is not used (%s)", name, exc)
            return
        if end <= datetime.datetime.now(datetime.timezone.utc):
            return  # expired: the order loop gets a new one
        try:
            self.hub.install([name], chain, key)
        except Exception as exc:
            log.warning("ACME: the cluster's certificate of %s cannot be loaded: %s", name, exc)
            return
        self._served[name] = chain
        log.info(
            "ACME: serving the cluster's certificate of %s (obtained by node %s, valid until %s)",
            name,
            holder,
            end.isoformat(),
        )

    def _follow_challenges(self, reply: dict[str, Any]) -> None:
        tokens = {
            t: str(r.get("keyauth") or "")
            for t, r in (reply.get("tokens") or {}).items()
            if t not in self.own_tokens
        }
        for token in set(self._tokens) - set(tokens):
            self.hub.drop_token(token)
        for token, keyauth in tokens.items():
            self.hub.set_token(token, keyauth)
        self._tokens = tokens
        alpn = {n: r for n, r in (reply.get("alpn") or {}).items() if n not in self.own_alpn}
        for name in set(self._alpn) - set(alpn):
            self.hub.drop_alpn(name)
        for name, r in alpn.items():
            cert = str(r.get("cert") or "")
            if self._alpn.get(name) == cert:
                continue
            try:
                self.hub.set_alpn(name, cert.encode(), str(r.get("key") or "").encode())
            except Exception as exc:
                log.warning("ACME: the TLS-ALPN-01 answer for %s cannot be loaded: %s", name, exc)
        self._alpn = {n: str(r.get("cert") or "") for n, r in alpn.items()}


class ClusterStore:
    """The ACME manager's store (meshkit.acme.storage.CertStore) for one CA, over the
    cluster's state. Its methods run in worker threads."""

    def __init__(self, certs: NodeCerts, ca: str) -> None:
        self.certs = certs
        self.ca = ca
        self.ordering = ""  # the name whose lease this store holds
        self._keeping: concurrent.futures.Future[None] | None = None
        self._waiting_for = ""  # the other holder last named in the log

    def where(self, name: str) -> str:
        return "the cluster's state"

    def _call(self, what: str, method: str, params: dict[str, Any]) -> Any:
        try:
            return self.certs.call(method, params)
        except CallError as exc:
            raise Problem(f"{what}: {exc}") from None

    def load_site(self, name: str) -> tuple[bytes, bytes, dict[str, Any]] | None:
        if not self.certs.synced.wait(SYNC_WAIT):
            log.warning("ACME: no answer from the managers yet about the certificate of %s", name)
        site = self.certs.sites.get(name)
        if site is None or site.get("ca") != self.ca:
            return None
        meta = {k: v for k, v in site.items() if k not in ("chain", "key")}
        return site["chain"], site["key"], meta

    def save_site(self, name: str, cert: bytes, key: bytes, meta: dict[str, Any]) -> None:
        params = {
            "name": name,
            "ca": self.ca,
            "chain": _b64(cert),
            "key": _b64(key),
            "not_after": str(meta.get("not_after") or ""),
            "obtained": str(meta.get("obtained") or ""),
        }
        self._call(f"the certificate of {name} is not in the cluster's state", "webcert_store",
                   params)  # fmt: skip
        self.certs.sites[name] = {
            **params,
            "chain": cert,
            "key": key,
            "holder": self.certs.node.node_id,
        }
        self.certs._served[name] = cert  # the manager installed it already

    def load_account(self, email: str) -> tuple[bytes, str] | None:
        self.certs.synced.wait(SYNC_WAIT)
        return self.certs.accounts.get(account_key(self.ca, email))

    def save_account(self, email: str, key: bytes, regr: str) -> None:
        self.certs.accounts[account_key(self.ca, email)] = (key, regr)
        try:
            params = {"ca": self.ca, "email": email, "key": _b64(key), "regr": regr or None}
            self.certs.call("webcert_account", params)
        except CallError as exc:
            # the account works anyway; the next order may register again
            log.warning("ACME: the account for %s is not in the cluster's state: %s", self.ca, exc)

    def take_order(self, name: str) -> bool:
        try:
            reply = self.certs.call("webcert_lease", {"name": name, "ttl": self.certs.lease})
        except CallError as exc:
            log.warning("ACME: cannot take the order for %s: %s", name, exc)
            return False
        site = reply.get("site")
        if site:  # what the state held when the lease was decided: newer than our copy, maybe
            self.certs.sites[name] = {
                **site,
                "chain": str(site.get("chain") or "").encode(),
                "key": base64.b64decode(str(site.get("key") or "")),
            }
        if not reply.get("taken"):
            holder = str(reply.get("holder") or "")
            if holder != self._waiting_for:  # once per holder, not every look
                log.info(
                    "ACME: node %s holds the order for %s; waiting for its certificate",
                    holder,
                    name,
                )
                self._waiting_for = holder
            return False
        self._waiting_for = ""
        log.info("ACME: this node holds the order for %s", name)
        self.ordering = name
        self._keeping = self.certs.keep_lease(name)
        return True

    def end_order(self, name: str, retry_in: float = 0.0) -> None:
        self.ordering = ""
        if self._keeping is not None:
            self._keeping.cancel()
            self._keeping = None
        try:  # after a failure the lease stays ours until we try again: one try per backoff
            self.certs.call("webcert_release", {"name": name, "hold": retry_in or None})
        except CallError as exc:
            log.warning("ACME: the order lease of %s is left to expire: %s", name, exc)

    def hooks(self, local: Hooks) -> Hooks:
        return ClusterHooks(self, local)


class ClusterHooks:
    """An order's challenge answers: on this node's hub, and published to every node."""

    def __init__(self, store: ClusterStore, local: Hooks) -> None:
        self.store = store
        self.local = local

    def _publish(self, kind: str, ref: str, value: dict[str, str] | None) -> None:
        certs = self.store.certs
        what = f"the {kind} answer for {self.store.ordering} cannot be published to the nodes"
        self.store._call(what, "webcert_challenge", {"kind": kind, "id": ref, "value": value})
        time.sleep(certs.propagate)  # the other nodes follow the state: give them the time

    def _unpublish(self, kind: str, ref: str) -> None:
        try:
            self.store.certs.call("webcert_challenge", {"kind": kind, "id": ref, "value": None})
        except CallError as exc:
            log.warning("ACME: the %s answer %s stays in the cluster's state: %s", kind, ref, exc)

    def set_token(self, token: str, key_authorization: str) -> None:
        self.store.certs.own_tokens.add(token)
        self.local.set_token(token, key_authorization)
        value = {"keyauth": key_authorization, "name": self.store.ordering}
        self._publish("http-01", token, value)

    def drop_token(self, token: str) -> None:
        self.local.drop_token(token)
        self.store.certs.own_tokens.discard(token)
        self._unpublish("http-01", token)

    def set_alpn(self, name: str, cert_pem: bytes, key_pem: bytes) -> None:
        self.store.certs.own_alpn.add(name)
        self.local.set_alpn(name, cert_pem, key_pem)
        value = {"cert": cert_pem.decode(), "key": key_pem.decode()}
        self._publish("tls-alpn-01", name, value)

    def drop_alpn(self, name: str) -> None:
        self.local.drop_alpn(name)
        self.store.certs.own_alpn.discard(name)
        self._unpublish("tls-alpn-01", name)

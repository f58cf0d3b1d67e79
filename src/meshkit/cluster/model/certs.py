"""Certificates of the nodes' web servers (`--web`) in the replicated state (sans-IO).

``state.webcerts`` holds five areas, each a dict:

    sites      name -> {"name", "ca", "chain" (PEM text), "key" (sealed), "not_after",
               "obtained", "holder"}         one certificate per name, whoever obtained it
    accounts   "<ca host>/<email>" -> {"ca", "email", "key" (sealed), "regr"}
    leases     name -> {"holder" (node id), "expires"}   who may order the name now
    tokens     HTTP-01 token -> {"keyauth", "name", "holder"}   pending challenge answers
    alpn       name -> {"cert", "key", "holder"}   pending TLS-ALPN-01 answers (the key is the
               challenge certificate's throwaway key, not a secret)

Private keys (a certificate's, an account's) are sealed by the manager that proposed them
(AES-GCM under the cluster data key: meshkit.cluster.raft.sealing), so the journal and the
snapshots never hold them in clear. The rules here only see opaque text.

Commands (applied by meshkit.cluster.model.state; `now` is stamped by the proposing manager):

    cert_lease     name, holder, ttl, now   compare-and-set: taken when the name has no lease,
                   its lease has expired, or the holder already has it (then extended); the
                   result says who holds it and carries the stored site (if any), so a node
                   that takes over sees a certificate committed just before
    cert_release   name, holder, hold?, now  drops the lease if the holder still has it, and the
                   holder's pending challenges for the name (its order is over); with hold > 0
                   (a failed order's backoff) the lease stays the holder's until now + hold, so
                   the other nodes do not try the CA meanwhile
    cert_store     site {...}, holder, now  refused while another node holds an unexpired lease
                   on the name (a holder whose lease ran out and was taken over is fenced off)
    cert_account   account {...}            an ACME account key (the last one written wins)
    cert_challenge kind ("http-01"|"tls-alpn-01"), id (token | name), value {...} | null, holder

Taking a lease over from a holder whose lease expired drops that holder's pending challenges
for the name (it died mid-order: nobody will clean them).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from meshkit.cluster.model.records import ClusterState, CommandError

AREAS = ("sites", "accounts", "leases", "tokens", "alpn")
KINDS = ("http-01", "tls-alpn-01")
MAX_TTL = 86400.0


def area(state: ClusterState, name: str) -> dict[str, dict[str, Any]]:
    """One area of state.webcerts (made on first use: states from older versions lack it)."""
    out: dict[str, dict[str, Any]] = state.webcerts.setdefault(name, {})
    return out


def _text(cmd: Mapping[str, Any], key: str, op: str) -> str:
    value = cmd.get(key)
    if not isinstance(value, str) or not value:
        raise CommandError(f"{op} needs {key}")
    return value


def _now(cmd: Mapping[str, Any]) -> float:
    return float(cmd.get("now") or 0.0)


def lease_holder(state: ClusterState, name: str, now: float) -> str:
    """The node holding the order for `name` at `now` ("" : nobody)."""
    lease = area(state, "leases").get(name)
    if lease is None or float(lease["expires"]) <= now:
        return ""
    return str(lease["holder"])


def op_lease(state: ClusterState, cmd: Mapping[str, Any]) -> dict[str, Any]:
    name = _text(cmd, "name", "cert_lease")
    holder = _text(cmd, "holder", "cert_lease")
    ttl = float(cmd.get("ttl") or 0.0)
    if not 0.0 < ttl <= MAX_TTL:
        raise CommandError(f"cert_lease: ttl {ttl:g} is not between 0 and {MAX_TTL:g} seconds")
    now = _now(cmd)
    leases = area(state, "leases")
    current = lease_holder(state, name, now)
    site = area(state, "sites").get(name)
    if current and current != holder:
        return {
            "taken": False,
            "holder": current,
            "expires": leases[name]["expires"],
            "site": site,
        }
    old = leases.get(name)
    if old is not None and old["holder"] != holder:  # a takeover: the old holder died
        _drop_challenges(state, name, str(old["holder"]))
    leases[name] = {"holder": holder, "expires": now + ttl}
    return {"taken": True, "holder": holder, "expires": now + ttl, "site": site}


def op_release(state: ClusterState, cmd: Mapping[str, Any]) -> dict[str, Any]:
    name = _text(cmd, "name", "cert_release")
    holder = _text(cmd, "holder", "cert_release")
    leases = area(state, "leases")
    lease = leases.get(name)
    if lease is not None and lease["holder"] == holder:
        hold = min(float(cmd.get("hold") or 0.0), MAX_TTL)
        if hold > 0:
            leases[name] = {"holder": holder, "expires": _now(cmd) + hold}
        else:
            del leases[name]
        _drop_challenges(state, name, holder)  # the order is over: its answers are moot
        return {"released": True}
    return {"released": False}


def op_store(state: ClusterState, cmd: Mapping[str, Any]) -> dict[str, Any]:
    site = cmd.get("site")
    if not isinstance(site, Mapping):
        raise CommandError("cert_store needs a site")
    name = _text(site, "name", "cert_store site")
    for key in ("chain", "key"):
        _text(site, key, "cert_store site")
    holder = _text(cmd, "holder", "cert_store")
    current = lease_holder(state, name, _now(cmd))
    if current and current != holder:
        raise CommandError(
            f"node {current} holds the order for {name}: the certificate of node {holder} "
            "is not stored"
        )
    record = {
        "name": name,
        "ca": str(site.get("ca") or ""),
        "chain": str(site["chain"]),
        "key": str(site["key"]),
        "not_after": str(site.get("not_after") or ""),
        "obtained": str(site.get("obtained") or ""),
        "holder": holder,
    }
    area(state, "sites")[name] = record
    return {"name": name}


def account_key(ca: str, email: str) -> str:
    return f"{ca}/{email or 'default'}"


def op_account(state: ClusterState, cmd: Mapping[str, Any]) -> dict[str, Any]:
    acct = cmd.get("account")
    if not isinstance(acct, Mapping):
        raise CommandError("cert_account needs an account")
    ca = _text(acct, "ca", "cert_account account")
    key = _text(acct, "key", "cert_account account")
    email = str(acct.get("email") or "")
    ref = account_key(ca, email)
    area(state, "accounts")[ref] = {
        "ca": ca,
        "email": email,
        "key": key,
        "regr": str(acct.get("regr") or ""),
    }
    return {"account": ref}


def op_challenge(state: ClusterState, cmd: Mapping[str, Any]) -> dict[str, Any]:
    kind = cmd.get("kind")
    if kind not in KINDS:
        raise CommandError(
            f"cert_challenge: unknown kind {kind!r}: expected http-01 or tls-alpn-01"
        )
    ref = _text(cmd, "id", "cert_challenge")
    holder = _text(cmd, "holder", "cert_challenge")
    items = area(state, "tokens" if kind == "http-01" else "alpn")
    value = cmd.get("value")
    if value is None:
        items.pop(ref, None)
        return {"id": ref, "removed": True}
    if not isinstance(value, Mapping):
        raise CommandError("cert_challenge: value must be an object or null")
    fields = ("keyauth", "name") if kind == "http-01" else ("cert", "key")
    record = {f: _text(value, f, "cert_challenge value") for f in fields}
    record["holder"] = holder
    if kind == "tls-alpn-01":
        record["name"] = ref
    items[ref] = record
    return {"id": ref, "removed": False}


def _drop_challenges(state: ClusterState, name: str, holder: str) -> None:
    tokens = area(state, "tokens")
    for token in [t for t, r in tokens.items() if r["name"] == name and r["holder"] == holder]:
        del tokens[token]
    alpn = area(state, "alpn")
    if name in alpn and alpn[name]["holder"] == holder:
        del alpn[name]


def feed(state: ClusterState) -> dict[str, Any]:
    """What the nodes follow (webcert_watch): every area but the leases, keys still sealed."""
    return {a: dict(area(state, a)) for a in AREAS if a != "leases"}


Handler = Callable[[ClusterState, Mapping[str, Any]], dict[str, Any]]

HANDLERS: dict[str, Handler] = {
    "cert_lease": op_lease,
    "cert_release": op_release,
    "cert_store": op_store,
    "cert_account": op_account,
    "cert_challenge": op_challenge,
}

# applied twice, each leaves what one application left (a lease taken again by its holder is
# only extended)
IDEMPOTENT = frozenset(HANDLERS)

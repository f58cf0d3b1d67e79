"""Automatic HTTPS: certificates from an ACME CA (RFC 8555) for `meshkit web`.

    storage.py   where certificates and account keys live on disk (per CA and host, 0600),
                 and CertStore, what the manager needs of a store (the cluster's is
                 meshkit.cluster.node.webcerts: one order lease per name, shared challenges)
    client.py    one order, blocking: account, challenges (HTTP-01, TLS-ALPN-01), finalize
                 (certbot's `acme` package with `josepy` and `cryptography`)
    manager.py   AcmeManager, the web server's Issuer (meshkit.web.autotls): serves what is
                 stored, obtains what is missing, renews in the background, backs off
    revoke.py    `meshkit web -revoke HOST`: revoke the stored certificate at the CA, delete it

This package sits above web/ (it fills web's CertHub) and below cli/; web/ never imports it,
so the web server and the proxies keep away from `cryptography` (docs/ARCHITECTURE.md).
"""

"""FastCGI for `meshkit web`: the record layer, the CGI environment, the response head and
the connection pool that talks to php-fpm and other FastCGI responders.

    records.py   sans-IO record encoder/decoder (FastCGI 1.0 wire format)
    env.py       the CGI/1.1 environment and the split-path rules (pure functions)
    response.py  parsing the CGI header block a script writes on STDOUT (sans-IO)
    endpoint.py  where a responder listens (host:port, unix:/path) and the timeouts
    pool.py      one responder's kept connections and the cap it learns
    connection.py one connection and the exchange on it (asyncio.Protocol), streamed bodies
    client.py    the I/O shell: picks an upstream, dials, sends, retries a stale connection
    clientlane.py the compiled FastCGI lane's plans (once per request shape) and rare paths

The `fastcgi` Caddyfile directive (meshkit.web.directives.fastcgi) puts them together.
"""

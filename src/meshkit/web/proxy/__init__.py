"""The reverse proxy behind the `proxy` directive: upstream addresses and the balancer
(upstream.py), the parsed block (rules.py), which block takes a request and the upstreams it
serves over (route.py), the header rules both ways (heads.py), the exchange and its retries
(handler.py), the HTTP/1.1 client with its keep-alive pool (client.py), active health checks
(health.py) and the relay of upgraded connections (tunnel.py)."""

"""The reverse proxy behind the `proxy` directive: upstream addresses and the balancer
(upstream.py), the HTTP/1.1 client with its keep-alive pool (client.py), active health checks
(health.py) and the relay of upgraded connections (tunnel.py)."""

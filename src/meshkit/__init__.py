"""meshkit: swarm-style clustering, overlay networks, an L4 routing mesh and a Caddyfile web
server for plain Linux processes, with a C/Cython fast path."""

__version__ = "0.1.0"

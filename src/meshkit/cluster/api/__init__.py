"""The node's RPC methods by area (nodes.py with the dispatch and who may call what, networks.py,
services.py, secrets.py, certs.py: the --web nodes' certificates), their parameter schemas
(params.py), what they share (common.py), and the `NodeContext` protocol through which they
reach the node they run on (context.py).
"""

"""The agent's RPC methods by area (nodes, networks, services), their parameter schemas and who may
call them.
"""

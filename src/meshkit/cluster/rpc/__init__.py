"""Node-to-node and CLI-to-agent RPC: framing and transport, the cluster PKI, join tokens, the
local socket client.
"""

"""The node agent and its parts: bootstrap, manager client, service loops, feeds."""

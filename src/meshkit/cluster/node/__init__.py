"""The node agent (agent.py) and its parts: node.json and the data dir (config.py), making a node
(bootstrap.py), the manager client with its one failover rule (managers.py), heartbeats
(heartbeat.py), the managers' side of them (membership.py), certificate renewal (renewal.py),
roles and the raft replica (roles.py), leaving (leave.py), the embedded web server (web.py), the
service loops (service_loops.py) and the ingress feed (servicefeed.py)."""

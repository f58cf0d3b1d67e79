"""One node's service mesh: VIPs and published ports, joining net/ (namespaces, DNS) and l4/
(relays).
"""

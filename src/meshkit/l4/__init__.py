"""TCP/UDP proxying: ingress and virtual-IP load balancing."""

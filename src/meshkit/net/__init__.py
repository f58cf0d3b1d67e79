"""Overlay networking: IPAM, netlink plumbing, the VXLAN data planes, probes and diagnosis."""

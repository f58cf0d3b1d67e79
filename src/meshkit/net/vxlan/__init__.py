"""The VXLAN data planes: the wire format (sans-IO), the userspace plane and its pure-Python twin,
the cffi build.
"""

# cython: language_level=3
"""meshkit's compiled fast path: the connection table and the TCP relay engine.

Each part lives in its own .pxi (the Python-facing class) over a C file in csrc/ whose
declarations are in includes/*.pxd. The pure-Python twins are meshkit.lb.conntable and
meshkit.l4.relay; tests run both and compare them. The HTTP request-head scanner
(_http_head.pxi, csrc/http_head.c) has its twin in meshkit.web.headparse; the FastCGI
record layer (_fcgi.pxi, csrc/fcgi_records.c) its twins in meshkit.web.fastcgi.records.
"""

include "_ctable.pxi"
include "_relay.pxi"
include "_sendfile.pxi"
include "_fcgi.pxi"
include "_http_head.pxi"
include "_lane.pxi"
include "_lanerules.pxi"
include "_tls.pxi"
include "_ocsp.pxi"
include "_upstream.pxi"
include "_proxylane.pxi"
include "_fcgilane.pxi"

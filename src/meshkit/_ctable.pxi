# ConnTable: the Python face of the C connection table (csrc/ctable.c, includes/ctable.h).
# Behaviour, messages and ordering match meshkit.lb.conntable.PyConnTable exactly; lookup() is
# the per-packet/per-connection hot path, so it parses addresses with inet_pton straight from
# the str's ASCII buffer and never builds Python objects for an existing flow.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memset, strlen

from meshkit.includes cimport ctable as c

import operator as _ct_operator


cdef extern from "<arpa/inet.h>" nogil:
    int inet_pton(int af, const char *src, void *dst)

cdef extern from "<sys/socket.h>" nogil:
    int AF_INET
    int AF_INET6

cdef extern from "Python.h":
    bint PyUnicode_IS_ASCII(object o)
    const char *PyUnicode_AsUTF8AndSize(object o, Py_ssize_t *size) except NULL
    object PyUnicode_DecodeASCII(const char *s, Py_ssize_t size, const char *errors)
    long PyLong_AsLongAndOverflow(object o, int *overflow) except? -1


_CT_POLICIES = ("round_robin", "least_conn", "random", "maglev")
_CT_POLICY_CODES = {
    "round_robin": c.CT_ROUND_ROBIN,
    "least_conn": c.CT_LEAST_CONN,
    "random": c.CT_RANDOM,
    "maglev": c.CT_MAGLEV,
}
cdef uint64_t _CT_MAX_ID = 0xFFFFFFFF
_CT_MASK64 = (1 << 64) - 1


cdef int _ct_parse_addr(object text, uint8_t *out, uint8_t *family) except -1:
    cdef Py_ssize_t n
    cdef const char *p
    # Every valid address is ASCII; checking first spares an encode of odd input.
    if PyUnicode_IS_ASCII(text):
        p = PyUnicode_AsUTF8AndSize(text, &n)
        # strlen catches an embedded NUL, which inet_pton would silently stop at.
        if <Py_ssize_t>strlen(p) == n:
            if inet_pton(AF_INET, p, out) == 1:
                memset(out + 4, 0, 12)
                family[0] = 4
                return 0
            if inet_pton(AF_INET6, p, out) == 1:
                family[0] = 6
                return 0
    raise ValueError(f"invalid IP address {text!r}")


cdef inline long _ct_check_port(object port) except -1:
    cdef int overflow = 0
    # Calls __index__ as operator.index does (TypeError for a float); a huge int sets overflow
    # instead of raising, so it gets the same ValueError as in PyConnTable.
    cdef long v = PyLong_AsLongAndOverflow(port, &overflow)
    if overflow or v < 0 or v > 65535:
        raise ValueError(f"port {port} out of range 0..65535")
    return v


cdef int _ct_make_key(c.ct_key *k, object proto, object src, object sport, object dst,
                      object dport) except -1:
    cdef int overflow = 0
    cdef long pr = PyLong_AsLongAndOverflow(proto, &overflow)
    if pr != 6 and pr != 17:
        raise ValueError(f"unknown protocol {proto}: expected 6 (TCP) or 17 (UDP)")
    k.pad = 0
    k.proto = <uint8_t>pr
    _ct_parse_addr(src, k.src, &k.src_family)
    k.sport = <uint16_t>_ct_check_port(sport)
    _ct_parse_addr(dst, k.dst, &k.dst_family)
    k.dport = <uint16_t>_ct_check_port(dport)
    return 0


cdef str _ct_format_addr(const uint8_t *addr, int family):
    cdef char buf[48]
    cdef size_t n = c.ct_format_addr(addr, family, buf)
    return PyUnicode_DecodeASCII(buf, <Py_ssize_t>n, NULL)


cdef tuple _ct_flow_key(const c.ct_key *k):
    return (k.proto, _ct_format_addr(k.src, k.src_family), k.sport,
            _ct_format_addr(k.dst, k.dst_family), k.dport)


cdef uint32_t _ct_known_id(object backend_id) except? 0xFFFFFFFF:
    # Any id the table cannot hold is simply unknown, as a dict lookup would say.
    cdef object v
    try:
        v = _ct_operator.index(backend_id)
    except TypeError:
        raise KeyError(backend_id) from None
    if not 0 <= v <= _CT_MAX_ID:
        raise KeyError(backend_id)
    return <uint32_t>v


cdef uint32_t _ct_check_weight(object weight) except 0:
    cdef object v = _ct_operator.index(weight)
    if not 1 <= v <= 65535:
        raise ValueError(f"weight {weight} out of range 1..65535")
    return <uint32_t>v


cdef list _ct_take_keys(c.ct_flow *flows, size_t n):
    cdef list keys = []
    cdef size_t i
    try:
        for i in range(n):
            keys.append(_ct_flow_key(&flows[i].key))
    finally:
        c.ct_free_flows(flows)
    keys.sort()
    return keys


cdef class ConnTable:
    """Flow table pinning 5-tuples to backends, with the policy picking new flows (C)."""

    cdef c.ct_table *_t
    cdef str _policy

    def __cinit__(self, str policy="round_robin", seed=0):
        if policy not in _CT_POLICY_CODES:
            raise ValueError(
                f"unknown policy {policy!r}: expected one of {', '.join(_CT_POLICIES)}")
        cdef uint64_t s = <uint64_t>(_ct_operator.index(seed) & _CT_MASK64)
        self._t = c.ct_new(_CT_POLICY_CODES[policy], s)
        if self._t == NULL:
            raise MemoryError()
        self._policy = policy

    def __dealloc__(self):
        c.ct_free(self._t)

    @property
    def policy(self):
        return self._policy

    def add_backend(self, backend_id, weight=1, up=True):
        cdef object bid = _ct_operator.index(backend_id)
        if not 0 <= bid <= _CT_MAX_ID:
            raise ValueError(f"backend id {backend_id} out of range 0..{_CT_MAX_ID}")
        cdef uint32_t w = _ct_check_weight(weight)
        cdef int rc = c.ct_add_backend(self._t, <uint32_t>bid, w, 1 if up else 0)
        if rc == c.CT_EEXIST:
            raise ValueError(f"backend {backend_id} already exists")
        if rc != c.CT_OK:
            raise MemoryError()

    def remove_backend(self, backend_id):
        cdef uint32_t bid = _ct_known_id(backend_id)
        cdef c.ct_flow *flows = NULL
        cdef size_t n = 0
        cdef int rc = c.ct_remove_backend(self._t, bid, &flows, &n)
        if rc == c.CT_ENOENT:
            raise KeyError(backend_id)
        if rc != c.CT_OK:
            raise MemoryError()
        return _ct_take_keys(flows, n)

    def set_up(self, backend_id, up):
        cdef uint32_t bid = _ct_known_id(backend_id)
        cdef c.ct_flow *flows = NULL
        cdef size_t n = 0
        cdef int rc = c.ct_set_up(self._t, bid, 1 if up else 0, &flows, &n)
        if rc == c.CT_ENOENT:
            raise KeyError(backend_id)
        if rc != c.CT_OK:
            raise MemoryError()
        return _ct_take_keys(flows, n)

    def set_weight(self, backend_id, weight):
        cdef uint32_t w = _ct_check_weight(weight)
        cdef uint32_t bid = _ct_known_id(backend_id)
        if c.ct_set_weight(self._t, bid, w) == c.CT_ENOENT:
            raise KeyError(backend_id)

    cdef const c.ct_backend *_backend(self, object backend_id) except NULL:
        cdef const c.ct_backend *b = c.ct_get_backend(self._t, _ct_known_id(backend_id))
        if b == NULL:
            raise KeyError(backend_id)
        return b

    def is_up(self, backend_id):
        return bool(self._backend(backend_id).up)

    def backends(self):
        cdef size_t i
        return [c.ct_backend_at(self._t, i).id for i in range(c.ct_backend_count(self._t))]

    def add_bytes(self, backend_id, nbytes):
        cdef object n = _ct_operator.index(nbytes)
        if not 0 <= n <= _CT_MASK64:
            raise ValueError(f"nbytes {nbytes} out of range 0..{_CT_MASK64}")
        if c.ct_add_bytes(self._t, _ct_known_id(backend_id), <uint64_t>n) == c.CT_ENOENT:
            raise KeyError(backend_id)

    def set_address(self, backend_id, str ip not None, port):
        cdef uint32_t bid = _ct_known_id(backend_id)
        cdef uint8_t addr[16]
        cdef uint8_t family
        if c.ct_get_backend(self._t, bid) == NULL:
            raise KeyError(backend_id)
        _ct_parse_addr(ip, addr, &family)
        cdef long p = _ct_check_port(port)
        if p == 0:
            raise ValueError(f"port {port} out of range 1..65535")
        if c.ct_set_address(self._t, bid, addr, family, <uint16_t>p) != c.CT_OK:
            raise KeyError(backend_id)

    def address(self, backend_id):
        cdef uint8_t addr[16]
        cdef int family = 0
        cdef uint16_t port = 0
        cdef int rc = c.ct_get_address(self._t, _ct_known_id(backend_id), addr, &family, &port)
        if rc == c.CT_ENOENT:
            raise KeyError(backend_id)
        if rc == 0:
            return None
        return (_ct_format_addr(addr, family), port)

    def stats(self, backend_id):
        cdef const c.ct_backend *b = self._backend(backend_id)
        return (b.active, b.total, b.bytes)

    def maglev_table(self):
        cdef const uint32_t *table = NULL
        cdef Py_ssize_t n = c.ct_maglev_table(self._t, &table)
        if n < 0:
            raise MemoryError()
        return [table[i] for i in range(n)]

    def lookup(self, proto, str src not None, sport, str dst not None, dport, double now):
        cdef c.ct_key k
        cdef uint32_t backend
        _ct_make_key(&k, proto, src, sport, dst, dport)
        cdef int rc = c.ct_lookup(self._t, &k, now, &backend)
        if rc == 1:
            return backend
        if rc == 0:
            return None
        raise MemoryError()

    def assign(self, proto, str src not None, sport, str dst not None, dport, backend_id,
               double now):
        cdef c.ct_key k
        _ct_make_key(&k, proto, src, sport, dst, dport)
        cdef uint32_t bid = _ct_known_id(backend_id)
        cdef int rc = c.ct_assign(self._t, &k, bid, now)
        if rc == c.CT_OK:
            return None
        if rc == c.CT_EEXIST:
            raise ValueError("flow already exists")
        if rc == c.CT_ENOENT:
            raise KeyError(backend_id)
        if rc == c.CT_EINVAL:
            raise ValueError(f"backend {backend_id} is down")
        raise MemoryError()

    def find(self, proto, str src not None, sport, str dst not None, dport):
        cdef c.ct_key k
        cdef uint32_t backend
        _ct_make_key(&k, proto, src, sport, dst, dport)
        if c.ct_find(self._t, &k, &backend):
            return backend
        return None

    def release(self, proto, str src not None, sport, str dst not None, dport):
        cdef c.ct_key k
        cdef uint32_t backend
        _ct_make_key(&k, proto, src, sport, dst, dport)
        if c.ct_release(self._t, &k, &backend):
            return backend
        return None

    def expire(self, double now, double idle):
        cdef c.ct_flow *flows = NULL
        cdef Py_ssize_t n = c.ct_expire(self._t, now, idle, &flows)
        cdef Py_ssize_t i
        cdef list out = []
        if n < 0:
            raise MemoryError()
        try:
            for i in range(n):
                out.append((_ct_flow_key(&flows[i].key), flows[i].backend))
        finally:
            c.ct_free_flows(flows)
        out.sort()
        return out

    def __len__(self):
        return c.ct_len(self._t)

    def __repr__(self):
        return (f"<ConnTable policy={self._policy} backends={c.ct_backend_count(self._t)} "
                f"flows={c.ct_len(self._t)}>")

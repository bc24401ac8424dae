# Declarations for gevent_proxyproto/_v2.py compiled as gevent_proxyproto._gevent_c_v2
# (setup.py, _accel.py). Offsets and lengths as C integers and the header as exact
# bytes: byte reads, comparisons and slices then run in C. bench/parse.py measures them.
cimport cython

# new_header(): ProxyHeader built in C (_c_header.pxd), not the Python function of _model.
from gevent_proxyproto._c_header cimport new_header

# texts: the address memo known as a dict, so .get() makes no bound method.
# octets: a pointer into data, whose slices are PyBytes_FromStringAndSize() calls.
@cython.locals(octets="const unsigned char*", available=Py_ssize_t, body_length=Py_ssize_t, length=Py_ssize_t,
               block_size=Py_ssize_t, address_size=Py_ssize_t, ports=Py_ssize_t, header=bytes, preamble=tuple,
               texts=dict)
cpdef tuple parse_v2(bytes data, object max_length=*)

cpdef str _address_text(object family, bytes packed)

cpdef tuple _checked_tlvs(bytes header, Py_ssize_t start)

# start and block_size stay Python ints: typed, Cython cannot type the two-tuple
# or one-tuple of offsets (LOCAL and UNSPEC only: not the hot path).
cpdef tuple _lenient_tlvs(bytes header, object start, object block_size)

@cython.locals(position=Py_ssize_t, tlv=tuple)
cpdef _check_tlvs(bytes header, Py_ssize_t start, tuple tlvs)

cpdef _check_crc32c(bytes header, Py_ssize_t start)

@cython.locals(size=Py_ssize_t)
cpdef _check_tlv(int tlv_type, bytes value)

# A dict known as a dict: .get() without a method lookup. (A C global, so not an
# attribute of the compiled module; the address memo stays one, for tests to see.)
cdef dict _PREAMBLES

# The constant imported from _wire as a C integer: the offsets computed from it stay
# C integers, and the slices of the header taken with them run in C.
cdef Py_ssize_t V2_PREAMBLE_LENGTH

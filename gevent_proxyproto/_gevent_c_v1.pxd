# Declarations for gevent_proxyproto/_v1.py compiled as gevent_proxyproto._gevent_c_v1
# (setup.py, _accel.py): the TCP4 line scanned byte by byte with C offsets and
# values over exact bytes. bench/instructions.py measures it.
cimport cython

# new_header(): ProxyHeader built in C (_c_header.pxd), not the Python function of _model.
from gevent_proxyproto._c_header cimport new_header

cdef bint _COMPILED
cdef unsigned char _SPACE, _DOT, _ZERO, _NINE, _CR, _LF
cdef Py_ssize_t _TCP4_MIN_LENGTH

@cython.locals(size=Py_ssize_t, source_start=Py_ssize_t, source_end=Py_ssize_t, destination_start=Py_ssize_t,
               destination_end=Py_ssize_t, source_port_start=Py_ssize_t, source_port_end=Py_ssize_t,
               destination_port_start=Py_ssize_t, destination_port_end=Py_ssize_t, source_port=long,
               destination_port=long, length=Py_ssize_t, octets="const unsigned char*")
cpdef tuple _scan_tcp4_line(bytes data)

@cython.locals(size=Py_ssize_t, start=Py_ssize_t, end=Py_ssize_t, field=int)
cpdef bint _scan_tcp4_prefix(bytes data)

@cython.locals(octet=int, end=Py_ssize_t)
cdef Py_ssize_t _ipv4_prefix_end(bytes data, Py_ssize_t position, Py_ssize_t size)

@cython.locals(octet=int, end=Py_ssize_t)
cdef Py_ssize_t _ipv4_end(bytes data, Py_ssize_t position, Py_ssize_t size)

cdef Py_ssize_t _digits_end(bytes data, Py_ssize_t position, Py_ssize_t size)

@cython.locals(digits=Py_ssize_t, value=long)
cdef long _decimal(bytes data, Py_ssize_t start, Py_ssize_t end, long maximum)

# Declarations for gevent_proxyproto/_tlvs.py compiled as gevent_proxyproto._gevent_c_tlvs
# (setup.py, _accel.py): the TLV walk with C offsets over exact bytes.
cimport cython

@cython.locals(position=Py_ssize_t, value_end=Py_ssize_t, tlvs=list)
cpdef split_tlvs(bytes data, Py_ssize_t start, Py_ssize_t end)

@cython.locals(position=Py_ssize_t)
cpdef bint tlvs_frame(bytes data, Py_ssize_t start, Py_ssize_t end)

# Declarations for gevent_proxyproto/_parser.py compiled as gevent_proxyproto._gevent_c_parser
# (setup.py, _accel.py): parse() calls parse_prefix() in C, not through the module's dict.

cpdef tuple parse_prefix(object data, object allow_v4_in_tcp6=*, object max_header_size=*)

# new_header() for the compiled parsers, cimported by _gevent_c_v1.pxd and
# _gevent_c_v2.pxd (a declaration file only: no module of its own).
#
# The same ProxyHeader as _model.new_header() builds, in C: the object
# allocated by its type and its eight slots stored through their member
# descriptors (what object.__setattr__ ends in, without the type's attribute
# lookup and checks before it). Python code cannot build it this cheaply:
# new_header() there makes an _UnfrozenHeader and changes its __class__.
# bench/instructions.py: about 1,400 instructions fewer per v2 connection.
#
# The pure modules bind the name new_header to _model.new_header with
# globals(), which Cython leaves alone (an import of the name would be an
# assignment to this declaration, which Cython refuses).

cdef extern from *:
    """
    /* ProxyHeader and its slots' member descriptors, in new_header()'s
       parameter order: looked up on the first header, checked, then kept. */
    static PyTypeObject *pp_header_type = NULL;
    static PyObject *pp_header_fields[8];

    static int pp_header_prepare(void)
    {
        static const char *const names[8] = {
            "version", "command", "family", "protocol", "source", "destination", "tlvs", "raw"};
        PyObject *module, *type, *slots;
        Py_ssize_t count;
        int i;

        module = PyImport_ImportModule("gevent_proxyproto._model");
        if (module == NULL)
            return -1;
        type = PyObject_GetAttrString(module, "ProxyHeader");
        Py_DECREF(module);
        if (type == NULL)
            return -1;
        slots = PyObject_GetAttrString(type, "__slots__");
        count = slots != NULL && PyTuple_Check(slots) ? PyTuple_GET_SIZE(slots) : -1;
        Py_XDECREF(slots);
        if (count != 8 || !PyType_Check(type)) {
            /* A field added to ProxyHeader must be added here too. */
            Py_DECREF(type);
            PyErr_Format(PyExc_RuntimeError,
                         "gevent_proxyproto: ProxyHeader has %zd slots, the compiled parser stores 8: rebuild it",
                         count);
            return -1;
        }
        for (i = 0; i < 8; i++) {
            PyObject *field = PyObject_GetAttrString(type, names[i]);
            if (field != NULL && (!PyObject_TypeCheck(field, &PyMemberDescr_Type)
                                  || PyDescr_TYPE(field) != (PyTypeObject *)type)) {
                PyErr_Format(PyExc_RuntimeError, "gevent_proxyproto: ProxyHeader.%s is not a slot", names[i]);
                Py_CLEAR(field);
            }
            if (field == NULL) {
                while (--i >= 0)
                    Py_CLEAR(pp_header_fields[i]);
                Py_DECREF(type);
                return -1;
            }
            pp_header_fields[i] = field;
        }
        pp_header_type = (PyTypeObject *)type;
        return 0;
    }

    static PyObject *pp_new_header(PyObject *version, PyObject *command, PyObject *family, PyObject *protocol,
                                   PyObject *source, PyObject *destination, PyObject *tlvs, PyObject *raw)
    {
        PyObject *values[8] = {version, command, family, protocol, source, destination, tlvs, raw};
        PyObject *header;
        int i;

        if (pp_header_type == NULL && pp_header_prepare() < 0)
            return NULL;
        header = pp_header_type->tp_alloc(pp_header_type, 0);
        if (header == NULL)
            return NULL;
        for (i = 0; i < 8; i++) {
            PyObject *field = pp_header_fields[i];
            if (Py_TYPE(field)->tp_descr_set(field, header, values[i]) < 0) {
                Py_DECREF(header);
                return NULL;
            }
        }
        return header;
    }
    """
    # ProxyHeader(version, command, family, protocol, source, destination, tlvs) with raw set.
    object new_header "pp_new_header" (object version, object command, object family, object protocol,
                                       object source, object destination, object tlvs, object raw)

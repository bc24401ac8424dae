"""The optional compiled parse core, in gevent's manner.

A module of the parse path (``_parser``, ``_v1``, ``_v2``, ``_tlvs``) may also be built by
Cython from the same ``.py`` source as ``_gevent_c_<name>`` (setup.py, with
the declarations of ``_gevent_c_<name>.pxd``). The pure module's last line
calls :func:`import_c_accel`: when the compiled module is importable and
``PURE_PYTHON`` is not set, the pure module takes over all of its names, so
everything that imports from it gets the compiled functions. Standard library
only: the parse core must not import gevent.
"""

import importlib
import os
from typing import Any

#: gevent's switch: set (to anything but an empty string), every module stays pure Python.
PURE_PYTHON = bool(os.environ.get("PURE_PYTHON"))


def import_c_accel(namespace: dict[str, Any], compiled_name: str) -> None:
    """Replace the module ``namespace`` by the compiled module ``compiled_name``'s, if there is one.

    Nothing happens under ``PURE_PYTHON``, when the compiled module is not
    built (no compiler, no Cython, another interpreter), or when the caller is
    the compiled module itself, which runs the same last line. A compiled
    module that exists but fails to import (built from older sources) raises:
    silently running pure Python instead would hide it.
    """
    name = namespace.get("__name__")
    if PURE_PYTHON or not name or name == compiled_name:
        return
    try:
        compiled = importlib.import_module(compiled_name)
    except ModuleNotFoundError as error:
        if error.name != compiled_name:
            raise
        return
    # All of its names, as gevent does: __name__ and __file__ then say which
    # module runs (`gevent_proxyproto._v2.__name__`), and nothing of the pure
    # one is left behind to be patched in vain.
    namespace.clear()
    namespace.update(compiled.__dict__)

"""Packaging for gevent-proxyproto. The version lives in gevent_proxyproto/_version.py only."""

import os
import pathlib
import platform
import re
import sys

from setuptools import Extension, find_packages, setup

HERE = pathlib.Path(__file__).resolve().parent
VERSION = re.search(
    r'^__version__ = "([^"]+)"', (HERE / "gevent_proxyproto" / "_version.py").read_text(), re.M
).group(1)  # type: ignore[union-attr]

#: The parse path, also compiled by Cython from the same .py sources when Cython
#: and a C compiler are present, in gevent's manner: gevent_proxyproto/_v2.py
#: becomes the extension gevent_proxyproto._gevent_c_v2, typed by the
#: declarations of gevent_proxyproto/_gevent_c_v2.pxd, and the pure module adopts
#: it at import (gevent_proxyproto/_accel.py). Only what bench/parse.py and
#: bench/connections.py show gains (_v1: its TCP4 scan). Never a module that uses
#: gevent: compiled, _socket and _server ran fewer instructions but served fewer
#: connections per second (BENCHMARKS.md, the instructions section).
ACCELERATED = ("_tlvs", "_v2", "_v1", "_parser")
#: Declarations with no module of their own, cimported by those of the modules above.
SHARED_DECLARATIONS = HERE / "gevent_proxyproto" / "_c_header.pxd"


def accelerator_extensions() -> list[Extension]:
    """The compiled parse core; none under PURE_PYTHON, on another interpreter, or without Cython."""
    if os.environ.get("PURE_PYTHON") or platform.python_implementation() != "CPython":
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        print("gevent-proxyproto: Cython is not installed: pure Python only", file=sys.stderr)
        return []
    extensions = []
    for name in ACCELERATED:
        declarations = HERE / "gevent_proxyproto" / f"_gevent_c{name}.pxd"
        extensions.append(
            Extension(
                f"gevent_proxyproto._gevent_c{name}",
                [f"gevent_proxyproto/{name}.py"],
                # Its declarations, and those every one may cimport (_c_header.pxd).
                depends=[str(path.relative_to(HERE)) for path in (declarations, SHARED_DECLARATIONS) if path.exists()],
            )
        )
    # The types are the .pxd files' business: the .py annotations are mypy's.
    # force: Cython's change tracking knows _v2.pxd, not our _gevent_c_v2.pxd.
    directives = {"language_level": 3, "annotation_typing": False}
    try:
        compiled = cythonize(extensions, compiler_directives=directives, build_dir="build/cython", quiet=True, force=True)
    except Exception as error:  # a Cython release that refuses our sources: still installable
        print(f"gevent-proxyproto: Cython failed ({error}): pure Python only", file=sys.stderr)
        return []
    for extension in compiled:
        # A failed C compilation (no compiler, no Python headers) warns and leaves
        # the pure module in use instead of failing the install. Set here: cythonize()
        # makes new Extension objects, without this flag.
        extension.optional = True
    return compiled  # type: ignore[no-any-return]


setup(
    name="gevent-proxyproto",
    version=VERSION,
    description="PROXY protocol v1/v2 for gevent servers: the real client address behind a load balancer",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    packages=find_packages(include=["gevent_proxyproto", "gevent_proxyproto.*"]),
    package_data={"gevent_proxyproto": ["py.typed", "*.pxd"]},
    ext_modules=accelerator_extensions(),
    python_requires=">=3.10",
    install_requires=[
        "gevent>=24.2",
        # CRC32C in C (SSE4.2 / ARMv8 instructions, else slice-by-8): wheels for
        # every CPython 3.10+ on Linux (glibc, musl), macOS and Windows. Other
        # interpreters use the pure-Python fall-back of _crc32c.py.
        'crc32c>=2.7; platform_python_implementation == "CPython"',
        # tomllib is in the standard library from Python 3.11.
        'tomli>=1.1; python_version < "3.11"',
    ],
    entry_points={"console_scripts": ["gevent-proxyproto = gevent_proxyproto.__main__:main"]},
    extras_require={
        # cffi: gevent's libuv loop (GEVENT_LOOP=libuv), under which tests/test_robustness.py
        # runs a server; gevent does not require it.
        "test": ["pytest>=7", "mock>=5", "hypothesis>=6.80", "gunicorn>=24.1", "cffi>=1.17"],
        # gevent_proxyproto.gunicorn: the gunicorn workers.
        "gunicorn": ["gunicorn>=24.1"],
        # Kept for installs that name it; crc32c is now a default dependency.
        "speedups": [],
    },
    classifiers=[
        "Framework :: gevent",
        "Intended Audience :: Developers",
        "License :: OSI Approved :: MIT License",
        "Programming Language :: Python :: 3 :: Only",
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
        "Topic :: Internet :: Proxy Servers",
        "Typing :: Typed",
    ],
)

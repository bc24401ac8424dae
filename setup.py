"""Packaging for gevent-proxyproto. The version lives in gevent_proxyproto/_version.py only."""

import pathlib
import re

from setuptools import find_packages, setup

HERE = pathlib.Path(__file__).resolve().parent
VERSION = re.search(
    r'^__version__ = "([^"]+)"', (HERE / "gevent_proxyproto" / "_version.py").read_text(), re.M
).group(1)  # type: ignore[union-attr]

setup(
    name="gevent-proxyproto",
    version=VERSION,
    description="PROXY protocol v1/v2 for gevent servers: the real client address behind a load balancer",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    packages=find_packages(include=["gevent_proxyproto", "gevent_proxyproto.*"]),
    package_data={"gevent_proxyproto": ["py.typed"]},
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
        "test": ["pytest>=7", "mock>=5", "hypothesis>=6.80", "gunicorn>=24.1"],
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

"""Sphinx configuration: the reference manual of gevent-proxyproto.

Built by ``tox -e docs`` (and CI) with warnings as errors, so a broken reference or a docstring
that does not render fails the build.
"""

import pathlib
import re
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

project = "gevent-proxyproto"
author = "gevent-proxyproto contributors"
copyright = "2026, gevent-proxyproto contributors"
release = re.search(
    r'^__version__ = "([^"]+)"', (HERE.parent / "gevent_proxyproto" / "_version.py").read_text(), re.M
).group(1)  # type: ignore[union-attr]
version = release

extensions = [
    "sphinx.ext.autodoc",
    # The docstrings use the Google style (Args / Returns / Raises).
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
# No network at build time: references to the stdlib stay plain text.
intersphinx_mapping: dict[str, tuple[str, None]] = {}
nitpicky = False

exclude_patterns = ["_build"]
html_theme = "alabaster"
html_static_path: list[str] = []

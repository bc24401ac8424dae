"""Import hygiene: the package's import graph, and what importing it loads."""

import ast
import subprocess
import sys
import textwrap

import gevent_proxyproto as gpp

from .conftest import REPO


def test_the_package_imports_have_no_loop() -> None:
    # tools/import_graph.py reads every module's imports (lazy ones included) and exits 1 on a loop.
    result = subprocess.run(
        [sys.executable, str(REPO / "tools" / "import_graph.py")], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1] == "no loop"
    # The wire constants are the bottom layer, under both the parsers and the builder.
    layer = {line.split()[1]: int(line.split()[0]) for line in lines[:-1]}
    assert layer["_wire"] == 0 and layer["_model"] < min(layer["_v1"], layer["_v2"], layer["_builder"])


def test_type_checkers_see_every_lazily_loaded_name() -> None:
    # __init__'s `if TYPE_CHECKING:` imports must name the same things, from the same modules, as _LAZY;
    # tests/typecheck_public_names.py (tox -e mypy) checks that mypy then sees their real types.
    tree = ast.parse((REPO / "gevent_proxyproto" / "__init__.py").read_text(encoding="utf-8"))
    [block] = [node for node in tree.body if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"]
    for_type_checkers = {
        alias.name: "." + statement.module
        for statement in block.body
        if isinstance(statement, ast.ImportFrom) and statement.module
        for alias in statement.names
    }
    assert for_type_checkers == gpp._LAZY
    assert set(gpp._LAZY) <= set(gpp.__all__)


def test_every_public_name_resolves() -> None:
    # A name in __all__ that no module defines would fail only when a user first touches it.
    assert [name for name in gpp.__all__ if not hasattr(gpp, name)] == []


def test_import_does_not_import_gevent() -> None:
    code = textwrap.dedent(
        """
        import sys
        import gevent_proxyproto
        loaded = sorted(name for name in sys.modules if name == "gevent" or name.startswith("gevent."))
        assert not loaded, loaded
        header, length = gevent_proxyproto.parse(b"PROXY UNKNOWN\\r\\n")
        gevent_proxyproto.build_v2(source=("192.0.2.1", 1), destination=("192.0.2.2", 2), crc32c=True)
        loaded = sorted(name for name in sys.modules if name == "gevent" or name.startswith("gevent."))
        assert not loaded, loaded
        print(gevent_proxyproto.__file__)
        """
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith(str(REPO / "gevent_proxyproto")), result.stdout


def test_loading_a_configuration_does_not_import_gevent() -> None:
    # `check` and tools that read a TOML file need no event loop: the policy is pure.
    code = textwrap.dedent(
        """
        import sys
        from gevent_proxyproto._config import config_from_mapping
        config = config_from_mapping({"header_timeout": 3, "trusted_proxies": ["10.0.0.0/8"], "proxy_ports": [9000]})
        assert config.policy.header_timeout == config.header_timeout == 3
        assert ("10.1.2.3", 1) in config.policy.trusted
        loaded = sorted(name for name in sys.modules if name == "gevent" or name.startswith("gevent."))
        assert not loaded, loaded
        """
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr

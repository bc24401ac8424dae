"""Import hygiene: the package's import graph, and what importing it loads."""

import subprocess
import sys

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

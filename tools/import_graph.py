"""Print the package's internal import graph, and fail on a loop.

    python tools/import_graph.py [--all]

One line per module of ``gevent_proxyproto``, lowest layer first: the package
modules it imports, read from the source with ``ast`` (nothing is imported or
run). A module's layer is one above the highest module it imports, so every
arrow points down a layer or more. Imports made
inside functions count too, marked ``(lazy)``: they are edges all the same;
``if TYPE_CHECKING:`` imports are left out (mypy reads them, Python never
runs them) unless ``--all`` is given. Exits 1, naming the loop, if the graph
has one.
"""

import ast
import pathlib
import sys

PACKAGE = "gevent_proxyproto"
ROOT = pathlib.Path(__file__).resolve().parent.parent / PACKAGE


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.Module, with_type_checking: bool) -> dict[str, bool]:
    """Package module -> True when imported only inside a function (lazily)."""
    found: dict[str, bool] = {}

    def add(module: str, lazy: bool) -> None:
        # Once imported at module level, an edge is not lazy.
        found[module] = found.get(module, True) and lazy

    def visit(node: ast.AST, lazy: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node) and not with_type_checking:
            for statement in node.orelse:
                visit(statement, lazy)
            return
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            for module in [node.module] if node.module else [alias.name for alias in node.names]:
                add(module, lazy)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(PACKAGE + "."):
            add(node.module.split(".")[1], lazy)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(PACKAGE + "."):
                    add(alias.name.split(".")[1], lazy)
        inner = lazy or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(tree, False)
    return found


def _lazy_table(tree: ast.Module) -> set[str]:
    """The modules named in ``__init__``'s ``_LAZY`` table (loaded by ``__getattr__``)."""
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "_LAZY" for t in node.targets):
            value = ast.literal_eval(node.value)
            return {module.lstrip(".") for module in value.values()}
    return set()


def graph(with_type_checking: bool = False) -> dict[str, dict[str, bool]]:
    edges: dict[str, dict[str, bool]] = {}
    for path in sorted(ROOT.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        imports = _imports(tree, with_type_checking)
        if path.stem == "__init__":
            for name in _lazy_table(tree):
                imports.setdefault(name, True)
        edges[path.stem] = imports
    return edges


def find_cycle(edges: dict[str, dict[str, bool]]) -> list[str] | None:
    """A loop among the package's modules (``__init__`` aside: every module's parent), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def walk(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(edges.get(module, {})):
            if target == "__init__":
                continue
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target not in state:
                cycle = walk(target)
                if cycle:
                    return cycle
        path.pop()
        state[module] = 2
        return None

    for module in sorted(edges):
        if module != "__init__" and module not in state:
            cycle = walk(module)
            if cycle:
                return cycle
    return None


def layers(edges: dict[str, dict[str, bool]]) -> dict[str, int]:
    """Module -> 0 when it imports no package module, else 1 + the highest layer it imports."""
    found: dict[str, int] = {}

    def layer(module: str) -> int:
        if module not in found:
            below = [layer(target) for target in edges.get(module, {}) if target != "__init__"]
            found[module] = 1 + max(below) if below else 0
        return found[module]

    for module in edges:
        layer(module)
    return found


def main() -> int:
    edges = graph(with_type_checking="--all" in sys.argv[1:])
    cycle = find_cycle(edges)
    if cycle:
        for module, imports in edges.items():
            print(f"{module:12} -> {', '.join(sorted(imports)) or '-'}")
        print("loop: " + " -> ".join(cycle))
        return 1
    by_layer = layers(edges)
    for module in sorted(edges, key=lambda name: (by_layer[name], name)):
        shown = ", ".join(name + (" (lazy)" if lazy else "") for name, lazy in sorted(edges[module].items()))
        print(f"{by_layer[module]:2} {module:12} -> {shown or '-'}")
    print("no loop")
    return 0


if __name__ == "__main__":
    sys.exit(main())

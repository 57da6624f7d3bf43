"""The house's shape: data flows one way through the package, and functions stay short.

Both read the source with ``ast`` (nothing is imported), counting imports inside
functions too: a lazy import that closes a circle is still a circle.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "retriever"
LONGEST_FUNCTION = 80
# The modules of the package itself: the lazy table of public names, and the old path of
# the export module; they belong to no stage.
TOP_LEVEL = {"retriever", "retriever.st_module"}


def _modules() -> dict[str, Path]:
    """``{dotted name: file}`` of every module of the package."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        modules[name.removesuffix(".__init__")] = path
    return modules


def _imported(module: str, path: Path, node: ast.AST) -> list[str]:
    """The dotted names an import statement may bind (a module, or a name in one)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    source = node.module or ""
    if node.level:  # relative: from the module's own package upwards
        package = module.split(".")
        if path.name != "__init__.py":
            package = package[:-1]
        base = package[: len(package) - node.level + 1]
        source = ".".join([*base, source] if source else base)
    return [source, *(f"{source}.{alias.name}" for alias in node.names)]


def _import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            for target in _imported(name, path, node):
                # The package itself is the lazy export table: importing it is no edge.
                if target in modules and target not in (name, "retriever"):
                    graph[name].add(target)
    return graph


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return circles


def _documented_house() -> dict[str, tuple[set[str], set[str] | None]]:
    """``{package: (its modules, the packages it may import, None for all)}`` from the table
    in docs/development.md."""
    text = (ROOT / "docs" / "development.md").read_text(encoding="utf-8")
    house = {}
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 4 or not re.fullmatch(r"`\w+`", cells[0]):
            continue
        package = cells[0].strip("`")
        modules = {f"retriever.{package}.{name}" for name in re.findall(r"`([\w.]+)`", cells[2])}
        allowed = None if cells[3] == "every package" else set(re.findall(r"`(\w+)`", cells[3]))
        house[package] = ({f"retriever.{package}", *modules}, allowed)
    return house


def _stage(module: str) -> str:
    return module.split(".")[1]


def test_every_module_is_in_the_house_plan() -> None:
    documented = {m for modules, _ in _documented_house().values() for m in modules}
    assert set(_modules()) - TOP_LEVEL == documented


def _against_the_order(
    graph: dict[str, set[str]], house: dict[str, tuple[set[str], set[str] | None]]
) -> list[str]:
    """Each import of a module from a package its own package may not import."""
    wrong = []
    for module, targets in graph.items():
        if module in TOP_LEVEL:
            continue
        allowed = house[_stage(module)][1]
        for target in targets - TOP_LEVEL:
            stage = _stage(target)
            if stage != _stage(module) and allowed is not None and stage not in allowed:
                wrong.append(f"{module} imports {target}")
    return wrong


def test_every_import_follows_the_documented_order() -> None:
    assert _against_the_order(_import_graph(), _documented_house()) == []


def test_the_order_check_sees_an_import_upstream() -> None:
    house = {"core": (set(), set()), "store": (set(), {"core"}), "index": (set(), {"store"})}
    graph = {
        "retriever.store.embeddings": {"retriever.index.manifest", "retriever.core.errors"},
        "retriever.index.build": {"retriever.store.embeddings"},
    }
    assert _against_the_order(graph, house) == [
        "retriever.store.embeddings imports retriever.index.manifest"
    ]


def test_the_documented_order_runs_one_way() -> None:
    """Each package may import only packages listed before it in the table."""
    house = _documented_house()
    order = list(house)
    for package, (_, allowed) in house.items():
        if allowed is not None:
            assert all(order.index(other) < order.index(package) for other in allowed), package


def test_the_package_has_no_import_circles() -> None:
    assert _circles(_import_graph()) == []


def test_the_circle_finder_sees_a_lazy_import_circle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _circles(graph) == [["a", "b", "c"]]


def test_no_function_is_longer_than_80_lines() -> None:
    long = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                where = f"{path.relative_to(PACKAGE.parent).as_posix()}:{node.name}"
                if lines > LONGEST_FUNCTION:
                    long[where] = lines
    assert long == {}

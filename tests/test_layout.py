"""The packages' layout: no import circles among gigagan's or gigagan_kernels' modules, and a training loop short
enough to read top to bottom. Parsed with ast, so nothing here imports torch."""
import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _modules(root: pathlib.Path, package: str) -> dict:
    """{dotted name: path} of every module of the package; a package's __init__.py is named as the package."""
    modules = {}
    for path in (root / package).rglob("*.py"):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _imports(name: str, path: pathlib.Path, modules: dict) -> set:
    """The modules of `modules` that `name` imports anywhere in its file: at the top, in a function or under
    TYPE_CHECKING alike, since each of those still ties the two modules together. `from X import y` counts X.y
    when that is a module, else X. The parent packages that Python imports on the way are not counted."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in modules)
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            source = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:
                if f"{source}.{alias.name}" in modules:
                    found.add(f"{source}.{alias.name}")
                elif source in modules:
                    found.add(source)
    found.discard(name)
    return found


def _circles(graph: dict) -> list:
    """The groups of modules that import one another round a circle (Tarjan's strongly connected components
    with more than one module), each sorted."""
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(node):
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
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                circles.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(circles)


def _import_graph(root: pathlib.Path, package: str) -> dict:
    modules = _modules(root, package)
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_no_import_circles_among_gigagan_modules():
    """Once there were two: cli <-> __main__ (config_flag) and generator <-> latent (truncation)."""
    graph = _import_graph(ROOT, "gigagan")
    assert {"gigagan.cli", "gigagan.__main__", "gigagan.generator", "gigagan.latent"} <= set(graph)
    assert _circles(graph) == []


def test_no_import_circles_among_gigagan_kernels_modules():
    """The ops' packages, the dispatcher and the cost model: the launch tables and plans sit in each op's plans.py,
    which the launchers and the cost model import; the choice (dispatcher.py) imports the backends, not the
    reverse."""
    graph = _import_graph(ROOT, "gigagan_kernels")
    assert {"gigagan_kernels.ops.adaptive_modconv2d.plans", "gigagan_kernels.cost_model",
            "gigagan_kernels.dispatcher", "gigagan_kernels.backend"} <= set(graph)
    assert "gigagan_kernels.ops.adaptive_modconv2d.plans" in graph["gigagan_kernels.cost_model"]
    assert _circles(graph) == []


def test_the_import_graph_sees_function_level_and_type_checking_imports(tmp_path):
    """The check above is only as good as its parser: a circle made of a TYPE_CHECKING import and one inside a
    function is found, and so is one through `from . import module`."""
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import B\n")
    (package / "b.py").write_text("def f():\n    from . import a\n")
    (package / "sub" / "c.py").write_text("from .. import b\nimport pkg.sub.d\n")
    (package / "sub" / "d.py").write_text("from ..sub.c import x\n")
    graph = _import_graph(tmp_path, "pkg")
    assert graph["pkg.a"] == {"pkg.b"} and graph["pkg.b"] == {"pkg.a"}
    assert graph["pkg.sub.c"] == {"pkg.b", "pkg.sub.d"} and graph["pkg.sub.d"] == {"pkg.sub.c"}
    assert _circles(graph) == [["pkg.a", "pkg.b"], ["pkg.sub.c", "pkg.sub.d"]]


def test_the_training_loop_reads_in_at_most_300_lines():
    """loop.py is the loop, read top to bottom as nanoGPT's train.py; its parts live in the modules beside it."""
    lines = (ROOT / "gigagan" / "training" / "loop.py").read_text().splitlines()
    assert len(lines) <= 300, f"gigagan/training/loop.py has {len(lines)} lines"

"""The package's one layout rule, read from its source with ``ast``: each stage imports only from
the stages before it (base -> beton -> write -> load -> train -> tools; ``commands`` may import
anything), and no modules import each other in a cycle. Imports inside functions count too: a
lazy import against the order is still a dependency against it."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "ffcv_utils"
STAGES = ["base", "beton", "write", "load", "train", "tools"]
FREE = {"ffcv_utils", "ffcv_utils.commands"}  # the package's start-up and the console scripts


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path, name: str, known: set[str]) -> set[str]:
    """Modules of the package that ``path`` (module ``name``) imports, anywhere in its body."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [module] + [f"{module}.{a.name}" for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # a name inside a module: the module
                target = target.rpartition(".")[0]
            if target and target != name and target not in _parents(name):
                found.add(target)
    return found


def _parents(name: str) -> set[str]:
    parts = name.split(".")
    return {".".join(parts[:k]) for k in range(1, len(parts))}


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    paths = {module_name(p, root): p for p in root.rglob("*.py")}
    known = set(paths)
    return {name: imported(path, name, known) for name, path in paths.items()}


def stage(name: str) -> int | None:
    parts = name.split(".")
    return STAGES.index(parts[1]) if len(parts) > 1 and parts[1] in STAGES else None


def against_the_order(graph: dict[str, set[str]]) -> list[str]:
    wrong = []
    for name, targets in graph.items():
        if name in FREE:
            continue
        for target in sorted(targets):
            if target in FREE or stage(name) is None or stage(target) is None \
                    or stage(target) > stage(name):
                wrong.append(f"{name} imports {target}")
    return wrong


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected set of modules (depth-first search)."""
    found, done, path = [], set(), []

    def visit(node):
        if node in path:
            found.append(path[path.index(node):] + [node])
            return
        if node in done:
            return
        path.append(node)
        for target in sorted(graph.get(node, ())):
            visit(target)
        path.pop()
        done.add(node)

    for node in sorted(graph):
        visit(node)
    return found


def test_every_module_belongs_to_a_stage():
    assert not [n for n in import_graph() if n not in FREE and stage(n) is None]


def test_each_stage_imports_only_the_stages_before_it():
    assert against_the_order(import_graph()) == []


def test_no_import_cycle():
    assert cycles(import_graph()) == []


def test_the_checks_catch_a_cycle_and_a_backward_import(tmp_path):
    """The rule's own test: a package with a cycle and a backward import is caught."""
    root = tmp_path / "ffcv_utils"
    for stage_name in ("base", "load"):
        (root / stage_name).mkdir(parents=True)
        (root / stage_name / "__init__.py").write_text("")
    (root / "__init__.py").write_text("")
    (root / "base" / "a.py").write_text("def f():\n    from ..load.b import g\n")
    (root / "load" / "b.py").write_text("from ffcv_utils.base import a\n")
    graph = import_graph(root)
    assert against_the_order(graph) == ["ffcv_utils.base.a imports ffcv_utils.load.b"]
    assert cycles(graph) == [["ffcv_utils.base.a", "ffcv_utils.load.b", "ffcv_utils.base.a"]]

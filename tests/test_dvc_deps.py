"""Deps that cannot go stale: every module a stage script reaches is among that stage's deps in dvc.yaml.

The imports are read from the source (AST), transitively, including imports inside functions, so a new
import that a stage's deps miss fails here instead of leaving `dvc repro` blind to a change."""

import ast
import os

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "humpback"
# Modules that shape no output, so that editing them reruns nothing: the error and timing wrapper every
# stage runs under, and the token counters it logs (logs/, not a DVC out).
NO_OUTPUT_EFFECT = {"humpback/stage.py", "humpback/work.py"}


def module_file(name: str) -> str | None:
    """`humpback.a.b` -> its file relative to ROOT (a module or a package's __init__), or None."""
    rel = name.replace(".", "/")
    for candidate in (f"{rel}.py", f"{rel}/__init__.py"):
        if os.path.isfile(os.path.join(ROOT, candidate)):
            return candidate
    return None


def _package_of(path: str) -> str:
    """The dotted package a file's relative imports start from."""
    parts = path[:-3].split("/")
    return ".".join(parts[:-1] if parts[-1] != "__init__" else parts[:-1])


def imported_modules(path: str) -> set[str]:
    """Dotted names of the humpback modules a file imports (absolute and relative, anywhere in it)."""
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _package_of(path).split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            names.add(mod)
            names |= {f"{mod}.{a.name}" for a in node.names}  # `from humpback import curation` may name a module
    return {n for n in names if n == PACKAGE or n.startswith(PACKAGE + ".")}


def reached_files(script: str) -> set[str]:
    """Every file under humpback/ that running `script` executes an import of, with the parent packages'
    __init__ files (importing a.b runs a/__init__.py first)."""
    seen, todo = set(), [script]
    while todo:
        path = todo.pop()
        for name in imported_modules(path):
            parts = name.split(".")
            for i in range(1, len(parts) + 1):
                file = module_file(".".join(parts[:i]))
                if file and file not in seen:
                    seen.add(file)
                    todo.append(file)
    return seen


def covered(file: str, deps: list[str]) -> bool:
    return any(file == d or file.startswith(d.rstrip("/") + "/") for d in deps)


def stages():
    with open(os.path.join(ROOT, "dvc.yaml"), encoding="utf-8") as f:
        return yaml.safe_load(f)["stages"]


def stage_script(stage: dict) -> str:
    script = next(w for w in stage["cmd"].split() if w.startswith("stages/") and w.endswith(".py"))
    return script


@pytest.mark.parametrize("name", sorted(stages()))
def test_deps_cover_every_module_the_stage_script_imports(name):
    stage = stages()[name]
    deps = [d for d in stage.get("deps", []) if isinstance(d, str)]
    script = stage_script(stage)
    assert script in deps, f"{name}: its script {script} is not among its deps"
    missing = sorted(f for f in reached_files(script) - NO_OUTPUT_EFFECT if not covered(f, deps))
    assert not missing, f"dvc.yaml stage {name!r} imports {missing} but does not list them (or a folder holding them) as deps"


def test_the_walk_sees_imports_inside_functions_and_relative_ones(tmp_path, monkeypatch):
    """The walker itself: a lazy relative import deep in a function is found (so the test above can fail)."""
    reached = reached_files("stages/evaluate.py")
    assert "humpback/__init__.py" in reached
    assert any(f.startswith("humpback/models") for f in reached)
    # A stage that lists nothing of the package misses everything it imports.
    assert not covered("humpback/models.py", ["stages/evaluate.py", "humpback/model"])
    assert covered("humpback/engine/base.py", ["humpback/engine"])


def test_the_package_has_no_import_circles_and_no_module_over_300_lines():
    """One concern per module: a module imports lower layers only (never, also lazily, one that imports it
    back), and none grows past 300 lines."""
    import glob

    files = [os.path.relpath(f, ROOT) for f in glob.glob(os.path.join(ROOT, PACKAGE, "**", "*.py"), recursive=True)]
    long = {f: n for f in files if (n := sum(1 for _ in open(os.path.join(ROOT, f), encoding="utf-8"))) > 300}
    assert not long, f"modules over 300 lines: {long}"
    graph = {}
    for f in files:
        targets = {module_file(name) for name in imported_modules(f)} - {None, f}
        # a module's own parent packages run before it: that is not an edge of the module graph
        graph[f] = {m for m in targets if not (m.endswith("__init__.py") and f.startswith(os.path.dirname(m) + "/"))}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            assert state.get(nxt) != 1, f"import circle: {' -> '.join(path[path.index(nxt):] + [nxt])}"
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for f in sorted(files):
        if f not in state:
            visit(f, [f])

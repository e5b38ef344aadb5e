"""zoo's modules import one another one way: read from the source with ``ast`` (module-level and deferred imports
alike), no module imports a module of a later layer, and so no import circle can form."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# the installed package names of the source folders (setup.cfg's package_dir)
FOLDERS = {"zoo": ROOT / "zoo", "zoo.models": ROOT / "models", "zoo.modules": ROOT / "modules",
           "zoo.datamodules": ROOT / "datamodules"}  # fmt: skip


def _modules() -> dict[str, Path]:
    modules = {}
    for package, folder in FOLDERS.items():
        for path in folder.rglob("*.py"):
            parts = [p for p in path.relative_to(folder).with_suffix("").parts if p != "__init__"]
            modules[".".join([package, *parts])] = path
    return modules


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The zoo modules ``name`` imports: for ``from a.b import c``, ``a.b.c`` when it is a module, else ``a.b``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iteratively)."""
    index, low, on_stack, stack, found, counter = {}, {}, set(), [], [], 0
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def test_the_circle_finder_finds_a_circle_and_nothing_else():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert circles(graph) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_deferred_and_relative_imports():
    graph = import_graph()
    assert "zoo.generation.hf" in graph["zoo.generation"]  # imported inside in_place_engine
    assert "zoo.tasks.base" in graph["zoo.search.task"]
    assert len(graph) > 100


def test_no_module_imports_itself_through_others():
    assert circles(import_graph()) == []


# The layers, lowest first: a module may import its own layer's and earlier layers' modules only. The longest
# matching prefix decides a module's layer (zoo.tasks.base, a leaf, sits low; the registry zoo.tasks above the
# papers' packages whose tasks it names).
LAYERS = [
    ["zoo", "zoo.errors", "zoo.io"],
    ["zoo.tasks.base"],
    ["zoo.models"],
    ["zoo.training"],
    ["zoo.hub"],
    ["zoo.text"],
    ["zoo.generation"],
    ["zoo.rl"],
    ["zoo.envs", "zoo.search", "zoo.synth", "zoo.infusion", "zoo.analysis"],
    ["zoo.tasks"],
    ["zoo.rollout", "zoo.callbacks"],
    ["zoo.datamodules", "zoo.modules"],
    ["zoo.run", "zoo.cli", "zoo.__main__"],
]


def layer(module: str) -> int:
    matches = [(len(name), i) for i, names in enumerate(LAYERS) for name in names
               if module == name or module.startswith(f"{name}.")]  # fmt: skip
    return max(matches)[1]


def test_every_module_has_a_layer_and_the_layers_are_ordered():
    assert layer("zoo.tasks.base") < layer("zoo.search.task") < layer("zoo.tasks.registry")
    assert layer("zoo.io.files") == 0 and layer("zoo.cli.fit") == len(LAYERS) - 1
    for module in import_graph():
        layer(module)  # no module outside the table


def test_no_module_imports_a_later_layer():
    upward = sorted((m, d) for m, deps in import_graph().items() for d in deps if layer(d) > layer(m))
    assert upward == []

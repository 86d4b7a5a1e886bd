"""The package's import graph (every import statement, function-local ones included, read with
ast from the source) has no cycle, and checkpoint/ imports nothing of ours but errors.py."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "megatron_vist2"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set) -> set:
    """The package modules ``path`` imports (``from . import x`` resolved to the module x when
    it is one)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            targets = [f"{stem}.{a.name}" if f"{stem}.{a.name}" in modules else stem for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:       # a name inside a module -> the module
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict:
    files = [p for p in PACKAGE.rglob("*.py") if "remote_code" not in p.parts]
    modules = {_module_name(p) for p in files}
    return {_module_name(p): _imports(p, modules) for p in files}


def find_cycle(graph: dict):
    """A list of modules forming a cycle, or None (depth-first search, three colours)."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            # a package's __init__ importing its own submodules is not a cycle through them
            if node == nxt.rpartition(".")[0] or nxt == node.rpartition(".")[0]:
                continue
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_graph_checker_finds_a_cycle():
    assert find_cycle({"a.x": {"a.y"}, "a.y": {"a.z"}, "a.z": {"a.x"}}) == ["a.x", "a.y", "a.z", "a.x"]
    assert find_cycle({"a.x": {"a.y"}, "a.y": {"a.z"}, "a.z": set()}) is None


def test_the_graph_sees_function_local_imports():
    graph = import_graph()
    # train.py imports the trainer inside main() only (a bad flag fails before torch is imported)
    assert "megatron_vist2.training.trainer" in graph["megatron_vist2.train"]
    assert "megatron_vist2.checkpoint.sources" in graph["megatron_vist2.checkpoint.reshard"]


def test_the_package_has_no_import_cycle():
    assert find_cycle(import_graph()) is None


def test_checkpoint_package_sits_below_training_and_convert():
    """The checkpoint component (save protocol and resume included) imports only the folders
    below it: errors, config, models, data, parallel."""
    below = ("errors", "config", "models", "data", "parallel", "checkpoint")
    graph = import_graph()
    for module, deps in graph.items():
        if module.startswith("megatron_vist2.checkpoint"):
            outside = {d for d in deps if d.split(".")[1] not in below}
            assert not outside, (module, outside)

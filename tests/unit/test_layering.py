"""One-way layering: the package's folders in one declared order, and no import, module-level or
function-local, from a lower folder into a higher one.

``LAYERS`` is the order, low to high, and the only place it is declared (the README's map lists
the folders in it). A module may import its own folder and any folder below it; the package
never imports tools/, benchmarks/, examples/ or tests/, which sit above everything. A new folder
(or top-level module) must be added to ``LAYERS`` before the test passes. Cycles inside one folder
are tests/unit/test_import_graph.py's concern.

Every import statement is read with ast from the source, wherever it sits (inside a function, a
method, an ``if``, a ``try``), so a function-local import cannot dodge the rule.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = "megatron_vist2"

# Low to high. Each entry is a folder of the package (or a top-level module, without .py).
LAYERS: Tuple[Tuple[str, ...], ...] = (
    ("errors",),                # the error types every layer raises
    ("config",),                # dataclasses, presets, validation, derived values
    ("models",),                # the model (mask rule, transformer, ViT, aligner, LLM)
    ("data",),                  # corpus, tokenizer, indexed datasets, renderer, packing
    ("cost",),                  # FLOPs, block-sparse tiles, layout planner: from the config alone
    ("parallel",),              # process groups, 1F1B schedule, dropout streams, third-party patches
    ("checkpoint",),            # the checkpoint directory, any layout as full tensors
    ("metrics",),               # the objective, per-target losses, OCR read-back, CER (in-loop too)
    ("training",),              # the loop, optimizer, curriculum, health, the log line
    ("inference",),             # KV cache, engine, checkpoint loading for it
    ("evaluation",),            # the evaluate program (tools/evaluate.py): runner, held-out, report
    ("convert",),               # Hugging Face export / import, the remote code
    ("train", "generate"),      # the entry points
)
ABOVE_THE_PACKAGE = ("tools", "benchmarks", "examples", "tests")


def layer_index(layers) -> Dict[str, int]:
    return {name: i for i, names in enumerate(layers) for name in names}


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(root: Path, path: Path) -> Iterator[Tuple[str, int, bool]]:
    """(imported module path, line, function-local?) for every import statement in ``path``,
    relative imports resolved against its package."""
    name = module_name(root, path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    module_level = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        local = id(node) not in module_level
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno, local
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            if node.module is None:         # from . import x, y: each name may be a submodule
                for alias in node.names:
                    yield f"{stem}.{alias.name}", node.lineno, local
            else:
                yield stem, node.lineno, local


def layer_of(module: str, root_name: str):
    """The layer name of a module of the package: its first component under the package
    (``pkg.config.schema`` -> ``config``, ``pkg.train`` -> ``train``); None for the package's
    own __init__."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == root_name else None


def violations(root: Path, layers=LAYERS) -> List[str]:
    """Every import in the package at ``root`` that runs against ``layers`` (or names a folder
    missing from it), as 'file:line: what' lines."""
    index = layer_index(layers)
    out = []
    for path in sorted(root.rglob("*.py")):
        me = module_name(root, path)
        mine = layer_of(me, root.name)
        where = path.relative_to(root.parent)
        if mine is not None and mine not in index:
            out.append(f"{where}: folder '{mine}' is not in LAYERS; add it where it belongs")
            continue
        for target, line, local in imports(root, path):
            how = "function-local import" if local else "import"
            top = target.split(".")[0]
            if top in ABOVE_THE_PACKAGE:
                out.append(f"{where}:{line}: {how} of {target}: the package never imports {top}/")
                continue
            if top != root.name or mine is None:
                continue
            theirs = layer_of(target, root.name)
            if theirs is None:
                out.append(f"{where}:{line}: {how} of the package's __init__ ({target})")
            elif theirs not in index:
                out.append(f"{where}:{line}: {how} of {target}: '{theirs}' is not in LAYERS")
            elif index[theirs] > index[mine]:
                out.append(f"{where}:{line}: {how} of {target}: {mine} (layer {index[mine]}) "
                           f"may not import {theirs} (layer {index[theirs]}, higher)")
    return out


def _write(root: Path, files: Dict[str, str]) -> Path:
    for rel, text in files.items():
        f = root / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
    return root


def test_the_checker_finds_planted_violations(tmp_path):
    """A synthetic package with one legal import and five planted ones: an upward module-level
    import, an upward function-local one, a relative one, a folder not in the order and an import
    of tools/."""
    pkg = _write(tmp_path / "pkg", {
        "__init__.py": "",
        "low/__init__.py": "",
        "low/a.py": "def f():\n    from ..high import b\n",                     # up, local, relative
        "low/c.py": "import pkg.high.b\n",                                       # up, module level
        "low/d.py": "if True:\n    from pkg.high.b import x\n",                  # up, inside an if
        "low/e.py": "def g():\n    import tools.something\n",                    # tools/
        "high/__init__.py": "",
        "high/b.py": "from ..low import a\nfrom pkg.low.c import y\nx = 1\n",      # down: legal
        "stray/z.py": "",                                                        # not declared
    })
    found = violations(pkg, (("low",), ("high",)))
    assert len(found) == 5, found
    assert any("pkg/low/a.py:2: function-local import of pkg.high" in v for v in found), found
    assert any("pkg/low/c.py:1: import of pkg.high.b" in v for v in found), found
    assert any("pkg/low/d.py:2: function-local import of pkg.high.b" in v for v in found), found
    assert any("pkg/low/e.py:2" in v and "never imports tools/" in v for v in found), found
    assert any("'stray' is not in LAYERS" in v for v in found), found
    # the same package with the order the other way round: only the downward imports fail
    flipped = violations(pkg, (("high",), ("low",), ("stray",)))
    assert sorted(v.split(":")[0] for v in flipped) == ["pkg/high/b.py", "pkg/high/b.py", "pkg/low/e.py"], flipped


def test_the_checker_reads_the_package_s_function_local_imports():
    """On the real package, with training/ declared above evaluation/: the evaluate program's
    function-local import of the trainer (evaluation/heldout.py) is reported."""
    swapped = tuple(("evaluation",) if names == ("training",) else ("training",) if names == ("evaluation",)
                    else names for names in LAYERS)
    found = violations(REPO / PACKAGE, swapped)
    assert any(v.startswith("megatron_vist2/evaluation/heldout.py:") and
               "function-local import of megatron_vist2.training.trainer" in v for v in found), found


def test_every_declared_folder_exists():
    root = REPO / PACKAGE
    for names in LAYERS:
        for name in names:
            assert (root / name).is_dir() or (root / f"{name}.py").is_file(), name


@pytest.mark.parametrize("root", [REPO / PACKAGE], ids=[PACKAGE])
def test_no_import_runs_against_the_folder_order(root):
    found = violations(root)
    assert not found, "imports against the folder order (tests/unit/test_layering.py LAYERS):\n" + "\n".join(found)

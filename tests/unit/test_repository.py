"""The repository keeps its own words true: every repository path named in the docs (README.md,
docs/, tests/*.md) and in the docstrings of every Python file exists, and no Python file of the
package is over 400 lines.

A "repository path" is a token such as ``megatron_vist2/cost/planner.py``, ``tools/dry_run.py``,
``docs/spec.md``, ``tests/unit/test_mask.py`` or a package-relative ``training/trainer.py``: a
file name with an extension, whose first folder is a top-level folder of the repository or a
folder of the package. It exists when it resolves against the repository root, the package, or
the naming file's own folder. Globs (``test_convert_*.py``) and brace lists
(``test_parity_{2,4}ranks.py``) must match at least one file. Paths a run creates (``runs/``,
``data/sotu_train``, ``exported/``) have no such first folder and are not checked; nor are
``data/...`` names without a ``.py`` (the git-ignored data directory the set-up builds).
"""
from __future__ import annotations

import ast
import itertools
import re
from pathlib import Path
from typing import Dict, Iterable, List, Tuple

REPO = Path(__file__).resolve().parents[2]
PACKAGE = "megatron_vist2"
TOP = ("megatron_vist2", "tools", "tests", "benchmarks", "examples", "docs", "lm_eval_tasks", ".ci")
EXTENSIONS = ("py", "md", "sh", "yaml", "yml", "ini", "json", "jsonl", "txt", "sbatch", "png", "ttf")
MAX_LINES = 400

_TOKEN = re.compile(r"(?<![\w./{}*-])((?:[\w.{}*,-]+/)+[\w.{}*,-]+\.(?:" + "|".join(EXTENSIONS) + r"))(?![\w/])")


def _expand_braces(token: str) -> List[str]:
    parts = re.split(r"(\{[^{}]*\})", token)
    options = [p[1:-1].split(",") if p.startswith("{") else [p] for p in parts]
    return ["".join(c) for c in itertools.product(*options)]


def _folders(root: Path) -> Tuple[str, ...]:
    package = root / PACKAGE
    inner = tuple(p.name for p in package.iterdir() if p.is_dir() and not p.name.startswith("__")) \
        if package.is_dir() else ()
    return TOP + inner


def path_exists(token: str, root: Path, here: Path) -> bool:
    for candidate in _expand_braces(token):
        found = False
        for base in (root, root / PACKAGE, here):
            if any(ch in candidate for ch in "*?"):
                found = any(base.glob(candidate))
            else:
                found = (base / candidate).exists()
            if found:
                break
        if not found:
            return False
    return True


def named_paths(text: str, folders: Iterable[str]) -> List[str]:
    folders = tuple(folders)
    out = []
    for m in _TOKEN.finditer(text):
        token = m.group(1).lstrip("./")
        first = token.split("/")[0]
        if first not in folders or ("," in token and "{" not in token):
            continue                   # not a path: a list such as "a/b.py,c"
        if first == "data" and not token.endswith(".py"):
            continue                   # the set-up's data directory, not the package's data/
        out.append(token)
    return out


def docstrings(path: Path) -> List[Tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                out.append((getattr(node, "lineno", 1), doc))
    return out


def texts(root: Path) -> Iterable[Tuple[Path, int, str]]:
    """(file, line, text) of every doc page and every docstring."""
    pages = [root / "README.md", *sorted((root / "docs").rglob("*.md")), *sorted((root / "tests").rglob("*.md"))]
    for page in pages:
        if page.is_file():
            yield page, 1, page.read_text()
    for top in ("megatron_vist2", "tools", "tests", "benchmarks", "examples", "lm_eval_tasks"):
        for f in sorted((root / top).rglob("*.py")) if (root / top).is_dir() else ():
            if ".venv" in f.parts:
                continue
            for line, doc in docstrings(f):
                yield f, line, doc


def missing_paths(root: Path) -> List[str]:
    folders = _folders(root)
    out = []
    for f, line, text in texts(root):
        for token in named_paths(text, folders):
            if not path_exists(token, root, f.parent):
                out.append(f"{f.relative_to(root)}:{line}: {token}")
    return sorted(set(out))


def long_files(root: Path, limit: int = MAX_LINES) -> Dict[str, int]:
    out = {}
    for f in sorted((root / PACKAGE).rglob("*.py")):
        n = len(f.read_text().splitlines())
        if n > limit:
            out[str(f.relative_to(root))] = n
    return out


def test_the_path_check_finds_a_planted_missing_path(tmp_path):
    (tmp_path / "megatron_vist2" / "cost").mkdir(parents=True)
    (tmp_path / "megatron_vist2" / "cost" / "flops.py").write_text('"""See cost/planner.py and cost/flops.py."""\n')
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("Read `megatron_vist2/cost/flops.py`, then docs/b.md and "
                                            "tools/gone.py; runs/x/metrics.jsonl is made by a run; "
                                            "tests/unit/test_{a,b}.py.\n")
    (tmp_path / "docs" / "b.md").write_text("")
    found = missing_paths(tmp_path)
    assert found == ["docs/a.md:1: tests/unit/test_{a,b}.py", "docs/a.md:1: tools/gone.py",
                     "megatron_vist2/cost/flops.py:1: cost/planner.py"], found
    (tmp_path / "tools").mkdir()
    (tmp_path / "tools" / "gone.py").write_text("")
    (tmp_path / "tests" / "unit").mkdir(parents=True)
    for name in ("test_a.py", "test_b.py"):
        (tmp_path / "tests" / "unit" / name).write_text("")
    (tmp_path / "megatron_vist2" / "cost" / "planner.py").write_text("")
    assert missing_paths(tmp_path) == []


def test_every_path_named_in_docs_and_docstrings_exists():
    missing = missing_paths(REPO)
    assert not missing, "paths named but not in the repository:\n" + "\n".join(missing)


def test_the_size_check_finds_a_planted_long_file(tmp_path):
    (tmp_path / PACKAGE).mkdir()
    (tmp_path / PACKAGE / "long.py").write_text("x = 1\n" * (MAX_LINES + 1))
    (tmp_path / PACKAGE / "short.py").write_text("x = 1\n" * MAX_LINES)
    assert long_files(tmp_path) == {f"{PACKAGE}/long.py": MAX_LINES + 1}


def test_no_package_file_is_over_400_lines():
    assert long_files(REPO) == {}

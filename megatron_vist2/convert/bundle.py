"""The exported model's shared code is generated from the package's own source, and checked.

transformers keeps its copies honest with one source that generates ``modeling_*.py`` and a check
(utils/check_modular_conversion.py, utils/check_copies.py). Here:

- ``BUNDLED``: the modules the exported directory carries verbatim, under a local name: the
  attention rule (the one mask definition), the KV cache and its slot arithmetic, the decoding
  schedule, the packed layout and the renderer. ``bundled_source`` rewrites their imports of one
  another to the local names; any other package import must be declared in ``REWRITES`` (a
  generated replacement), or bundling fails naming the line.
- The hand-written files (``HAND_WRITTEN``, convert/remote_code/) hold transformers glue only;
  ``check_remote_code`` fails when one of them defines a name a bundled module defines (a second
  definition of the mask, the slot arithmetic, the schedule...) or defines a function or class
  that ``DECLARED`` does not list with what ties it to our code (a test, or "glue").
- ``check_export(directory)``: the bundled files of an exported directory equal what the source
  generates now (an exported copy edited by hand is caught, as check_modular_conversion does).

    python -m megatron_vist2.convert.bundle            # runs check_remote_code, exit 1 on a finding
"""
from __future__ import annotations

import ast
import re
import sys
from pathlib import Path
from typing import Dict, List, Optional, get_args

PACKAGE = Path(__file__).resolve().parents[1]          # megatron_vist2/
REMOTE_CODE = Path(__file__).parent / "remote_code"
HAND_WRITTEN = ("configuration_vist2.py", "modeling_vist2.py", "generation_vist2.py")
BUNDLED: Dict[str, str] = {                            # source (under megatron_vist2/) -> exported name
    "models/attention.py": "vist2_attention.py",
    "inference/cache.py": "vist2_kv_cache.py",
    "inference/decoder.py": "vist2_decoder.py",
    "data/packing.py": "vist2_packing.py",
    "data/renderer.py": "vist2_renderer.py",
}


def _context_literal() -> str:
    from ..config.schema import Context
    return f"Context = Literal[{', '.join(repr(v) for v in get_args(Context))}]"


# Package imports of bundled modules that are not themselves bundled: source line -> replacement
# (computed from the source, so the values stay declared once).
REWRITES = {
    "data/renderer.py": {
        "from ..config.schema import ModelConfig, RenderConfig":
            lambda: "ModelConfig = RenderConfig = object   # annotations only in this bundled copy",
        "from ..errors import RenderOverflowError":
            lambda: "class RenderOverflowError(ValueError):\n    pass",
    },
    "data/packing.py": {
        "from ..config.schema import Context":
            lambda: "from typing import Literal\n" + _context_literal() + "   # config/schema.py's",
    },
}
# Every function and class of the hand-written files, with what ties it to our code: a test that
# compares it with the package's implementation, or "glue" (transformers' API, files, sampling
# conventions: nothing the package implements).
DECLARED = {
    "configuration_vist2.py": {
        "Vist2Config": "glue: the config.json fields (written by convert/vist2.py's hf_config)",
        "Vist2Config.__init__": "glue",
    },
    "modeling_vist2.py": {
        "_Embeddings": "tests/unit/test_export_copies.py::test_exported_encoder_equals_ours",
        "_Embeddings.__init__": "tests/unit/test_export_copies.py::test_exported_encoder_equals_ours",
        "Vist2VisionTower": "tests/unit/test_export_copies.py::test_exported_encoder_equals_ours",
        "Vist2VisionTower.__init__": "tests/unit/test_export_copies.py::test_exported_encoder_equals_ours",
        "Vist2VisionTower.forward": "tests/unit/test_export_copies.py::test_exported_encoder_equals_ours",
        "Vist2Aligner": "tests/unit/test_export_copies.py::test_exported_encoder_equals_ours",
        "Vist2Aligner.__init__": "tests/unit/test_export_copies.py::test_exported_encoder_equals_ours",
        "Vist2Aligner.forward": "tests/unit/test_export_copies.py::test_exported_encoder_equals_ours",
        "Vist2ForCausalLM": "glue: transformers' PreTrainedModel",
        "Vist2ForCausalLM.__init__": "glue",
        "Vist2ForCausalLM._init_weights": "glue",
        "Vist2ForCausalLM.encode_images": "tests/unit/test_export_copies.py::test_exported_encoder_equals_ours",
        "Vist2ForCausalLM.asset_files": "glue: files beside the weights",
        "Vist2ForCausalLM._source_dir": "glue: files beside the weights",
        "Vist2ForCausalLM._assets": "glue: loads the bundled renderer and the tokenizer",
        "Vist2ForCausalLM.tokenizer_vocab_size": "glue",
        "Vist2ForCausalLM.decode": "glue",
        "Vist2ForCausalLM.render": "glue: calls the bundled renderer",
        "Vist2ForCausalLM.text_layout": "tests/unit/test_export_copies.py::test_exported_plain_forward_equals_teacher_forced",
        "Vist2ForCausalLM.forward": "tests/unit/test_export_copies.py::test_exported_plain_forward_equals_teacher_forced",
        "Vist2ForCausalLM.generate": "glue",
        "Vist2ForCausalLM.save_pretrained": "glue",
    },
    "generation_vist2.py": {
        "Vist2Cache": "glue: the bundled cache as transformers' cache object",
        "Vist2Cache.update": "glue",
        "Vist2Cache.get_seq_length": "glue",
        "check_sampling": "glue: transformers' generation options",
        "warpers": "glue: transformers' logits warpers",
        "Vist2Generator": "tests/unit/test_export_copies.py::test_exported_generate_equals_engine",
        "Vist2Generator.__init__": "tests/unit/test_export_copies.py::test_exported_generate_equals_engine",
        "Vist2Generator._backbone": "tests/unit/test_export_copies.py::test_exported_generate_equals_engine",
        "Vist2Generator.run_text": "tests/unit/test_export_copies.py::test_exported_generate_equals_engine",
        "Vist2Generator.run_visual": "tests/unit/test_export_copies.py::test_exported_generate_equals_engine",
        "Vist2Generator.render": "glue",
        "prepare_config": "glue",
        "generate": "glue: transformers' generate conventions around the bundled schedule",
    },
}
_IMPORT = re.compile(r"^(\s*)from (\.+)([\w.]*) import (.*)$")


def _module_of(source: str, dots: str, name: str) -> str:
    """The package-relative file a relative import in ``source`` names ('models/attention.py')."""
    base = Path(source).parent
    for _ in range(len(dots) - 1):
        base = base.parent
    parts = [p for p in name.split(".") if p]
    return str(base.joinpath(*parts)) + ".py"


def bundled_source(source: str) -> str:
    """The exported text of ``BUNDLED[source]``: the source file, imports rewritten."""
    text = (PACKAGE / source).read_text()
    rewrites = REWRITES.get(source, {})
    for old in rewrites:
        if old not in text:
            raise RuntimeError(f"megatron_vist2/{source} no longer has '{old}': update REWRITES in "
                               f"megatron_vist2/convert/bundle.py")
    out = []
    for line in text.splitlines():
        match = _IMPORT.match(line)
        if line.strip() in rewrites:
            out.append(rewrites[line.strip()]())
        elif match:
            indent, dots, name, names = match.groups()
            target = _module_of(source, dots, name)
            if target not in BUNDLED:
                raise RuntimeError(f"megatron_vist2/{source}: '{line.strip()}' imports {target}, which the "
                                   f"export does not bundle: add it to BUNDLED or a rewrite to REWRITES "
                                   f"(megatron_vist2/convert/bundle.py)")
            out.append(f"{indent}from .{BUNDLED[target][:-3]} import {names}")
        else:
            out.append(line)
    header = f"# Generated from megatron_vist2/{source} by megatron_vist2/convert/bundle.py: edit the source.\n"
    return header + "\n".join(out) + "\n"


def write_bundle(directory: Path) -> List[str]:
    """Write every bundled module into an exported directory -> the file names."""
    for source, name in BUNDLED.items():
        (Path(directory) / name).write_text(bundled_source(source))
    return list(BUNDLED.values())


def _definitions(tree: ast.Module) -> Dict[str, tuple]:
    """Qualified names a module defines -> (line, is a function or class): its functions and
    classes (top level, and methods as 'Class.method') and its top-level assignments (constants)."""
    out = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out[node.name] = (node.lineno, True)
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        out[f"{node.name}.{item.name}"] = (item.lineno, True)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                for n in ast.walk(t):
                    if isinstance(n, ast.Name):
                        out[n.id] = (node.lineno, False)
    return out


def check_remote_code(remote_dir: Optional[Path] = None) -> List[str]:
    """Findings (empty = clean): a hand-written remote file that re-defines a bundled module's
    name, or defines a function/class ``DECLARED`` does not tie to our code."""
    remote_dir = Path(remote_dir or REMOTE_CODE)
    shared = {}
    for source in BUNDLED:
        for name in _definitions(ast.parse((PACKAGE / source).read_text())):
            if "." not in name:
                shared.setdefault(name, source)
    findings = []
    for f in HAND_WRITTEN:
        path = remote_dir / f
        for name, (line, is_def) in _definitions(ast.parse(path.read_text())).items():
            if name in shared:
                findings.append(f"{path}:{line}: defines '{name}', which megatron_vist2/{shared[name]} "
                                f"defines: import it from .{BUNDLED[shared[name]][:-3]} instead of a copy")
            elif is_def and name not in DECLARED.get(f, {}):
                findings.append(f"{path}:{line}: '{name}' is not in DECLARED (megatron_vist2/convert/"
                                f"bundle.py): if it re-implements package code, import that code from "
                                f"a bundled module; else declare it with the test that ties it, or as glue")
    for f, names in DECLARED.items():                 # every tie names a test that exists
        for name, tie in names.items():
            if tie.startswith("tests/"):
                test_file, _, test = tie.partition("::")
                where = PACKAGE.parent / test_file
                if not where.is_file() or f"def {test}(" not in where.read_text():
                    findings.append(f"DECLARED[{f!r}][{name!r}] names {tie}, which does not exist")
    return findings


def check_export(directory) -> List[str]:
    """Findings (empty = clean): bundled files of an exported directory that differ from what the
    source generates now, or are missing."""
    findings = []
    for source, name in BUNDLED.items():
        path = Path(directory) / name
        if not path.is_file():
            findings.append(f"{path}: missing (generated from megatron_vist2/{source})")
        elif path.read_text() != bundled_source(source):
            findings.append(f"{path}: differs from megatron_vist2/{source} (re-export the model; "
                            f"never edit a bundled copy)")
    return findings


def main() -> int:
    findings = check_remote_code()
    for f in findings:
        print(f)
    print(f"{len(findings)} finding(s) in {', '.join(HAND_WRITTEN)}")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())

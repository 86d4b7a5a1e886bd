"""Progress output: one console line per log interval (rank 0), TensorBoard scalars, a JSONL
log of every logged value and, when chosen (``logging.wandb``), the same scalars in Weights &
Biases; the device's peak FLOP/s and memory for MFU and memory columns; the
training log line with its throughput counters (``StepMeter``)."""
from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from ..config import Config, config_to_dict
from ..config.validate import WANDB_MISSING
from ..errors import ConfigError
from ..models.attention import PAD
from ..cost.flops import training_flops
from ..models.ocr_head import OcrBatch

# Dense bf16 peak (TFLOP/s, no sparsity) of a device, by substrings of its name as
# torch.cuda.get_device_name() reports it, the more specific parts first: the PCIe and NVL
# variants of H100/H200 have lower clocks (and NVL a different TDP) than the SXM part that the
# bare name means ("NVIDIA H100 80GB HBM3" is the SXM part). NVIDIA data sheets, dense = half
# the "with sparsity" figure.
PEAK_BF16_TFLOPS = (
    (("H100", "PCIe"), 756.0), (("H100", "NVL"), 835.0), (("H200", "NVL"), 835.0),
    (("H800", "PCIe"), 756.0), (("H100",), 989.0), (("H200",), 989.0), (("H800",), 989.0),
    (("B200",), 2250.0), (("A100",), 312.0), (("A800",), 312.0),
    (("L40S",), 362.0),
)


def peak_tflops_of(name: str) -> Optional[float]:
    """The dense bf16 peak of the GPU called ``name``; None when the table does not know it."""
    return next((v for parts, v in PEAK_BF16_TFLOPS if all(p in name for p in parts)), None)


def device_peak_tflops(configured: float = 0.0) -> Optional[float]:
    """``configured`` if > 0, else the GPU's bf16 peak from its name; None when unknown (CPU, or
    a GPU the table does not list: set ``train.peak_tflops``)."""
    if configured > 0:
        return configured
    if torch.cuda.is_available():
        return peak_tflops_of(torch.cuda.get_device_name())
    return None


def peak_memory_gb() -> float:
    """Peak memory of this process: allocated GPU memory, or the peak resident set on the CPU."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2 ** 30
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss        # KiB on Linux, bytes on macOS
    return rss / (2 ** 30 if sys.platform == "darwin" else 2 ** 20)


def memory_in_use_gb() -> float:
    """Memory this process holds now: allocated GPU memory, or the resident set on the CPU."""
    if torch.cuda.is_available():
        return torch.cuda.memory_allocated() / 2 ** 30
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2 ** 30


def wandb_dir(cfg: Config) -> Optional[Tuple[str, str]]:
    """(directory, what sets it) of the Weights & Biases run files: the environment's WANDB_DIR,
    else logging.dir; None when W&B is not chosen. The start-up check (train.py ``preflight``)
    refuses an unwritable one: wandb itself would silently write to the temporary directory."""
    if not cfg.logging.wandb:
        return None
    if os.environ.get("WANDB_DIR"):
        return os.environ["WANDB_DIR"], "WANDB_DIR (environment variable)"
    return cfg.logging.dir, "logging.dir"


def wandb_settings(cfg: Config) -> Optional[dict]:
    """``wandb.init`` arguments of the config's Weights & Biases logger (None: not chosen). Its
    run directory is ``<logging.dir>/wandb`` unless WANDB_DIR says otherwise (``wandb_dir``);
    offline mode needs no network (``wandb sync`` uploads the run later)."""
    lg = cfg.logging
    where = wandb_dir(cfg)
    if where is None:
        return None
    return {"project": lg.wandb_project, "name": lg.wandb_name, "mode": lg.wandb_mode,
            "dir": where[0], "config": config_to_dict(cfg)}


def _open_wandb(settings: dict):
    try:
        import wandb
    except ImportError:
        raise ConfigError(WANDB_MISSING) from None
    Path(settings["dir"]).mkdir(parents=True, exist_ok=True)
    return wandb.init(**settings)


class MetricsLogger:
    def __init__(self, log_dir: str, enabled: bool, tensorboard: bool, wandb: Optional[dict] = None):
        self.enabled = enabled
        self.writer = self.wandb = None
        if enabled:
            Path(log_dir).mkdir(parents=True, exist_ok=True)
            self.jsonl = open(Path(log_dir) / "metrics.jsonl", "a")
            if tensorboard:
                from torch.utils.tensorboard import SummaryWriter
                self.writer = SummaryWriter(log_dir=str(Path(log_dir) / "tensorboard"))
            if wandb is not None:
                self.wandb = _open_wandb(wandb)

    def log(self, step: int, values: Dict[str, float]) -> None:
        if not self.enabled:
            return
        self.jsonl.write(json.dumps({"step": step, "time": time.time(), **values}) + "\n")
        self.jsonl.flush()
        if self.writer is not None:
            for key, val in values.items():
                self.writer.add_scalar(key, val, step)
        if self.wandb is not None:
            self.wandb.log(dict(values), step=step)

    def print(self, text: str) -> None:
        if self.enabled:
            print(text, flush=True)

    def close(self) -> None:
        if self.enabled:
            self.jsonl.close()
            if self.writer is not None:
                self.writer.close()
            if self.wandb is not None:
                self.wandb.finish()


def source_keys(train_prefix: str) -> List[str]:
    """Metric names of a blend's sources (``train/tokens_consumed/<prefix's name>``; the whole
    prefix when two names coincide); [] for a single dataset."""
    from ..data.dataset import parse_blend
    prefixes = [p for _, p in parse_blend(train_prefix)]
    if len(prefixes) < 2:
        return []
    names = [Path(p).name for p in prefixes]
    if len(set(names)) < len(names):
        names = [p.strip("/").replace("/", "_") for p in prefixes]
    return [f"train/tokens_consumed/{n}" for n in names]


class StepMeter:
    """Tokens and model FLOPs of the global batches since the last log line (counted on the
    first stage's host copies, times dp: every data-parallel rank trains as many), and the line.
    With a blend: the text tokens each source contributed, summed over the data-parallel ranks
    at each log line (their rows differ), cumulative since this process started."""

    def __init__(self, cfg: Config, dp: int, world_size: int, step: int):
        self.cfg, self.dp, self.world_size = cfg, dp, world_size
        self.peak = device_peak_tflops(cfg.train.peak_tflops)
        self.tokens, self.all_tokens, self.flops = 0, 0, 0.0
        self.t_start = self.t_last = time.time()
        self.last_logged = step
        self.source_keys = source_keys(cfg.data.train_prefix)
        self.source_new = np.zeros(len(self.source_keys), np.int64)      # this rank, since the last line
        self.source_total = np.zeros(len(self.source_keys), np.int64)    # all ranks, cumulative

    def restart_clock(self, step: int) -> None:
        """The next line's throughput starts after ``step`` (a warming step that compiled
        flex_attention is not timed; its tokens still count in ``all_tokens``)."""
        self.tokens, self.flops, self.t_last, self.last_logged = 0, 0.0, time.time(), step

    def _sources_logged(self, device) -> Dict[str, int]:
        """Collective over the data-parallel group (every rank logs at the same steps)."""
        if not self.source_keys:
            return {}
        new = torch.from_numpy(self.source_new).to(device)
        if torch.distributed.is_initialized():
            from megatron.core import parallel_state
            torch.distributed.all_reduce(new, group=parallel_state.get_data_parallel_group())
        self.source_total += new.cpu().numpy()
        self.source_new[:] = 0
        return {k: int(v) for k, v in zip(self.source_keys, self.source_total)}

    def count(self, micro: List) -> None:
        if micro and isinstance(micro[0], OcrBatch):      # stage 0's images: their visual tokens
            new_tokens = sum(b.images.shape[0] for b in micro) * self.cfg.model.visual_tokens_per_chunk * self.dp
            self.tokens, self.all_tokens = self.tokens + new_tokens, self.all_tokens + new_tokens
            return
        if self.source_keys:
            from ..data.dataset import tokens_per_source
            self.source_new += tokens_per_source(micro, len(self.source_keys))
        new_tokens = int(sum((b.layout.kind != PAD).sum() for b in micro)) * self.dp   # text + visual
        self.tokens, self.all_tokens = self.tokens + new_tokens, self.all_tokens + new_tokens
        # model FLOPs of the global batch (this rank's x dp)
        self.flops += self.dp * sum(training_flops(self.cfg, b.layout, b.images.shape[0], self.cfg.train.freeze)
                                    for b in micro)

    def log(self, log: MetricsLogger, step: int, loss: float, engine, by_mode: Tuple[float, float],
            consumed: int, seq_length: int, ocr_loss: Optional[float] = None,
            cursor_attention_loss: Optional[float] = None) -> None:
        """Print and record step ``step``'s line; ``by_mode``: the mean loss on read-back and on
        history chunks since the last line; ``ocr_loss``: the OCR head's mean loss per cell since
        then (None without an OCR head loss); ``cursor_attention_loss``: guided attention's mean
        -log attention on the cursor's token since then (None without it)."""
        cfg, peak = self.cfg, self.peak
        now = time.time()
        tps = self.tokens / (now - self.t_last)
        grad_norm = engine.get_global_grad_norm()
        grad_norm = float(grad_norm) if grad_norm is not None else float("nan")
        lr = engine.get_lr()[0]
        interval = step - self.last_logged
        tflops = self.flops / (now - self.t_last) / self.world_size / 1e12      # per device
        readback_loss, history_loss = by_mode
        memory = peak_memory_gb()
        log.print(f"step {step}/{cfg.train.steps} | loss {loss:.4f} | lr {lr:.2e} | grad norm "
                  f"{grad_norm:.3f} | {tps:,.0f} tok/s | {(now - self.t_last) / interval:.2f} s/step | "
                  f"{tflops:.2f} TFLOP/s" + (f" ({tflops / peak:.1%} MFU)" if peak else "")
                  + f" | {memory:.1f} GB" + (f" | OCR head loss {ocr_loss:.4f}" if ocr_loss is not None else "")
                  + (f" | cursor attention loss {cursor_attention_loss:.4f}" if cursor_attention_loss is not None else ""))
        log.log(step, {"train/loss": loss, "train/lr": lr, "train/grad_norm": grad_norm,
                       "train/tokens_per_s": tps, "train/samples_per_s":
                       interval * cfg.parallel.global_batch_size / (now - self.t_last),
                       "train/tflops_per_device": tflops, "train/loss_readback": readback_loss,
                       "train/loss_history": history_loss, "train/peak_memory_gb": memory,
                       "train/consumed_samples": consumed, "train/seq_length": seq_length}
                | ({"train/mfu": tflops / peak} if peak else {})
                | ({"train/ocr_loss": ocr_loss} if ocr_loss is not None else {})
                | ({"train/cursor_attention_loss": cursor_attention_loss} if cursor_attention_loss is not None else {})
                | self._sources_logged(engine.device))
        self.tokens, self.flops, self.t_last, self.last_logged = 0, 0.0, now, step

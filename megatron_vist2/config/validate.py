"""Checks that run before any process group or model exists, one function per config section.

Each check names the field and says what to do. ``validate`` collects every problem so a user
fixes a config in one pass rather than one error per launch. The allowed values of a choice field
are its ``Literal`` type in schema.py (the loader checks the type, this module the value).
"""
from __future__ import annotations

import dataclasses
import os
import typing
from pathlib import Path
from typing import List, Optional

from ..errors import CheckpointError
from .derived import TRAINING_AIDS, stage_layer_counts
from .load import ConfigError, config_from_dict
from .sanity import value_problems
from .schema import Config


def _model_problems(cfg: Config) -> List[str]:
    m, v, llm, ch, r = cfg.model, cfg.model.vision, cfg.model.llm, cfg.model.chunk, cfg.model.render
    tp = cfg.parallel.tensor_parallel
    out = []
    positive = {
        "model.vision.num_layers": v.num_layers, "model.vision.hidden_size": v.hidden_size,
        "model.vision.num_heads": v.num_heads, "model.vision.ffn_hidden_size": v.ffn_hidden_size,
        "model.vision.patch_size": v.patch_size, "model.vision.num_channels": v.num_channels,
        "model.aligner.merge": m.aligner.merge, "model.llm.vocab_size": llm.vocab_size,
        "model.llm.make_vocab_size_divisible_by": llm.make_vocab_size_divisible_by,
        "model.llm.num_layers": llm.num_layers, "model.llm.hidden_size": llm.hidden_size,
        "model.llm.ffn_hidden_size": llm.ffn_hidden_size, "model.llm.num_heads": llm.num_heads,
        "model.llm.num_kv_heads": llm.num_kv_heads, "model.llm.head_dim": llm.head_dim,
        "model.chunk.text_tokens": ch.text_tokens, "model.chunk.image_height": ch.image_height,
        "model.chunk.image_width": ch.image_width, "model.render.font_size": r.font_size,
        "model.render.min_font_size": r.min_font_size,
    }
    out += [f"{k} must be a positive integer, got {val}" for k, val in positive.items() if val <= 0]
    if out:
        return out
    if v.hidden_size % v.num_heads:
        out.append(f"model.vision.hidden_size ({v.hidden_size}) must be divisible by "
                   f"model.vision.num_heads ({v.num_heads})")
    if llm.head_dim % 2:
        out.append(f"model.llm.head_dim ({llm.head_dim}) must be even for RoPE")
    if llm.num_heads % llm.num_kv_heads:
        out.append(f"model.llm.num_heads ({llm.num_heads}) must be a multiple of "
                   f"model.llm.num_kv_heads ({llm.num_kv_heads}) for grouped-query attention")
    pk = v.patch_size * m.aligner.merge
    image_ok = ch.image_height % pk == 0 and ch.image_width % pk == 0
    for name, size in (("image_height", ch.image_height), ("image_width", ch.image_width)):
        if size % pk:
            out.append(f"model.chunk.{name} ({size}) must be divisible by patch_size x merge "
                       f"({v.patch_size} x {m.aligner.merge} = {pk}); try {max(pk, size // pk * pk)}")
    if image_ok and ch.text_tokens % m.visual_tokens_per_chunk:
        out.append(
            f"compression ratio rho = model.chunk.text_tokens / visual tokens per chunk = "
            f"{ch.text_tokens} / {m.visual_tokens_per_chunk} is not an integer: set "
            f"model.chunk.text_tokens to a multiple of {m.visual_tokens_per_chunk} or change the image size")
    # Tensor parallelism splits heads (ViT and LLM), KV groups and FFN columns.
    # More TP ranks than KV heads: each rank keeps a replica of the KV head its queries use.
    if tp > llm.num_kv_heads and tp % llm.num_kv_heads:
        out.append(f"parallel.tensor_parallel ({tp}) is larger than model.llm.num_kv_heads "
                   f"({llm.num_kv_heads}) but not a multiple of it; KV heads can only be replicated "
                   f"evenly: use a tensor_parallel that divides or is a multiple of num_kv_heads")
    kv_split = [("model.llm.num_kv_heads", llm.num_kv_heads)] if tp <= llm.num_kv_heads else []
    for name, val in [("model.vision.num_heads", v.num_heads), ("model.llm.num_heads", llm.num_heads)] + kv_split + [
                      ("model.vision.ffn_hidden_size", v.ffn_hidden_size),
                      ("model.llm.ffn_hidden_size", llm.ffn_hidden_size)]:
        if val % tp:
            out.append(f"parallel.tensor_parallel ({tp}) must divide {name} ({val}); "
                       f"use a tensor_parallel that divides it")
    if llm.tokenizer_vocab_size is not None and not 0 < llm.tokenizer_vocab_size <= llm.vocab_size:
        out.append(f"model.llm.tokenizer_vocab_size ({llm.tokenizer_vocab_size}) must be between 1 and "
                   f"model.llm.vocab_size ({llm.vocab_size}): a tokenizer cannot have more pieces than "
                   f"the embedding has rows")
    if r.min_font_size > r.font_size:
        out.append(f"model.render.min_font_size ({r.min_font_size}) must be <= "
                   f"model.render.font_size ({r.font_size})")
    if r.margin < 0 or r.line_spacing < 0 or r.tab_width < 0:
        out.append("model.render.margin, line_spacing and tab_width must be >= 0")
    for name, p in (("model.llm.hidden_dropout", llm.hidden_dropout),
                    ("model.llm.attention_dropout", llm.attention_dropout)):
        if not 0.0 <= p < 1.0:
            out.append(f"{name} must be in [0, 1), got {p}")
    if llm.attention_dropout > 0 and m.attention_backend == "flex":
        out.append("model.llm.attention_dropout > 0 needs model.attention_backend=sdpa or auto "
                   "(flex_attention has no dropout)")
    if m.init_std <= 0:
        out.append(f"model.init_std must be > 0, got {m.init_std}")
    if r.min_legible_advance < 0:
        out.append(f"model.render.min_legible_advance must be >= 0 (pixels; 0 = never warn), got {r.min_legible_advance}")
    return out + _ocr_head_problems(cfg) + _cursor_problems(cfg)


def _cursor_problems(cfg: Config) -> List[str]:
    m, t = cfg.model, cfg.train
    out = []
    if t.cursor_attention_weight < 0:
        out.append(f"train.cursor_attention_weight must be >= 0, got {t.cursor_attention_weight}")
    if t.cursor_attention_weight > 0:
        if not m.readback_cursor or t.objective != "lm":
            out.append("train.cursor_attention_weight guides attention to the reading cursor's visual token: set "
                       "model.readback_cursor=true (a VIST2 model, train.objective=lm), or set it to 0")
        first_stage = stage_layer_counts(cfg)[0]
        if not 1 <= t.cursor_attention_layers <= first_stage:
            out.append(f"train.cursor_attention_layers must be between 1 and the first pipeline stage's decoder "
                       f"layers ({first_stage}: the loss is added on the first stage), got {t.cursor_attention_layers}")
    if not m.readback_cursor:
        return out
    if m.context != "vist2":
        out.append(f"model.readback_cursor points into read-back chunks' images: the '{m.context}' control has "
                   f"none; set model.readback_cursor=false")
    if m.render.wrap != "char":
        out.append(f"model.readback_cursor needs model.render.wrap=char (with '{m.render.wrap}' a written "
                   f"character can move when the next word wraps, so the place of the next one is not known "
                   f"while writing)")
    if m.ocr_head.lines <= 0 or m.ocr_head.columns <= 0:
        out.append(f"model.readback_cursor points at cells of the OCR grid: set model.ocr_head.lines and "
                   f"model.ocr_head.columns (now {m.ocr_head.lines} x {m.ocr_head.columns}; "
                   f"tools/inspect_data.py --ocr-grid prints what the geometry needs)")
    return out


def _ocr_head_problems(cfg: Config) -> List[str]:
    o, t = cfg.model.ocr_head, cfg.train
    out = []
    if t.objective == "ocr":
        if not o.enabled or cfg.model.context != "vist2":
            out.append("train.objective=ocr trains the front with the OCR head: set model.ocr_head.enabled=true "
                       "(a VIST2 model, model.context=vist2)")
        if cfg.parallel.pipeline_parallel != 1:
            out.append("train.objective=ocr runs the front alone (no LLM), on one pipeline stage: set "
                       "parallel.pipeline_parallel=1, or train the OCR head inside the whole model "
                       "(train.objective=lm with model.ocr_head.enabled and train.ocr_weight > 0)")
    if t.ocr_weight < 0:
        out.append(f"train.ocr_weight must be >= 0, got {t.ocr_weight}")
    if t.ocr_head_eval_chunks < 0:
        out.append(f"train.ocr_head_eval_chunks must be >= 0, got {t.ocr_head_eval_chunks}")
    if t.ocr_head_eval_chunks and not o.enabled:
        out.append("train.ocr_head_eval_chunks reads held-out chunks with the OCR head: set model.ocr_head.enabled=true")
    if not o.enabled:
        return out
    sizes = {"lines": o.lines, "columns": o.columns, "hidden_size": o.hidden_size, "num_heads": o.num_heads,
             "num_layers": o.num_layers, "slots_per_query": o.slots_per_query, "slot_size": o.slot_size}
    out += [f"model.ocr_head.{k} must be a positive integer, got {v} (tools/inspect_data.py --ocr-grid "
            f"prints the lines and columns an image needs)" for k, v in sizes.items() if v <= 0]
    if o.num_heads > 0 and o.hidden_size % o.num_heads:
        out.append(f"model.ocr_head.hidden_size ({o.hidden_size}) must be divisible by model.ocr_head.num_heads "
                   f"({o.num_heads})")
    doubled = sorted({ch for ch in o.charset if o.charset.count(ch) > 1})
    if doubled or not o.charset:
        out.append(f"model.ocr_head.charset must list each character once (repeated: {doubled!r})")
    if set(o.charset) & {"\t", "\r"}:
        out.append("model.ocr_head.charset must not hold a tab or carriage return: the renderer turns them into "
                   "spaces and newlines before layout (docs/spec.md, 'Rendering')")
    return out


def _choice_problems(section, where: str) -> List[str]:
    """Every ``Literal`` field of ``section`` (and its sub-sections) holds one of its values
    (declared once, in schema.py)."""
    out = []
    hints = typing.get_type_hints(type(section))
    for f in dataclasses.fields(section):
        value, tp, path = getattr(section, f.name), hints[f.name], f"{where}.{f.name}" if where else f.name
        if dataclasses.is_dataclass(value):
            out += _choice_problems(value, path)
        elif typing.get_origin(tp) is typing.Literal and value not in typing.get_args(tp):
            allowed = [repr(v) for v in typing.get_args(tp)]
            out.append(f"{path} must be {', '.join(allowed[:-1])} or {allowed[-1]}, got {value!r}")
    return out


def _positive_problems(cfg: Config) -> List[str]:
    p, d, t = cfg.parallel, cfg.data, cfg.train
    out = []
    for name, val in (("parallel.tensor_parallel", p.tensor_parallel),
                      ("parallel.pipeline_parallel", p.pipeline_parallel),
                      ("parallel.micro_batch_size", p.micro_batch_size),
                      ("parallel.global_batch_size", p.global_batch_size),
                      ("data.seq_length", d.seq_length), ("train.steps", t.steps),
                      ("train.log_interval", t.log_interval), ("train.eval_batches", t.eval_batches)):
        if val <= 0:
            out.append(f"{name} must be a positive integer, got {val}")
    return out


def _parallel_problems(cfg: Config, world_size: Optional[int]) -> List[str]:
    p, d = cfg.parallel, cfg.data
    out = []
    n = cfg.model.llm.num_layers
    if p.pipeline_layers is not None:
        if len(p.pipeline_layers) != p.pipeline_parallel or any(c < 0 for c in p.pipeline_layers) \
                or sum(p.pipeline_layers) != n:
            out.append(f"parallel.pipeline_layers {p.pipeline_layers} must give a layer count >= 0 for "
                       f"each of the {p.pipeline_parallel} pipeline stages, summing to model.llm.num_layers ({n})")
    elif n % p.pipeline_parallel:
        out.append(f"parallel.pipeline_parallel ({p.pipeline_parallel}) does not divide model.llm.num_layers "
                   f"({n}); set parallel.pipeline_layers to a split such as "
                   f"{[n // p.pipeline_parallel + (1 if i >= p.pipeline_parallel - n % p.pipeline_parallel else 0) for i in range(p.pipeline_parallel)]}")
    if world_size is not None:
        mp = p.tensor_parallel * p.pipeline_parallel
        if world_size % mp:
            out.append(f"world size {world_size} is not divisible by parallel.tensor_parallel x "
                       f"parallel.pipeline_parallel = {mp}; launch a multiple of {mp} ranks")
        else:
            dp = world_size // mp
            if p.global_batch_size % (p.micro_batch_size * dp):
                out.append(
                    f"parallel.global_batch_size ({p.global_batch_size}) must be divisible by "
                    f"parallel.micro_batch_size x data-parallel size ({p.micro_batch_size} x {dp}); "
                    f"try parallel.global_batch_size={p.micro_batch_size * dp * max(1, p.global_batch_size // (p.micro_batch_size * dp))}")
    if p.sequence_parallel and p.tensor_parallel == 1:
        out.append("parallel.sequence_parallel needs parallel.tensor_parallel > 1 (it splits the "
                   "sequence over the tensor-parallel ranks); set it to false or raise tensor_parallel")
    if p.sequence_parallel and d.seq_length % p.tensor_parallel:
        out.append(f"data.seq_length ({d.seq_length}) must be divisible by parallel.tensor_parallel "
                   f"({p.tensor_parallel}) with sequence parallelism")
    return out


def _data_problems(cfg: Config) -> List[str]:
    p, d = cfg.parallel, cfg.data
    out = []
    L = cfg.model.chunk.text_tokens
    if d.seq_length < L:
        out.append(f"data.seq_length ({d.seq_length}) must hold at least one chunk "
                   f"(model.chunk.text_tokens = {L})")
    sched = d.readback_schedule
    if sched and (any(len(e) != 2 or not 0.0 <= e[1] <= 1.0 or e[0] != int(e[0]) for e in sched)
                  or sched[0][0] != 0 or any(b[0] <= a[0] for a, b in zip(sched, sched[1:]))):
        out.append(f"data.readback_schedule {sched} must be [[step, share], ...] with steps 0, then "
                   f"increasing, and shares in [0, 1], e.g. [[0, 1.0], [500, 0.5], [1000, 0.0]]")
    lengths = d.seq_length_schedule
    if lengths and (any(len(e) != 2 or e[0] != int(e[0]) or e[1] != int(e[1]) for e in lengths)
                    or lengths[0][0] != 0 or any(b[0] <= a[0] for a, b in zip(lengths, lengths[1:]))):
        out.append(f"data.seq_length_schedule {lengths} must be [[step, seq_length], ...] with steps 0, "
                   f"then increasing, e.g. [[0, 2048], [5000, 4096], [10000, 8192]]")
    elif lengths:
        for _, n in lengths:
            if not L <= n <= d.seq_length or (p.sequence_parallel and n % p.tensor_parallel):
                out.append(f"data.seq_length_schedule: {n} must be between one chunk ({L}) and "
                           f"data.seq_length ({d.seq_length}, the longest row memory is planned for)"
                           + (f" and divisible by parallel.tensor_parallel ({p.tensor_parallel})"
                              if p.sequence_parallel else ""))
    if not 0.0 <= d.readback_fraction <= 1.0:
        out.append(f"data.readback_fraction must be in [0, 1], got {d.readback_fraction}")
    if not 0.0 <= d.readback_input_mask <= 1.0:
        out.append(f"data.readback_input_mask must be in [0, 1] (the largest share of a read-back "
                   f"chunk's text inputs masked), got {d.readback_input_mask}")
    if d.num_workers < 0:
        out.append(f"data.num_workers must be >= 0, got {d.num_workers}")
    return out


def _optim_problems(cfg: Config) -> List[str]:
    o = cfg.optim
    out = []
    if o.lr <= 0 or o.min_lr < 0 or o.min_lr > o.lr:
        out.append(f"optim.lr must be > 0 and 0 <= optim.min_lr <= optim.lr (got lr={o.lr}, "
                   f"min_lr={o.min_lr})")
    if o.grad_clip < 0:
        out.append(f"optim.grad_clip must be >= 0 (0 disables clipping), got {o.grad_clip}")
    if o.warmup_steps < 0:
        out.append(f"optim.warmup_steps must be >= 0, got {o.warmup_steps}")
    return out


def _train_problems(cfg: Config) -> List[str]:
    o, t = cfg.optim, cfg.train
    out = []
    n_layers = cfg.model.llm.num_layers
    parts = {"front", "front.vision", "front.aligner", "front.embedding", *TRAINING_AIDS.values(), "layers", "head"}
    for prefix in t.freeze + list(o.lr_multipliers):
        head = ".".join(prefix.split(".")[:2])
        if not (prefix.split(".")[0] in {"front", "layers", "head"} and
                (head in parts or (head.startswith("layers.") and head[7:].isdigit()
                                   and int(head[7:]) < n_layers))):
            out.append(f"train.freeze / optim.lr_multipliers: '{prefix}' names no part of the model; "
                       f"use a parameter-name prefix such as front.vision, front.aligner, "
                       f"front.embedding, front.ocr_head, front.cursor, layers, layers.0 .. layers.{n_layers - 1}, head")
    vision = ["front.vision", "front.aligner"] if cfg.model.context == "vist2" else []
    ocr_head = ["front.ocr_head"] if cfg.model.ocr_head.enabled else []
    cursor = ["front.cursor"] if cfg.model.readback_cursor and cfg.model.context == "vist2" and t.objective != "ocr" else []
    atoms = vision + ocr_head + cursor + ([] if t.objective == "ocr" else
                                          ["front.embedding", "head"] + [f"layers.{i}" for i in range(n_layers)])
    if t.freeze and all(any(a == f or a.startswith(f + ".") for f in t.freeze) for a in atoms):
        out.append(f"train.freeze {t.freeze} freezes every part the run trains: nothing would train; "
                   f"leave at least one part out (e.g. train.freeze=[front.vision])")
    if any(v <= 0 for v in o.lr_multipliers.values()):
        out.append(f"optim.lr_multipliers must be > 0 (freeze with train.freeze), got {o.lr_multipliers}")
    if t.ocr_probe_batches < 0:
        out.append(f"train.ocr_probe_batches must be >= 0, got {t.ocr_probe_batches}")
    if t.ocr_cer_chunks < 0:
        out.append(f"train.ocr_cer_chunks must be >= 0, got {t.ocr_cer_chunks}")
    for name in ("image_target_weight", "readback_target_weight"):
        if not getattr(t, name) > 0:
            out.append(f"train.{name} must be > 0 (1 = the plain mean), got {getattr(t, name)}")
    if t.max_wall_minutes < 0:
        out.append(f"train.max_wall_minutes must be >= 0 (0 = no limit), got {t.max_wall_minutes}")
    return out


def _checkpoint_problems(cfg: Config) -> List[str]:
    out = []
    if cfg.checkpoint.keep_last < 0:
        out.append(f"checkpoint.keep_last must be >= 0 (0 keeps every checkpoint), got {cfg.checkpoint.keep_last}")
    if cfg.checkpoint.max_weight_growth != 0 and cfg.checkpoint.max_weight_growth <= 1:
        out.append(f"checkpoint.max_weight_growth must be > 1 (times the norm the run started from) or 0 "
                   f"(no limit), got {cfg.checkpoint.max_weight_growth}")
    if cfg.train.eval_interval < 0 or cfg.checkpoint.save_interval < 0:
        out.append("train.eval_interval and checkpoint.save_interval must be >= 0 (0 = off)")
    return out


def _health_problems(cfg: Config) -> List[str]:
    h, out = cfg.train.health, []
    if h.max_consecutive_skips < 1:
        out.append(f"train.health.max_consecutive_skips must be >= 1 (skips in a row before the run "
                   f"stops), got {h.max_consecutive_skips}")
    if h.spike_window < 2:
        out.append(f"train.health.spike_window must be >= 2 (losses in the z-score's window), got {h.spike_window}")
    if h.spike_zscore <= 0:
        out.append(f"train.health.spike_zscore must be > 0 (standard deviations), got {h.spike_zscore}")
    if h.spike_skip_batches < 0:
        out.append(f"train.health.spike_skip_batches must be >= 0, got {h.spike_skip_batches}")
    if h.spike_mode == "rollback" and cfg.checkpoint.save_interval <= 0:
        out.append("train.health.spike_mode=rollback needs checkpoints to roll back to: set "
                   "checkpoint.save_interval > 0 (or spike_mode=log)")
    if h.watchdog_multiple != 0 and h.watchdog_multiple <= 1:
        out.append(f"train.health.watchdog_multiple must be > 1 (times the median step time) or 0 "
                   f"(no watchdog), got {h.watchdog_multiple}")
    if h.watchdog_floor_s <= 0:
        out.append(f"train.health.watchdog_floor_s must be > 0 (seconds), got {h.watchdog_floor_s}")
    return out


WANDB_MISSING = ("logging.wandb is true but the wandb package is not installed: install it "
                 "(pip install 'megatron_vist2[wandb]', or wandb==0.31.0) or set logging.wandb=false")


def _logging_problems(cfg: Config) -> List[str]:
    import importlib.util                     # found, not imported: importing wandb takes a second
    return [WANDB_MISSING] if cfg.logging.wandb and importlib.util.find_spec("wandb") is None else []


def _run_problems(cfg: Config, world_size: Optional[int]) -> List[str]:
    out = _positive_problems(cfg)
    if out:                                   # the checks below divide by these
        return out
    return (_parallel_problems(cfg, world_size) + _data_problems(cfg) + _optim_problems(cfg)
            + _train_problems(cfg) + _checkpoint_problems(cfg) + _health_problems(cfg)
            + _logging_problems(cfg))


def validate(cfg: Config, world_size: Optional[int] = None) -> Config:
    """Raise one ConfigError listing every problem; return cfg unchanged when it is sound."""
    problems = _model_problems(cfg) + _choice_problems(cfg, "") + _run_problems(cfg, world_size)
    problems += value_problems(cfg, sizes_valid=not problems)      # config/sanity.py
    if problems:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(problems))
    return cfg


def recorded_config(data: dict, path) -> Config:
    """The config a checkpoint recorded (``path``: its config.yaml) as a ``Config``. Resume,
    evaluation, export and inference build the model it describes, so a choice value this version
    does not know (e.g. a ``model.context`` added later) stops here, naming the file and field. A
    field added since the save reads as its default (a checkpoint from before ``model.context``
    holds the VIST2 model)."""
    cfg = config_from_dict(data)
    problems = _choice_problems(cfg, "")
    if problems:
        raise CheckpointError(f"{path} records a value this version of megatron_vist2 does not know: "
                              + "; ".join(problems) + ". The checkpoint comes from a newer version or "
                              "was edited: use the version that wrote it, or correct the field")
    return cfg


def check_dir_writable(path: str, field: str) -> None:
    """Create ``path`` and write a probe file in it, or ConfigError naming the field."""
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
        probe = p / f".write_probe_{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"{field} {p} is not writable ({exc.strerror or exc}); choose a directory "
                          f"this user can write") from None

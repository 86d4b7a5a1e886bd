"""Layout planning: per-rank memory, communication and step time of a TP x PP x DP layout, from
the config alone (no model is built), and a ranking of the layouts that fit a cluster.

Parameters per rank and stage (``stage_sizes``) follow the model's tensor-parallel layers:
column/row/vocab-parallel matrices and column biases are split by TP; norms, row biases, the
ViT's patch convolution and position table are replicated; K/V projections are replicated when
TP > KV heads. tests/unit/test_planner.py checks them against the real stage models that
tools/dry_run.py builds on the meta device.

Memory per rank (bytes; w = 2 for bf16, 4 for fp32; T = trainable parameters):
  weights      w x params                                            (/ dp under ZeRO-3)
  gradients    w x T (/ dp from ZeRO-2), plus under ZeRO the fp32 gradient partition the
               optimizer steps on, 4 x T / dp; bf16 at ZeRO-1 accumulates in a whole-stage fp32
               buffer instead (DeepSpeed's BF16_Optimizer, training/deepspeed_config.py), 4 x T
  optimizer    fp32 master copy + Adam moments, 12 x T / dp under ZeRO (DeepSpeed keeps the
               master copy for fp32 weights too; 8 x T without ZeRO), plus the step's
               temporaries, 4 x T (/ dp under ZeRO)
  activations  what autograd keeps per decoder layer, per token (elements x w): the two norms'
               inputs and outputs 4 D; q through QK-norm and RoPE into attention 4 h e, k the same
               4 g e, v g e, the attention output and the output projection's input 2 h e; the
               SwiGLU MLP's gate, up, silu(gate) and product 4 F. Everything but the norms is
               split by TP (all of it with sequence parallelism); attention scores are not kept
               (flash / memory-efficient kernels). Checked exactly against the tensors autograd
               saves (tests/unit/test_planner.py). Full recomputation keeps the block input D
               per layer plus one layer's activations; selective recomputation (attention) keeps
               6 D (norms, the attention's input and output) + 4 F / tp. Times the micro-batches in flight on the stage (1F1B: pipeline -
               stage); stage 0 adds the ViT (per patch and layer 4 d + (5 d + 2 f) / tp), the last
               stage the fp32 logits and their softmax (2 s b V / tp x 4).
A GPU's allocator and a CPU's malloc add fragmentation on top; benchmarks/memory_estimate.py
compares the estimate with measured peaks.

Step time (seconds) of one optimizer step:
  compute   training FLOPs of the global batch (3x the forward; 4x with full recomputation;
            attention: the keys of every tile a block-sparse kernel computes, row_training_flops)
            / world / (peak x efficiency), times the 1F1B bubble (gas + pp - 1) / gas
  TP        bytes each rank moves in TP all-reduces (4 per layer and micro-batch, ring) /
            NVLink bandwidth when TP stays inside a node, else the network's
  DP        bytes each rank sends in data-parallel collectives (``communication``), per step:
            gradient reductions x T x (accumulation bytes at ZeRO-1 in bf16, else w) x 2(n-1)/n
            (DeepSpeed all-reduces gradient buckets at ZeRO 0-2) or (n-1)/n (ZeRO-3
            reduce-scatters), where ZeRO 0/1 reduce once per step and ZeRO 2/3 after every
            micro-batch (config/derived.py ``gradient_reductions_per_step``; checked against
            DeepSpeed's collectives in tests/distributed/test_parity_2ranks.py); plus the
            all-gather of the updated weights, w x T x (n-1)/n, at ZeRO 1/2, and ZeRO-3's
            parameter all-gathers, forward and backward of every micro-batch,
            2 x gas x w x params x (n-1)/n. / network bandwidth x (1 - dp_overlap),
            dp_overlap being the share hidden behind backward
  PP        activations sent per micro-batch / network bandwidth
Throughput = global batch x sequence length / step time. The constants are ``Cluster`` fields
(command-line flags of tools/plan_layouts.py); the ranking depends on their ratios more than on
their values.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass, replace
from typing import Dict, List, Optional

from ..config.schema import Config
from ..config.derived import (data_parallel_size, grad_accum_bytes, gradient_reductions_per_step,
                              name_under, padded_vocab_size, stage_layer_counts)
from ..config.validate import validate
from ..errors import ConfigError
from .flops import forward_flops

GIB = 2 ** 30


@dataclass(frozen=True)
class Cluster:
    world: int                        # ranks (GPUs)
    gpus_per_node: int = 8
    gpu_memory_gib: float = 80.0      # H100 SXM
    peak_tflops: float = 989.0        # dense bf16 per GPU
    efficiency: float = 0.5           # share of the peak the matmuls reach
    nvlink_gbps: float = 450.0        # GB/s per GPU inside a node
    network_gbps: float = 50.0        # GB/s per GPU between nodes (400 Gb/s InfiniBand)
    dp_overlap: float = 0.5           # share of data-parallel traffic hidden behind backward
    usable_memory: float = 0.9        # share of GPU memory a plan may fill (allocator, NCCL, context)


def _frozen(part: str, freeze) -> bool:
    return any(name_under(part, prefix) for prefix in freeze)


def stage_sizes(cfg: Config) -> List[dict]:
    """Per pipeline stage: its decoder layers, whether first/last, and the parameters (all and
    trainable) one tensor-parallel rank of it holds."""
    m, v, llm = cfg.model, cfg.model.vision, cfg.model.llm
    tp, freeze = cfg.parallel.tensor_parallel, cfg.train.freeze
    d, f, P = v.hidden_size, v.ffn_hidden_size, m.patches_per_image
    vit_layer = (4 * d + 3 * (d * d + d) // tp + d * d // tp + d      # 2 LayerNorms, q k v (column), o (row)
                 + (d * f + f) // tp + f * d // tp + d)               # fc1 (column), fc2 (row)
    vision = v.num_channels * v.patch_size ** 2 * d + d + P * d + v.num_layers * vit_layer + 2 * d
    D, F, h, g, e = llm.hidden_size, llm.ffn_hidden_size, llm.num_heads, llm.num_kv_heads, llm.head_dim
    aligner = (m.aligner.merge ** 2 * d * D + D) // tp
    kv = 2 * D * g * e if tp > g else 2 * D * g * e // tp
    layer = 2 * D + D * h * e // tp + kv + h * e * D // tp + (2 * e if llm.qk_norm else 0) + 3 * D * F // tp
    vocab = padded_vocab_size(cfg) * D // tp
    counts = stage_layer_counts(cfg)
    stages = []
    for s, n in enumerate(counts):
        first, last = s == 0, s == len(counts) - 1
        start = sum(counts[:s])
        parts = {f"layers.{i}": layer for i in range(start, start + n)}
        if first:
            parts |= {"front.vision": vision, "front.aligner": aligner, "front.embedding": vocab}
        if last:
            parts["head.norm"] = D
            if not llm.tie_embeddings:
                parts["head.output"] = vocab
        params = sum(parts.values())
        trainable = sum(c for name, c in parts.items() if not _frozen(name, freeze))
        stages.append({"stage": s, "layers": n, "first": first, "last": last, "params": params,
                       "trainable": trainable, "vision": vision if first else 0})
    return stages


def _degrees(cfg: Config, world: int):
    p = cfg.parallel
    dp = data_parallel_size(cfg, world)
    return p.tensor_parallel, p.pipeline_parallel, dp, p.global_batch_size // (p.micro_batch_size * dp)


def activation_elements_per_token(cfg: Config, mode: Optional[str] = None) -> float:
    """Elements autograd keeps per token for one decoder layer on one rank (formula above)."""
    p, llm = cfg.parallel, cfg.model.llm
    tp, D, F, e = p.tensor_parallel, llm.hidden_size, llm.ffn_hidden_size, llm.head_dim
    he, ge = llm.num_heads * e, max(llm.num_kv_heads // tp, 1) * e * tp   # replicated K/V: one head
    mode = mode or cfg.train.activation_checkpointing
    norms = 4 * D / (tp if p.sequence_parallel else 1)
    if mode == "full":
        return D / (tp if p.sequence_parallel else 1)
    if mode == "selective":                   # + the recomputed attention's input and output
        return norms * 1.5 + 4 * F / tp
    return norms + (6 * he + 5 * ge + 4 * F) / tp


def memory(cfg: Config, world: int, r: dict) -> Dict[str, float]:
    """Bytes per rank of stage ``r`` (a ``stage_sizes`` entry): weights, gradients, optimizer,
    activations (formulas in the module docstring)."""
    p, m = cfg.parallel, cfg.model
    tp, pp, dp, gas = _degrees(cfg, world)
    w = 4 if cfg.train.dtype == "fp32" else 2
    s, b = cfg.data.seq_length, p.micro_batch_size
    in_flight = min(pp - r["stage"], gas)
    act = activation_elements_per_token(cfg) * s * b * w * r["layers"] * in_flight
    if cfg.train.activation_checkpointing == "full":      # the layer being recomputed
        act += activation_elements_per_token(cfg, "none") * s * b * w
    if r["first"]:
        v = m.vision
        images = b * -(-s // (m.chunk.text_tokens + m.visual_tokens_per_chunk))
        per_patch = 4 * v.hidden_size + (5 * v.hidden_size + 2 * v.ffn_hidden_size) / tp
        act += images * m.patches_per_image * per_patch * v.num_layers * w * in_flight
    if r["last"]:
        act += 2 * s * b * padded_vocab_size(cfg) / tp * 4
    T, zero = r["trainable"], p.zero_stage
    shard = dp if zero >= 1 else 1
    optimizer = 8 if (w == 4 and zero == 0) else 12
    accumulate = 4 * T if (zero == 1 and w == 2) else (4 * T / dp if zero >= 1 else 0)
    return {
        "weights": r["params"] * w / (dp if zero == 3 else 1),
        "gradients": T * w / (dp if zero >= 2 else 1) + accumulate,
        "optimizer": T * (optimizer + 4) / shard,
        "activations": act,
    }


def communication(cfg: Config, world: int, r: dict) -> Dict[str, float]:
    """Bytes each rank of stage ``r`` sends per optimizer step (ring collectives)."""
    p, llm = cfg.parallel, cfg.model.llm
    tp, pp, dp, gas = _degrees(cfg, world)
    w = 4 if cfg.train.dtype == "fp32" else 2
    act = cfg.data.seq_length * p.micro_batch_size * llm.hidden_size * w
    ring = lambda n: 2 * (n - 1) / n if n > 1 else 0.0                      # noqa: E731
    return {
        "data parallel": data_parallel_bytes(cfg, world, r),
        "tensor parallel": 4 * act * ring(tp) * r["layers"] * gas,
        "pipeline": (0 if r["last"] else 1) * 2 * act * gas,
    }


def data_parallel_bytes(cfg: Config, world: int, r: dict) -> float:
    """Bytes each rank of stage ``r`` sends per optimizer step in data-parallel collectives (the
    module docstring's DP formula)."""
    tp, pp, dp, gas = _degrees(cfg, world)
    if dp == 1:
        return 0.0
    w = 4 if cfg.train.dtype == "fp32" else 2
    zero, T = cfg.parallel.zero_stage, r["trainable"]
    scatter = (dp - 1) / dp                   # reduce-scatter or all-gather, per byte of the whole
    reduced = grad_accum_bytes(cfg, w) if zero == 1 else w
    grads = gradient_reductions_per_step(cfg, world) * T * reduced * (scatter if zero == 3 else 2 * scatter)
    if zero == 3:
        return grads + 2 * gas * r["params"] * w * scatter
    return grads + (T * w * scatter if zero >= 1 else 0.0)


def row_training_flops(cfg: Config) -> float:
    """FLOPs (forward + backward) a block-sparse attention kernel spends on one full training row:
    linear layers per position, attention per *computed* key: every key of every 128 x 128 tile
    the VIST2 mask does not leave empty, counted on a row of one long document in the packer's
    order (cost/block_sparsity.py; a kernel pays for whole tiles, not for allowed pairs), and
    the ViT and aligner per chunk image."""
    from .block_sparsity import BLOCK, full_row_counts
    f, m, s = forward_flops(cfg), cfg.model, cfg.data.seq_length
    L, k = m.chunk.text_tokens, m.visual_tokens_per_chunk
    chunks = -(-s // (L + k))
    keys = full_row_counts(L, k, s, cfg.data.readback_fraction).computed * BLOCK ** 2 / s   # per query
    forward = s * (f.llm_linear_per_token + f.llm_attention_per_key * keys) + chunks * (
        f.vision_per_image + f.aligner_per_image)
    return 3 * forward


def step_time(cfg: Config, cluster: Cluster, stages: Optional[List[dict]] = None) -> Dict[str, float]:
    """Seconds per optimizer step by part (formulas in the module docstring), for the slowest stage."""
    stages = stages or stage_sizes(cfg)
    tp, pp, dp, gas = _degrees(cfg, cluster.world)
    flops = row_training_flops(cfg) * cfg.parallel.global_batch_size
    if cfg.train.activation_checkpointing == "full":
        flops *= 4 / 3
    compute = flops / cluster.world / (cluster.peak_tflops * 1e12 * cluster.efficiency)
    compute *= (gas + pp - 1) / gas
    nodes_per_tp = tp > cluster.gpus_per_node
    tp_bw = (cluster.network_gbps if nodes_per_tp else cluster.nvlink_gbps) * 1e9
    net = cluster.network_gbps * 1e9
    dp_bw = net if cluster.world > cluster.gpus_per_node else cluster.nvlink_gbps * 1e9
    comm = [communication(cfg, cluster.world, r) for r in stages]
    return {
        "compute": compute,
        "tensor parallel": max(c["tensor parallel"] for c in comm) / tp_bw,
        "data parallel": max(c["data parallel"] for c in comm) / dp_bw * (1 - cluster.dp_overlap),
        "pipeline": max(c["pipeline"] for c in comm) / (net if cluster.world > cluster.gpus_per_node
                                                         else cluster.nvlink_gbps * 1e9),
    }


@dataclass
class Plan:
    overrides: List[str]          # dotted overrides that select the layout
    memory_gib: float             # the largest stage's estimate per rank
    parts: Dict[str, float]       # that stage's memory by part (GiB)
    step_s: float
    tokens_per_s: float
    times: Dict[str, float]


def _layout_config(cfg: Config, tp: int, pp: int, zero: int, micro: int, recompute: str) -> Config:
    p = replace(cfg.parallel, tensor_parallel=tp, pipeline_parallel=pp, zero_stage=zero,
                micro_batch_size=micro, sequence_parallel=tp > 1, pipeline_layers=None)
    return replace(cfg, parallel=p, train=replace(cfg.train, activation_checkpointing=recompute))


def plan_layouts(cfg: Config, cluster: Cluster, top: int = 10) -> List[Plan]:
    """Layouts of ``cfg`` on ``cluster`` that pass the config's validation and fit the usable GPU
    memory, fastest first (ties: less memory first): TP in 1..gpus_per_node, PP dividing the layers, ZeRO 1-3, micro-batch
    1-8, with and without full recomputation (sequence parallelism whenever TP > 1)."""
    plans = []
    tps = [t for t in (1, 2, 4, 8) if t <= cluster.gpus_per_node and cluster.world % t == 0]
    for tp in tps:
        for pp in (1, 2, 4, 8, 16):
            if cluster.world % (tp * pp) or cfg.model.llm.num_layers % pp:
                continue
            dp = cluster.world // (tp * pp)
            for micro in (1, 2, 4, 8):
                if cfg.parallel.global_batch_size % (micro * dp):
                    continue
                for zero in (1, 2, 3):
                    for recompute in ("none", "full"):
                        c = _layout_config(cfg, tp, pp, zero, micro, recompute)
                        try:
                            c = validate(copy.deepcopy(c), cluster.world)
                        except ConfigError:
                            continue
                        stages = stage_sizes(c)
                        mems = [memory(c, cluster.world, r) for r in stages]
                        worst = max(mems, key=lambda x: sum(x.values()))
                        total = sum(worst.values()) / GIB
                        if total > cluster.gpu_memory_gib * cluster.usable_memory:
                            continue
                        times = step_time(c, cluster, stages)
                        step = sum(times.values())
                        plans.append(Plan(
                            [f"parallel.tensor_parallel={tp}", f"parallel.pipeline_parallel={pp}",
                             f"parallel.zero_stage={zero}", f"parallel.micro_batch_size={micro}",
                             f"parallel.sequence_parallel={str(tp > 1).lower()}",
                             f"train.activation_checkpointing={recompute}"],
                            total, {k: v / GIB for k, v in worst.items()}, step,
                            c.parallel.global_batch_size * c.data.seq_length / step, times))
    plans.sort(key=lambda x: (-x.tokens_per_s, x.memory_gib))
    return plans[:top]


# ------------------------------------------------------------------ the trainer's preflight
def available_memory_bytes(device) -> Optional[int]:
    """Memory one rank can use: the GPU's, or on the CPU the host's shared by its local ranks."""
    import torch
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    try:
        host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return host // max(1, local)


def memory_problem(cfg: Config, world: int, available: Optional[int]) -> Optional[str]:
    """The planner's per-rank estimate (cost/planner.py) against ``available`` bytes."""
    if not available:
        return None
    worst = max((sum(memory(cfg, world, r).values()), r["stage"]) for r in stage_sizes(cfg))
    if worst[0] <= available:
        return None
    gib = 2 ** 30
    return (f"this run needs about {worst[0] / gib:,.1f} GiB per rank (pipeline stage {worst[1]}, the "
            f"planner's estimate: tools/dry_run.py shows the parts) but a rank has {available / gib:,.1f} GiB: "
            f"use a smaller model, raise parallel.zero_stage / tensor_parallel / pipeline_parallel, lower "
            f"parallel.micro_batch_size or data.seq_length, or train.activation_checkpointing=full")

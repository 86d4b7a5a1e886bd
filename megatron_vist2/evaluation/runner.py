"""One evaluation: the model (and its controls) scored on identical held-out targets in the
launcher's layout, then, through the inference engine, OCR read-back, retrieval and loss beyond
the training length; -> the eval.json dictionary (report.py writes it).

Every input is checked before any model is built (checkpoint records and identities, retrieval
depths, a non-empty held-out set); nothing is written here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import torch
from megatron.core import parallel_state, tensor_parallel

from ..errors import UserError
from .checkpoints import Evaluated, check_identities, describe


class EvaluationError(UserError):
    """An evaluation that cannot be run as asked."""


@dataclass
class Options:
    checkpoint: str
    text: Optional[str] = None
    window: Optional[str] = None
    batches: int = 4                    # global batches of held-out rows
    micro_batch: int = 4
    tp: int = 1
    pp: int = 1
    valid_prefix: str = ""              # default: the model's data.valid_prefix
    ocr_chunks: int = 32                # 0 = no read-back
    retrieval_contexts: Sequence[int] = ()
    retrieval_depths: Sequence[int] = ()
    retrieval_trials: int = 4
    long_docs: int = 2                  # 0 = no long-document loss
    long_max_tokens: int = 2048
    overrides: List[str] = field(default_factory=list)


def _tokenizer(ev: Evaluated, cfg):
    from ..checkpoint.tokenizer_record import find_tokenizer
    from ..data.tokenizer import load_tokenizer
    return load_tokenizer(find_tokenizer(ev.step_dir, cfg.data.tokenizer, ev.tokenizer_sha256, None,
                                         identify=lambda p: load_tokenizer(p).sha256))


def _inference_model(ev: Evaluated, cfg, env):
    """The whole model of ``ev`` for the engine, split over this rank's TP group (pp must be 1)."""
    from ..checkpoint.reshard import load_weights
    from ..checkpoint.sources import open_checkpoint
    from ..models.vist2 import Vist2Model
    model = Vist2Model(cfg)
    load_weights(model, open_checkpoint(str(ev.step_dir)), parallel_state.get_tensor_model_parallel_world_size(),
                 parallel_state.get_tensor_model_parallel_rank(), log=lambda *_: None)
    return model.to(env.device).eval()


def engine_metrics(ev: Evaluated, cfg, tok, indexed, opts: Options, env, controls=()) -> Dict:
    """OCR read-back (VIST2 context only), retrieval and long-document loss of the model through
    the engine; retrieval also for each of ``controls`` ((Evaluated, config) pairs), on the same
    prompts, each in its own engine mode."""
    from .longdoc import long_context_loss, long_documents, row_text_tokens
    from ..metrics.readback import held_out_chunks, ocr_readback
    from .retrieval import side_by_side
    model = _inference_model(ev, cfg, env)
    mc = cfg.model
    L, m = mc.chunk.text_tokens, mc.visual_tokens_per_chunk
    out: Dict = {}
    if opts.ocr_chunks and ev.context == "vist2":     # only VIST2 reads images
        from ..data.cursor import ReadingCursor
        from ..data.renderer import Renderer

        def forward(batch):
            return tensor_parallel.gather_from_tensor_model_parallel_region(model(batch))
        chunks = held_out_chunks(indexed, L, opts.ocr_chunks)
        out["ocr_readback"] = {"rho": mc.compression_ratio,
                               **ocr_readback(forward, chunks, Renderer.from_model_config(mc), tok, L, m,
                                              device=env.device, cursor=ReadingCursor.of_model(mc))}
    if opts.retrieval_contexts and opts.retrieval_depths:
        seed = cfg.train.seed                          # the model's: every model gets the same prompts
        by_role = {ev.role: _retrieval(model, cfg, tok, indexed, opts, env, seed)}
        for other, other_cfg in controls:
            by_role[other.role] = _retrieval(_inference_model(other, other_cfg, env), other_cfg, tok, indexed,
                                             opts, env, seed)
        out["retrieval"] = side_by_side(by_role)
    if opts.long_docs:
        docs = long_documents(indexed, row_text_tokens(cfg), opts.long_docs, opts.long_max_tokens)
        out["beyond_training_length"] = long_context_loss(_engines(model, tok, cfg, env), docs, cfg)
    return out


def _engines(model, tok, cfg, env):
    """-> engine_for(max_context): the engine of ``model`` in its context's own mode (VIST2:
    running compression; text: full KV; window: the current chunk only)."""
    from ..inference import Vist2Engine
    return lambda max_context: Vist2Engine(model, tok, cfg, compress=None, max_context=max_context,
                                           device=env.device)


def _retrieval(model, cfg, tok, indexed, opts: Options, env, seed: int) -> Dict:
    from .retrieval import retrieval
    return retrieval(_engines(model, tok, cfg, env), tok, indexed, opts.retrieval_contexts, opts.retrieval_depths,
                     opts.retrieval_trials, seed)


def run(opts: Options) -> Dict:
    """-> the results on every rank (rank 0 writes them)."""
    import os
    from ..data.indexed import open_indexed
    from ..parallel.distributed import init_distributed
    from .heldout import distinct_batches, eval_config, heldout_dataset, history_targets, rows_config, score
    from ..metrics.paired import check_same_targets, retention
    from .retrieval import check_depths
    from ..metrics.targets import chunk_bins

    if opts.batches < 1:
        raise EvaluationError(f"--batches must be >= 1, got {opts.batches}")
    model = describe(opts.checkpoint, "model", "--checkpoint")
    controls = [describe(p, role, f"--{role}") for role, p in (("text", opts.text), ("window", opts.window)) if p]
    check_identities(model, controls)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cfgs = {ev.role: eval_config(ev.config, opts.tp, opts.pp, world, opts.micro_batch, opts.overrides)
            for ev in [model, *controls]}
    rows_cfg = rows_config(cfgs["model"])
    if opts.valid_prefix:
        from dataclasses import replace
        rows_cfg = replace(rows_cfg, data=replace(rows_cfg.data, valid_prefix=opts.valid_prefix))
    tok = _tokenizer(model, cfgs["model"])
    if opts.retrieval_contexts:
        check_depths(opts.retrieval_contexts, opts.retrieval_depths, tok)
    from ..errors import DatasetError
    try:
        indexed = open_indexed(rows_cfg.data.valid_prefix, tok)
    except DatasetError as exc:               # e.g. an empty .idx: no documents at all
        raise EvaluationError(f"the evaluation set {rows_cfg.data.valid_prefix} cannot be used: {exc}") from None
    if len(indexed) == 0 or int(indexed.lengths.sum()) == 0:
        raise EvaluationError(f"the evaluation set {rows_cfg.data.valid_prefix} has no tokens: "
                              f"point --valid-prefix (or the model's data.valid_prefix) at held-out data")
    dataset = heldout_dataset(rows_cfg, tok, opts.batches, model.context)
    if len(dataset) == 0:
        raise EvaluationError(f"the evaluation set {rows_cfg.data.valid_prefix} packs into no rows")
    G, L = rows_cfg.parallel.global_batch_size, rows_cfg.model.chunk.text_tokens
    usable = distinct_batches(dataset, opts.batches, G)
    if usable < opts.batches:
        raise EvaluationError(
            f"--batches {opts.batches} of {G} rows asks for {opts.batches * G} held-out rows, but the evaluation "
            f"set {rows_cfg.data.valid_prefix} holds {'fewer than one batch' if usable == 0 else usable * G} "
            f"before its rows repeat (a repeated row counts the same targets twice and makes every standard "
            f"error look smaller than it is): use " + (f"--batches {usable}" if usable else "a smaller --micro-batch")
            + " or a larger held-out set")
    history = history_targets(dataset, opts.batches, G, L)
    if opts.text and opts.window and history == 0:
        raise EvaluationError(
            f"no held-out target of {rows_cfg.data.valid_prefix} has history (every document fits in one chunk "
            f"of model.chunk.text_tokens = {L} tokens), so retention R against the controls cannot be measured: "
            f"evaluate on documents longer than one chunk (--valid-prefix), or leave out --text/--window")

    env = init_distributed(opts.tp, opts.pp)
    log = print if env.is_main else (lambda *_: None)
    results = {"checkpoint": str(model.step_dir), "step": model.step, "context": model.context,
               "rho": cfgs["model"].model.compression_ratio,
               "text_tokens_per_chunk": cfgs["model"].model.chunk.text_tokens,
               "valid_prefix": rows_cfg.data.valid_prefix, "layout": {"tp": opts.tp, "pp": opts.pp, "world": world},
               "heldout_rows": {"rows": opts.batches * G, "distinct": True, "targets_with_history": history},
               "heldout": {}}
    per_target = {}
    for ev in [model, *controls]:
        log(f"scoring {ev.role} ({ev.context}) {ev.step_dir} on {opts.batches} held-out batches")
        rows = dataset if ev.role == "model" else heldout_dataset(rows_cfg, tok, opts.batches, ev.context)
        results["heldout"][ev.role], per_target[ev.role] = score(cfgs[ev.role], str(ev.step_dir), env, rows,
                                                                 rows_cfg, opts.batches, log)
        results["heldout"][ev.role]["checkpoint"] = str(ev.step_dir)
    check_same_targets(per_target)
    if opts.text and opts.window:
        results["retention"] = retention(per_target, L, chunk_bins(rows_cfg),
                                         parallel_state.get_data_parallel_group())
    if opts.pp > 1:
        results["engine_note"] = ("OCR read-back, retrieval and long documents run through the inference "
                                  "engine, which has no pipeline stages: run them with --pp 1")
    else:
        # retrieval also for the controls (VIST2 next to the text control at every depth); OCR and
        # long documents for the model only
        results.update(engine_metrics(model, cfgs["model"], tok, indexed, opts, env,
                                      [(ev, cfgs[ev.role]) for ev in controls]))
    torch.distributed.barrier()
    return results

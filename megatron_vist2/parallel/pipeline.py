"""Pipeline parallelism: this rank's stage, the transfers between stages and the 1F1B schedule.

Design (why not DeepSpeed's PipelineEngine: it asserts against ZeRO-2/3): every stage is an
ordinary DeepSpeed engine over the stage's own data-parallel group (megatron-core's groups), so
any ZeRO stage works inside a stage. This module drives those engines with a one-forward-
one-backward schedule (the order of megatron-core's non-interleaved schedule) and moves tensors
between neighbouring stages with torch.distributed point-to-point calls (NCCL or gloo).

  - Forward messages carry the hidden states *and* the batch's per-token metadata (layout,
    labels, loss mask) packed in one int64 tensor: only the first stage reads data and renders
    images; the others rebuild masks and RoPE from the metadata.
  - A non-last stage back-propagates ``sum(output * grad_from_next_stage)`` through
    ``engine.backward`` (not scaled again for accumulation: the received gradient already is),
    so DeepSpeed's accumulation, ZeRO reduction and clipping work unchanged.
  - Tied embeddings: the first stage sends its embedding weight to the last stage once per
    step; the last stage's accumulated gradient for it comes back before the first stage's last
    backward and joins the embedding's gradient there (models/vist2.py ``TiedGradient``). The
    copy on the last stage is not a parameter: no optimizer state is duplicated and the
    gradient norm counts the weight once. Cost per step: one weight and one gradient transfer
    of vocab x hidden / tp, as megatron's embedding all-reduce.
  - Gradient norms: the DeepSpeed ``mpu`` adapter reports the tensor x pipeline group as the
    model-parallel group, so clipping sees the whole model.
  - The schedule is task-agnostic (as megatron-core's, which calls the loss function the forward
    step returns): on the last stage it calls the ``loss_fn(output, batch) -> (loss_sum, stats)``
    it is handed, back-propagates ``loss_sum`` and adds ``stats`` (None: nothing to add) into the
    caller's accumulator. The objective itself is metrics/loss.py. The row length comes with
    each call (a curriculum changes it; evaluation rows are full length).
"""
from __future__ import annotations

from collections import deque
from typing import Callable, Iterable, List, Optional, Tuple

import deepspeed
import torch
import torch.distributed as dist
from megatron.core import parallel_state

from ..config import Config, stage_layers
from ..models.attention import TokenLayout
from ..models.vist2 import StagePart, Vist2Batch
from . import compat

META_FIELDS = ("doc", "chunk", "kind", "readback", "position")   # + labels, loss_mask, targets
META_ROWS = len(META_FIELDS) + 4
# (stage output, batch) -> (summed loss, statistics to accumulate or None); last stage only
LossFn = Callable[[torch.Tensor, Vist2Batch], Tuple[torch.Tensor, Optional[torch.Tensor]]]


def stage_part(cfg: Config) -> StagePart:
    """The part of the model this rank's pipeline stage holds."""
    stage = parallel_state.get_pipeline_model_parallel_rank()
    size = parallel_state.get_pipeline_model_parallel_world_size()
    return StagePart(first=stage == 0, last=stage == size - 1, layers=stage_layers(cfg, stage))


def pack_metadata(batch: Vist2Batch) -> torch.Tensor:
    """Everything a later stage needs of the batch, as one int64 [META_ROWS, batch, seq] tensor
    (a batch without target ids sends -1 / False for them)."""
    target = batch.target if batch.target is not None else torch.full_like(batch.labels, -1)
    first = batch.first_target if batch.first_target is not None else torch.zeros_like(batch.labels)
    fields = [getattr(batch.layout, f) for f in META_FIELDS] + [batch.labels, batch.loss_mask,
                                                                target, first]
    return torch.stack([f.long() for f in fields])


def unpack_metadata(meta: torch.Tensor) -> Vist2Batch:
    layout = TokenLayout(**{f: meta[i] for i, f in enumerate(META_FIELDS)})
    layout.readback = layout.readback.bool()
    empty = torch.zeros(0, 1, 1, dtype=torch.uint8, device=meta.device)
    n = len(META_FIELDS)
    return Vist2Batch(tokens=torch.zeros_like(meta[0]), layout=layout, images=empty,
                      labels=meta[n], loss_mask=meta[n + 1].float(), target=meta[n + 2],
                      first_target=meta[n + 3].bool())


def _exchange(sends: List[Tuple[torch.Tensor, int]], recvs: List[Tuple[torch.Tensor, int]]) -> None:
    """Post all sends and receives together, then wait: the pairing megatron's schedule relies on
    to be deadlock-free."""
    ops = [dist.P2POp(dist.isend, t, peer) for t, peer in sends]
    ops += [dist.P2POp(dist.irecv, t, peer) for t, peer in recvs]
    if ops:
        for work in dist.batch_isend_irecv(ops):
            work.wait()


class PipelineSchedule:
    """Runs one stage's share of a training step or an evaluation pass."""

    def __init__(self, cfg: Config, engine, dtype: torch.dtype, device: torch.device):
        self.engine, self.dtype, self.device = engine, dtype, device
        self.part: StagePart = engine.module.part
        p = cfg.parallel
        self.cfg = cfg
        self.prev = None if self.part.first else parallel_state.get_pipeline_model_parallel_prev_rank()
        self.next = None if self.part.last else parallel_state.get_pipeline_model_parallel_next_rank()
        self.first_rank = parallel_state.get_pipeline_model_parallel_first_rank()
        self.last_rank = parallel_state.get_pipeline_model_parallel_last_rank()
        self.group = parallel_state.get_pipeline_model_parallel_group()
        self.tied = engine.module.tied and not (self.part.first and self.part.last)
        self.output_weight: Optional[torch.Tensor] = None
        self.update_guard = None                 # training/health.py NonFiniteGuard (the trainer sets it)
        if p.zero_stage == 3:
            compat.check_zero3_micro_steps()
        if p.pipeline_parallel > 1 and p.zero_stage == 3:
            compat.install_zero3_stage_checks()

    def _use_rows_of(self, seq_length: int) -> None:
        """This call's rows have ``seq_length`` tokens (the shapes later stages receive)."""
        p = self.cfg.parallel
        seq = seq_length // (p.tensor_parallel if p.sequence_parallel else 1)
        self.hidden_shape = (seq, p.micro_batch_size, self.cfg.model.llm.hidden_size)
        self.meta_shape = (META_ROWS, p.micro_batch_size, seq_length)

    # ------------------------------------------------------------------ transfers
    def _empty_hidden(self) -> torch.Tensor:
        return torch.empty(self.hidden_shape, dtype=self.dtype, device=self.device)

    def _empty_meta(self) -> torch.Tensor:
        return torch.empty(self.meta_shape, dtype=torch.long, device=self.device)

    def _recv_forward(self, sends=()) -> Tuple[torch.Tensor, torch.Tensor]:
        hidden, meta = self._empty_hidden(), self._empty_meta()
        _exchange(list(sends), [(hidden, self.prev), (meta, self.prev)])
        return hidden.requires_grad_(), meta

    def _forward_sends(self, out: torch.Tensor, meta: torch.Tensor):
        return [(out.detach().contiguous(), self.next), (meta, self.next)]

    def _broadcast(self, value: torch.Tensor, src: int) -> torch.Tensor:
        dtype = torch.float64 if value.dtype == torch.float64 else torch.float32   # sums of squares stay double
        value = value.detach().to(self.device, dtype).clone()
        dist.broadcast(value, src=src, group=self.group)
        return value

    def _sync_tied_weight(self) -> None:
        """First stage -> last stage: the current embedding weight (this rank's vocab slice)."""
        if not self.tied:
            return
        if self.part.first:
            weight = self.engine.module.front.embedding.weight
            with deepspeed.zero.GatheredParameters([weight]):
                _exchange([(weight.detach().contiguous(), self.last_rank)], [])
        elif self.part.last:
            shape = (self.engine.module.head.output.output_size_per_partition, self.hidden_shape[-1])
            self.output_weight = torch.empty(shape, dtype=self.dtype, device=self.device)
            _exchange([], [(self.output_weight, self.first_rank)])
            self.output_weight.requires_grad_()

    # ------------------------------------------------------------------ one micro-batch
    def _forward(self, batch: Optional[Vist2Batch], hidden, meta, loss_fn: LossFn,
                 stats: Optional[torch.Tensor]):
        """-> (stage output, metadata); on the last stage the output is ``loss_fn``'s summed loss
        (its statistics added into ``stats``)."""
        if self.part.first:
            meta = pack_metadata(batch)
            out = self.engine(batch)
        else:
            batch = unpack_metadata(meta)
            out = self.engine(batch, hidden=hidden, output_weight=self.output_weight)
        if self.part.last:
            out, extra = loss_fn(out, batch)
            if extra is not None and stats is not None:
                stats += extra
        return out, meta

    def _backward(self, inp, out, grad, scale, final: bool):
        """Back-propagate one micro-batch; -> the gradient for the previous stage (or None)."""
        if self.part.last:
            self.engine.backward(out * scale.to(out.dtype))
        else:
            surrogate = (out * grad).sum()
            if final and self.tied and self.part.first:
                embedding = self.engine.module.front.embedding
                tied_grad = torch.empty(embedding.num_embeddings_per_partition, embedding.embedding_dim,
                                        dtype=self.dtype, device=self.device)
                _exchange([], [(tied_grad, self.last_rank)])
                surrogate = surrogate + self.engine.module.tied_gradient(tied_grad).to(surrogate.dtype)
            self.engine.backward(surrogate, scale_wrt_gas=False)
        return None if self.part.first else inp.grad

    def _step(self, final: bool, loss_sum: Optional[torch.Tensor] = None) -> None:
        """After a backward's gradient has gone to the previous stage. DeepSpeed updates only at
        the accumulation boundary (the final micro-batch), where it runs collectives over the
        model-parallel group (gradient norm): everything another stage waits for is sent first.
        There ``update_guard`` (training/health.py, when set) decides, with one collective over
        the world, whether this update is applied (``loss_sum``: this stage's, last stage)."""
        if final and self.tied and self.part.last:
            _exchange([(self.output_weight.grad.contiguous(), self.first_rank)], [])
            self.output_weight = None
        # ZeRO-3 moves to its next accumulation micro-step (add, not overwrite, the gradient
        # partitions) at the start of the next forward; in 1F1B two backwards can follow each
        # other, so advance it here, after every backward. (Idempotent for the next forward.)
        compat.clear_backward_seen_flag(self.engine.optimizer)
        guard = self.update_guard if final else None
        if guard is not None:
            guard.before_update(loss_sum if self.part.last else None)
        self.engine.step()
        if guard is not None:
            guard.after_update()

    # ------------------------------------------------------------------ schedules
    def train_step(self, micro_batches: Optional[List[Vist2Batch]], num_micro: int,
                   count: Optional[torch.Tensor], dp: int, seq_length: int, loss_fn: LossFn,
                   stats: Optional[torch.Tensor] = None) -> float:
        """1F1B over ``num_micro`` micro-batches of rows of ``seq_length`` tokens (given on the
        first stage only). ``count``: the global number of loss targets of the step (first stage).
        ``loss_fn``'s statistics are added into ``stats`` (last stage). Returns the step's mean
        loss."""
        self._use_rows_of(seq_length)
        count = self._broadcast(count if self.part.first else torch.zeros(()), self.first_rank)
        scale = dp * num_micro / count.clamp(min=1.0)
        self._sync_tied_weight()
        stage = parallel_state.get_pipeline_model_parallel_rank()
        size = parallel_state.get_pipeline_model_parallel_world_size()
        warmup = min(size - stage - 1, num_micro)
        pending = deque()                      # (input, output) awaiting backward, oldest first
        loss_sum = torch.zeros((), device=self.device)
        done = 0
        fed = iter(micro_batches or [None] * num_micro)

        def forward(hidden, meta):
            nonlocal loss_sum
            out, meta = self._forward(next(fed), hidden, meta, loss_fn, stats)
            if self.part.last:
                loss_sum = loss_sum + out.detach().float()
            pending.append((hidden, out))
            return out, meta

        def backward(grad):
            inp, out = pending.popleft()
            return self._backward(inp, out, grad, scale, final=done + 1 == num_micro)

        def step():
            nonlocal done
            done += 1
            self._step(final=done == num_micro, loss_sum=loss_sum)

        for _ in range(warmup):
            hidden, meta = self._recv_forward() if self.prev is not None else (None, None)
            out, meta = forward(hidden, meta)
            _exchange(self._forward_sends(out, meta) if self.next is not None else [], [])
        remaining = num_micro - warmup
        hidden = meta = None
        if remaining and self.prev is not None:
            hidden, meta = self._recv_forward()
        for i in range(remaining):
            out, meta = forward(hidden, meta)
            grad = None
            if self.next is not None:              # send this output, receive the oldest's gradient
                grad = self._empty_hidden()
                _exchange(self._forward_sends(out, meta), [(grad, self.next)])
            dx = backward(grad)
            if self.prev is not None and i == remaining - 1:
                _exchange([(dx, self.prev)], [])
            elif self.prev is not None:            # send the gradient, receive the next input
                hidden, meta = self._recv_forward(sends=[(dx, self.prev)])
            step()
        for _ in range(warmup):
            grad = self._empty_hidden()
            _exchange([], [(grad, self.next)])
            dx = backward(grad)
            if self.prev is not None:
                _exchange([(dx, self.prev)], [])
            step()
        return self._step_loss(loss_sum, count)

    @torch.no_grad()
    def evaluate(self, micro_batches: Optional[Iterable[Vist2Batch]], num_micro: int, seq_length: int,
                 loss_fn: LossFn, stats: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Forward only over rows of ``seq_length`` tokens; -> [summed loss, targets] over this
        data-parallel rank's batches, non-zero on the last stage (``loss_fn``'s statistics added
        into ``stats``)."""
        self._use_rows_of(seq_length)
        self._sync_tied_weight()
        loss_sum = torch.zeros((), device=self.device)
        count = torch.zeros((), device=self.device)
        feed = (b.to(self.device) for b in micro_batches) if micro_batches is not None else [None] * num_micro
        for batch in feed:
            hidden, meta = self._recv_forward() if self.prev is not None else (None, None)
            out, meta = self._forward(batch, hidden, meta, loss_fn, stats)
            if self.next is not None:
                _exchange(self._forward_sends(out, meta), [])
            else:
                loss_sum += out.float()
                count += unpack_metadata(meta).loss_mask.sum()
        self.output_weight = None
        return torch.stack([loss_sum, count])

    def _step_loss(self, loss_sum: torch.Tensor, count: torch.Tensor) -> float:
        """The last stage's loss, averaged over data-parallel ranks, known to every stage."""
        total = loss_sum.detach().float().clone()
        dist.all_reduce(total, group=parallel_state.get_data_parallel_group())
        total = self._broadcast(total, self.last_rank)
        return (total / count.clamp(min=1.0)).item()

    def share_from_last(self, value: torch.Tensor) -> torch.Tensor:
        """Every stage gets the last stage's ``value`` (e.g. an evaluation loss)."""
        return self._broadcast(value, self.last_rank)

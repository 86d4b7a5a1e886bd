"""The VIST2 model: ViT -> tanh aligner -> Qwen3-style decoder, over interleaved text/visual rows.

Three parts, so a pipeline stage can hold any contiguous piece: ``front`` (vision + aligner +
embedding + splice, first stage), ``layers`` (decoder blocks keyed by their global index, so
parameter names do not depend on the stage) and ``head`` (final norm + output layer, last stage).
Attention masks and RoPE are rebuilt from the batch's per-token metadata, so the metadata is all
that travels with the activations between stages.

Every part is initialised from its own seed (derived from ``train.seed`` and the part's name),
so a stage that builds only its parts gets exactly the weights the whole model would have.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, fields
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn as nn
from megatron.core import ModelParallelConfig, tensor_parallel

from ..config.schema import Config, ModelConfig
from ..config.derived import guided_layers, padded_vocab_size
from .aligner import Aligner
from .attention import VISUAL, TokenLayout, build_mask, resolve_backend
from .cursor import CursorEmbedding, cursor_attention_loss
from .llm import LMHead, decoder_layer
from .ocr_head import OcrBatch, OcrGridHead, ocr_loss
from .transformer import Rotary, normal_init
from .vision import VisionEncoder


@dataclass
class Vist2Batch:
    """One micro-batch of packed rows. ``images`` holds one render per visual block, in the
    row-major order (row, then position) in which the blocks appear."""
    tokens: torch.Tensor      # int64 [batch, seq]; 0 at visual and padding positions
    layout: TokenLayout       # per-token metadata, [batch, seq] each
    images: torch.Tensor      # uint8 [num_images, H, W]
    labels: torch.Tensor      # int64 [batch, seq]: the text token this position's output predicts
    loss_mask: torch.Tensor   # float [batch, seq]: 1 where ``labels`` is a trained target
    source: Optional[torch.Tensor] = None   # int64 [batch]: blend source of each row (data/dataset.py)
    # int64 [batch, seq]: offset of the label in its segment's text (-1: no label), the same in
    # every model.context, so evaluation compares models target by target (data/packing.py)
    target: Optional[torch.Tensor] = None
    first_target: Optional[torch.Tensor] = None   # bool [batch, seq]: the label starts a chunk > 0
    # int64 [num_images, lines * columns]: each image's OCR-head targets (model.ocr_head.enabled
    # with train.objective=lm: the auxiliary loss; data/ocr_targets.py), else None
    ocr_targets: Optional[torch.Tensor] = None
    # int64 [batch, seq]: the reading cursor's cell at read-back text positions, -1 elsewhere
    # (model.readback_cursor; data/cursor.py), else None
    cursor: Optional[torch.Tensor] = None
    # int64 [batch, seq]: at read-back text positions with a cursor cell, the row position of the
    # visual token whose region holds that cell (guided attention), -1 elsewhere; else None
    cursor_key: Optional[torch.Tensor] = None

    def to(self, device) -> "Vist2Batch":
        moved = {f.name: None if getattr(self, f.name) is None else getattr(self, f.name).to(device)
                 for f in fields(self)}
        return Vist2Batch(**moved)


def model_parallel_config(tensor_parallel_size: int, sequence_parallel: bool = False) -> ModelParallelConfig:
    """Weights are always built on the CPU from the full master weight and then sliced, so a seed
    gives the same full model for every tensor-parallel size (and the same model on GPU and CPU)."""
    return ModelParallelConfig(tensor_model_parallel_size=tensor_parallel_size,
                               sequence_parallel=sequence_parallel,
                               use_cpu_initialization=True, perform_initialization=True,
                               params_dtype=torch.float32, gradient_accumulation_fusion=False)


class Vist2Front(nn.Module):
    """Text embedding, image encoding and the splice of visual tokens into the text stream.
    The controls (``model.context`` text / window) see no images: no vision encoder, no aligner.
    With ``model.ocr_head.enabled`` the front also holds the OCR head (models/ocr_head.py, built
    from its own seed): a forward given the images' targets leaves its summed loss and cell count
    in ``ocr_loss`` for the pipeline schedule to add to the first stage's backward. With
    ``model.readback_cursor`` it holds the cursor's embeddings (models/cursor.py), added to the
    text embedding where the batch gives a cursor."""

    def __init__(self, cfg: ModelConfig, vocab_padded: int, mp: ModelParallelConfig, seed: int = 0):
        super().__init__()
        # The ViT and aligner never use sequence parallelism: their sequences are 64 patches and
        # the aligner's input is image-major, not sequence-major.
        vision_mp = model_parallel_config(mp.tensor_model_parallel_size)
        self.sequence_parallel = mp.sequence_parallel
        self.vision = self.aligner = None
        if cfg.context == "vist2":
            self.vision = VisionEncoder(cfg, vision_mp)
            self.aligner = Aligner(cfg.vision.hidden_size, cfg.llm.hidden_size, cfg.aligner.merge,
                                   self.vision.grid, vision_mp, cfg.init_std)
        self.embedding = tensor_parallel.VocabParallelEmbedding(
            vocab_padded, cfg.llm.hidden_size, init_method=normal_init(cfg.init_std), config=mp)
        self.ocr_head = _seeded(seed, "front.ocr_head", lambda: OcrGridHead(cfg)) \
            if cfg.ocr_head.enabled and self.vision is not None else None
        self.ocr_loss: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
        self.cursor = _seeded(seed, "front.cursor", lambda: CursorEmbedding(cfg)) \
            if cfg.readback_cursor and self.vision is not None else None

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [n, H, W] -> visual tokens [n, m, hidden]."""
        if self.vision is None:
            raise ValueError("a control model (model.context text / window) has no vision encoder: "
                             "its rows carry no images")
        return self.aligner(self.vision(images))

    def read(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [n, H, W] -> the OCR head's cell logits [n, cells, classes] (no LLM)."""
        if self.ocr_head is None:
            raise ValueError("this model has no OCR head: set model.ocr_head.enabled=true (a VIST2 model)")
        return self.ocr_head(self.encode_images(images))

    def forward(self, tokens: torch.Tensor, images: torch.Tensor, kind: torch.Tensor,
                ocr_targets: Optional[torch.Tensor] = None, cursor: Optional[torch.Tensor] = None) -> torch.Tensor:
        """-> hidden [seq, batch, hidden] with visual tokens at the VISUAL positions (and, given
        ``ocr_targets`` and an OCR head, the head's loss on the images in ``ocr_loss``; given
        ``cursor`` [batch, seq], its embeddings added)."""
        hidden = self.embedding(tokens)
        if self.cursor is not None and cursor is not None:     # (a batch without read-back: none)
            hidden = self.cursor(hidden, cursor)
        visual = kind == VISUAL
        vis = self.encode_images(images) if images.shape[0] else None
        _check_visual_positions(visual, 0 if vis is None else vis.shape[0] * vis.shape[1],
                                f"{images.shape[0]} images x {0 if vis is None else vis.shape[1]} tokens")
        if vis is not None:
            if ocr_targets is not None and self.ocr_head is not None:
                self.ocr_loss = ocr_loss(self.ocr_head(vis), ocr_targets)
            hidden = hidden.masked_scatter(visual[..., None], vis.to(hidden.dtype))
        hidden = hidden.transpose(0, 1).contiguous()
        if self.sequence_parallel:                      # each TP rank keeps its slice of the sequence
            hidden = tensor_parallel.scatter_to_sequence_parallel_region(hidden)
        return hidden


def _check_visual_positions(visual: torch.Tensor, tokens: int, what: str) -> None:
    """The batch has exactly ``tokens`` visual positions (one per visual token of its images).
    Counting them is a device-to-host sync on a GPU, on every micro-batch: there the check is an
    asynchronous device assert (a bad batch stops the process at the next sync, with the
    message); on the CPU it costs nothing and raises a ValueError."""
    count = visual.sum()
    if visual.device.type == "cpu":
        if int(count) != tokens:
            raise ValueError(f"batch has {int(count)} visual positions but {what}")
    else:
        torch._assert_async(count == tokens, f"batch's visual positions differ from its {what}")


@dataclass(frozen=True)
class StagePart:
    """Which parts of the model one pipeline stage holds (the whole model: all of them)."""
    first: bool               # front: vision encoder, aligner, embedding
    last: bool                # head: final norm, output layer
    layers: range             # global indices of its decoder layers

    @staticmethod
    def whole(num_layers: int) -> "StagePart":
        return StagePart(True, True, range(num_layers))


def _seeded(seed: int, name: str, build: Callable[[], nn.Module]) -> nn.Module:
    """Build a part from its own RNG stream: its weights do not depend on what else is built."""
    torch.manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % 2 ** 63)
    return build()


class TiedGradient(nn.Module):
    """First pipeline stage with tied embeddings: the output layer lives on the last stage and
    uses a copy of the embedding weight; its gradient comes back and enters the embedding's
    gradient through ``forward(grad) = sum(weight * grad)`` in the stage's last backward, so
    DeepSpeed (any ZeRO stage) reduces and clips it like every other gradient."""

    def __init__(self, embedding: nn.Module):
        super().__init__()
        self._embedding = [embedding]          # a reference, not a submodule (no duplicate param)

    @property
    def weight(self) -> torch.Tensor:
        return self._embedding[0].weight

    def forward(self, grad: torch.Tensor) -> torch.Tensor:
        return (self.weight * grad.to(self.weight.dtype)).sum()


class Vist2Model(nn.Module):
    def __init__(self, cfg: Config, mp: ModelParallelConfig = None, part: Optional[StagePart] = None):
        super().__init__()
        mcfg, seed = cfg.model, cfg.train.seed
        mp = mp or model_parallel_config(cfg.parallel.tensor_parallel, cfg.parallel.sequence_parallel)
        self.part = part = part or StagePart.whole(mcfg.llm.num_layers)
        self.tied = mcfg.llm.tie_embeddings
        self.attention_backend = mcfg.attention_backend
        self.attention_dropout = mcfg.llm.attention_dropout
        self.context = mcfg.context
        # guided attention (train.cursor_attention_weight): its first layers, on the first stage
        self.guided_layers = guided_layers(cfg)
        self.cursor_attention: Optional[Tuple[torch.Tensor, int]] = None
        vocab = padded_vocab_size(cfg)
        self.front = _seeded(seed, "front", lambda: Vist2Front(mcfg, vocab, mp, seed)) if part.first else None
        self.rotary = Rotary(mcfg.llm.head_dim, mcfg.llm.rope_theta)
        self.layers = nn.ModuleDict({
            str(i): _seeded(seed, f"layers.{i}", lambda: decoder_layer(mcfg.llm, mp, mcfg.init_std))
            for i in part.layers})
        self.head = _seeded(seed, "head", lambda: LMHead(mcfg.llm, vocab, mp, mcfg.init_std)) \
            if part.last else None
        self.tied_gradient = TiedGradient(self.front.embedding) \
            if self.tied and part.first and not part.last else None
        if mp.sequence_parallel:
            # Norms on a rank's slice of the sequence see part of the tokens: partial gradients
            # (summed over the TP group by parallel/grad_sync.py).
            norms = [m for layer in self.layers.values() for m in (layer.input_norm, layer.post_attention_norm)]
            for norm in norms + ([self.head.norm] if self.head is not None else []):
                norm.weight.tp_partial_grad = True

    def forward(self, batch: Vist2Batch, hidden: Optional[torch.Tensor] = None,
                output_weight: Optional[torch.Tensor] = None) -> torch.Tensor:
        """-> logits [seq, batch, vocab / tp] (vocab-parallel; fp32 or the model's dtype) on the
        last stage, else the hidden states [seq (/ tp with sequence parallelism), batch, hidden].

        A stage after the first takes the previous stage's ``hidden`` (the batch then needs only
        its layout, labels and loss mask); a last stage without the front takes the tied
        ``output_weight`` from the first stage.

        An ``OcrBatch`` (stage 0, ``train.objective=ocr``; first stage) runs the front and the OCR
        head only: -> cell logits [n, cells, classes]."""
        if isinstance(batch, OcrBatch):
            return self.front.read(batch.images)
        if self.part.first:
            hidden = self.front(batch.tokens, batch.images, batch.layout.kind, batch.ocr_targets, batch.cursor)
        rope = self.rotary(batch.layout.position)
        backend = resolve_backend(self.attention_backend, batch.layout.doc.device, self.attention_dropout)
        mask = build_mask(batch.layout, backend, self.context) if len(self.layers) else None
        guide = self.training and self.part.first and self.guided_layers and batch.cursor_key is not None
        self.cursor_attention = None
        for index, layer in self.layers.items():
            if guide and int(index) < self.guided_layers:
                self._guide(layer, hidden, rope, batch)
            hidden = layer(hidden, rope, mask)
        if not self.part.last:
            return hidden
        if self.tied:
            output_weight = self.front.embedding.weight if self.part.first else output_weight
            if output_weight is None:
                raise ValueError("a last pipeline stage with tied embeddings needs output_weight")
        return self.head(hidden, output_weight)

    def _guide(self, layer: nn.Module, hidden: torch.Tensor, rope, batch: Vist2Batch) -> None:
        """Add this layer's guided-attention terms into ``cursor_attention`` (its queries and keys
        projected again from the layer's input, outside any activation checkpointing)."""
        q, k, _ = layer.attention.project(layer.input_norm(hidden), rope)
        total, count = cursor_attention_loss(q, k, batch.layout, self.context, batch.cursor_key)
        if self.cursor_attention is not None:
            total, count = total + self.cursor_attention[0], count + self.cursor_attention[1]
        self.cursor_attention = (total, count)

    def take_cursor_attention_loss(self) -> Optional[Tuple[torch.Tensor, int]]:
        """Guided attention's (summed -log attention, terms) of the last forward (first stage), once."""
        out, self.cursor_attention = self.cursor_attention, None
        return out

    def take_ocr_loss(self) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
        """The OCR head's (summed loss, cells) of the last forward (first stage), once; else None."""
        if self.front is None:
            return None
        out, self.front.ocr_loss = self.front.ocr_loss, None
        return out

    def parameter_counts(self) -> Dict[str, int]:
        """Parameters held by this rank, split as the spec's parts."""
        def count(module):
            return sum(p.numel() for p in module.parameters()) if module is not None else 0
        vision = count(self.front.vision) if self.front is not None else 0
        aligner = count(self.front.aligner) if self.front is not None else 0   # (0 in the controls)
        ocr = count(self.front.ocr_head) if self.front is not None else 0
        cursor = count(self.front.cursor) if self.front is not None else 0
        total = count(self)
        return {"vision": vision, "aligner": aligner, "llm": total - vision - aligner - ocr - cursor,
                "ocr_head": ocr, "cursor": cursor, "total": total}

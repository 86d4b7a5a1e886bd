"""Packed, rendered VIST2 rows from an indexed dataset, and the sampler that feeds them.

Sample ``g`` (a global sample index, any g >= 0) is row ``perm_e[g % R]`` of epoch ``e = g // R``,
where ``perm_e`` is a permutation seeded by (seed, e). Rows are deterministic functions of the
data, the config and the seed, so one counter, ``consumed_samples``, fixes the position of a run
in its data whatever the data-parallel size.
"""
from __future__ import annotations

from typing import Iterator, List

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ..config.schema import Config
from ..models.attention import TokenLayout
from ..models.vist2 import Vist2Batch
from .packing import assemble_row, pack_segments, segment_document
from .renderer import Renderer
from .tokenizer import Tokenizer


class PackedVist2Dataset(Dataset):
    def __init__(self, indexed, tokenizer: Tokenizer, cfg: Config, seed: int):
        self.indexed, self.tokenizer, self.seed = indexed, tokenizer, seed
        m = cfg.model
        self.L, self.m, self.S = m.chunk.text_tokens, m.visual_tokens_per_chunk, cfg.data.seq_length
        self.renderer = Renderer.from_model_config(m)
        rng = np.random.default_rng([seed, 0x5EB])
        lengths = indexed.sequence_lengths
        segments = [s for d in range(len(indexed))
                    for s in segment_document(d, int(lengths[d]), self.L, self.m, self.S,
                                              cfg.data.readback_fraction, rng)]
        self.rows = pack_segments(segments, self.L, self.m, self.S)
        self._perm_cache = {}

    def __len__(self) -> int:
        """Rows in one epoch (indices past it wrap into later, reshuffled epochs)."""
        return len(self.rows)

    def row_index(self, g: int) -> int:
        epoch, i = divmod(g, len(self.rows))
        if epoch not in self._perm_cache:
            self._perm_cache = {epoch: np.random.default_rng([self.seed, epoch]).permutation(len(self.rows))}
        return int(self._perm_cache[epoch][i])

    def __getitem__(self, g: int) -> dict:
        return self.build_row(self.rows[self.row_index(g)])

    def build_row(self, segments) -> dict:
        """Lay out, label and render one row made of ``segments`` (numpy arrays, for collate)."""
        toks = [self.indexed.get(s.doc_index, offset=s.start, length=s.length) for s in segments]
        row = assemble_row(segments, toks, self.L, self.m, self.S)
        images = [self.renderer.render(self.tokenizer.decode(ids)) for ids in row.image_chunks]
        out = {k: getattr(row, k) for k in ("tokens", "doc", "chunk", "kind", "readback",
                                             "position", "labels", "loss_mask")}
        out["images"] = np.stack(images) if images else \
            np.zeros((0, self.renderer.height, self.renderer.width), np.uint8)
        return out


def collate(samples: List[dict]) -> Vist2Batch:
    def stack(key):
        return torch.from_numpy(np.stack([s[key] for s in samples]))
    layout = TokenLayout(doc=stack("doc"), chunk=stack("chunk"), kind=stack("kind"),
                         readback=stack("readback"), position=stack("position"))
    images = torch.from_numpy(np.concatenate([s["images"] for s in samples]))
    return Vist2Batch(tokens=stack("tokens"), layout=layout, images=images,
                      labels=stack("labels"), loss_mask=stack("loss_mask"))


class GlobalBatchSampler(Sampler):
    """Yields this data-parallel rank's micro-batches of global sample indices.

    Global batch b covers samples [c, c + G) with c = consumed_samples + b G; its micro-step j
    gives rank r the samples c + (j dp + r) mb + [0, mb). Resuming at ``consumed_samples`` = k
    yields exactly what an uninterrupted run yields from sample k on.
    """

    def __init__(self, consumed_samples: int, micro_batch_size: int, global_batch_size: int,
                 dp_rank: int, dp_size: int, num_global_batches: int = None):
        self.consumed, self.mb, self.gb = consumed_samples, micro_batch_size, global_batch_size
        self.rank, self.dp, self.limit = dp_rank, dp_size, num_global_batches

    def __iter__(self) -> Iterator[List[int]]:
        c, done = self.consumed, 0
        while self.limit is None or done < self.limit:
            for j in range(self.gb // (self.mb * self.dp)):
                start = c + (j * self.dp + self.rank) * self.mb
                yield list(range(start, start + self.mb))
            c += self.gb
            done += 1

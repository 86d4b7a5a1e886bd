"""Packed, rendered VIST2 rows from indexed datasets; weighted blends; the sampler.

Sample ``g`` (a global sample index, any g >= 0) of a ``PackedVist2Dataset`` is row
``perm_e[g % R]`` of epoch ``e = g // R``, where ``perm_e`` is a permutation seeded by (seed, e).
Rows are deterministic functions of the data, the config and the seed, so one counter,
``consumed_samples``, fixes the position of a run in its data whatever the data-parallel size.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ..config.derived import guided_layers
from ..config.schema import Config
from ..errors import ConfigError
from ..models.attention import TEXT, VISUAL, TokenLayout
from ..models.cursor import NONE
from ..models.vist2 import Vist2Batch
from .indexed import IndexedDocs, open_indexed
from .packing import PER_TOKEN, assemble_row, mask_readback_inputs, pack_segments, segment_document
from .cursor import ReadingCursor
from .ocr_targets import Charset, cell_size, render_with_targets
from .renderer import Renderer, chunk_text
from .tokenizer import Tokenizer


class PackedVist2Dataset(Dataset):
    """``ocr_targets``: each image also gets the OCR head's targets (data/ocr_targets.py), from the
    same layout that draws it. ``training``: rows to train on (``data.readback_input_mask`` masks
    inputs of their read-back chunks, drawn per sample from (seed, g)); evaluation rows never are.
    With ``model.readback_cursor`` every row carries ``cursor`` (data/cursor.py: the reading
    cursor at each read-back text position, from the true text and its image; -1 elsewhere), and
    with guided attention (``train.cursor_attention_weight``) ``cursor_key`` (``row_cursor``)."""

    def __init__(self, indexed: IndexedDocs, tokenizer: Tokenizer, cfg: Config, seed: int,
                 ocr_targets: bool = False, training: bool = False):
        self.indexed, self.tokenizer, self.seed = indexed, tokenizer, seed
        self.input_mask = cfg.data.readback_input_mask if training else 0.0
        m = cfg.model
        self.ocr = m.ocr_head if ocr_targets else None
        self.charset = Charset(m.ocr_head) if ocr_targets else None
        self.cell = cell_size(m) if ocr_targets else None
        self.L, self.m, self.S = m.chunk.text_tokens, m.visual_tokens_per_chunk, cfg.data.seq_length
        self.context = m.context      # the controls get the model's rows without images (packing.py)
        self.renderer = Renderer.from_model_config(m)
        self.cursor = ReadingCursor.of_model(m)
        self.guided = guided_layers(cfg) > 0           # rows carry guided attention's keys
        rng = np.random.default_rng([seed, 0x5EB])
        lengths = indexed.lengths
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
        row = self.build_row(self.rows[self.row_index(g)])
        if self.input_mask > 0:
            rng = np.random.default_rng([self.seed, g, 0x3A5C])
            row["tokens"] = mask_readback_inputs(row, self.input_mask, rng)
        return row

    def build_row(self, segments, order: str = "blocked") -> dict:
        """Lay out, label and render one row made of ``segments`` (numpy arrays, for collate);
        ``order``: the physical token order (data/packing.py; the loss does not depend on it)."""
        toks = [self.indexed.tokens(s.doc_index, s.start, s.length) for s in segments]
        masks = None if self.indexed.mask_ds is None else \
            [self.indexed.response_mask(s.doc_index, s.start, s.length) for s in segments]
        row = assemble_row(segments, toks, self.L, self.m, self.S, masks, order, self.context)
        out = {k: getattr(row, k) for k in PER_TOKEN}
        if self.ocr is None:
            images = [self.renderer.render_chunk(ids, self.tokenizer.decode) for ids in row.image_chunks]
        else:
            drawn = [render_with_targets(self.renderer, chunk_text(self.tokenizer.decode(ids)), self.ocr,
                                         self.charset, self.cell) for ids in row.image_chunks]
            images = [image for image, _ in drawn]
            out["ocr_targets"] = np.stack([t for _, t in drawn]) if drawn else \
                np.zeros((0, self.ocr.cells), np.int64)
        out["images"] = np.stack(images) if images else \
            np.zeros((0, self.renderer.height, self.renderer.width), np.uint8)
        if self.cursor is not None:
            out["cursor"], keys = self.row_cursor(out, images)
            if keys is not None:
                out["cursor_key"] = keys
        out["source"] = 0
        return out

    def row_cursor(self, row: dict, images: List[np.ndarray]) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """-> int64 [seq]: the reading cursor at the text positions of each read-back chunk, on the
        chunk's image (the visual blocks are m contiguous tokens, images in their order), else -1;
        and with guided attention (``train.cursor_attention_weight``), int64 [seq]: at each of
        those positions whose cursor is a cell (not END), the row position of the visual token
        whose image region holds that cell (data/cursor.py ``visual_token``), else -1 (else None)."""
        cursor = np.full(len(row["tokens"]), NONE, np.int64)
        keys = np.full(len(row["tokens"]), -1, np.int64) if self.guided else None
        starts = np.nonzero(row["kind"] == VISUAL)[0][::self.m]
        for image, p in zip(images, starts):
            if row["readback"][p]:
                text = np.nonzero((row["kind"] == TEXT) & (row["doc"] == row["doc"][p]) & (row["chunk"] == row["chunk"][p]))[0]
                # text[0] is the chunk's read-back marker, the rest its tokens
                cursor[text] = self.cursor.of_chunk(row["tokens"][text[1:]], image, self.tokenizer.decode)
                if keys is not None:
                    tokens = np.array([self.cursor.visual_token(int(c)) for c in cursor[text]], np.int64)
                    keys[text] = np.where(tokens >= 0, p + tokens, -1)
        return cursor, keys

    @property
    def sources(self) -> List[str]:
        """Names of the sources a sample's ``source`` index refers to (one: this dataset)."""
        return [self.indexed.prefix]


def parse_blend(spec: str) -> List[Tuple[float, str]]:
    """'data/a' -> [(1.0, 'data/a')]; '0.7 data/a 0.3 data/b' -> weights normalised to sum 1."""
    parts = spec.split()
    if len(parts) == 1:
        return [(1.0, parts[0])]
    if len(parts) % 2:
        raise ConfigError(f"blend '{spec}': expected 'PREFIX' or 'WEIGHT PREFIX WEIGHT PREFIX ...'")
    try:
        pairs = [(float(parts[i]), parts[i + 1]) for i in range(0, len(parts), 2)]
    except ValueError:
        raise ConfigError(f"blend '{spec}': weights must be numbers, as in '0.7 data/a 0.3 data/b'") from None
    if any(w <= 0 for w, _ in pairs):
        raise ConfigError(f"blend '{spec}': weights must be > 0")
    total = sum(w for w, _ in pairs)
    return [(w / total, p) for w, p in pairs]


class BlendedDataset(Dataset):
    """Weighted mix of datasets. Sample g comes from dataset ``index[g]``, as its
    ``sample_index[g]``-th sample; the arrays come from megatron-core's compiled
    ``build_blending_indices`` (greedy: each prefix of the blend is as close to the weights as
    possible) and are cached under ``cache_dir``, keyed by the inputs."""

    def __init__(self, datasets: Sequence[Dataset], weights: Sequence[float], size: int,
                 cache_dir: str, key: str, names: Sequence[str] = ()):
        self.datasets, self.size = list(datasets), size
        self.sources = list(names) or [str(i) for i in range(len(self.datasets))]
        digest = hashlib.sha256(json.dumps([key, list(weights), size]).encode()).hexdigest()[:16]
        path = Path(cache_dir) / f"blend_{digest}.npz"
        if path.is_file():
            data = np.load(path)
            self.index, self.sample_index = data["index"], data["sample_index"]
        else:
            from megatron.core.datasets import helpers
            self.index = np.zeros(size, dtype=np.int16)
            self.sample_index = np.zeros(size, dtype=np.int64)
            helpers.build_blending_indices(self.index, self.sample_index,
                                           np.asarray(weights, dtype=np.float64), len(datasets),
                                           size, False)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + f".tmp{os.getpid()}.npz")
            np.savez(tmp, index=self.index, sample_index=self.sample_index)
            os.replace(tmp, path)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, g: int):
        if g >= self.size:
            raise IndexError(f"sample {g} is past the blend's {self.size} samples")
        sample = self.datasets[self.index[g]][int(self.sample_index[g])]
        if isinstance(sample, dict):     # which part of the blend: tokens per source in the metrics
            sample = {**sample, "source": int(self.index[g])}
        return sample


def build_dataset(spec: str, tokenizer: Tokenizer, cfg: Config, seed: int, num_samples: int,
                  ocr_targets: bool = False, training: bool = False):
    """One prefix -> its PackedVist2Dataset; a weighted spec -> a BlendedDataset over them
    (``ocr_targets``, ``training``: see PackedVist2Dataset)."""
    blend = parse_blend(spec)
    parts = [PackedVist2Dataset(open_indexed(p, tokenizer), tokenizer, cfg, seed + i, ocr_targets, training)
             for i, (_, p) in enumerate(blend)]
    if len(parts) == 1:
        return parts[0]
    key = json.dumps([[p.indexed.manifest["sha256"][".idx"] for p in parts], seed,
                      cfg.data.seq_length, cfg.model.chunk.text_tokens, cfg.data.readback_fraction])
    return BlendedDataset(parts, [w for w, _ in blend], num_samples, cfg.data.cache_dir, key,
                          names=[p for _, p in blend])


def collate(samples: List[dict]) -> Vist2Batch:
    def stack(key):
        return torch.from_numpy(np.stack([s[key] for s in samples]))
    layout = TokenLayout(doc=stack("doc"), chunk=stack("chunk"), kind=stack("kind"),
                         readback=stack("readback"), position=stack("position"))
    images = torch.from_numpy(np.concatenate([s["images"] for s in samples]))
    ocr = torch.from_numpy(np.concatenate([s["ocr_targets"] for s in samples])) if "ocr_targets" in samples[0] else None
    return Vist2Batch(tokens=stack("tokens"), layout=layout, images=images,
                      labels=stack("labels"), loss_mask=stack("loss_mask"),
                      target=stack("target"), first_target=stack("first_target"),
                      source=torch.tensor([s.get("source", 0) for s in samples], dtype=torch.int64),
                      ocr_targets=ocr, cursor=stack("cursor") if "cursor" in samples[0] else None,
                      cursor_key=stack("cursor_key") if "cursor_key" in samples[0] else None)


def tokens_per_source(batches: Iterable[Vist2Batch], num_sources: int) -> np.ndarray:
    """Text tokens each source contributed to ``batches`` (int64 [num_sources]): the rows' TEXT
    positions (every corpus token placed in a row is one), summed by the row's ``source``. Per
    rank: sum the result over data-parallel ranks for the run's totals."""
    counts = np.zeros(num_sources, np.int64)
    for b in batches:
        per_row = (b.layout.kind == TEXT).sum(dim=1).cpu().numpy()
        src = np.zeros(len(per_row), np.int64) if b.source is None else b.source.cpu().numpy()
        counts += np.bincount(src, weights=per_row, minlength=num_sources).astype(np.int64)
    return counts


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

"""The curriculum: which read-back share and row length each training step uses, and the
training set of a phase. A new phase starts wherever ``data.readback_schedule`` or
``data.seq_length_schedule`` changes (one phase without either)."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import List, Tuple

from ..config import Config, ocr_aux_loss
from ..data.dataset import build_dataset


def curriculum_phases(cfg: Config) -> List[Tuple[int, float, int]]:
    """(first step, read-back share, sequence length) of each curriculum phase."""
    shares = [(int(s), float(f)) for s, f in cfg.data.readback_schedule] or [(0, cfg.data.readback_fraction)]
    lengths = [(int(s), int(n)) for s, n in cfg.data.seq_length_schedule] or [(0, cfg.data.seq_length)]
    at = lambda sched, step: [v for s, v in sched if s <= step][-1]      # noqa: E731
    starts = sorted({s for s, _ in shares} | {s for s, _ in lengths})
    return [(s, at(shares, s), at(lengths, s)) for s in starts]


def phase_at(phases: List[Tuple[int, float, int]], step: int) -> int:
    return max(i for i, (start, _, _) in enumerate(phases) if start <= step)


@dataclass(frozen=True)
class Phase:
    index: int
    start: int
    end: int                  # first step of the next phase (train.steps for the last)
    readback_share: float
    seq_length: int


class Curriculum:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.phases = curriculum_phases(cfg)

    def __len__(self) -> int:
        return len(self.phases)

    def index_at(self, step: int) -> int:
        return phase_at(self.phases, step)

    def phase(self, step: int) -> Phase:
        i = phase_at(self.phases, step)
        start, share, seq_length = self.phases[i]
        end = self.phases[i + 1][0] if i + 1 < len(self.phases) else self.cfg.train.steps
        return Phase(i, start, end, share, seq_length)

    def dataset(self, phase: Phase, tokenizer):
        """The training corpus packed with ``phase``'s read-back share and row length (the same
        sample order for every phase: a phase reads on from the consumed samples)."""
        cfg = self.cfg
        phase_cfg = replace(cfg, data=replace(cfg.data, readback_fraction=phase.readback_share,
                                              seq_length=phase.seq_length))
        return build_dataset(cfg.data.train_prefix, tokenizer, phase_cfg, cfg.train.seed,
                             cfg.train.steps * cfg.parallel.global_batch_size, ocr_targets=ocr_aux_loss(cfg))

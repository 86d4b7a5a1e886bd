"""Character error rate of a read-back against the true text.

CER = Levenshtein distance (insertions, deletions, substitutions, each cost 1) / length of the
reference; rapidfuzz computes the distance (a C++ implementation of the textbook dynamic
programme). ``exact`` compares the strings as a whole.

rapidfuzz is imported where a distance is computed, not with this module: the trainer imports
this module (through metrics/during_training.py) whether or not it reads back, and a machine
without rapidfuzz (a GPU image) must still train.
"""
from __future__ import annotations

from dataclasses import dataclass


def edit_distance(hypothesis: str, reference: str) -> int:
    from rapidfuzz.distance import Levenshtein
    return int(Levenshtein.distance(hypothesis, reference))


@dataclass
class CerCounter:
    """Edit distances and reference characters summed over chunks (the corpus-level CER is
    their ratio, so long chunks weigh by their length), and exact matches."""
    edits: int = 0
    chars: int = 0
    exact: int = 0
    chunks: int = 0

    def add(self, hypothesis: str, reference: str) -> None:
        self.edits += edit_distance(hypothesis, reference)
        self.chars += len(reference)
        self.exact += int(hypothesis == reference)
        self.chunks += 1

    @property
    def cer(self) -> float:
        return self.edits / self.chars if self.chars else float("nan")

    def summary(self) -> dict:
        return {"cer": self.cer, "char_accuracy": max(0.0, 1.0 - self.cer) if self.chars else float("nan"),
                "exact_match": self.exact / self.chunks if self.chunks else float("nan"),
                "chunks": self.chunks, "chars": self.chars}

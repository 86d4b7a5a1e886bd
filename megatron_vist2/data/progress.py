"""A progress line for long preprocessing runs: documents, MB of text, throughput and ETA.

The ETA extrapolates input bytes (file sizes, compressed where they are) from the units done
and from the current unit's text bytes times the input/text ratio seen so far. On a terminal the
line is redrawn in place; otherwise (logs) a line is printed every ``LOG_SECONDS``."""
from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator, Tuple

LOG_SECONDS = 30.0


class Progress:
    def __init__(self, total_input_bytes: int, total_units: int, enabled: bool = True, workers: int = 1,
                 stream=None):
        self.total_in, self.total_units, self.enabled, self.workers = total_input_bytes, total_units, enabled, workers
        stream = stream or sys.stderr          # looked up now: sys.stderr may be replaced after import
        self.stream, self.tty = stream, stream.isatty()
        self.t0 = self.last = time.time()
        self.docs = self.text_bytes = self.done_in = self.run_in = self.run_text = self.units = 0
        self.unit_bytes = 0

    def elapsed(self) -> float:
        return time.time() - self.t0

    def track(self, encoded: Iterable[Tuple]) -> Iterator[Tuple]:
        """Pass (name, ids, mask, text bytes) through as (name, ids, mask), counting."""
        self.unit_bytes = 0
        for name, ids, mask, nbytes in encoded:
            self.docs += 1
            self.text_bytes += nbytes
            self.unit_bytes += nbytes
            yield name, ids, mask
            if self.enabled and time.time() - self.last >= (0.5 if self.tty else LOG_SECONDS):
                self._show()

    def unit_done(self, input_bytes: int, resumed: bool) -> None:
        """A unit finished: tokenized in this run, or found done by an earlier one."""
        self.units += 1
        self.done_in += input_bytes
        if not resumed:
            self.run_in += input_bytes
            self.run_text += self.unit_bytes
        self.unit_bytes = 0
        if self.enabled:
            self._show()

    def _line(self) -> str:
        secs = max(self.elapsed(), 1e-9)
        rate = self.text_bytes / 1e6 / secs
        partial = self.unit_bytes * (self.run_in / self.run_text if self.run_text else 1.0)
        left = max(self.total_in - self.done_in - partial, 0)
        eta = secs * left / (self.run_in + partial) if self.run_in + partial else float("nan")
        eta_s = "?" if eta != eta else time.strftime("%H:%M:%S", time.gmtime(eta))
        return (f"  {self.units}/{self.total_units} shards, {self.docs:,} documents, "
                f"{self.text_bytes / 1e6:,.1f} MB tokenized ({rate:.1f} MB/s, {self.workers} "
                f"worker{'s' if self.workers > 1 else ''}), ETA {eta_s}")

    def _show(self) -> None:
        self.last = time.time()
        print(("\r" if self.tty else "") + self._line(), end="" if self.tty else "\n",
              file=self.stream, flush=True)

    def finish(self) -> None:
        if self.enabled and self.tty:
            print(file=self.stream)

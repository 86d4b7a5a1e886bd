"""``CheckpointManager``: the training side's one object for checkpoints (docs/checkpoints.md).

The trainer makes four calls on it and train.py one; run health (training/health.py) makes none:
the trainer hands its verdict on each step (training/health.py ``StepHealth``: this package reads
its fields and never imports it) to ``after_step``::

    CheckpointManager.preflight(cfg, tokenizer)      # train.py, before any process group exists
    ckpt = CheckpointManager(cfg, engine, tokenizer, log, device)
    step, consumed = ckpt.start()                    # resume, or a new stage's weights, or nothing
    back = ckpt.after_step(step, consumed, verdict)  # every step: save when due, roll back, stop
    path = ckpt.finish(step, consumed)               # the final save; every save complete on exit

What it owns, each rule in one place:
- where a run starts and what a resume applies (resume.py: ``start_point``, ``check_compatible``,
  ``load_checkpoint``: a changed optimizer or schedule field applies from the resumed step, named
  in the log with the learning rate and its source);
- when a save happens: every ``checkpoint.save_interval`` steps and at the end, never on a
  skipped step (a save that comes due then is made after the next applied step);
- what a good checkpoint is (divergence.py: applied step, finite weights, sane norm) and the stop
  message of a diverged run, naming the last good checkpoint;
- the save protocol, rotation (``keep_last``) and the tokenizer record (save.py), asynchronous
  writes (async_write.py), a rollback to the newest checkpoint on a loss spike (run health decides);
- the test faults (faults.py).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple

import torch.distributed as dist

from ..config.validate import check_dir_writable
from . import faults
from .async_write import AsyncWriter
from .divergence import diverged, weights_norm
from .format import resolve_tag_dir
from .resume import check_compatible, load_checkpoint, resume_dir
from .save import save_checkpoint
from .tokenizer_record import check_tokenizer_identity


class CheckpointManager:
    def __init__(self, cfg, engine, tokenizer, log, device):
        """``log``: the run's MetricsLogger (``print`` on rank 0, ``log`` for metrics)."""
        self.cfg, self.engine, self.tokenizer, self.log, self.device = cfg, engine, tokenizer, log, device
        self.writer = AsyncWriter(log.print) if cfg.checkpoint.async_save else None
        self.newest: Optional[str] = None    # the newest complete checkpoint of this run (or resumed)
        self.start_norm: Optional[float] = None
        self.save_due = False                # a save came due on a skipped step
        self.last_skipped = False

    # ------------------------------------------------------------------ before and at the start
    @staticmethod
    def preflight(cfg, tokenizer, log=print) -> None:
        """Before any process: refuses a start that would overwrite a complete checkpoint, a
        checkpoint of another model or tokenizer, a resume that cannot apply this run's optimizer
        settings, and an unwritable save directory."""
        resumed = resume_dir(cfg, log=log)
        field = "checkpoint.load_dir" if cfg.checkpoint.load_dir else "checkpoint.save_dir"
        for field, start_from, weights_only in ((field, resumed, False),
                                                ("checkpoint.init_from", cfg.checkpoint.init_from, True)):
            if start_from:
                step_dir = resolve_tag_dir(start_from)
                check_compatible(step_dir, cfg, weights_only)
                check_tokenizer_identity(step_dir, tokenizer, field, cfg.checkpoint.allow_new_tokenizer)
            if resumed:                        # a resumed run continues its own stage: no init_from
                break
        check_dir_writable(cfg.checkpoint.save_dir, "checkpoint.save_dir")

    def start(self) -> Tuple[int, int]:
        """Resume (``checkpoint.load_dir`` or the save directory's newest checkpoint), or load a
        new stage's weights (``checkpoint.init_from``), or nothing; -> (step, consumed samples).
        The weights' norm here is what later saves are checked against."""
        cfg, print_ = self.cfg, self.log.print
        step = consumed = 0
        start_from = resume_dir(cfg)
        if start_from:
            step, consumed = load_checkpoint(self.engine, cfg, start_from, print_)
            self.newest = str(resolve_tag_dir(start_from))          # never saved again
            print_(f"resumed from {start_from} at step {step} ({consumed} samples)"
                   + ("; train.steps is reached: nothing left to train" if step >= cfg.train.steps else ""))
        else:
            if cfg.checkpoint.init_from:         # a new stage: the previous stage's weights only
                prev, _ = load_checkpoint(self.engine, cfg, cfg.checkpoint.init_from, print_, weights_only=True)
                print_(f"initialised from the weights of {cfg.checkpoint.init_from} (its step {prev}); "
                       f"new optimizer and schedule")
            print_(f"learning rate {self.engine.get_lr()[0]:.4g} at step 0: this run's schedule (optim.lr "
                   f"{cfg.optim.lr:g}, {cfg.optim.warmup_steps} warm-up steps, cosine to optim.min_lr "
                   f"{cfg.optim.min_lr:g} at train.steps {cfg.train.steps})")
        self.start_norm = weights_norm(self.engine.module, self.device)
        return step, consumed

    # ------------------------------------------------------------------ every step
    def after_step(self, step: int, consumed: int, health) -> Optional[Tuple[int, int]]:
        """After step ``step`` (every rank, the same verdict ``health``: ``skipped``, ``diverged`` (why
        the run stops, or None), ``spike``/``spike_values``/``rollback_to_sample`` (a rollback asked
        for)): complete a background save that is written; stop a diverged run naming the last good
        checkpoint; roll back on a spike (-> the step and sample to continue from); save when due
        and the step was applied."""
        if self.writer is not None:
            self.writer.poll()                 # rank 0 completes a background save once written
        faults.nan_weights(self.engine.module, step, dist.get_rank())      # tests only
        if health.diverged:
            diverged(health.diverged, self.cfg.checkpoint.save_dir)
        if health.spike is not None:
            back = self._spike(step, consumed, health)
            if back is not None:
                return back
        self.last_skipped = health.skipped
        interval = self.cfg.checkpoint.save_interval
        self.save_due = self.save_due or bool(interval and step % interval == 0 and step < self.cfg.train.steps)
        if self.save_due and health.skipped:
            self.log.print(f"step {step}: skipped, so no checkpoint now: the save comes after the next "
                           f"applied step")
        elif self.save_due:
            self._save(step, consumed)
        return None

    def _spike(self, step: int, consumed: int, health) -> Optional[Tuple[int, int]]:
        print_, h = self.log.print, self.cfg.train.health
        if self.newest is None:
            print_(health.spike + "; no checkpoint to roll back to yet: continuing")
            self.log.log(step, health.spike_values)
            return None
        if self.writer is not None:            # an asynchronous save of the newest may be in flight:
            self.writer.wait(self.device)      # every rank decided alike, so every rank waits here
        back_step, _ = load_checkpoint(self.engine, self.cfg, self.newest, print_)
        resume_at = health.rollback_to_sample
        print_(f"{health.spike}: rolled back to {self.newest} (step {back_step}); data read on from sample "
               f"{resume_at} (the spike's batch and the {h.spike_skip_batches} after it are skipped)")
        self.log.log(step, {**health.spike_values, "health/rollback_to_step": back_step,
                            "health/rollback_resume_sample": resume_at})
        self.save_due = self.last_skipped = False
        return back_step, resume_at

    def _save(self, step: int, consumed: int) -> None:
        self.newest = save_checkpoint(self.engine, self.cfg, step, consumed, self.tokenizer.sha256,
                                      self.log.print, self.writer, self.start_norm)
        self.save_due = False

    # ------------------------------------------------------------------ at the end
    def finish(self, step: int, consumed: int) -> Optional[str]:
        """The final save (unless this step is saved already, or was skipped), then every save in
        flight completed; -> the newest checkpoint of this run."""
        if self.newest is None or Path(self.newest).name != f"step_{step:07d}":
            if self.last_skipped:
                self.log.print(f"step {step} was skipped: no checkpoint of it is saved (the newest is "
                               f"{self.newest or 'none'})")
            else:
                self._save(step, consumed)
        if self.writer is not None:
            self.writer.wait(self.device)      # exit only with every save complete
            self.writer.close()
        return self.newest

"""Run health's parts in one process, each against an independent reference: the spike detector
against a z-score computed by numpy, the skipped update against the optimizer's and scheduler's
state before it, the watchdog against a thread made to stall. (Through the real training loop
with 2 ranks: tests/distributed/test_health.py.)"""
import math
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from megatron_vist2.checkpoint.faults import parse
from megatron_vist2.training.health import NonFiniteGuard, SpikeDetector
from megatron_vist2.training.watchdog import Watchdog, collective


def test_spike_detector_equals_a_numpy_z_score():
    rng = np.random.default_rng(0)
    losses = list(3.0 - 0.001 * np.arange(60) + 0.01 * rng.standard_normal(60))
    losses[40] += 0.2                                       # a spike of ~20 standard deviations
    window, threshold = 10, 6.0
    detector = SpikeDetector(window, threshold)
    accepted, expected = [], []
    for i, loss in enumerate(losses):                       # brute force: the window of accepted losses
        z = (loss - np.mean(accepted[-window:])) / np.std(accepted[-window:]) if len(accepted) >= window else None
        spike = z is not None and z > threshold
        expected.append(i if spike else None)
        if not spike:
            accepted.append(loss)
        got = detector.observe(loss)
        assert (got is not None) == spike and (got is None or math.isclose(got, z, rel_tol=1e-9))
    assert [i for i in expected if i is not None] == [40]


def _engine(model):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / 10)
    return SimpleNamespace(module=model, basic_optimizer=opt, optimizer=opt, lr_scheduler=sched)


def test_a_non_finite_gradient_skips_the_update_and_keeps_optimizer_and_schedule(dist_env):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    engine = _engine(model)
    guard = NonFiniteGuard(engine, torch.device("cpu"), 0, 1)

    def step(x):
        model(x).sum().backward()
        guard.before_update(None)
        engine.basic_optimizer.step()                       # what DeepSpeed's engine.step() calls
        engine.lr_scheduler.step()
        guard.after_update()
        engine.basic_optimizer.zero_grad()
        return guard.take()

    assert step(torch.ones(2, 4)) == (False, "")
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    adam = {k: {n: v.clone() for n, v in s.items()} for k, s in engine.basic_optimizer.state.items()}
    sched, lr = engine.lr_scheduler.state_dict(), engine.basic_optimizer.param_groups[0]["lr"]
    skipped, what = step(torch.tensor([[1.0, float("nan"), 0.0, 0.0]]))
    assert skipped and what == "gradients on rank 0"
    assert all(torch.equal(p, weights[n]) for n, p in model.named_parameters())
    for k, s in engine.basic_optimizer.state.items():
        assert all(torch.equal(v, adam[k][n]) for n, v in s.items())       # moments and step count
    assert engine.lr_scheduler.state_dict() == sched and engine.basic_optimizer.param_groups[0]["lr"] == lr
    assert step(torch.ones(2, 4)) == (False, "")            # the next step updates again
    assert int(next(iter(engine.basic_optimizer.state.values()))["step"]) == 2


def test_the_gradient_check_is_one_reduction_per_gradient_and_one_test_per_step(dist_env):
    """A float64 sum per gradient (no temporary of the gradient's size, no per-gradient isfinite),
    one isfinite per step; it still catches NaN and inf of either sign, and no sum of large
    finite values is taken for an overflow."""
    from torch.overrides import TorchFunctionMode

    class Calls(TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.names = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            self.names.append(getattr(func, "__name__", str(func)))
            return func(*args, **(kwargs or {}))

    a, b = torch.nn.Parameter(torch.zeros(1000)), torch.nn.Parameter(torch.zeros(3, 7))
    module = torch.nn.ParameterList([a, b])
    guard = NonFiniteGuard(_engine(module), torch.device("cpu"), 0, 1)
    grad = torch.ones(1000)
    with Calls() as calls:
        guard._check_grad(grad)
    assert [n for n in calls.names if n != "detach"] == ["sum", "add_"]     # (detach: a view)
    with Calls() as calls:
        guard.before_update(None)
    assert calls.names.count("isfinite") == 1

    def flagged(grad_a, grad_b):
        ((a * grad_a).sum() + (b * grad_b).sum()).backward()
        guard.before_update(None)
        return guard.take()[0]
    big = torch.full((1000,), 3e38)                         # its float32 sum would overflow
    assert not flagged(big, torch.ones(3, 7))
    assert flagged(torch.ones(1000), torch.full((3, 7), float("nan")))
    assert flagged(big.index_fill(0, torch.tensor([5]), float("inf")), torch.ones(3, 7))
    assert flagged(torch.ones(1000).index_fill(0, torch.tensor([0]), float("inf")),
                   torch.ones(3, 7).index_fill(0, torch.tensor([1]), float("-inf")))
    assert not flagged(torch.ones(1000), torch.ones(3, 7))  # and clean again after a flagged step


def test_a_warming_step_may_compile_without_a_dump(tmp_path):
    """The first step at a new row length compiles flex_attention: 5 floors before a dump, and
    its duration stays out of the median."""
    dog = Watchdog(0, str(tmp_path), multiple=3.0, floor_s=0.2)
    try:
        dog.step_started(1, warming=True)
        time.sleep(0.4)                                     # twice the floor
        dog.step_finished()
        assert dog.dumps == 0 and len(dog.durations) == 0
        dog.step_started(2)
        dog.step_finished()
        assert len(dog.durations) == 1 and dog.threshold() == 0.2
    finally:
        dog.close()


def test_the_watchdog_dumps_a_stalled_step_with_its_collective(tmp_path, capsys):
    dog = Watchdog(3, str(tmp_path), multiple=3.0, floor_s=0.2)
    try:
        for step in (1, 2):                                 # a median of ~0.02 s: the floor rules
            dog.step_started(step)
            time.sleep(0.02)
            dog.step_finished()
        assert dog.threshold() == 0.2
        dog.step_started(3)
        with collective("test all_reduce (world)"):
            deadline = time.monotonic() + 10
            while not dog.dumps and time.monotonic() < deadline:
                time.sleep(0.05)                            # the stalled step, in a marked collective
        dog.step_finished()
    finally:
        dog.close()
    text = (tmp_path / "watchdog" / "rank00003.txt").read_text()
    assert dog.dumps == 1 and "rank 3 step 3 has run" in text
    assert "in collective: test all_reduce (world)" in text
    assert "test_the_watchdog_dumps_a_stalled_step" in text and "time.sleep" in text   # the main thread's stack
    assert threading.current_thread().name in text
    assert "watchdog: rank 3 step 3" in capsys.readouterr().err


def test_fault_specs():
    faults = parse("nan-loss:3-:1,stall:2:*:0.5,spike:4-5,nan-weights:1")
    assert [(f.kind, f.first, f.last, f.rank, f.arg) for f in faults] == [
        ("nan-loss", 3, None, 1, None), ("stall", 2, 2, None, 0.5), ("spike", 4, 5, None, None),
        ("nan-weights", 1, 1, None, None)]
    assert faults[0].hits(9, 1) and not faults[0].hits(2, 1) and not faults[0].hits(3, 0)
    with pytest.raises(ValueError, match="unknown fault 'nan-los'"):     # a typo tests nothing
        parse("nan-los:3")

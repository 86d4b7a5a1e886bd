"""Optimizer groups: frozen parameters are left out; learning-rate multipliers (longest prefix
wins) hold through the warm-up and cosine schedule."""
import torch

from megatron_vist2.config import load_config
from megatron_vist2.training.optim import build_optimizer, build_scheduler, lr_multiplier


def test_lr_multiplier_longest_prefix_wins():
    mult = {"front": 2.0, "front.aligner": 10.0}
    assert lr_multiplier("front.aligner.proj.weight", mult) == 10.0
    assert lr_multiplier("front.vision.patch.weight", mult) == 2.0
    assert lr_multiplier("frontier.weight", mult) == 1.0 and lr_multiplier("layers.0.x", mult) == 1.0


def test_groups_follow_multipliers_through_the_schedule():
    model = torch.nn.ModuleDict({"a": torch.nn.Linear(4, 4), "b": torch.nn.Linear(4, 4),
                                 "c": torch.nn.Linear(4, 4)})
    model["c"].weight.requires_grad_(False)
    cfg = load_config("tiny-cpu", ["optim.lr_multipliers={b: 10}", "optim.warmup_steps=2"]).optim
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(cfg, 10)(opt)
    params = {id(p) for g in opt.param_groups for p in g["params"]}
    assert id(model["c"].weight) not in params and id(model["c"].bias) in params
    for _ in range(5):
        opt.step()
        sched.step()
        lrs = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
        assert abs(lrs[id(model["b"].weight)] - 10 * lrs[id(model["a"].weight)]) < 1e-12
    assert opt.param_groups[0]["lr"] == lrs[id(model["a"].weight)]    # the logged lr is the x1 group

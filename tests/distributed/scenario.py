"""The runs both sides of the parity tests use (tiny model, clipping off).

Adam's eps is 1e-6 here, not 1e-8: Adam's first update is g / (|g| + eps), so for gradient
elements near 1e-8 the last-bit noise of a different summation order (2 ranks vs 1) turns into a
visible weight difference (seen: single elements off by 1e-5 .. 3e-5 with eps = 1e-8). That is
a property of the optimizer at that eps, not of the distribution being tested.
"""
from dataclasses import dataclass
from typing import Optional, Tuple

from tests.conftest import tiny_overrides

STEPS = 3


@dataclass(frozen=True)
class Layout:
    world: int
    tp: int = 1
    pp: int = 1
    zero: int = 0
    sp: bool = False
    pipeline_layers: Optional[Tuple[int, ...]] = None   # None: even split of the 4 layers
    tied: bool = True                                   # tiny-cpu ties embeddings; 8B does not
    kv_heads: int = 2                                   # tiny-cpu's; 1 with TP2 = replicated KV
    hidden_dropout: float = 0.0
    context: str = "vist2"                              # model.context: the model or a control
    # the OCR head (stage 0): "" none, "aux" its loss added to the LM loss (train.ocr_weight 0.5)
    # with the reading cursor on half the chunks in read-back mode (model.readback_cursor),
    # "front" the front-only objective (train.objective=ocr)
    ocr: str = ""
    attention_dropout: float = 0.0
    recompute: str = "none"                             # train.activation_checkpointing

    @property
    def model(self) -> Tuple[bool, int, float, str, str]:
        """What the single-process reference must match."""
        return self.tied, self.kv_heads, self.hidden_dropout, self.context, self.ocr

    @property
    def dp(self) -> int:
        return self.world // (self.tp * self.pp)

    @property
    def has_reference(self) -> bool:
        """Does one process draw the same dropout masks? Not when a tensor-parallel region draws
        from its rank's own stream (attention dropout, sequence-parallel hidden dropout): such a
        layout is compared with its twin without recomputation (``RECOMPUTE_TWINS``)."""
        return not (self.attention_dropout or (self.sp and self.hidden_dropout))


SCENARIOS = {
    "dp2-zero0": Layout(2, zero=0), "dp2-zero1": Layout(2, zero=1), "dp2-zero2": Layout(2, zero=2),
    "dp2-zero3": Layout(2, zero=3), "tp2-zero1": Layout(2, tp=2, zero=1), "tp2-zero3": Layout(2, tp=2, zero=3),
    "tp2-sp-zero1": Layout(2, tp=2, zero=1, sp=True), "tp2-sp-zero3": Layout(2, tp=2, zero=3, sp=True),
    "pp2-zero0": Layout(2, pp=2, zero=0),
    "pp2-zero1-split1-3": Layout(2, pp=2, zero=1, pipeline_layers=(1, 3)),
    "pp2-zero3": Layout(2, pp=2, zero=3), "pp2-zero1-untied": Layout(2, pp=2, zero=1, tied=False),
    "tp2-kv1-zero1": Layout(2, tp=2, zero=1, kv_heads=1),
    "tp2-hidden-dropout-zero1": Layout(2, tp=2, zero=1, hidden_dropout=0.2), "tp2-sp-kv1-zero3": Layout(2, tp=2, zero=3, sp=True, kv_heads=1),
    # the controls (model.context): TP2 and PP2, both under ZeRO-3
    "tp2-zero3-text": Layout(2, tp=2, zero=3, context="text"),
    "tp2-zero3-window": Layout(2, tp=2, zero=3, context="window"),
    "pp2-zero3-text": Layout(2, pp=2, zero=3, context="text"),
    "pp2-zero3-window": Layout(2, pp=2, zero=3, context="window"),
    # the OCR head: its auxiliary loss (and the reading cursor, with guided attention) with TP2, PP2 (on the first stage)
    # and ZeRO-3; stage 0's
    # front-only objective with TP2 x ZeRO-3 and DP2 x ZeRO-2
    "tp2-zero1-ocr-aux": Layout(2, tp=2, zero=1, ocr="aux"), "pp2-zero3-ocr-aux": Layout(2, pp=2, zero=3, ocr="aux"),
    "dp2-zero3-ocr-aux": Layout(2, zero=3, ocr="aux"), "tp2-zero3-ocr-front": Layout(2, tp=2, zero=3, ocr="front"),
    "dp2-zero2-ocr-front": Layout(2, zero=2, ocr="front"),
    # dropout in tensor-parallel regions (each TP rank's own stream) under ZeRO-3, with and
    # without activation checkpointing: the recomputes must redraw the forward's masks
    "tp2-sp-dropout-zero3": Layout(2, tp=2, zero=3, sp=True, hidden_dropout=0.2, attention_dropout=0.2),
    "tp2-sp-dropout-zero3-full": Layout(2, tp=2, zero=3, sp=True, hidden_dropout=0.2, attention_dropout=0.2,
                                        recompute="full"),
    "tp2-sp-dropout-zero3-selective": Layout(2, tp=2, zero=3, sp=True, hidden_dropout=0.2,
                                             attention_dropout=0.2, recompute="selective"),
    # 4 ranks
    "pp2-dp2-zero3": Layout(4, pp=2, zero=3), "pp2-dp2-zero1": Layout(4, pp=2, zero=1),
    "pp2-dp2-zero2": Layout(4, pp=2, zero=2),
    "pp2-tp2-zero1": Layout(4, tp=2, pp=2, zero=1), "tp2-dp2-zero3": Layout(4, tp=2, zero=3),
}


# a scenario with recomputation -> the same layout without it (no single-process reference)
RECOMPUTE_TWINS = {"tp2-sp-dropout-zero3-full": "tp2-sp-dropout-zero3",
                   "tp2-sp-dropout-zero3-selective": "tp2-sp-dropout-zero3"}


def scenario_overrides(data, layout: Layout):
    split = [] if layout.pipeline_layers is None else \
        [f"parallel.pipeline_layers=[{','.join(map(str, layout.pipeline_layers))}]"]
    return tiny_overrides(data, f"parallel.zero_stage={layout.zero}",
                          f"parallel.tensor_parallel={layout.tp}", f"parallel.pipeline_parallel={layout.pp}",
                          f"parallel.sequence_parallel={str(layout.sp).lower()}", "optim.grad_clip=0.0",
                          "optim.lr=1e-3", "optim.min_lr=1e-3", "optim.warmup_steps=0",
                          "optim.weight_decay=0.1", "optim.eps=1e-6", "parallel.micro_batch_size=2",
                          "parallel.global_batch_size=8", f"train.steps={STEPS}",
                          f"model.llm.tie_embeddings={str(layout.tied).lower()}",
                          f"model.llm.num_kv_heads={layout.kv_heads}",
                          f"model.llm.hidden_dropout={layout.hidden_dropout}",
                          f"model.context={layout.context}",
                          f"model.llm.attention_dropout={layout.attention_dropout}",
                          f"train.activation_checkpointing={layout.recompute}", *split, *OCR_OVERRIDES[layout.ocr])


OCR_WEIGHT = 0.5
GUIDE_WEIGHT = 0.3                 # guided attention (train.cursor_attention_weight) on the first 2 layers
OCR_OVERRIDES = {"": [], "aux": ["model.ocr_head.enabled=true", f"train.ocr_weight={OCR_WEIGHT}",
                                 "model.readback_cursor=true", "data.readback_fraction=0.5",
                                 f"train.cursor_attention_weight={GUIDE_WEIGHT}", "train.cursor_attention_layers=2"],
                 "front": ["model.ocr_head.enabled=true", "train.objective=ocr"]}

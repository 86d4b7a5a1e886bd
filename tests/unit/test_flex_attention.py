"""The block-sparse flex_attention path (model.attention_backend=flex) equals dense SDPA: both are
built from the same mask rule, so this checks the block mask and the compiled kernel."""
import numpy as np
import pytest
import torch

from megatron_vist2.data.packing import Segment, assemble_row
from megatron_vist2.models.attention import TokenLayout, attend, build_mask


@pytest.mark.slow                          # over ~5 s in-process: compiles flex_attention
def test_flex_equals_dense_sdpa():
    L, m, S = 8, 2, 100                              # S not a multiple of flex's 128-token blocks
    segs = [Segment(0, 0, 40, (False,) * 5), Segment(1, 0, 30, (True, False, False, True))]
    row = assemble_row(segs, [np.arange(40), np.arange(30)], L, m, S)
    layout = TokenLayout(*(torch.from_numpy(getattr(row, f))[None].repeat(2, 1)
                           for f in ("doc", "chunk", "kind", "readback", "position")))
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 4, S, 16), torch.randn(2, 2, S, 16), torch.randn(2, 2, S, 16)
    dense = attend(q, k, v, build_mask(layout, "sdpa"))
    flex = attend(q, k, v, build_mask(layout, "flex"))
    torch.testing.assert_close(flex, dense, rtol=1e-5, atol=1e-5)


def test_auto_backend_is_flex_on_a_gpu_and_dense_on_the_cpu_and_with_dropout():
    """The paper presets and the 8B recipe leave model.attention_backend at 'auto': the
    block-sparse path on a GPU, the dense mask where it is right (the CPU, attention dropout)."""
    from megatron_vist2.config import load_config
    from megatron_vist2.models.attention import resolve_backend
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert (resolve_backend("auto", cuda), resolve_backend("auto", cpu), resolve_backend("auto", cuda, 0.1)) \
        == ("flex", "sdpa", "sdpa")
    assert resolve_backend("sdpa", cuda) == "sdpa" and resolve_backend("flex", cpu) == "flex"
    for preset in ("0.6b", "1.7b", "4b", "8b", "examples/8b/stage0_ocr_warmup.yaml",
                   "examples/8b/stage1a_readback.yaml", "examples/8b/stage1_pretrain.yaml",
                   "examples/8b/stage2_instructions.yaml"):
        m = load_config(preset).model
        assert resolve_backend(m.attention_backend, cuda, m.llm.attention_dropout) == "flex", preset


def test_flex_has_no_backward_on_the_cpu_in_this_torch():
    """Why the CPU trains with the dense mask and flex forward+backward waits for a GPU
    (benchmarks/gpu_all.sh): when this fails, torch has a CPU backward and the flex training
    path can be tested here."""
    import pytest
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    q = torch.randn(1, 2, 128, 16, requires_grad=True)
    mask = create_block_mask(lambda b, h, qi, ki: ki <= qi, 1, None, 128, 128, device="cpu")
    with pytest.raises(NotImplementedError, match="backward on CPU"):
        flex_attention(q, q, q, block_mask=mask)

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

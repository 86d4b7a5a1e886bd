"""Resuming in another layout: a checkpoint written by one TP/PP/DP layout and ZeRO stage is
resumed by another, through the real entry points. Each source layout trains 4 steps and saves at
step 2; the other layout resumes from that step-2 checkpoint. Its losses at steps 3 and 4 must
equal the source's (1e-5): step 3 checks the weights, step 4 the optimizer state (Adam moments,
step count, learning rate) carried through the conversion."""
import pytest

from tests.distributed.runs import losses, metrics, train

LAYOUTS = {   # name: (overrides, ranks)
    "single": ([], 1),
    "tp2": (["parallel.tensor_parallel=2"], 2),
    "dp2-zero3": (["parallel.zero_stage=3"], 2),
    "pp2": (["parallel.pipeline_parallel=2", "parallel.micro_batch_size=4"], 2),
    "single-zero0": (["parallel.zero_stage=0"], 1),
    # one KV head: TP2 replicates K/V on both ranks; ZeRO-3 partitions them again
    "kv1-tp2-zero3": (["model.llm.num_kv_heads=1", "parallel.tensor_parallel=2", "parallel.zero_stage=3"], 2),
    "kv1-single-zero0": (["model.llm.num_kv_heads=1", "parallel.zero_stage=0"], 1),
    # frozen vision encoder: ZeRO-3 keeps frozen parameters apart from the optimizer's groups
    "frozen-dp2-zero3": (["train.freeze=[front.vision]", "parallel.zero_stage=3"], 2),
    "frozen-single": (["train.freeze=[front.vision]"], 1),
}

PAIRS = [("tp2", "single"), ("single", "tp2"), ("dp2-zero3", "single"), ("single", "dp2-zero3"),
         ("pp2", "single"), ("single", "pp2"), ("kv1-tp2-zero3", "kv1-single-zero0"),
         ("frozen-dp2-zero3", "frozen-single")]


@pytest.fixture(scope="module")
def sources(tiny_data, tmp_path_factory):
    """name -> output directory of a 4-step run of that layout (saved at steps 2 and 4)."""
    root, done = tmp_path_factory.mktemp("reshard_sources"), {}

    def get(name):
        if name not in done:
            overrides, ranks = LAYOUTS[name]
            train(tiny_data, root / name, "train.steps=4", "checkpoint.save_interval=2", *overrides,
                  ranks=ranks)
            done[name] = root / name
        return done[name]
    return get


@pytest.mark.parametrize("source,target", PAIRS, ids=[f"{a}->{b}" for a, b in PAIRS])
def test_resume_in_another_layout_continues_the_run(sources, tiny_data, tmp_path, source, target):
    src = sources(source)
    overrides, ranks = LAYOUTS[target]
    proc = train(tiny_data, tmp_path, "train.steps=4", *overrides,
                 f"checkpoint.load_dir={src / 'ckpt' / 'step_0000002'}", ranks=ranks)
    assert "resharded" in proc.stdout
    want, got = losses(src), losses(tmp_path)
    assert sorted(got) == [3, 4]
    for step in (3, 4):
        assert abs(got[step] - want[step]) <= 1e-5, (step, got, want)
    consumed = [e["train/consumed_samples"] for e in metrics(tmp_path) if "train/consumed_samples" in e]
    assert consumed == [48, 64]                # continued from the saved consumed_samples (32)

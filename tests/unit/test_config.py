"""Config system: presets, overrides, validation errors, parameter counts."""
import pytest
import torch

from megatron_vist2.config import ConfigError, available_presets, load_config, validate
from megatron_vist2.config import analytic_parameter_counts


@pytest.mark.parametrize("preset", ["tiny-cpu", "0.6b", "1.7b", "4b", "8b"])
def test_presets_load_and_validate(preset):
    assert preset in available_presets()
    cfg = validate(load_config(preset), world_size=2)
    assert cfg.model.compression_ratio == 4.0


def test_qwen3_dims_in_presets():
    # Qwen3 public configs: (layers, hidden, FFN, heads, kv heads, tied)
    expected = {"0.6b": (28, 1024, 3072, 16, 8, True), "1.7b": (28, 2048, 6144, 16, 8, True),
                "4b": (36, 2560, 9728, 32, 8, True), "8b": (36, 4096, 12288, 32, 8, False)}
    for name, dims in expected.items():
        llm = load_config(name).model.llm
        assert (llm.num_layers, llm.hidden_size, llm.ffn_hidden_size, llm.num_heads,
                llm.num_kv_heads, llm.tie_embeddings) == dims
        assert (llm.vocab_size, llm.head_dim, llm.rope_theta) == (151936, 128, 1e6)


def test_dotted_overrides_are_typed():
    cfg = load_config("tiny-cpu", ["model.llm.num_layers=3", "optim.lr=3e-4", "train.dtype=bf16",
                                   "checkpoint.load_dir=null", "optim.grad_clip=1"])
    assert cfg.model.llm.num_layers == 3 and cfg.optim.lr == 3e-4 and cfg.train.dtype == "bf16"
    assert cfg.checkpoint.load_dir is None and isinstance(cfg.optim.grad_clip, float)


@pytest.mark.parametrize("overrides, world, needle", [
    (["model.llm.num_layerz=3"], None, "unknown config key 'model.llm.num_layerz'"),
    (["parallel.zero_stage=one"], None, "parallel.zero_stage: expected int"),
    (["model.llm.num_layers=2.5"], None, "model.llm.num_layers: expected int"),
    (["model.llm.tie_embeddings=1"], None, "model.llm.tie_embeddings: expected bool"),
    (["parallel.tensor_parallel=3"], 3, "parallel.tensor_parallel (3) must divide model.llm.num_heads (4)"),
    (["model.chunk.text_tokens=30"], None, "rho = model.chunk.text_tokens / visual tokens per chunk = 30 / 8 is not an integer"),
    (["model.chunk.image_width=100"], None, "model.chunk.image_width (100) must be divisible by patch_size x merge"),
    (["parallel.tensor_parallel=2"], 3, "world size 3 is not divisible by parallel.tensor_parallel x parallel.pipeline_parallel = 2"),
    (["parallel.global_batch_size=10"], 4, "parallel.global_batch_size (10) must be divisible"),
    (["model.llm.num_kv_heads=3"], None, "must be a multiple of model.llm.num_kv_heads (3)"),
    (["train.dtype=fp16"], None, "train.dtype must be 'auto', 'fp32' or 'bf16'"),
    (["model.render.mode=loose"], None, "model.render.mode must be 'fit' or 'strict'"),
    (["parallel.zero_stage=4"], None, "parallel.zero_stage must be 0, 1, 2 or 3"),
    (["parallel.sequence_parallel=true"], None, "parallel.sequence_parallel needs parallel.tensor_parallel > 1"),
    (["parallel.sequence_parallel=true", "parallel.tensor_parallel=2", "data.seq_length=271"], 2,
     "data.seq_length (271) must be divisible by parallel.tensor_parallel (2)"),
    (["train.activation_checkpointing=some"], None, "train.activation_checkpointing must be 'none', 'full' or 'selective'"),
    (["parallel.pipeline_parallel=3"], 3, "parallel.pipeline_parallel (3) does not divide model.llm.num_layers (4); "
     "set parallel.pipeline_layers to a split such as [1, 1, 2]"),
    (["parallel.pipeline_parallel=2", "parallel.pipeline_layers=[1,2]"], 2,
     "parallel.pipeline_layers [1, 2] must give a layer count >= 0 for each of the 2 pipeline stages, summing to model.llm.num_layers (4)"),
    (["parallel.pipeline_layers=3"], None, "parallel.pipeline_layers: expected a list"),
    (["parallel.pipeline_parallel=2", "parallel.pipeline_layers=[1,x]"], None, "parallel.pipeline_layers[1]: expected int"),
    (["parallel.tensor_parallel=4", "model.llm.num_kv_heads=1", "parallel.pipeline_parallel=2"], 4,
     "world size 4 is not divisible by parallel.tensor_parallel x parallel.pipeline_parallel = 8"),
    (["parallel.tensor_parallel=4", "model.llm.num_kv_heads=3", "model.llm.num_heads=12"], None,
     "parallel.tensor_parallel (4) is larger than model.llm.num_kv_heads (3) but not a multiple of it"),
    (["data.readback_schedule=[[1, 1.0], [5, 0.0]]"], None, "data.readback_schedule [[1.0, 1.0], [5.0, 0.0]] must be"),
    (["data.readback_schedule=[[0, 1.0], [0, 0.5]]"], None, "with steps 0, then increasing"),
    (["data.seq_length_schedule=[[0, 136], [0, 272]]"], None, "data.seq_length_schedule [[0, 136], [0, 272]] must be"),
    (["data.seq_length_schedule=[[0, 16], [2, 272]]"], None, "16 must be between one chunk"),
    (["data.seq_length_schedule=[[0, 136], [2, 544]]"], None, "544 must be between one chunk"),
    (["train.freeze=[front.nothing]"], None, "'front.nothing' names no part of the model"),
    (["train.lr=1"], None, "unknown config key 'train.lr'"),
    (["optim"], None, "must look like section.field=value"),
    (["optim.lr=fast"], None, "optim.lr: expected float, got str"),
])
def test_bad_config_names_field_and_fix(overrides, world, needle):
    with pytest.raises(ConfigError) as err:
        validate(load_config("tiny-cpu", overrides), world)
    assert needle in str(err.value)


def test_unknown_preset_lists_presets():
    with pytest.raises(ConfigError, match="unknown preset 'tiny-gpu'.*Presets: 0.6b"):
        load_config("tiny-gpu")


def test_all_problems_reported_at_once():
    with pytest.raises(ConfigError) as err:
        validate(load_config("tiny-cpu", ["model.llm.num_heads=5", "parallel.zero_stage=5"]))
    assert "num_kv_heads" in str(err.value) and "zero_stage" in str(err.value)


def test_yaml_file_with_base(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("base: tiny-cpu\ntrain: {steps: 7}\n")
    cfg = load_config(str(path), ["optim.lr=1e-3"])
    assert cfg.train.steps == 7 and cfg.model.llm.num_layers == 4 and cfg.optim.lr == 1e-3


# ------------------------------------------------------------------ parameter counts
@pytest.mark.parametrize("overrides", [[], ["model.llm.tie_embeddings=false", "model.vision.num_channels=3"],
                                       ["model.llm.vocab_size=1000", "model.aligner.merge=1",
                                        "model.chunk.text_tokens=64"]])
def test_analytic_counts_equal_built_model(dist_env, overrides):
    from megatron_vist2.models import Vist2Model
    cfg = validate(load_config("tiny-cpu", overrides))
    built = Vist2Model(cfg).parameter_counts()
    assert analytic_parameter_counts(cfg) == built


def test_counts_equal_huggingface_reference_models():
    """Independent reference: transformers' Qwen3 and SigLIP built on the meta device."""
    from transformers import Qwen3Config, Qwen3ForCausalLM, SiglipVisionConfig, SiglipVisionModel
    for name in ("0.6b", "8b"):
        cfg = load_config(name)
        llm, v = cfg.model.llm, cfg.model.vision
        counts = analytic_parameter_counts(cfg)
        hf = Qwen3Config(vocab_size=llm.vocab_size, hidden_size=llm.hidden_size,
                         intermediate_size=llm.ffn_hidden_size, num_hidden_layers=llm.num_layers,
                         num_attention_heads=llm.num_heads, num_key_value_heads=llm.num_kv_heads,
                         head_dim=llm.head_dim, tie_word_embeddings=llm.tie_embeddings)
        with torch.device("meta"):
            lm = Qwen3ForCausalLM(hf)
        assert counts["llm"] == sum(p.numel() for p in lm.parameters())
        sv = SiglipVisionConfig(hidden_size=v.hidden_size, intermediate_size=v.ffn_hidden_size,
                                num_hidden_layers=v.num_layers, num_attention_heads=v.num_heads,
                                num_channels=v.num_channels, image_size=cfg.model.chunk.image_height,
                                patch_size=v.patch_size, vision_use_head=False)
        with torch.device("meta"):
            vit = SiglipVisionModel(sv)
        assert counts["vision"] == sum(p.numel() for p in vit.parameters())


@pytest.mark.parametrize("path, world", [
    *[(f"examples/tiny_cpu/stages/{s}.yaml", 2) for s in ("stage0_ocr_warmup", "stage0_ocr_warmup_rho2",
                                                          "stage0_ocr_warmup_rho8", "stage1_readback", "stage1_pretrain",
                                                          "stage2_instructions")],
    *[(f"examples/8b/{s}.yaml", 64) for s in ("stage0_ocr_warmup", "stage1a_readback", "stage1_pretrain",
                                               "stage2_instructions")],
])
def test_stage_configs_validate_at_their_scale(path, world):
    from tests.conftest import REPO
    cfg = validate(load_config(str(REPO / path)), world)
    assert cfg.train.steps > 0


@pytest.mark.parametrize("overrides, expected", [
    ([], False),
    (["data.readback_fraction=0.5"], True),
    (["data.readback_schedule=[[0,0.5],[10,0.0]]"], True),
    # a schedule replaces the fraction: its shares are all the curriculum uses
    (["data.readback_fraction=0.5", "data.readback_schedule=[[0,0.0],[10,0.0]]"], False),
])
def test_reads_back_follows_the_curriculum(overrides, expected):
    """``reads_back`` says whether any curriculum phase reads chunks back (the phases'
    shares, training/curriculum.py), and the expected value is stated here for each config."""
    from megatron_vist2.config import reads_back
    from megatron_vist2.training.curriculum import curriculum_phases
    cfg = load_config("tiny-cpu", overrides)
    assert reads_back(cfg) is expected
    assert reads_back(cfg) == any(share > 0 for _, share, _ in curriculum_phases(cfg))

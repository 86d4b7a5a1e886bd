"""Shared fixtures: a small tokenizer + datasets built once per session from the bundled corpus,
and a single-process gloo group for in-process model tests."""
from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))

LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
TEST_VOCAB = 512


# In-process tests that each took 40-200 s in the fast tier's first measurement (docs/performance.md,
# "Test suite"): a compile, real pretrained weights, or many model builds. Listed here rather
# than decorated so the tier is decided in one place.
HEAVY = {
    "tests/unit/test_convert_vist2.py::test_exported_vist2_matches_our_model_and_engine",
    "tests/unit/test_convert_llama.py::test_packaged_llama_imports_with_equal_logits_and_round_trips",
    "tests/unit/test_flex_attention.py::test_flex_equals_dense_sdpa",
    "tests/unit/test_inference.py::test_consistency_law_batch_of_mixed_lengths_and_phases",
    "tests/unit/test_inference.py::test_generate_greedy_is_deterministic_and_bad_input_is_refused",
    "tests/unit/test_activation_checkpointing.py::test_checkpointing_keeps_loss_and_gradients",
    "tests/unit/test_hf_generate_vist2.py::test_cached_generate_equals_engine_in_a_batch_at_different_phases",
    "tests/unit/test_hf_generate_vist2.py::test_max_length_eos_stop_strings_and_streamer",
    "tests/unit/test_real_tokenizers.py::test_preprocess_train_export_generate",
    "tests/unit/test_flops.py::test_attended_pairs_equal_brute_force",
    "tests/unit/test_data_trust.py::test_inspect_data_verify_names_the_file",
    "tests/unit/test_lm_eval_vist2.py::test_last_word_task_equals_our_evaluation",
    "tests/unit/test_lm_eval_vist2.py::test_perplexity_task_equals_our_evaluation",
    "tests/unit/test_padded_vocab.py::test_train_export_generate_never_sample_the_extra_rows",
    # checkpoint trust and the GPU checkpoint findings: each trains or builds an engine in-process
    "tests/bad_input/test_checkpoint_trust.py::test_a_diverging_run_saves_no_blown_up_checkpoint",
    "tests/bad_input/test_checkpoint_trust.py::test_a_full_disk_during_a_save_says_so",
    "tests/bad_input/test_checkpoint_trust.py::test_a_run_that_skipped_most_steps_says_so_and_fails",
    "tests/bad_input/test_checkpoint_trust.py::test_a_resume_applies_a_new_learning_rate_and_says_where_it_comes_from",
    "tests/bad_input/test_checkpoint_trust.py::test_a_resume_without_changes_continues_the_saved_schedule",
    "tests/bad_input/test_checkpoint_trust.py::test_a_diverging_resume_names_the_checkpoint_it_came_from_as_last_good",
    "tests/unit/test_checkpoint_gpu_path.py::test_the_crafted_checkpoint_records_cuda_storages",
    "tests/unit/test_checkpoint_gpu_path.py::test_a_gpu_checkpoint_reads_on_a_machine_without_cuda",
    "tests/unit/test_checkpoint_gpu_path.py::test_export_consolidate_and_evaluate_a_gpu_checkpoint_without_cuda",
}


def pytest_collection_modifyitems(items):
    """The slow tier (pytest.ini): every test under tests/distributed (it launches ranks) and the
    HEAVY ones; tests that launch a subprocess carry the marker themselves."""
    for item in items:
        if "distributed" in Path(str(item.fspath)).parts or item.nodeid.split("[")[0] in HEAVY:
            item.add_marker(pytest.mark.slow)


def subprocess_env(**extra) -> dict:
    """Environment for child launches: without this process's own rank variables."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env.update(PYTHONPATH=str(REPO), **extra)
    return env


def build_tiny_data(root: Path) -> SimpleNamespace:
    from megatron_vist2.data.corpus import iter_documents
    from megatron_vist2.data.indexed import write_indexed
    from megatron_vist2.data.tokenizer import load_tokenizer, train_sentencepiece

    docs = list(iter_documents("sotu"))[:24]
    lines = [line for _, text in docs for line in text.splitlines() if line.strip()]
    tok = load_tokenizer(train_sentencepiece(lines, str(root / "tok.model"), TEST_VOCAB))
    ids = [tok.encode(text) for _, text in docs]
    names = [name for name, _ in docs]
    write_indexed(str(root / "train"), [(n, i, None) for n, i in zip(names[:20], ids[:20])], tok)
    write_indexed(str(root / "valid"), [(n, i, None) for n, i in zip(names[20:], ids[20:])], tok)
    return SimpleNamespace(root=root, tokenizer=str(root / "tok.model"),
                           train=str(root / "train"), valid=str(root / "valid"))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> SimpleNamespace:
    return build_tiny_data(tmp_path_factory.mktemp("tiny_data"))


def tiny_overrides(data: SimpleNamespace, *extra: str) -> list:
    """tiny-cpu, pointed at the test data, fp32, small enough for unit tests."""
    return [f"model.llm.vocab_size={TEST_VOCAB}", f"data.tokenizer={data.tokenizer}",
            f"data.train_prefix={data.train}", f"data.valid_prefix={data.valid}",
            "data.num_workers=0", "train.dtype=fp32", *extra]


@pytest.fixture(scope="session", autouse=True)
def dist_env():
    """torch.distributed (gloo, world 1) + megatron parallel state, once per test session, set up
    before any test and owned by the session: entry points run in-process (train, import_hf, ...)
    find them initialised and leave them so, whatever order the tests run in."""
    from megatron_vist2.parallel.distributed import init_distributed
    return init_distributed(1, 1, own=False)


def safetensors_tensors(directory: Path) -> dict:
    """name -> tensor of every *.safetensors file in ``directory`` (read with safetensors itself,
    not the package's reader)."""
    from safetensors.torch import load_file
    out = {}
    for f in sorted(Path(directory).glob("*.safetensors")):
        out |= load_file(str(f))
    return out


def tiny_model(data: SimpleNamespace, *extra: str, world_size: int = None):
    """(cfg, tokenizer, dataset, model): tiny-cpu on the test data, the model seeded (0), in eval
    mode. The same seed gives the same full weights at any tensor-parallel size."""
    import torch
    from megatron_vist2.config import load_config, validate
    from megatron_vist2.data.dataset import PackedVist2Dataset
    from megatron_vist2.data.indexed import open_indexed
    from megatron_vist2.data.tokenizer import load_tokenizer
    from megatron_vist2.models import Vist2Model
    cfg = validate(load_config("tiny-cpu", tiny_overrides(data, *extra)), world_size)
    tok = load_tokenizer(cfg.data.tokenizer)
    ds = PackedVist2Dataset(open_indexed(cfg.data.train_prefix, tok), tok, cfg, seed=0)
    torch.manual_seed(0)
    return cfg, tok, ds, Vist2Model(cfg).eval()

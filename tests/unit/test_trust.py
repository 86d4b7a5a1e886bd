"""Issue 14's data-loss cases that need no training run, each against the behaviour it
replaces: a save directory without 'latest' (case 1), 'latest' moving backwards (case 2), an
export or generation from another working directory (case 6), non-finite weights (case 7), the
stop flag's device (NCCL), and generation's stop strings and untrained-encoder warning."""
import json
import shutil

import pytest
import torch

from tests.bad_input.conftest import hf_qwen3, tiny_parts, write_checkpoint  # noqa: F401 (fixtures)
from tests.bad_input.harness import invoke
from tests.conftest import tiny_overrides


def _cfg(tiny_data, save_dir, *extra):
    from megatron_vist2.config import load_config
    return load_config("tiny-cpu", tiny_overrides(tiny_data, f"checkpoint.save_dir={save_dir}", *extra))


def test_save_dir_without_latest_resumes_its_newest_complete_checkpoint(tiny_data, tiny_parts, tmp_path):
    """Case 1: before, resume_dir returned None (start from step 0 and rewrite the step dirs)."""
    from megatron_vist2.errors import CheckpointError
    from megatron_vist2.checkpoint.resume import resume_dir
    root = tmp_path / "ckpt"
    write_checkpoint(root, *tiny_parts, step=2)
    shutil.copytree(root / "step_0000002", root / "step_0000010")
    shutil.copytree(root / "step_0000002", root / "step_0000004")
    (root / "step_0000012.partial").mkdir()                        # unfinished: never chosen
    (root / "latest").unlink()
    notes = []
    assert resume_dir(_cfg(tiny_data, root), log=notes.append) == str(root / "step_0000010")
    assert "has no 'latest' file: resuming from its newest complete checkpoint step_0000010" in notes[0]
    with pytest.raises(CheckpointError, match="already holds complete checkpoints"):
        resume_dir(_cfg(tiny_data, root, "checkpoint.auto_resume=false"))
    with pytest.raises(CheckpointError, match="already holds complete checkpoints"):
        resume_dir(_cfg(tiny_data, root, "checkpoint.auto_resume=false", f"checkpoint.init_from={root}"))


def test_latest_never_moves_backwards(tmp_path):
    """Case 2: the one writer of 'latest' keeps it on the newest complete checkpoint."""
    from megatron_vist2.checkpoint.format import advance_latest, write_atomic
    for tag in ("step_0000004", "step_0000008"):
        (tmp_path / tag).mkdir()
        (tmp_path / tag / "complete.json").write_text("{}")
    assert advance_latest(tmp_path, "step_0000008", write_atomic)
    assert not advance_latest(tmp_path, "step_0000004", write_atomic)
    assert (tmp_path / "latest").read_text() == "step_0000008"


def _relative_tokenizer_checkpoint(tiny_data, tiny_parts, root, step=2):
    """A checkpoint whose config names its tokenizer relative to the data directory (as a run
    started there with data.tokenizer=tok.model records it)."""
    def relative(config):
        config["data"]["tokenizer"] = "tok.model"
    return write_checkpoint(root, *tiny_parts, step=step, config_edit=relative)


def test_export_from_another_directory_carries_the_tokenizer(tiny_data, tiny_parts, tmp_path, monkeypatch, capsys):
    """Case 6: before, the export silently left the tokenizer out (relative path, other cwd).
    The backbone export also names its loading class and writes a complete config."""
    from megatron_vist2.data.tokenizer import file_sha256, load_tokenizer
    _relative_tokenizer_checkpoint(tiny_data, tiny_parts, tmp_path / "ckpt")
    monkeypatch.chdir(tmp_path)                                  # tok.model does not exist here
    assert invoke("tools/convert_checkpoint.py", ["--checkpoint", "ckpt", "--out", "hf"]) == 0
    out = capsys.readouterr().out
    assert "Qwen3ForCausalLM" in out and "from_pretrained" in out
    assert file_sha256(tmp_path / "hf" / "tokenizer.model") == file_sha256(tiny_data.tokenizer)
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    sp = load_tokenizer(tiny_data.tokenizer).sp
    assert config["architectures"] == ["Qwen3ForCausalLM"]
    assert config["eos_token_id"] == sp.eos_id() and config["bos_token_id"] == sp.bos_id()
    assert config["max_position_embeddings"] >= 272


def test_llama_backbone_export_names_llama(tiny_data, tiny_parts, tmp_path, capsys):
    cfg, tok, _ = tiny_parts
    from dataclasses import replace
    from megatron_vist2.models import Vist2Model
    llama = replace(cfg, model=replace(cfg.model, llm=replace(cfg.model.llm, qk_norm=False)))
    torch.manual_seed(0)
    write_checkpoint(tmp_path / "ckpt", llama, tok, Vist2Model(llama))
    assert invoke("tools/convert_checkpoint.py", ["--checkpoint", str(tmp_path / "ckpt"), "--out",
                                                  str(tmp_path / "hf")]) == 0
    assert "LlamaForCausalLM" in capsys.readouterr().out
    from transformers import AutoModelForCausalLM, LlamaForCausalLM
    assert isinstance(AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf")), LlamaForCausalLM)


def test_import_builds_the_config_from_config_json(tiny_data, tiny_parts, hf_qwen3, tmp_path):
    """The backbone's shape comes from config.json: a preset of another size imports without
    hand-typed overrides (before: a field-by-field mismatch error)."""
    from megatron_vist2.checkpoint.sources import open_checkpoint
    code = invoke("tools/import_hf.py", ["--preset", "tiny-cpu", "--llm", str(hf_qwen3), "--out",
                                         str(tmp_path / "init"), f"data.tokenizer={tiny_data.tokenizer}"])
    assert code == 0
    saved = open_checkpoint(str(tmp_path / "init")).config["model"]["llm"]
    hf = json.loads((hf_qwen3 / "config.json").read_text())
    assert (saved["vocab_size"], saved["hidden_size"], saved["num_layers"], saved["num_kv_heads"]) == \
        (hf["vocab_size"], hf["hidden_size"], hf["num_hidden_layers"], hf["num_key_value_heads"])


def test_generate_from_another_directory_stop_string_and_untrained_warning(tiny_data, tiny_parts, tmp_path,
                                                                           monkeypatch, capsys):
    """Case 6 for generation; --stop cuts the greedy continuation (compared with the run
    without it) where the string starts; a step-0 checkpoint warns about its vision encoder."""
    _relative_tokenizer_checkpoint(tiny_data, tiny_parts, tmp_path / "ckpt")
    monkeypatch.chdir(tmp_path)
    args = ["--checkpoint", "ckpt", "--prompt", "Fellow citizens of the Senate", "--max-new-tokens", "12",
            "--ignore-eos"]
    assert invoke("generate", args) == 0
    full = capsys.readouterr().out.split("\n\n---")[0]
    stop = full[len(full) // 2:len(full) // 2 + 2]
    assert stop and invoke("generate", [*args, "--stop", stop]) == 0
    out = capsys.readouterr()
    assert out.out.split("\n\n---")[0] == full[:full.index(stop)] and "stopped by stop string" in out.out
    assert "never trained" not in out.err
    _relative_tokenizer_checkpoint(tiny_data, tiny_parts, tmp_path / "step0", step=0)
    assert invoke("generate", ["--checkpoint", "step0", "--prompt", "Fellow", "--max-new-tokens", "2"]) == 0
    assert "vision encoder and aligner were never trained" in capsys.readouterr().err


def test_non_finite_weights_are_refused_before_anything_is_written(dist_env, tmp_path):
    """Case 7 (the collective check save_checkpoint runs first)."""
    from megatron_vist2.errors import CheckpointError
    from megatron_vist2.checkpoint.divergence import refuse_non_finite
    module = torch.nn.Linear(3, 2)
    refuse_non_finite(module, 5, str(tmp_path), torch.device("cpu"))      # finite: passes
    (tmp_path / "step_0000004").mkdir()
    (tmp_path / "latest").write_text("step_0000004")
    with torch.no_grad():
        module.weight[0, 1] = float("nan")
    with pytest.raises(CheckpointError, match=r"NaN/inf after step 5.*not saved.*step_0000004: restart"):
        refuse_non_finite(module, 5, str(tmp_path), torch.device("cpu"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_0000004"]


def test_stop_flag_lives_on_the_run_device(monkeypatch):
    """NCCL all-reduces CUDA tensors only: the flag must be created on the run's device (it was
    a CPU tensor whatever the device). The collective is intercepted before the tensor is read."""
    import torch.distributed as dist
    from megatron_vist2.training.signals import StopOnSignal
    seen = []

    class Reduced(Exception):
        pass

    def fake_all_reduce(t, op=None, group=None):
        seen.append((t.device, t.dtype))
        raise Reduced
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "all_reduce", fake_all_reduce)
    stop = StopOnSignal(0.0, torch.device("meta"))
    try:
        with pytest.raises(Reduced):
            stop.should_stop()
    finally:
        stop.restore()
    assert seen == [(torch.device("meta"), torch.int32)]


def test_characters_the_font_cannot_draw_are_counted_once_with_the_fix():
    """DejaVu Sans Mono has Latin but no CJK; the bundled Noto Sans CJK has both; neither has
    this emoji (the fonts' published coverage)."""
    from types import SimpleNamespace
    from megatron_vist2.data.font_coverage import missing_glyphs, warn_missing_glyphs
    text = "State of the Union 国情咨文 😀 ok"
    assert set(missing_glyphs("DejaVuSansMono.ttf", 9, [text])) == set("国情咨文😀")
    assert set(missing_glyphs("noto-sans-cjk-sc", 9, [text])) == {"😀"}
    logged = []
    warning = warn_missing_glyphs(SimpleNamespace(font="DejaVuSansMono.ttf", font_size=9), [text, "文"],
                                  "the prompt", logged.append)
    assert logged == [warning] and "6 characters (5 distinct" in warning
    assert "model.render.font=noto-sans-cjk-sc" in warning
    assert warn_missing_glyphs(SimpleNamespace(font="DejaVuSansMono.ttf", font_size=9), ["plain"], "x") is None


def test_a_full_disk_during_a_save_says_so(tmp_path):
    import errno
    from megatron_vist2.errors import CheckpointError
    from megatron_vist2.checkpoint.format import disk_errors
    with pytest.raises(CheckpointError, match=r"saving to .* failed: the disk is full .* 'latest' are untouched"):
        with disk_errors(tmp_path):
            raise OSError(errno.ENOSPC, "No space left on device")

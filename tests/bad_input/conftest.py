"""Fixtures of the bad-input cases: a small complete checkpoint (a consolidated one, written
from a freshly initialised tiny model: no training needed), a tiny Qwen3 directory, and each
case's context."""
from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pytest

from tests.conftest import tiny_overrides


def write_checkpoint(root, cfg, tok, model, step=2, config_edit=None, tokenizer=True):
    from megatron_vist2.config import config_to_dict
    from megatron_vist2.checkpoint.sources import write_consolidated
    config = config_to_dict(cfg)
    if config_edit:
        config_edit(config)
    client = {"step": step, "consumed_samples": 16 * step, "tokenizer_sha256": tok.sha256}
    tensors = ((n, "param", p.detach().float()) for n, p in model.named_parameters())
    return write_consolidated(str(root), f"step_{step:07d}", tensors,
                              {"step": step, "consumed_samples": 16 * step, "layout": None,
                               "tokenizer_sha256": tok.sha256}, config, {"client": client},
                              log=lambda *_: None, tokenizer=cfg.data.tokenizer if tokenizer else None)


@pytest.fixture(scope="session")
def tiny_parts(tiny_data, dist_env):
    from tests.conftest import tiny_model
    cfg, tok, _, model = tiny_model(tiny_data)
    return cfg, tok, model


@pytest.fixture(scope="session")
def fake_ckpt(tiny_parts, tmp_path_factory):
    """A complete checkpoint directory (latest -> step_0000002) of the tiny test model."""
    root = tmp_path_factory.mktemp("bad_input_ckpt") / "ckpt"
    write_checkpoint(root, *tiny_parts)
    return root


@pytest.fixture(scope="session")
def hf_qwen3(tiny_parts, tmp_path_factory):
    """A random Qwen3ForCausalLM directory shaped like the tiny test model's backbone."""
    import torch
    from transformers import Qwen3ForCausalLM
    from megatron_vist2.convert import qwen3
    cfg = tiny_parts[0]
    out = tmp_path_factory.mktemp("bad_input_hf") / "qwen3"
    torch.manual_seed(0)
    Qwen3ForCausalLM(qwen3.hf_config(cfg)).save_pretrained(str(out))
    return out


@pytest.fixture
def ctx(tiny_data, fake_ckpt, hf_qwen3, tmp_path):
    run = tmp_path / "run"
    return SimpleNamespace(
        tmp=tmp_path, data=tiny_data, ckpt=fake_ckpt, hf=hf_qwen3,
        train=["--preset", "tiny-cpu", *tiny_overrides(tiny_data), f"checkpoint.save_dir={run}/ckpt",
               f"logging.dir={run}", "train.steps=2", "train.eval_batches=1"])


def copy_ckpt(ctx, name="copy"):
    dest = ctx.tmp / name
    shutil.copytree(ctx.ckpt, dest)
    return dest


def edit_manifest(step_dir, **fields):
    path = step_dir / "complete.json"
    manifest = json.loads(path.read_text())
    manifest.update(fields)
    path.write_text(json.dumps(manifest))


def remanifest(step_dir):
    """Rewrite complete.json's file list after a case edited the step directory on purpose."""
    from megatron_vist2.checkpoint.format import write_manifest
    manifest = json.loads((step_dir / "complete.json").read_text())
    manifest.pop("files")
    write_manifest(step_dir, **manifest)


def edit_saved_config(step_dir, edit):
    import yaml
    cfg = yaml.safe_load((step_dir / "config.yaml").read_text())
    edit(cfg)
    (step_dir / "config.yaml").write_text(yaml.safe_dump(cfg))
    remanifest(step_dir)

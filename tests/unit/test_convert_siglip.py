"""The vision encoder <-> transformers' SiglipVisionModel, proven by features (fp32, no network),
and an import -> export round trip that reproduces the original files bit for bit."""
import pytest
import torch
from safetensors.torch import load_file
from transformers import SiglipVisionModel

from megatron_vist2.convert import siglip
from megatron_vist2.convert.hf_io import write_safetensors_dir
from megatron_vist2.errors import CheckpointError
from tests.conftest import safetensors_tensors, tiny_model

SQUARE = ["model.chunk.image_width=64", "model.vision.num_channels=3"]     # SigLIP: square RGB


def export_vision(weight, cfg, out_dir: str, shard_bytes: int = 2 << 30):
    """Our vision encoder as a SiglipVisionModel directory (square chunk images only): the
    inverse of import_vision, which only this round trip needs (VIST2 exports the whole model)."""
    return write_safetensors_dir(((hf, weight(ours)) for ours, hf in siglip.name_pairs(cfg)), out_dir,
                                 shard_bytes, siglip.hf_config(cfg).save_pretrained)


def test_siglip_import_gives_equal_features_and_round_trips(dist_env, tiny_data, tmp_path):
    cfg, tok, ds, model = tiny_model(tiny_data, *SQUARE)
    torch.manual_seed(3)
    hf = SiglipVisionModel(siglip.hf_config(cfg)).eval()
    with torch.no_grad():                      # non-trivial biases and norms
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    hf.save_pretrained(str(tmp_path / "siglip"))
    vision = siglip.import_vision(str(tmp_path / "siglip"), cfg)
    missing, unexpected = model.load_state_dict(vision, strict=False)
    assert not unexpected and not [k for k in missing if k.startswith("front.vision.") and "_extra" not in k]
    images = torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        ours = model.front.vision(images).permute(1, 0, 2)          # [n, patches, hidden]
        pixels = (images.float() / 127.5 - 1.0)[:, None].expand(-1, 3, -1, -1)
        theirs = hf(pixel_values=pixels).last_hidden_state
    assert (ours - theirs).abs().max().item() <= 1e-4
    out = export_vision(vision.__getitem__, cfg, str(tmp_path / "again"))
    original, again = safetensors_tensors(tmp_path / "siglip"), safetensors_tensors(out)
    assert original.keys() == again.keys() and all(torch.equal(original[k], again[k]) for k in original)


def test_mismatches_are_reported_by_name(dist_env, tiny_data, tmp_path):
    from safetensors.torch import save_file
    cfg, *_ = tiny_model(tiny_data, *SQUARE)
    SiglipVisionModel(siglip.hf_config(cfg)).save_pretrained(str(tmp_path / "siglip"))
    extra = sorted((tmp_path / "siglip").glob("*.safetensors"))[0]
    tensors = load_file(str(extra))
    save_file({**tensors, "encoder.layers.0.surprise.weight": torch.zeros(2)}, str(extra))
    with pytest.raises(CheckpointError, match="does not use: encoder.layers.0.surprise.weight"):
        siglip.import_vision(str(tmp_path / "siglip"), cfg)
    save_file({k: v for k, v in tensors.items() if "fc2.bias" not in k}, str(extra))
    with pytest.raises(CheckpointError, match="tensor 'encoder.layers.0.mlp.fc2.bias' is missing"):
        siglip.import_vision(str(tmp_path / "siglip"), cfg)
    wider, *_ = tiny_model(tiny_data, *SQUARE, "model.vision.hidden_size=128")
    with pytest.raises(CheckpointError, match="hidden_size"):
        siglip.import_vision(str(tmp_path / "siglip"), wider)

"""transformers backbones from local folders and files (tiny random models, nothing downloaded)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from radprobe.backbones import BackboneEntry, BuildOptions, create_backbone
from radprobe.errors import WeightsError
from radprobe.utils import file_sha256

transformers = pytest.importorskip("transformers")

TINY = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "patch_size": 8,
    "image_size": 64,
}


def _save(folder, model_type: str = "dinov2", **overrides):
    config = transformers.AutoConfig.for_model(model_type, **{**TINY, **overrides})
    torch.manual_seed(3)
    model = transformers.AutoModel.from_config(config).eval()
    model.save_pretrained(folder)
    return model


@pytest.mark.parametrize(("model_type", "n_prefix"), [("dinov2", 1), ("dinov2_with_registers", 5)])
def test_hf_folder_features_match_the_model(tmp_path, model_type, n_prefix):
    folder = tmp_path / model_type
    model = _save(folder, model_type, **({"num_register_tokens": 4} if n_prefix > 1 else {}))
    bb = create_backbone(f"hf:{folder}")
    assert bb.info.weights_digest == file_sha256(folder / "model.safetensors")
    assert (bb.info.embed_dim, bb.info.patch_size, bb.info.num_blocks) == (32, 8, 2)
    assert bb.preprocess.resolution == 64 and bb.info.family == "hf"
    assert len(bb.state_dict()) == len(bb.model.state_dict())  # the final norm is not held twice
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        out = bb(x, n_blocks=2, grid_layers=(-1, 0))
        ref = model(pixel_values=x).last_hidden_state  # after DINOv2's final layernorm
    assert out.blocks.shape == (2, 2, 2, 32) and out.grid[0].shape == (2, 32, 8, 8)
    torch.testing.assert_close(out.cls, ref[:, 0])
    torch.testing.assert_close(out.pooled, ref[:, n_prefix:].mean(1))
    torch.testing.assert_close(out.blocks[:, -1, 0], out.cls)
    torch.testing.assert_close(out.grid[-1].flatten(2).transpose(1, 2), ref[:, n_prefix:])


def test_hf_weights_folder_and_non_native_resolution(tmp_path):
    folder = tmp_path / "vitmsn"
    _save(folder, "vit_msn", intermediate_size=64)
    bb = create_backbone(f"hf:{folder}", weights=folder, resolution=96)
    assert bb.info.source == f"file:{folder}"
    out = bb(torch.randn(1, 3, 96, 96), grid_layers=(-1,))  # ViT-MSN needs interpolate_pos_encoding
    assert out.cls.shape == (1, 32) and out.grid[-1].shape == (1, 32, 12, 12)


def test_hf_preprocessor_config_is_used(tmp_path):
    folder = tmp_path / "m"
    _save(folder)
    proc = {
        "image_mean": [0.1, 0.2, 0.3],
        "image_std": [0.5, 0.5, 0.5],
        "do_center_crop": True,
        "crop_size": {"height": 56, "width": 56},
        "size": {"shortest_edge": 64},
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(proc))
    pre = create_backbone(f"hf:{folder}").preprocess
    assert (pre.mean, pre.std, pre.resolution) == ((0.1, 0.2, 0.3), (0.5, 0.5, 0.5), 56)


def test_hf_folder_with_missing_or_misshapen_keys_is_refused(tmp_path):
    folder = tmp_path / "m"
    _save(folder)
    sd = load_file(str(folder / "model.safetensors"))
    victim = next(k for k in sd if k.endswith("mlp.fc2.weight"))
    del sd[victim]
    save_file(sd, str(folder / "model.safetensors"))
    with pytest.raises(WeightsError, match=f"missing {victim}.*--allow-partial-weights"):
        create_backbone(f"hf:{folder}")
    bb = create_backbone(f"hf:{folder}", allow_partial_weights=True)
    assert bb.info.extra["partial_weights"]["missing"] == [victim]

    sd2 = load_file(str(folder / "model.safetensors"))
    other = next(k for k in sd2 if k.endswith("mlp.fc1.weight"))
    sd2[other] = sd2[other][:5]
    save_file(sd2, str(folder / "model.safetensors"))
    with pytest.raises(WeightsError, match="shape mismatch"):
        create_backbone(f"hf:{folder}", allow_partial_weights=False)


def test_hf_bare_state_dict_file_uses_the_entry_config(tmp_path, offline_hub):
    from radprobe.backbones.hf import build_hf

    folder = tmp_path / "m"
    model = _save(folder)
    path = tmp_path / "ckpt.pth"
    torch.save({"model": model.state_dict()}, path)
    entry = BackboneEntry(
        name="tiny-dino",
        family="dinov2",
        arch="dinov2",
        source="hf:nowhere/tiny",
        description="",
        builder=build_hf,
        requires="hf",
        options={"repo": "nowhere/tiny", "config": {"model_type": "dinov2", **TINY}},
    )
    bb = build_hf(entry, BuildOptions(weights=path)).eval()
    assert bb.info.weights_digest == file_sha256(path)
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(bb(x).cls, model(pixel_values=x).last_hidden_state[:, 0])
    random = build_hf(entry, BuildOptions(pretrained=False))
    assert random.info.weights_digest == "random-init:seed0"

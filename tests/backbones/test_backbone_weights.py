"""Strict checkpoint loading: round trips, digests, and every kind of mismatch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from radprobe.backbones import create_backbone
from radprobe.backbones.testing import WIDTH
from radprobe.errors import WeightsError
from radprobe.utils import file_sha256


class NotATensor:
    """Stands in for an arbitrary pickled object (an argparse namespace, a config class ...)."""


def _perturbed(name: str = "test:vit-tiny") -> dict[str, torch.Tensor]:
    """The backbone's headless timm state dict with every float tensor changed, so that a load
    that silently did nothing would be caught."""
    sd = create_backbone(name).model.state_dict()
    g = torch.Generator().manual_seed(7)
    return {
        k: v + 0.1 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v for k, v in sd.items()
    }


def _reference_output(sd: dict[str, torch.Tensor], batch: torch.Tensor, name: str = "test:vit-tiny"):
    bb = create_backbone(name)
    bb.model.load_state_dict(sd)
    return bb(batch, n_blocks=2)


def test_safetensors_and_pth_round_trip_identically(tmp_path, batch):
    sd = _perturbed()
    st, pth = tmp_path / "w.safetensors", tmp_path / "w.pth"
    save_file(sd, str(st))
    # a typical training checkpoint: wrapped, DDP-prefixed, with non-tensor metadata
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3}, pth)
    ref = _reference_output(sd, batch)
    outs = []
    for path, fit in ((st, None), (pth, {"transform": "strip 'module.'"})):
        bb = create_backbone("test:vit-tiny", weights=path)
        assert bb.info.weights_digest == file_sha256(path)
        assert bb.info.source == f"file:{path}" and "partial_weights" not in bb.info.extra
        assert bb.info.extra.get("weights_fit") == fit
        outs.append(bb(batch, n_blocks=2))
    for out in outs:
        torch.testing.assert_close(out.blocks, ref.blocks)
    assert not torch.allclose(outs[0].cls, create_backbone("test:vit-tiny")(batch).cls)


def test_wrapper_state_dict_and_dino_teacher_layouts_load(tmp_path, batch):
    sd = _perturbed()
    bb = create_backbone("test:vit-tiny")
    bb.model.load_state_dict(sd)
    own = tmp_path / "own.safetensors"
    save_file(bb.state_dict(), str(own))  # Backbone.state_dict() keys carry a "model." prefix
    teacher = tmp_path / "teacher.pth"
    torch.save({"teacher": {f"backbone.{k}": v for k, v in sd.items()}}, teacher)
    for path in (own, teacher):
        torch.testing.assert_close(create_backbone("test:vit-tiny", weights=path)(batch).cls, bb(batch).cls)


def test_missing_key_is_named(tmp_path):
    sd = _perturbed()
    del sd["blocks.1.mlp.fc2.weight"]
    path = tmp_path / "ckpt.safetensors"
    save_file(sd, str(path))
    with pytest.raises(WeightsError) as err:
        create_backbone("test:vit-tiny", weights=path)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and "test:vit-tiny" in msg
    assert "missing blocks.1.mlp.fc2.weight" in msg and "--allow-partial-weights" in msg


def test_shape_mismatch_is_named(tmp_path):
    sd = _perturbed()
    sd["blocks.0.mlp.fc1.weight"] = sd["blocks.0.mlp.fc1.weight"][:10]
    path = tmp_path / "ckpt.safetensors"
    save_file(sd, str(path))
    with pytest.raises(
        WeightsError, match=r"shape mismatch blocks\.0\.mlp\.fc1\.weight \[10, 192\] vs \[768, 192\]"
    ):
        create_backbone("test:vit-tiny", weights=path)


def test_unexpected_keys_fail_but_classifier_heads_are_dropped(tmp_path, batch):
    sd = _perturbed()
    heads = {
        "head.weight": torch.zeros(10, WIDTH),
        "fc.bias": torch.zeros(10),
        "classifier.weight": torch.zeros(2),
    }
    ok = tmp_path / "with_head.safetensors"
    save_file({**sd, **heads}, str(ok))
    torch.testing.assert_close(
        create_backbone("test:vit-tiny", weights=ok)(batch).cls, _reference_output(sd, batch).cls
    )
    bad = tmp_path / "extra.safetensors"
    save_file({**sd, "decoder.proj.weight": torch.zeros(3)}, str(bad))
    with pytest.raises(WeightsError, match=r"unexpected decoder\.proj\.weight"):
        create_backbone("test:vit-tiny", weights=bad)


def test_allow_partial_weights_loads_and_records_the_report(tmp_path):
    sd = _perturbed()
    del sd["blocks.1.norm1.bias"]
    sd["blocks.0.attn.qkv.weight"] = torch.zeros(3, 3)
    path = tmp_path / "partial.safetensors"
    save_file(sd, str(path))
    bb = create_backbone("test:vit-tiny", weights=path, allow_partial_weights=True)
    report = bb.info.extra["partial_weights"]
    assert report["missing"] == ["blocks.1.norm1.bias"]
    assert report["mismatched"] == [["blocks.0.attn.qkv.weight", [3, 3], [3 * WIDTH, WIDTH]]]
    loaded = bb.model.state_dict()
    assert torch.equal(loaded["blocks.1.mlp.fc2.weight"], sd["blocks.1.mlp.fc2.weight"])
    assert not torch.equal(loaded["blocks.0.attn.qkv.weight"][:3, :3], torch.zeros(3, 3))


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": _perturbed(), "args": NotATensor()}, path)
    with pytest.raises(WeightsError, match=r"refusing to unpickle .* such as .*NotATensor"):
        create_backbone("test:vit-tiny", weights=path)


def test_position_table_of_another_grid_is_resampled(tmp_path):
    from timm.layers import resample_abs_pos_embed

    sd = _perturbed()
    small = resample_abs_pos_embed(sd["pos_embed"], [4, 4], num_prefix_tokens=1)  # 4x4 grid + cls
    path = tmp_path / "pos.safetensors"
    save_file({**sd, "pos_embed": small}, str(path))
    bb = create_backbone("test:vit-tiny", weights=path)
    expected = resample_abs_pos_embed(small, [8, 8], num_prefix_tokens=1)
    torch.testing.assert_close(bb.model.pos_embed, expected)
    assert "partial_weights" not in bb.info.extra
    assert bb.info.extra["weights_fit"] == {"resampled": ["pos_embed"]}


def test_cnn_checkpoint_without_batch_counters_loads(tmp_path, batch):
    sd = {k: v for k, v in _perturbed("test:cnn-tiny").items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "cnn.pt"
    torch.save(sd, path)
    out = create_backbone("test:cnn-tiny", weights=path)(batch)
    torch.testing.assert_close(out.pooled, _reference_output(sd, batch, "test:cnn-tiny").pooled)


def test_weights_folder_and_bad_paths(tmp_path):
    folder = tmp_path / "hub-style"
    folder.mkdir()
    save_file(_perturbed(), str(folder / "model.safetensors"))
    bb = create_backbone("test:vit-tiny", weights=folder)
    assert bb.info.weights_digest == file_sha256(folder / "model.safetensors")
    for bad, match in [
        (tmp_path / "nope.safetensors", "do not exist"),
        (tmp_path, "holds none of"),
        (Path(__file__), "unknown format"),
    ]:
        with pytest.raises(WeightsError, match=match):
            create_backbone("test:vit-tiny", weights=bad)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="could not read"):
        create_backbone("test:vit-tiny", weights=garbage)


def test_original_dinov2_layout_is_converted(tmp_path, batch):
    """Meta's DINOv2 checkpoints carry a training-only mask_token; timm's converter drops it."""
    sd = _perturbed()
    path = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save({**sd, "mask_token": torch.zeros(1, 64)}, path)
    bb = create_backbone("test:vit-tiny", weights=path)
    torch.testing.assert_close(bb(batch).cls, _reference_output(sd, batch).cls)
